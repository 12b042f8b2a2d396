"""What :mod:`b2bua.call` needs from its neighbours, as structural types.

The SIP stack (``b2bua/sip/ua.py``), the user sources and token verifier (``b2bua/auth``) and the
WebSocket protocol (``b2bua/ws/protocol.py``) implement these shapes; the controller only ever
talks to them through these methods, and the tests use fakes of the same shape.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from b2bua.ws.jsonrpc import RpcError

__all__ = [
    "RegistrationListener",
    "Registration",
    "SipStack",
    "Credentials",
    "UserSource",
    "TokenVerifier",
    "Channel",
    "REGISTRATION_STATES",
]

#: Values of :attr:`Registration.state`.
REGISTRATION_STATES = ("idle", "registering", "registered", "failed", "unregistering", "unregistered")


class RegistrationListener(Protocol):
    """Receives what happens to one registration. Called on the reactor thread.

    Ordering contract the controller relies on:

    * ``registered(expires)`` after every successful REGISTER (first one and refreshes);
    * ``registration_failed(reason, sip_status, retrying)``: ``reason`` is one of
      ``auth_failed`` (401/407 with the digest refused), ``forbidden`` (403), ``timeout``,
      ``pbx_unreachable`` (transport error, ICMP, DNS), ``pbx_error`` (any other final status).
      With ``retrying=True`` the registration keeps trying by itself (backoff); with
      ``retrying=False`` it is dead and will call nothing again;
    * ``unregistered()`` once, when the registration has ended (after :meth:`Registration.stop`
      or because the stack gave up on it); it is never used again afterwards.

    A listener method must not be called from inside ``start()`` or ``stop()`` synchronously
    (queue it with ``reactor.callLater(0, ...)`` if needed), so handlers never re-enter.
    """

    def registered(self, expires: int) -> None: ...

    def registration_failed(
        self, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None: ...

    def unregistered(self) -> None: ...


class Registration(Protocol):
    """One user's registration binding at the PBX (Contact unique to the session)."""

    state: str

    def start(self) -> None:
        """Send the first REGISTER; then keep it refreshed and retry with backoff by itself."""

    def stop(self) -> Deferred[Any]:
        """Un-REGISTER (Expires: 0) if the registrar still lists our Contact. Fires (never
        errbacks) when done or timed out."""

    def set_credentials(self, password: str | None, ha1: str | None) -> None:
        """Register with these credentials from the next REGISTER on."""


class SipStack(Protocol):
    #: False once the PBX has not answered OPTIONS for ``sip.pbx_down_after`` seconds; True when
    #: it answers; None while unknown (keepalives off, or none answered or timed out yet).
    pbx_reachable: bool | None

    def create_registration(
        self, user: str, password: str | None, ha1: str | None, listener: RegistrationListener
    ) -> Registration:
        """A new, not yet started registration for ``user`` with exactly one of password/ha1."""

    def check_credentials(self, user: str, password: str | None, ha1: str | None) -> Deferred[str | None]:
        """Prove credentials at the registrar without touching its bindings (a REGISTER without
        Contact): fires with None when accepted, else with the failure reason (``auth_failed``,
        ``pbx_unreachable``, ``pbx_error``…)."""


class Credentials(Protocol):
    user: str
    password: str | None
    ha1: str | None


class UserSource(Protocol):
    def lookup(self, user: str) -> Credentials | None: ...


class TokenVerifier(Protocol):
    def verify(self, token: str) -> str:
        """The user the token was issued for; raises an exception with a ``.reason`` string
        (``malformed``, ``bad_signature``, ``expired``, ``replayed``, ``too_long_lived``)."""


class Channel(Protocol):
    """One client's WebSocket as the controller sees it (implemented by ``b2bua.ws.protocol``)."""

    #: The client's IP address (after a trusted X-Forwarded-For), the rate-limit key.
    peer_host: str

    def send_result(self, request_id: str | int, result: Any) -> None:
        """Answer a request (dropped silently when the socket is closing or closed)."""

    def send_error(self, request_id: str | int | None, error: RpcError) -> None:
        """Answer a request with an error (dropped silently when the socket is closed)."""

    def send_event(self, method: str, params: dict[str, Any]) -> None:
        """Send a JSON-RPC notification (dropped silently when the socket is closed)."""

    def close(self, code: int, reason: str, stop_reading: bool = False) -> None:
        """Start the WebSocket closing handshake with this close code and reason; with
        ``stop_reading``, read nothing more from the peer (a flooder)."""
