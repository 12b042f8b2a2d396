"""One SIP registration per user on a node, shared by every session of that user.

A stock FreeSWITCH keeps a single binding per user and deletes it on any ``Expires: 0``: two
registrations of one user from one node would replace each other, and the first session to
leave would unregister the others. So the controller keeps one :class:`Binding` per user: the
first login creates it and its registration, later logins join it, and the last session to
leave stops it. The binding is the registration's listener and forwards every event to each of
its sessions; inbound INVITEs and MESSAGEs for its Contact reach all of them.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from b2bua.call.interfaces import Registration
    from b2bua.call.session import Session

__all__ = ["Binding", "BindingTable"]


class Binding:
    """A user's registration and the sessions sharing it (reference counted)."""

    __slots__ = ("user", "registration", "expires", "_sessions", "_password", "_ha1")

    def __init__(self, user: str, password: str | None, ha1: str | None) -> None:
        self.user = user
        self.registration: Registration | None = None
        self.expires: int | None = None  # of the last 2xx, for sessions that join a live binding
        self._sessions: dict[str, Session] = {}  # insertion order: the order sessions ring in
        self._password = password
        self._ha1 = ha1

    def __repr__(self) -> str:
        state = self.registration.state if self.registration is not None else "-"
        return f"<Binding {self.user!r} {state} sessions={len(self._sessions)}>"

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def join(self, session: Session) -> None:
        self._sessions[session.id] = session
        session.binding = self
        session.registration = self.registration

    def leave(self, session: Session) -> bool:
        """Drop ``session``; True when it was the last one (the caller stops the registration)."""
        self._sessions.pop(session.id, None)
        if session.binding is self:
            session.binding = None
        return not self._sessions

    @property
    def is_registered(self) -> bool:
        return self.registration is not None and self.registration.state == "registered"

    def same_credentials(self, password: str | None, ha1: str | None) -> bool:
        """Whether a new login brings the credentials this binding registers with (compared in
        constant time); anything else must be proven at the registrar before it may join."""
        if password is not None and self._password is not None:
            return hmac.compare_digest(password.encode(), self._password.encode())
        if ha1 is not None and self._ha1 is not None:
            return hmac.compare_digest(ha1.lower().encode(), self._ha1.lower().encode())
        return False

    def adopt_credentials(self, password: str | None, ha1: str | None) -> None:
        """The registrar accepted new credentials for this user (a changed password): register
        with them from now on, so the next refresh does not fail for every session."""
        self._password, self._ha1 = password, ha1
        if self.registration is not None:
            self.registration.set_credentials(password, ha1)

    # --- RegistrationListener: every event goes to each session ----------------------------------
    def registered(self, expires: int) -> None:
        self.expires = expires
        for session in self.sessions:
            session.registered(expires)

    def registration_failed(
        self, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None:
        self.expires = None
        for session in self.sessions:
            session.registration_failed(reason, sip_status, retrying, detail=detail)

    def unregistered(self) -> None:
        self.expires = None
        for session in self.sessions:
            session.unregistered()


class BindingTable:
    """The node's bindings by user (the SIP domain is one per node)."""

    def __init__(self) -> None:
        self._by_user: dict[str, Binding] = {}

    def __len__(self) -> int:
        return len(self._by_user)

    def __iter__(self) -> Iterator[Binding]:
        return iter(list(self._by_user.values()))

    def get(self, user: str) -> Binding | None:
        return self._by_user.get(user)

    def add(self, binding: Binding) -> None:
        if binding.user in self._by_user:
            raise KeyError(f"user {binding.user!r} already has a binding")
        self._by_user[binding.user] = binding

    def remove(self, binding: Binding) -> None:
        if self._by_user.get(binding.user) is binding:
            del self._by_user[binding.user]
