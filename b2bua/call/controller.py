"""The JSON-RPC methods of the signalling channel, and the session lifecycle behind them.

The WebSocket protocol (:mod:`b2bua.ws.protocol`) parses frames and calls, per connection:
:meth:`Controller.connection_opened` -> :class:`Client`, :meth:`Controller.request_received`,
:meth:`Controller.notification_received`, :meth:`Controller.connection_lost`. Everything the
client receives goes back through the connection's :class:`~b2bua.call.interfaces.Channel`
(``send_result``/``send_error``/``send_event``/``close``), so the controller decides the order
of answers and events.

Methods live in one table, :attr:`Controller.methods`; a later feature adds one with
:meth:`Controller.add_method` (``needs_session=True`` for everything that requires a login)::

    controller.add_method("call", call_handler)           # handler(client, params) -> result

A handler gets the :class:`Client` and the ``params`` object and returns the result (any JSON
value), or a Deferred of it, or raises :class:`~b2bua.ws.jsonrpc.RpcError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from b2bua.call.bindings import Binding, BindingTable
from b2bua.call.interfaces import Channel, SipStack, TokenVerifier, UserSource
from b2bua.call.registry import SessionRegistry
from b2bua.call.session import ACTIVE, CLOSED, CLOSING, DETACHED, LOGGING_IN, Session
from b2bua.ws.jsonrpc import (
    Notification,
    Request,
    RpcError,
    get_optional_str,
    get_str,
    reject_unknown_params,
)
from b2bua.ws.ratelimit import TokenBucketLimiter

if TYPE_CHECKING:
    from b2bua.config import AuthConfig, WebSocketConfig
    from b2bua.metrics import Registry

__all__ = ["Controller", "Client", "Method", "CLOSE_REPLACED", "CLOSE_GOING_AWAY"]

Handler = Callable[["Client", dict[str, Any]], Any]

#: WebSocket close code/reason sent to a socket whose session was resumed elsewhere.
CLOSE_REPLACED = 4001
#: WebSocket close code sent to every client when the node shuts down.
CLOSE_GOING_AWAY = 1001
#: WebSocket close code for a socket that keeps sending past its request rate limit.
CLOSE_RATE_LIMITED = 4003

#: Upper bound on waiting for an un-REGISTER (logout, shutdown), on top of the stack's own.
STOP_TIMEOUT = 10.0
#: Requests a single connection may have unanswered at once.
MAX_IN_FLIGHT = 32

USER_RE = re.compile(r"[A-Za-z0-9_.!~*'()&=+$,-]+\Z")
HA1_RE = re.compile(r"[0-9a-fA-F]{32}\Z")
SESSION_RE = re.compile(r"[A-Za-z0-9_-]+\Z")

#: What the SIP stack reports -> the reason the client sees.
_FAILURE_REASONS = {
    "auth_failed": "auth_failed",
    "forbidden": "auth_failed",
    "timeout": "timeout",
    "pbx_unreachable": "pbx_unreachable",
    "pbx_error": "pbx_error",
    "not_bound": "not_bound",
}

_LOGIN_PARAMS = frozenset({"user", "password", "ha1", "token"})
#: ``detail`` of a login refused because the PBX is known to be down (OPTIONS keepalives).
PBX_DOWN = "the PBX does not answer"


def _public_reason(reason: str) -> str:
    return _FAILURE_REASONS.get(reason, "pbx_error")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Method:
    handler: Handler
    needs_session: bool


class Client:
    """One WebSocket connection as the controller sees it."""

    __slots__ = ("channel", "session", "in_flight", "closed", "refused")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.session: Session | None = None
        self.in_flight = 0
        self.closed = False
        self.refused = 0  # requests refused in a row by the socket's rate limit

    @property
    def peer_host(self) -> str:
        return self.channel.peer_host


class Controller:
    """Sessions, their registrations and the JSON-RPC methods that drive them."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        ws_config: WebSocketConfig,
        auth_config: AuthConfig,
        stack: SipStack,
        user_source: UserSource | None,
        token_verifier: TokenVerifier | None,
        metrics: Registry | None = None,
    ) -> None:
        self._reactor = reactor
        self._ws_config = ws_config
        self._auth_config = auth_config
        self._stack = stack
        self._user_source = user_source
        self._token_verifier = token_verifier
        self.sessions = SessionRegistry(ws_config.max_sessions)
        self.bindings = BindingTable()
        self.clients: set[Client] = set()
        self._stopping: set[Deferred[Any]] = set()
        self._shutting_down = False
        self._login_limiter = TokenBucketLimiter(
            max(1, ws_config.login_attempts_per_minute), reactor.seconds, max_keys=100_000
        )
        # Refused logins per user, whatever the address: the PBX sees every attempt as coming from
        # the gateway, and would ban it (fail2ban) for every user.
        self._failed_logins = TokenBucketLimiter(
            max(1, ws_config.failed_logins_per_user) * 60.0 / max(1.0, ws_config.failed_login_window),
            reactor.seconds,
            burst=max(1, ws_config.failed_logins_per_user),
            max_keys=100_000,
        )
        # every request of a socket (a ping flood costs the reactor as much as anything)
        self._request_limit: TokenBucketLimiter | None = None
        if ws_config.requests_per_minute > 0:
            self._request_limit = TokenBucketLimiter(
                ws_config.requests_per_minute,
                reactor.seconds,
                burst=max(1.0, ws_config.requests_per_minute / 6),
                max_keys=1_000_000,
            )
        # method -> per-session token bucket (what one logged-in client may make the PBX do)
        self._method_limits: dict[str, TokenBucketLimiter] = {}
        for methods, per_minute in (
            (("call",), ws_config.calls_per_minute),
            (("message", "send_info"), ws_config.messages_per_minute),
            (("dtmf",), ws_config.dtmf_per_minute),
        ):
            if per_minute > 0:
                limiter = TokenBucketLimiter(
                    per_minute, reactor.seconds, burst=max(1.0, per_minute / 6), max_keys=100_000
                )
                self._method_limits.update(dict.fromkeys(methods, limiter))
        self.methods: dict[str, Method] = {}
        self.session_end_hooks: list[Callable[[Session], None]] = []  # e.g. the call layer hangs up
        # the call layer: the session's live calls, [{call, state, direction}], for `resume`
        self.session_calls: Callable[[Session], list[dict[str, Any]]] | None = None
        self.add_method("login", self.login, needs_session=False)
        self.add_method("resume", self.resume, needs_session=False)
        self.add_method("ping", self.ping, needs_session=False)
        self.add_method("logout", self.logout)

        self._requests_total = self._errors_total = None
        if metrics is not None:
            self._requests_total = metrics.counter(
                "mpb2bua_ws_requests_total", "JSON-RPC requests received, by method.", ("method",)
            )
            self._errors_total = metrics.counter(
                "mpb2bua_ws_errors_total", "JSON-RPC errors sent, by reason.", ("reason",)
            )
            metrics.gauge_fn(
                "mpb2bua_ws_connections", "Open WebSocket connections.", lambda: float(len(self.clients))
            )
            metrics.gauge_fn(
                "mpb2bua_sessions",
                "Sessions by state (logging_in, active, detached, closing).",
                self._session_counts,
                ("state",),
            )

    # --- method table ----------------------------------------------------------------------------
    def add_method(self, name: str, handler: Handler, *, needs_session: bool = True) -> None:
        """Expose ``handler`` as JSON-RPC method ``name`` (snake_case, unique)."""
        if name in self.methods:
            raise ValueError(f"method {name!r} already defined")
        self.methods[name] = Method(handler, needs_session)

    # --- called by the WebSocket protocol --------------------------------------------------------
    def connection_opened(self, channel: Channel) -> Client:
        client = Client(channel)
        self.clients.add(client)
        return client

    def connection_lost(self, client: Client) -> None:
        """The socket is gone: a pending login is abandoned, a logged-in session is detached and
        survives for the grace period."""
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        if self._request_limit is not None:
            self._request_limit.forget(client)
        session = client.session
        if session is None:
            return
        session.detach()
        if session.state == LOGGING_IN:
            self.log.info("login abandoned by client: session {tag} user {user}", tag=session.tag,
                          user=session.user)
            self._fail_login(session, RpcError("cancelled", "connection closed"))
        elif session.state == ACTIVE:
            session.state = DETACHED
            session.start_grace(self._ws_config.grace_period, self._grace_expired)
            self.log.info("session {tag} detached (user {user}), grace {grace}s", tag=session.tag,
                          user=session.user, grace=self._ws_config.grace_period)

    def notification_received(self, client: Client, notification: Notification) -> None:
        """Client notifications are not part of the protocol: ignored (never answered)."""
        self.log.debug("ignored client notification {method!r}", method=notification.method[:32])

    def request_received(self, client: Client, request: Request) -> None:
        """Run the request's method; its result or error goes back through ``client.channel``."""
        method = self.methods.get(request.method)
        self._count_request(request.method if method is not None else "unknown")
        if not self._within_request_rate(client, request):
            return
        if method is None:
            self.send_error(client, request.id, RpcError("method_not_found"))
            return
        if client.in_flight >= MAX_IN_FLIGHT:
            self.send_error(client, request.id, RpcError("rate_limited", "too many requests in flight"))
            return
        if method.needs_session and (client.session is None or client.session.state != ACTIVE):
            self.send_error(client, request.id, RpcError("not_logged_in"))
            return
        limiter = self._method_limits.get(request.method)
        if limiter is not None and client.session is not None and not limiter.allow(client.session.id):
            retry = round(limiter.retry_after(client.session.id), 1)
            self.log.info("{method} rate limit hit by session {tag}", method=request.method,
                          tag=client.session.tag)
            self.send_error(client, request.id, RpcError("rate_limited", retry_after=retry))
            return
        client.in_flight += 1
        d = maybeDeferred(method.handler, client, request.params)
        d.addCallbacks(self._answer, self._answer_error, (client, request), None, (client, request))

    def _within_request_rate(self, client: Client, request: Request) -> bool:
        limit = self._request_limit
        if limit is None or limit.allow(client):
            client.refused = 0
            return True
        client.refused += 1
        if client.refused == 1:
            self.log.info("request rate limit hit by {peer}", peer=client.peer_host)
        if client.refused > max(1.0, self._ws_config.requests_per_minute / 6):
            # a whole burst more while told to wait: not a client that backs off
            self.log.warn("closing the socket of {peer}: it keeps flooding requests", peer=client.peer_host)
            self._count_error("rate_limited")
            client.channel.close(CLOSE_RATE_LIMITED, "rate_limited", stop_reading=True)
            return False
        retry = round(limit.retry_after(client), 1)
        self.send_error(client, request.id, RpcError("rate_limited", retry_after=retry))
        return False

    def frame_rejected(self, client: Client | None, error: RpcError) -> None:
        """The protocol answered a frame it could not parse: count it."""
        self._count_error(error.reason)

    def send_error(self, client: Client, request_id: str | int | None, error: RpcError) -> None:
        self._count_error(error.reason)
        client.channel.send_error(request_id, error)

    def _answer(self, result: Any, client: Client, request: Request) -> None:
        client.in_flight -= 1
        client.channel.send_result(request.id, result)
        if request.method == "resume" and client.session is not None:
            client.session.flush_events()

    def _answer_error(self, failure: Failure, client: Client, request: Request) -> None:
        client.in_flight -= 1
        if failure.check(RpcError):
            error = failure.value
        else:
            self.log.failure("method {method} failed", failure, method=request.method)
            error = RpcError("internal_error")
        self.send_error(client, request.id, error)

    # --- methods ---------------------------------------------------------------------------------
    def ping(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        """``ping {}`` -> ``{pong: <server time, ms since the epoch>}``."""
        reject_unknown_params(params, frozenset())
        return {"pong": int(self._reactor.seconds() * 1000)}

    def login(self, client: Client, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """``login {user, password} | {user, ha1} | {token}`` -> ``{session, user, expires}``
        once the first REGISTER succeeded."""
        if client.session is not None:
            raise RpcError("already_logged_in")
        self._check_not_shutting_down()
        self._check_rate(client)
        reject_unknown_params(params, _LOGIN_PARAMS)
        user, password, ha1 = self._credentials(params)
        if self.sessions.is_full():
            self.log.warn("login refused: {n} sessions (max)", n=self.sessions.count)
            raise RpcError("too_many_sessions")

        session = Session(user, self, self._reactor)
        session.login_deferred = result = Deferred()
        self.sessions.add(session)
        session.attach(client)
        session.login_timer = self._reactor.callLater(
            self._ws_config.login_timeout, self._login_timed_out, session
        )
        self.log.info("login: user {user} from {peer}, session {tag}", user=user, peer=client.peer_host,
                      tag=session.tag)
        binding = self.bindings.get(user)
        if binding is not None and binding.same_credentials(password, ha1):
            self._join(binding, session)  # nothing reaches the PBX: no failed-login limit
            return result
        if self._stack.pbx_reachable is False:
            # known down (silent to OPTIONS for sip.pbx_down_after): fail now, not after the
            # REGISTER's transaction timeout (32 s)
            self._fail_login(session, RpcError("pbx_unreachable", detail=PBX_DOWN))
            return result
        if self._failed_logins.retry_after(user) > 0:
            retry = round(self._failed_logins.retry_after(user), 1)
            self.log.info("login of {user} refused: too many failed logins for this user", user=user)
            error = RpcError("rate_limited", detail="too many failed logins for this user", retry_after=retry)
            self._fail_login(session, error)
            return result
        if binding is None:
            self._new_binding(session, password, ha1)
        else:
            # Other credentials than the binding's (a changed password, or a guess): proven at the
            # registrar first, so nobody joins a user's registration on a guess.
            d = self._stack.check_credentials(user, password, ha1)
            d.addCallback(self._credentials_checked, session, password, ha1)
            d.addErrback(self._credentials_check_failed, session)
        return result

    def _new_binding(self, session: Session, password: str | None, ha1: str | None) -> None:
        binding = Binding(session.user, password, ha1)
        binding.registration = self._stack.create_registration(session.user, password, ha1, binding)
        self.bindings.add(binding)
        binding.join(session)
        try:
            binding.registration.start()
        except Exception:
            self.log.failure("registration.start() failed for user {user}", user=session.user)
            self._fail_login(session, RpcError("internal_error"))

    def _join(self, binding: Binding, session: Session) -> None:
        """Share the user's live registration; the login is answered by its next outcome, or at
        once (after this request's turn) when it is registered already."""
        binding.join(session)
        self.log.info("session {tag} shares the registration of user {user} ({n} sessions)",
                      tag=session.tag, user=session.user, n=len(binding))
        if binding.is_registered and binding.expires is not None:
            self._reactor.callLater(0, self._joined_registered, session, binding)

    def _joined_registered(self, session: Session, binding: Binding) -> None:
        if session.state == LOGGING_IN and session.binding is binding and binding.is_registered:
            self.session_registered(session, binding.expires or 0)

    def _credentials_checked(
        self, failure_reason: str | None, session: Session, password: str | None, ha1: str | None
    ) -> None:
        if session.state != LOGGING_IN:
            return  # timed out or abandoned meanwhile
        if failure_reason is not None:
            self._fail_login(session, RpcError(_public_reason(failure_reason)))
            return
        binding = self.bindings.get(session.user)
        if binding is None:  # the user's other sessions left meanwhile
            self._new_binding(session, password, ha1)
            return
        binding.adopt_credentials(password, ha1)
        self._join(binding, session)

    def _credentials_check_failed(self, failure: Failure, session: Session) -> None:
        self.log.failure("credentials check failed for user {user}", failure, user=session.user)
        if session.state == LOGGING_IN:
            self._fail_login(session, RpcError("internal_error"))

    def logout(self, client: Client, params: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """``logout {}`` -> ``{}``; when this was the user's last session on the node, after the
        un-REGISTER completed (or timed out)."""
        session = client.session
        if session is None:  # pragma: no cover - the dispatcher checks
            raise RpcError("not_logged_in")
        reject_unknown_params(params, frozenset())
        self.log.info("logout: session {tag} user {user}", tag=session.tag, user=session.user)
        d = self.end_session(session, "logout")
        return d.addCallback(lambda _: {})

    def resume(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        """``resume {session}`` -> ``{session, user, state}``: re-attach a live session to this
        socket; its registration is left untouched. A socket still attached to it is closed
        with close code 4001, reason ``replaced``."""
        if client.session is not None:
            raise RpcError("already_logged_in")
        self._check_not_shutting_down()
        self._check_rate(client)
        reject_unknown_params(params, frozenset({"session"}))
        session_id = get_str(params, "session", max_length=64, pattern=SESSION_RE)
        session = self.sessions.get(session_id)
        if session is None or session.state not in (ACTIVE, DETACHED):
            raise RpcError("session_not_found")
        old = session.detach()
        if old is not None:
            self.log.info("session {tag} resumed elsewhere: closing its old socket", tag=session.tag)
            old.channel.close(CLOSE_REPLACED, "replaced")
        session.attach(client)
        session.state = ACTIVE
        self.log.info("session {tag} resumed (user {user}) from {peer}", tag=session.tag, user=session.user,
                      peer=client.peer_host)
        return {
            "session": session.id,
            "user": session.user,
            "state": session.registration_state,
            "grace_period": self._ws_config.grace_period,
            # what the client may have missed while its socket was silently dead (events written
            # to a dead socket are lost; only those sent while detached were queued)
            "calls": self.session_calls(session) if self.session_calls is not None else [],
        }

    # --- login helpers ---------------------------------------------------------------------------
    def _check_not_shutting_down(self) -> None:
        if self._shutting_down:
            raise RpcError("shutting_down")

    def _check_rate(self, client: Client) -> None:
        key = client.peer_host
        if not self._login_limiter.allow(key):
            retry = self._login_limiter.retry_after(key)
            self.log.info("login rate limit hit by {peer}", peer=key)
            raise RpcError("rate_limited", retry_after=round(retry, 1))

    def _credentials(self, params: dict[str, Any]) -> tuple[str, str | None, str | None]:
        auth = self._auth_config
        token = get_optional_str(params, "token", max_length=4096)
        if token is not None:
            if any(params.get(k) is not None for k in ("user", "password", "ha1")):
                raise RpcError.invalid_params("token excludes user, password and ha1")
            if self._token_verifier is None or self._user_source is None:
                raise RpcError("method_not_allowed", "token login is disabled")
            try:
                user = self._token_verifier.verify(token)
            except Exception as exc:
                detail = getattr(exc, "reason", None)
                if not isinstance(detail, str):
                    self.log.failure("token verifier failed", Failure())
                    raise RpcError("internal_error")
                self.log.info("token refused: {detail}", detail=detail)
                raise RpcError("token_invalid", detail=detail)
            credentials = self._user_source.lookup(user)
            if credentials is None or (credentials.password is None and credentials.ha1 is None):
                self.log.info("token for unknown user {user}", user=user)
                raise RpcError("auth_failed", "no credentials for this user")
            if credentials.password is not None:
                return user, credentials.password, None
            return user, None, credentials.ha1

        user = get_str(params, "user", max_length=64, pattern=USER_RE)
        password = get_optional_str(params, "password", max_length=256)
        ha1 = get_optional_str(params, "ha1", max_length=64)
        if password is not None and ha1 is not None:
            raise RpcError.invalid_params("give either password or ha1, not both")
        if password is not None:
            if not auth.allow_password:
                raise RpcError("method_not_allowed", "password login is disabled")
            return user, password, None
        if ha1 is not None:
            if not auth.allow_ha1:
                raise RpcError("method_not_allowed", "ha1 login is disabled")
            if not HA1_RE.match(ha1):
                raise RpcError.invalid_params("ha1 must be 32 hexadecimal digits (MD5)")
            return user, None, ha1.lower()
        raise RpcError.invalid_params("login needs {user, password}, {user, ha1} or {token}")

    def _login_timed_out(self, session: Session) -> None:
        session.login_timer = None
        if session.state != LOGGING_IN:
            return
        error = RpcError("timeout")
        self.log.info("login timed out: session {tag} user {user} ({reason})", tag=session.tag,
                      user=session.user, reason=error.reason)
        self._fail_login(session, error)

    def _fail_login(self, session: Session, error: RpcError) -> None:
        """Answer the pending login with ``error`` and get rid of the session."""
        if error.reason == "auth_failed":
            self._failed_logins.allow(session.user)
        d, session.login_deferred = session.login_deferred, None
        session.cancel_login_timer()
        self.end_session(session, "login_failed")
        if d is not None:
            d.errback(error)

    # --- RegistrationListener events (via Session) -----------------------------------------------
    def session_registered(self, session: Session, expires: int) -> None:
        """First success answers the login (then the ``registered`` event follows); later, the
        event is sent when the registration is re-established or its expiry changes, not for
        routine refreshes."""
        changed = not session.is_registered or session.expires != expires
        session.is_registered, session.expires = True, expires
        if session.state == LOGGING_IN:
            session.cancel_login_timer()
            session.state = ACTIVE if session.client is not None else DETACHED
            d, session.login_deferred = session.login_deferred, None
            self.log.info("logged in: session {tag} user {user} (expires {expires})", tag=session.tag,
                          user=session.user, expires=expires)
            if d is not None:
                d.callback({"session": session.id, "user": session.user, "expires": expires,
                            "grace_period": self._ws_config.grace_period})
        if changed and session.state in (ACTIVE, DETACHED):
            session.send_event("registered", {"user": session.user, "expires": expires})

    def session_registration_failed(
        self, session: Session, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None:
        public = _public_reason(reason)
        # what the stack says about it (a TLS verification failure, a realm not ours...): no secret
        detail = detail[:200] or None
        self.log.info("registration failed: session {tag} user {user}: {reason} {status} retrying={r}",
                      tag=session.tag, user=session.user, reason=reason, status=sip_status, r=retrying)
        session.is_registered = False
        if session.state == LOGGING_IN:
            # The first REGISTER decides the login: any failure answers it at once (the stack's
            # own retries would keep a mobile user waiting for nothing); the registration is
            # stopped even when the stack would have retried.
            self._fail_login(session, RpcError(public, sip_status=sip_status, detail=detail))
        elif session.state in (ACTIVE, DETACHED):
            session.send_event(
                "registration_failed",
                _drop_none({"user": session.user, "reason": public, "sip_status": sip_status,
                            "retrying": retrying, "detail": detail}),
            )
            if not retrying:
                self.end_session(session, "registration_failed")

    def session_unregistered(self, session: Session) -> None:
        if session.state in (CLOSING, CLOSED):
            return  # we asked for it
        self.log.info("registration ended by the stack: session {tag}", tag=session.tag)
        if session.state == LOGGING_IN:
            self._fail_login(session, RpcError("pbx_error"))
            return
        session.send_event("unregistered", {"user": session.user, "reason": "pbx"})
        self.end_session(session, "unregistered")

    def pbx_state_changed(self, reachable: bool) -> None:
        """The SIP stack noticed the PBX going away or coming back: every session is told with a
        ``pbx`` event (queued for detached ones); registrations recover by themselves. Logins
        still waiting for their first REGISTER fail now with ``pbx_unreachable``."""
        for session in list(self.sessions):
            if session.state in (ACTIVE, DETACHED):
                session.send_event("pbx", {"reachable": reachable})
            elif session.state == LOGGING_IN and not reachable:
                self.log.info("login of {user} failed: the PBX is unreachable", user=session.user)
                self._fail_login(session, RpcError("pbx_unreachable", detail=PBX_DOWN))

    # --- ending sessions -------------------------------------------------------------------------
    def _grace_expired(self, session: Session) -> None:
        if session.state == DETACHED:
            self.log.info("session {tag} expired (user {user})", tag=session.tag, user=session.user)
            self.end_session(session, "expired")

    def end_session(self, session: Session, why: str) -> Deferred[None]:
        """Drop ``session`` now (resume no longer finds it) and un-REGISTER it. The Deferred fires
        (never fails) when the un-REGISTER is done or timed out; idempotent."""
        if session.state in (CLOSING, CLOSED):
            return _chain(session.stop_deferred)
        session.state = CLOSING
        for hook in self.session_end_hooks:
            try:
                hook(session)
            except Exception:
                self.log.failure("session end hook failed for {tag}", tag=session.tag)
        session.cancel_grace()
        session.cancel_login_timer()
        session.detach()
        self.sessions.remove(session)
        binding = session.binding
        registration = session.registration
        last = binding.leave(session) if binding is not None else True
        if binding is not None and last:
            self.bindings.remove(binding)
        # Others still share the registration: it stays. A dead one (failed) is still stop()ped:
        # the stack may need to forget it; stop() sends nothing then and fires at once.
        if not last or registration is None or registration.state == "unregistered":
            session.state = CLOSED
            session.stop_deferred = succeed(None)
            return _chain(session.stop_deferred)
        d = _bounded(maybeDeferred(registration.stop), STOP_TIMEOUT, self._reactor)
        session.stop_deferred = d
        self._stopping.add(d)

        def done(result: object) -> None:
            self._stopping.discard(d)
            session.state = CLOSED
            if isinstance(result, Failure):
                self.log.failure("un-REGISTER of session {tag} failed", result, tag=session.tag)
            else:
                self.log.debug("session {tag} ended ({why})", tag=session.tag, why=why)

        d.addBoth(done)
        return _chain(d)

    def shutdown(self, timeout: float = STOP_TIMEOUT) -> Deferred[None]:
        """Refuse new logins, un-REGISTER every session (bounded by ``timeout``), then close
        every socket with 1001. Fires once done."""
        self._shutting_down = True
        self.log.info("shutting down: {n} sessions", n=self.sessions.count)
        for session in list(self.sessions):
            if session.state == LOGGING_IN:
                self._fail_login(session, RpcError("shutting_down"))
            else:
                session.send_event("unregistered", {"user": session.user, "reason": "shutdown"})
                self.end_session(session, "shutdown")
        pending = list(self._stopping)
        d: Deferred[Any] = DeferredList(pending, consumeErrors=True) if pending else succeed(None)
        d = _bounded(d, timeout, self._reactor)

        def close_all(_: object) -> None:
            for client in list(self.clients):
                client.channel.close(CLOSE_GOING_AWAY, "shutdown")

        return d.addCallback(close_all)

    # --- health and metrics ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        by_state = self.sessions.count_by_state()
        return {
            "status": "shutting_down" if self._shutting_down else "ok",
            "connections": len(self.clients),
            "sessions": self.sessions.count,
            "max_sessions": self.sessions.max_sessions,
            "sessions_by_state": by_state,
            "registrations": len(self.bindings),
            "unregistering": len(self._stopping),
        }

    def _session_counts(self) -> dict[tuple[str, ...], float]:
        counts = dict.fromkeys((LOGGING_IN, ACTIVE, DETACHED), 0)
        counts.update(self.sessions.count_by_state())
        counts[CLOSING] = len(self._stopping)
        return {(state,): float(n) for state, n in counts.items()}

    def _count_request(self, method: str) -> None:
        if self._requests_total is not None:
            self._requests_total.labels(method).inc()

    def _count_error(self, reason: str) -> None:
        if self._errors_total is not None:
            self._errors_total.labels(reason).inc()


def _chain(d: Deferred[Any] | None) -> Deferred[None]:
    """A new Deferred that fires with None when ``d`` does (``d`` keeps its own callbacks)."""
    out: Deferred[None] = Deferred()
    if d is None:
        out.callback(None)
    else:
        d.addBoth(lambda r: (out.callback(None), r)[1])
    return out


def _bounded(d: Deferred[Any], timeout: float, reactor: IReactorTime) -> Deferred[Any]:
    """A Deferred that fires with ``d``'s outcome, or with None after ``timeout`` seconds."""
    out: Deferred[Any] = Deferred()

    def on_timeout() -> None:
        if not out.called:
            out.callback(None)

    timer = reactor.callLater(timeout, on_timeout)

    def on_result(result: object) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)

    d.addBoth(on_result)
    return out
