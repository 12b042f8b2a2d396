"""One logged-in mini-program user: its id (also the resume secret), its SIP registration, the
client it is attached to (None while detached), and the grace timer that ends it when the client
does not come back.

The user's registration is shared by all of that user's sessions on the node
(:mod:`b2bua.call.bindings`); the binding hands each registration event to the session, which
forwards it to its owner (the controller), which decides. Events for the client go through
:meth:`Session.send_event`: sent at once while attached, queued (bounded) while detached and
flushed by :meth:`Session.flush_events` after a ``resume``.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from b2bua.call.interfaces import Channel, Registration

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from b2bua.call.bindings import Binding

__all__ = ["Session", "SessionOwner", "Attachment", "new_session_id", "session_tag"]

#: Events kept for a detached session; older ones are dropped beyond this.
MAX_QUEUED_EVENTS = 32

# Session states.
LOGGING_IN = "logging_in"  # first REGISTER in progress, the login request not answered yet
ACTIVE = "active"  # logged in, attached to a client
DETACHED = "detached"  # logged in, client gone, grace timer running
CLOSING = "closing"  # un-REGISTER in progress
CLOSED = "closed"


def new_session_id() -> str:
    """144 random bits, URL-safe: the session id is also the secret that allows ``resume``."""
    return secrets.token_urlsafe(18)


def session_tag(session_id: str) -> str:
    """What may appear in logs: a short prefix of the id, never the whole secret."""
    return session_id[:6] + "…"


class Attachment(Protocol):
    """The controller's per-connection object a session is attached to."""

    channel: Channel
    session: Session | None


class SessionOwner(Protocol):
    """Receives the registration events of the sessions it owns (the controller)."""

    def session_registered(self, session: Session, expires: int) -> None: ...

    def session_registration_failed(
        self, session: Session, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None: ...

    def session_unregistered(self, session: Session) -> None: ...


class Session:
    """A logged-in user. Small on purpose (``__slots__``): 10,000 idle ones must fit in 200 MB."""

    __slots__ = (
        "id",
        "user",
        "state",
        "client",
        "registration",
        "binding",
        "is_registered",
        "expires",
        "created",
        "login_deferred",
        "login_timer",
        "stop_deferred",
        "dropped_events",
        "_owner",
        "_reactor",
        "_grace",
        "_queue",
    )

    def __init__(
        self,
        user: str,
        owner: SessionOwner,
        reactor: IReactorTime,
        session_id: str | None = None,
    ) -> None:
        self.id: str = session_id or new_session_id()
        self.user = user
        self.state: str = LOGGING_IN
        self.client: Attachment | None = None
        self.registration: Registration | None = None  # the binding's, shared with the user's other sessions
        self.binding: Binding | None = None
        self.is_registered = False
        self.expires: int | None = None
        self.created: float = reactor.seconds()
        self.login_deferred: Deferred[Any] | None = None
        self.login_timer: IDelayedCall | None = None
        self.stop_deferred: Deferred[Any] | None = None
        self.dropped_events = 0
        self._owner = owner
        self._reactor = reactor
        self._grace: IDelayedCall | None = None
        self._queue: deque[tuple[str, dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"<Session {session_tag(self.id)} user={self.user!r} state={self.state}>"

    @property
    def tag(self) -> str:
        return session_tag(self.id)

    @property
    def registration_state(self) -> str:
        return self.registration.state if self.registration is not None else "unregistered"

    # --- RegistrationListener ----------------------------------------------------------------
    def registered(self, expires: int) -> None:
        self._owner.session_registered(self, expires)

    def registration_failed(
        self, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None:
        self._owner.session_registration_failed(self, reason, sip_status, retrying, detail)

    def unregistered(self) -> None:
        self._owner.session_unregistered(self)

    # --- client attachment ---------------------------------------------------------------------
    def attach(self, client: Attachment) -> None:
        """Bind to ``client`` (both ways) and stop the grace timer."""
        self.cancel_grace()
        self.client = client
        client.session = self

    def detach(self) -> Attachment | None:
        """Unbind from the current client (both ways); returns it."""
        client = self.client
        self.client = None
        if client is not None and client.session is self:
            client.session = None
        return client

    def send_event(self, method: str, params: dict[str, Any]) -> None:
        """Send now if attached and logged in; queue while detached; drop otherwise."""
        if self.client is not None and self.state == ACTIVE:
            self.client.channel.send_event(method, params)
        elif self.state == DETACHED:
            if self._queue is None:
                self._queue = deque(maxlen=MAX_QUEUED_EVENTS)
            if len(self._queue) == MAX_QUEUED_EVENTS:
                self.dropped_events += 1
            self._queue.append((method, params))

    def flush_events(self) -> None:
        """Deliver the events queued while detached, in order."""
        queue, self._queue = self._queue, None
        if queue and self.client is not None:
            for method, params in queue:
                self.client.channel.send_event(method, params)

    # --- timers --------------------------------------------------------------------------------
    def start_grace(self, period: float, on_expiry: Callable[[Session], object]) -> None:
        """(Re)start the grace timer; on expiry ``on_expiry(self)`` un-registers and drops us."""
        self.cancel_grace()
        self._grace = self._reactor.callLater(period, self._grace_expired, on_expiry)

    def cancel_grace(self) -> None:
        if self._grace is not None:
            if self._grace.active():
                self._grace.cancel()
            self._grace = None

    @property
    def grace_active(self) -> bool:
        return self._grace is not None and self._grace.active()

    def _grace_expired(self, on_expiry: Callable[[Session], object]) -> None:
        self._grace = None
        on_expiry(self)

    def cancel_login_timer(self) -> None:
        if self.login_timer is not None:
            if self.login_timer.active():
                self.login_timer.cancel()
            self.login_timer = None
