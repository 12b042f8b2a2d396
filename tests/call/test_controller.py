"""Session lifecycle through the controller, with a fake SIP stack and fake time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from b2bua.call.controller import CLOSE_GOING_AWAY, CLOSE_REPLACED, Controller
from b2bua.config import AuthConfig, WebSocketConfig
from b2bua.ws.jsonrpc import ERROR_CODES, INVALID_PARAMS, Notification, Request, RpcError

HA1 = "0123456789abcdef0123456789abcdef"


# --- fakes -----------------------------------------------------------------------------------------
class FakeRegistration:
    def __init__(self, user: str, password: str | None, ha1: str | None, listener: Any) -> None:
        self.user, self.password, self.ha1, self.listener = user, password, ha1, listener
        self.state = "idle"
        self.started = 0
        self.stop_calls = 0
        self.stop_deferred: Deferred[None] | None = None
        self.auto_stop = True  # stop() completes at once

    def start(self) -> None:
        self.started += 1
        self.state = "registering"

    def stop(self) -> Deferred[None]:
        self.stop_calls += 1
        if self.stop_deferred is None:
            self.stop_deferred = Deferred()
            self.state = "unregistering"
            if self.auto_stop:
                self.finish_stop()
        return self.stop_deferred

    def set_credentials(self, password: str | None, ha1: str | None) -> None:
        self.password, self.ha1 = password, ha1

    def finish_stop(self) -> None:
        self.state = "unregistered"
        self.listener.unregistered()
        assert self.stop_deferred is not None
        self.stop_deferred.callback(None)

    # what the PBX "does"
    def succeed(self, expires: int = 600) -> None:
        self.state = "registered"
        self.listener.registered(expires)

    def fail(self, reason: str, sip_status: int | None = None, retrying: bool = False) -> None:
        self.state = "registering" if retrying else "failed"
        self.listener.registration_failed(reason, sip_status, retrying)


class FakeStack:
    def __init__(self) -> None:
        self.pbx_reachable: bool | None = None  # unknown: OPTIONS keepalives off or not answered yet
        self.registrations: list[FakeRegistration] = []
        self.checks: list[tuple[str, str | None, str | None, Deferred[str | None]]] = []

    def check_credentials(self, user: str, password: str | None, ha1: str | None) -> Deferred[str | None]:
        d: Deferred[str | None] = Deferred()
        self.checks.append((user, password, ha1, d))
        return d

    def create_registration(self, user: str, password: str | None, ha1: str | None, listener: Any):
        reg = FakeRegistration(user, password, ha1, listener)
        self.registrations.append(reg)
        return reg

    @property
    def last(self) -> FakeRegistration:
        return self.registrations[-1]


class FakeChannel:
    def __init__(self, peer_host: str = "192.0.2.1") -> None:
        self.peer_host = peer_host
        self.results: dict[Any, Any] = {}
        self.errors: dict[Any, RpcError] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.frames: list[tuple[str, Any]] = []  # order of everything sent
        self.closed: tuple[int, str] | None = None

    def send_result(self, request_id, result) -> None:
        self.results[request_id] = result
        self.frames.append(("result", request_id))

    def send_error(self, request_id, error) -> None:
        self.errors[request_id] = error
        self.frames.append(("error", request_id))

    def send_event(self, method, params) -> None:
        self.events.append((method, params))
        self.frames.append(("event", method))

    def close(self, code, reason, stop_reading=False) -> None:
        self.closed = (code, reason)
        self.stopped_reading = stop_reading


@dataclass
class Creds:
    user: str
    password: str | None = None
    ha1: str | None = None


class FakeUsers:
    def __init__(self, users: dict[str, Creds]) -> None:
        self.users = users

    def lookup(self, user: str):
        return self.users.get(user)


class Harness:
    def __init__(self, ws: WebSocketConfig | None = None, auth: AuthConfig | None = None,
                 token_verifier=None, user_source=None, metrics=None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.ws = ws or WebSocketConfig()
        self.stack = FakeStack()
        self.controller = Controller(self.clock, self.ws, auth or AuthConfig(), self.stack, user_source,
                                     token_verifier, metrics=metrics)
        self._ids = 0

    def connect(self, peer: str = "192.0.2.1") -> tuple[Any, FakeChannel]:
        channel = FakeChannel(peer)
        return self.controller.connection_opened(channel), channel

    def call(self, client, method: str, **params) -> int:
        self._ids += 1
        self.controller.request_received(client, Request(self._ids, method, params))
        return self._ids

    def login(self, client, channel, user="1000", password="secret", expires=600) -> str:
        """Log in; a user's first login registers, later ones share that registration."""
        n = len(self.stack.registrations)
        rid = self.call(client, "login", user=user, password=password)
        if len(self.stack.registrations) > n:
            self.stack.last.succeed(expires)
        else:
            self.clock.advance(0)
        return channel.results[rid]["session"]


def error_of(channel: FakeChannel, rid) -> RpcError:
    assert rid in channel.errors, f"no error for {rid}: results={channel.results}"
    return channel.errors[rid]


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- login -------------------------------------------------------------------------------------------
def test_login_answers_after_first_register(h):
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="secret")
    reg = h.stack.last
    assert (reg.user, reg.password, reg.ha1, reg.started) == ("1000", "secret", None, 1)
    assert channel.frames == []  # nothing until the REGISTER succeeded
    reg.succeed(300)
    result = channel.results[rid]
    assert result["user"] == "1000" and result["expires"] == 300
    assert len(result["session"]) == 24  # token_urlsafe(18)
    # the result first, then the registered event
    assert channel.frames == [("result", rid), ("event", "registered")]
    assert channel.events == [("registered", {"user": "1000", "expires": 300})]
    assert h.controller.sessions.get(result["session"]).state == "active"
    assert h.controller.health()["sessions"] == 1


def test_login_with_ha1(h):
    client, channel = h.connect()
    h.call(client, "login", user="1000", ha1=HA1.upper())
    assert (h.stack.last.password, h.stack.last.ha1) == (None, HA1)


@pytest.mark.parametrize(
    ("reason", "status", "public"),
    [
        ("auth_failed", 401, "auth_failed"),
        ("forbidden", 403, "auth_failed"),
        ("timeout", None, "timeout"),
        ("pbx_unreachable", None, "pbx_unreachable"),
        ("pbx_error", 404, "pbx_error"),
        ("something_else", 488, "pbx_error"),
    ],
)
def test_login_failure_mapping(h, reason, status, public):
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="bad")
    h.stack.last.fail(reason, status, retrying=False)
    error = error_of(channel, rid)
    assert (error.reason, error.code) == (public, ERROR_CODES[public])
    assert error.data.get("sip_status") == status
    assert h.controller.sessions.count == 0
    assert client.session is None
    # the socket may try again
    rid = h.call(client, "login", user="1000", password="good")
    h.stack.last.succeed()
    assert rid in channel.results


@pytest.mark.parametrize("reason", ["timeout", "pbx_unreachable", "pbx_error"])
def test_first_failure_fails_login_even_when_the_stack_would_retry(h, reason):
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="pw")
    reg = h.stack.last
    reg.fail(reason, 503 if reason == "pbx_error" else None, retrying=True)
    error = error_of(channel, rid)
    assert error.reason == reason
    assert reg.stop_calls == 1
    assert h.controller.sessions.count == 0
    h.clock.advance(h.ws.login_timeout)  # the login timer was cancelled: no second answer
    assert len(channel.frames) == 1


def test_login_timeout_without_answer(h):
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="pw")
    h.clock.advance(h.ws.login_timeout)
    assert error_of(channel, rid).reason == "timeout"
    assert h.stack.last.stop_calls == 1


def test_retrying_auth_failure_fails_at_once(h):
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="pw")
    h.stack.last.fail("auth_failed", 401, retrying=True)
    assert error_of(channel, rid).reason == "auth_failed"
    assert h.stack.last.stop_calls == 1


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"user": "1000"},
        {"password": "x"},
        {"user": "1000", "password": "x", "ha1": HA1},
        {"user": "bad user", "password": "x"},
        {"user": "1000<", "password": "x"},
        {"user": "1000", "ha1": "xyz"},
        {"user": "1000", "password": 1234},
        {"user": "1000", "password": "x", "extra": 1},
        {"token": "abc", "user": "1000"},
    ],
)
def test_login_bad_request(h, params):
    client, channel = h.connect()
    rid = h.call(client, "login", **params)
    error = error_of(channel, rid)
    assert (error.reason, error.code) == ("bad_request", INVALID_PARAMS)
    assert h.stack.registrations == []


def test_login_twice_on_one_socket(h):
    client, channel = h.connect()
    h.login(client, channel)
    rid = h.call(client, "login", user="1001", password="x")
    assert error_of(channel, rid).reason == "already_logged_in"
    assert len(h.stack.registrations) == 1


def test_login_while_login_pending(h):
    client, channel = h.connect()
    h.call(client, "login", user="1000", password="x")
    rid = h.call(client, "login", user="1000", password="x")
    assert error_of(channel, rid).reason == "already_logged_in"


@pytest.mark.parametrize(
    ("auth", "params"),
    [
        (AuthConfig(allow_password=False), {"user": "1000", "password": "x"}),
        (AuthConfig(allow_ha1=False), {"user": "1000", "ha1": HA1}),
        (AuthConfig(), {"token": "abc.def"}),  # no verifier configured
    ],
)
def test_disabled_login_modes(auth, params):
    h = Harness(auth=auth)
    client, channel = h.connect()
    rid = h.call(client, "login", **params)
    assert error_of(channel, rid).reason == "method_not_allowed"


def test_same_user_may_have_several_sessions(h):
    a, ca = h.connect()
    b, cb = h.connect()
    sa, sb = h.login(a, ca), h.login(b, cb)
    assert sa != sb
    assert len(h.controller.sessions.by_user("1000")) == 2


# --- before login ------------------------------------------------------------------------------------
def test_methods_before_login(h):
    client, channel = h.connect()
    rid = h.call(client, "logout")
    assert error_of(channel, rid).reason == "not_logged_in"
    assert error_of(channel, rid).code == -32001
    rid = h.call(client, "ping")
    assert channel.results[rid] == {"pong": 1_700_000_000_000}


@pytest.mark.parametrize("method", ["ping", "logout", "resume", "login"])
def test_unknown_params_are_invalid_params(h, method):
    """Every method refuses a member of ``params`` it does not know (docs/protocol.md §2)."""
    client, channel = h.connect()
    if method == "logout":
        h.login(client, channel)
    rid = h.call(client, method, colour="blue")
    error = error_of(channel, rid)
    assert (error.code, error.reason) == (INVALID_PARAMS, "bad_request")
    assert "unknown parameter: colour" in error.message


def test_unknown_method(h):
    client, channel = h.connect()
    rid = h.call(client, "dance")
    assert (error_of(channel, rid).code, error_of(channel, rid).reason) == (-32601, "method_not_found")


def test_pending_login_is_not_logged_in(h):
    client, channel = h.connect()
    h.call(client, "login", user="1000", password="x")
    rid = h.call(client, "logout")
    assert error_of(channel, rid).reason == "not_logged_in"


def test_client_notifications_are_ignored(h):
    client, channel = h.connect()
    h.controller.notification_received(client, Notification("ping", {}))
    assert channel.frames == []


def test_add_method_extends_the_table(h):
    h.controller.add_method("echo", lambda client, params: {"echo": params, "user": client.session.user})
    client, channel = h.connect()
    rid = h.call(client, "echo", x=1)
    assert error_of(channel, rid).reason == "not_logged_in"
    h.login(client, channel)
    rid = h.call(client, "echo", x=1)
    assert channel.results[rid] == {"echo": {"x": 1}, "user": "1000"}
    with pytest.raises(ValueError):
        h.controller.add_method("echo", lambda c, p: None)


def test_handler_crash_is_internal_error(h):
    def broken(client, params):
        raise KeyError("oops")

    h.controller.add_method("broken", broken, needs_session=False)
    client, channel = h.connect()
    rid = h.call(client, "broken")
    assert error_of(channel, rid).reason == "internal_error"
    assert error_of(channel, rid).code == -32603


# --- logout ------------------------------------------------------------------------------------------
def test_logout_answers_after_unregister(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    reg = h.stack.last
    reg.auto_stop = False
    rid = h.call(client, "logout")
    assert reg.stop_calls == 1
    assert rid not in channel.results
    assert h.controller.sessions.get(sid) is None  # resume no longer finds it
    reg.finish_stop()
    assert channel.results[rid] == {}
    assert [m for m, _ in channel.events] == ["registered"]  # the logout result says it all
    assert client.session is None
    rid = h.call(client, "logout")
    assert error_of(channel, rid).reason == "not_logged_in"


def test_logout_is_bounded_even_if_the_stack_hangs(h):
    client, channel = h.connect()
    h.login(client, channel)
    h.stack.last.auto_stop = False
    rid = h.call(client, "logout")
    h.clock.advance(10)
    assert channel.results[rid] == {}


# --- grace period and resume -------------------------------------------------------------------------
def test_socket_loss_then_grace_expiry_unregisters(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    reg = h.stack.last
    h.controller.connection_lost(client)
    session = h.controller.sessions.get(sid)
    assert session.state == "detached" and session.client is None
    h.clock.advance(h.ws.grace_period - 0.1)
    assert reg.stop_calls == 0
    h.clock.advance(0.2)
    assert reg.stop_calls == 1
    assert h.controller.sessions.count == 0


def test_resume_within_grace_keeps_registration(h):
    old, old_channel = h.connect()
    sid = h.login(old, old_channel)
    reg = h.stack.last
    h.controller.connection_lost(old)
    h.clock.advance(h.ws.grace_period - 1)
    new, channel = h.connect("198.51.100.7")
    rid = h.call(new, "resume", session=sid)
    assert channel.results[rid] == {
        "session": sid, "user": "1000", "state": "registered", "grace_period": 30.0, "calls": []
    }
    assert (reg.started, reg.stop_calls) == (1, 0)
    assert len(h.stack.registrations) == 1
    h.clock.advance(h.ws.grace_period * 10)  # the grace timer was cancelled
    assert reg.stop_calls == 0
    assert h.controller.sessions.get(sid).client is new
    rid = h.call(new, "logout")
    assert channel.results[rid] == {}


def test_resume_after_expiry_fails(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    h.controller.connection_lost(client)
    h.clock.advance(h.ws.grace_period + 1)
    new, channel = h.connect()
    rid = h.call(new, "resume", session=sid)
    assert error_of(channel, rid).reason == "session_not_found"
    assert error_of(channel, rid).code == -32011


@pytest.mark.parametrize("sid", ["nope", "x" * 24])
def test_resume_unknown_session(h, sid):
    client, channel = h.connect()
    rid = h.call(client, "resume", session=sid)
    assert error_of(channel, rid).reason == "session_not_found"


def test_resume_bad_params(h):
    client, channel = h.connect()
    for params in ({}, {"session": 5}, {"session": "a b"}, {"session": "x" * 100}):
        rid = h.call(client, "resume", **params)
        assert error_of(channel, rid).reason == "bad_request"


def test_resume_while_old_socket_open_replaces_it(h):
    old, old_channel = h.connect()
    sid = h.login(old, old_channel)
    new, channel = h.connect()
    rid = h.call(new, "resume", session=sid)
    assert channel.results[rid]["session"] == sid
    assert old_channel.closed == (CLOSE_REPLACED, "replaced")
    assert old.session is None
    h.controller.connection_lost(old)  # its close completes: must not detach the session
    assert h.controller.sessions.get(sid).state == "active"
    h.clock.advance(h.ws.grace_period * 2)
    assert h.stack.last.stop_calls == 0


def test_resume_on_logged_in_socket(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    rid = h.call(client, "resume", session=sid)
    assert error_of(channel, rid).reason == "already_logged_in"


def test_events_while_detached_are_delivered_after_resume(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    reg = h.stack.last
    h.controller.connection_lost(client)
    reg.fail("timeout", None, retrying=True)
    reg.succeed(900)
    assert [m for m, _ in channel.events] == ["registered"]  # from the login only
    new, channel = h.connect()
    rid = h.call(new, "resume", session=sid)
    assert channel.frames == [("result", rid), ("event", "registration_failed"), ("event", "registered")]
    assert channel.events[1] == ("registered", {"user": "1000", "expires": 900})


def test_socket_loss_during_login_abandons_it(h):
    client, channel = h.connect()
    h.call(client, "login", user="1000", password="x")
    h.controller.connection_lost(client)
    assert h.stack.last.stop_calls == 1
    assert h.controller.sessions.count == 0


# --- events after login ------------------------------------------------------------------------------
def test_registration_events_after_login(h):
    client, channel = h.connect()
    sid = h.login(client, channel)
    reg = h.stack.last
    assert channel.events == [("registered", {"user": "1000", "expires": 600})]
    channel.events.clear()
    reg.succeed(600)  # a routine refresh: no event
    assert channel.events == []
    reg.fail("timeout", None, retrying=True)
    reg.succeed(600)
    assert channel.events == [
        ("registration_failed", {"user": "1000", "reason": "timeout", "retrying": True}),
        ("registered", {"user": "1000", "expires": 600}),
    ]
    reg.succeed(1200)  # the registrar changed the expiry
    assert channel.events[-1] == ("registered", {"user": "1000", "expires": 1200})
    reg.fail("forbidden", 403, retrying=False)
    assert channel.events[-1] == (
        "registration_failed",
        {"user": "1000", "reason": "auth_failed", "sip_status": 403, "retrying": False},
    )
    assert h.controller.sessions.get(sid) is None
    assert client.session is None


def test_unsolicited_unregistered_ends_session(h):
    client, channel = h.connect()
    h.login(client, channel)
    reg = h.stack.last
    reg.state = "unregistered"
    reg.listener.unregistered()
    assert channel.events[-1] == ("unregistered", {"user": "1000", "reason": "pbx"})
    assert client.session is None
    assert h.controller.sessions.count == 0


# --- one registration per user, shared by its sessions ---------------------------------------------
def test_a_second_login_of_a_user_shares_the_registration(h):
    a, ca = h.connect()
    sid_a = h.login(a, ca)
    reg = h.stack.last
    b, cb = h.connect("198.51.100.2")
    rid = h.call(b, "login", user="1000", password="secret")
    assert len(h.stack.registrations) == 1 and reg.started == 1
    assert cb.frames == []  # answered on the next turn, result before event
    h.clock.advance(0)
    result = cb.results[rid]
    assert result["user"] == "1000" and result["expires"] == 600 and result["session"] != sid_a
    assert cb.frames == [("result", rid), ("event", "registered")]
    binding = h.controller.bindings.get("1000")
    assert [s.id for s in binding.sessions] == [sid_a, result["session"]]
    assert h.controller.health()["registrations"] == 1 and h.controller.health()["sessions"] == 2


def test_logins_while_the_first_register_runs_are_answered_by_its_outcome(h):
    a, ca = h.connect()
    rid_a = h.call(a, "login", user="1000", password="secret")
    b, cb = h.connect()
    rid_b = h.call(b, "login", user="1000", password="secret")
    assert len(h.stack.registrations) == 1
    h.stack.last.succeed(300)
    assert ca.results[rid_a]["expires"] == 300 and cb.results[rid_b]["expires"] == 300
    c, cc = h.connect()
    rid_c = h.call(c, "login", user="1001", password="secret")
    d, cd = h.connect()
    rid_d = h.call(d, "login", user="1001", password="secret")
    h.stack.last.fail("auth_failed", 403)
    assert error_of(cc, rid_c).reason == "auth_failed" and error_of(cd, rid_d).reason == "auth_failed"
    assert h.controller.bindings.get("1001") is None
    assert h.stack.last.stop_calls == 1


def test_the_last_session_to_leave_ends_the_registration(h):
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    h.login(b, cb)
    reg = h.stack.last
    rid = h.call(a, "logout")
    assert ca.results[rid] == {} and reg.stop_calls == 0  # the other session still uses it
    assert cb.events == [("registered", {"user": "1000", "expires": 600})]  # and hears nothing
    # an older session whose grace runs out does not take the registration with it either
    c, cc = h.connect()
    h.login(c, cc)
    h.controller.connection_lost(c)
    h.clock.advance(h.ws.grace_period + 1)
    assert reg.stop_calls == 0 and len(h.controller.bindings.get("1000")) == 1
    rid = h.call(b, "logout")
    assert cb.results[rid] == {} and reg.stop_calls == 1
    assert h.controller.bindings.get("1000") is None
    # a new login starts a new registration
    d, cd = h.connect()
    h.login(d, cd)
    assert len(h.stack.registrations) == 2 and h.stack.last.started == 1


def test_registration_events_reach_every_session_of_the_user(h):
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    h.login(b, cb)
    reg = h.stack.last
    reg.fail("pbx_unreachable", None, retrying=True)
    expected = ("registration_failed", {"user": "1000", "reason": "pbx_unreachable", "retrying": True})
    assert ca.events[-1] == expected and cb.events[-1] == expected
    reg.listener.registration_failed("not_bound", 200, True, detail="our Contact is not listed")
    assert ca.events[-1][1]["reason"] == "not_bound" and cb.events[-1][1]["reason"] == "not_bound"
    assert ca.events[-1][1]["detail"] == "our Contact is not listed"
    reg.succeed(600)
    assert ca.events[-1] == cb.events[-1] == ("registered", {"user": "1000", "expires": 600})
    reg.fail("auth_failed", 403, retrying=False)
    assert a.session is None and b.session is None
    assert h.controller.sessions.count == 0 and h.controller.bindings.get("1000") is None


def test_other_credentials_are_proven_before_joining(h):
    a, ca = h.connect()
    h.login(a, ca)
    reg = h.stack.last
    b, cb = h.connect("203.0.113.9")
    rid = h.call(b, "login", user="1000", password="guess")
    (user, password, ha1, d) = h.stack.checks[-1]
    assert (user, password, ha1) == ("1000", "guess", None)
    assert cb.frames == [] and len(h.controller.bindings.get("1000")) == 1
    d.callback("auth_failed")
    assert error_of(cb, rid).reason == "auth_failed"
    assert reg.stop_calls == 0 and reg.password == "secret"  # the user's registration untouched
    assert len(h.controller.bindings.get("1000")) == 1
    # a changed password proven at the registrar: joined, and the registration uses it from now on
    rid = h.call(b, "login", user="1000", ha1=HA1)
    h.stack.checks[-1][3].callback(None)
    h.clock.advance(0)
    assert cb.results[rid]["user"] == "1000"
    assert (reg.password, reg.ha1) == (None, HA1) and len(h.stack.registrations) == 1
    assert len(h.controller.bindings.get("1000")) == 2


def test_a_credentials_check_outlived_by_the_login_timeout_does_nothing(h):
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    rid = h.call(b, "login", user="1000", password="other")
    h.clock.advance(h.ws.login_timeout)
    assert error_of(cb, rid).reason == "timeout"
    h.stack.checks[-1][3].callback(None)
    assert len(h.controller.bindings.get("1000")) == 1 and len(cb.frames) == 1


def test_pbx_state_changes_reach_every_session(h):
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    h.login(b, cb, user="1001")
    h.controller.connection_lost(b)
    h.controller.pbx_state_changed(False)
    assert ca.events[-1] == ("pbx", {"reachable": False})
    c, cc = h.connect()
    rid = h.call(c, "resume", session=h.controller.sessions.by_user("1001")[0].id)
    assert rid in cc.results
    assert cc.events == [("pbx", {"reachable": False})]  # queued while detached


def test_login_fails_at_once_while_the_pbx_is_known_unreachable(h):
    """No REGISTER is sent to a PBX that has not answered OPTIONS for sip.pbx_down_after: the
    login is pbx_unreachable now, not after the REGISTER's 32 s transaction timeout."""
    h.stack.pbx_reachable = False
    client, channel = h.connect()
    rid = h.call(client, "login", user="1000", password="x")
    error = error_of(channel, rid)
    assert (error.reason, error.code) == ("pbx_unreachable", -32004)
    assert h.stack.registrations == [] and h.controller.sessions.count == 0
    h.stack.pbx_reachable = True  # it answers again: logins go through
    h.login(client, channel)


def test_pending_logins_fail_when_the_pbx_is_found_unreachable(h):
    a, ca = h.connect()
    session = h.login(a, ca)
    b, cb = h.connect()
    rid = h.call(b, "login", user="1001", password="x")  # its REGISTER is under way
    reg = h.stack.last
    h.clock.advance(5)
    h.stack.pbx_reachable = False
    h.controller.pbx_state_changed(False)
    assert error_of(cb, rid).reason == "pbx_unreachable"
    assert reg.stop_calls == 1 and h.controller.sessions.by_user("1001") == []
    # the logged-in session stays: its registration recovers by itself when the PBX is back
    assert h.controller.sessions.get(session) is not None
    assert ca.events[-1] == ("pbx", {"reachable": False})


# --- limits ------------------------------------------------------------------------------------------
def test_max_sessions():
    h = Harness(ws=WebSocketConfig(max_sessions=2))
    for user in ("1000", "1001"):
        c, ch = h.connect()
        h.login(c, ch, user=user)
    c, ch = h.connect()
    rid = h.call(c, "login", user="1002", password="x")
    assert error_of(ch, rid).reason == "too_many_sessions"
    assert len(h.stack.registrations) == 2
    h.controller.connection_lost(c)


def test_max_sessions_counts_detached_and_frees_on_expiry():
    h = Harness(ws=WebSocketConfig(max_sessions=1))
    c, ch = h.connect()
    h.login(c, ch)
    h.controller.connection_lost(c)
    c2, ch2 = h.connect()
    rid = h.call(c2, "login", user="1001", password="x")
    assert error_of(ch2, rid).reason == "too_many_sessions"
    h.clock.advance(h.ws.grace_period + 1)
    rid = h.call(c2, "login", user="1001", password="x")
    h.stack.last.succeed()
    assert rid in ch2.results


def test_login_rate_limit_per_address():
    h = Harness(ws=WebSocketConfig(login_attempts_per_minute=3))
    c, ch = h.connect("203.0.113.5")
    for _ in range(3):
        rid = h.call(c, "login", user="1000", password="bad")
        h.stack.last.fail("auth_failed", 401)
        assert error_of(ch, rid).reason == "auth_failed"
    rid = h.call(c, "login", user="1000", password="bad")
    error = error_of(ch, rid)
    assert error.reason == "rate_limited" and error.data["retry_after"] == 20.0
    assert len(h.stack.registrations) == 3
    other, och = h.connect("203.0.113.6")  # another address is not affected
    rid = h.call(other, "login", user="1000", password="x")
    assert rid not in och.errors
    h.clock.advance(20)
    rid = h.call(c, "login", user="1000", password="bad")
    assert rid not in ch.errors


def test_failed_logins_are_limited_per_user_whatever_the_address():
    """An attacker rotating addresses would get the gateway banned at the PBX (fail2ban):
    after failed_logins_per_user refusals a login that would reach the PBX is refused here."""
    h = Harness(ws=WebSocketConfig(failed_logins_per_user=3, failed_login_window=300))
    for i in range(3):
        c, ch = h.connect(f"203.0.113.{i}")
        rid = h.call(c, "login", user="1000", password="bad")
        h.stack.last.fail("auth_failed", 403)
        assert error_of(ch, rid).reason == "auth_failed"
    n = len(h.stack.registrations)
    c, ch = h.connect("198.51.100.77")
    rid = h.call(c, "login", user="1000", password="good")
    error = error_of(ch, rid)
    assert error.reason == "rate_limited" and error.data["retry_after"] == 100.0
    assert error.data["detail"] == "too many failed logins for this user"
    assert len(h.stack.registrations) == n  # the PBX saw nothing
    other, och = h.connect("198.51.100.77")  # other users are not affected
    h.login(other, och, user="1001")
    h.clock.advance(100)  # one failure has expired
    rid = h.call(c, "login", user="1000", password="good")
    h.stack.last.succeed()
    assert rid in ch.results


def test_a_locked_user_may_still_join_its_live_registration_with_its_credentials():
    h = Harness(ws=WebSocketConfig(failed_logins_per_user=1))
    a, ca = h.connect()
    h.login(a, ca, password="right")
    b, cb = h.connect("203.0.113.50")
    rid = h.call(b, "login", user="1000", password="wrong")
    h.stack.checks[-1][3].callback("auth_failed")  # proven wrong at the PBX
    assert error_of(cb, rid).reason == "auth_failed"
    rid = h.call(b, "login", user="1000", password="guess2")
    assert error_of(cb, rid).reason == "rate_limited" and len(h.stack.checks) == 1
    rid = h.call(b, "login", user="1000", password="right")  # nothing to ask the PBX
    h.clock.advance(0)
    assert rid in cb.results


def test_call_message_and_dtmf_are_rate_limited_per_session():
    h = Harness(ws=WebSocketConfig(calls_per_minute=12, messages_per_minute=6, dtmf_per_minute=60))
    handled = []
    for name in ("call", "message", "send_info", "dtmf"):
        h.controller.add_method(name, lambda client, params, name=name: handled.append(name) or {})
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    h.login(b, cb, user="1001")
    rids = [h.call(a, "call", to="1") for _ in range(3)]  # a burst of a sixth of the minute: 2
    assert rids[0] in ca.results and rids[1] in ca.results
    error = error_of(ca, rids[2])
    assert error.reason == "rate_limited" and error.data["retry_after"] == 5.0
    assert h.call(b, "call", to="1") in cb.results  # another session has its own budget
    # message and send_info share one budget (burst 1)
    assert h.call(a, "message", to="1", body="x") in ca.results
    assert error_of(ca, h.call(a, "send_info", call="c", body="x")).reason == "rate_limited"
    assert h.call(a, "dtmf", call="c", digits="1") in ca.results
    h.clock.advance(5)
    assert h.call(a, "call", to="1") in ca.results
    assert handled.count("call") == 4


# --- token login -------------------------------------------------------------------------------------
SECRET = b"k" * 32


def token_harness():
    tokens = pytest.importorskip("b2bua.auth.tokens")
    users_mod = pytest.importorskip("b2bua.auth.users")
    h = Harness(auth=AuthConfig(token_secret=SECRET.decode()))
    verifier = tokens.TokenVerifier(SECRET, max_ttl=3600, clock=h.clock.seconds)
    users = FakeUsers({"1000": users_mod.Credentials("1000", password="pw1000"),
                       "1001": users_mod.Credentials("1001", ha1=HA1)})
    h.controller = Controller(h.clock, h.ws, AuthConfig(token_secret=SECRET.decode()), h.stack, users,
                              verifier)
    return h, tokens


def test_token_login_uses_the_user_source():
    h, tokens = token_harness()
    client, channel = h.connect()
    token = tokens.issue_token(SECRET, "1000", 300, h.clock.seconds())
    rid = h.call(client, "login", token=token)
    assert (h.stack.last.user, h.stack.last.password, h.stack.last.ha1) == ("1000", "pw1000", None)
    h.stack.last.succeed()
    assert channel.results[rid]["user"] == "1000"
    client2, channel2 = h.connect("192.0.2.99")
    h.call(client2, "login", token=tokens.issue_token(SECRET, "1001", 300, h.clock.seconds()))
    assert (h.stack.last.password, h.stack.last.ha1) == (None, HA1)


def test_token_replayed_expired_and_forged():
    h, tokens = token_harness()
    now = h.clock.seconds()
    token = tokens.issue_token(SECRET, "1000", 300, now)
    c, ch = h.connect()
    h.call(c, "login", token=token)
    h.controller.connection_lost(c)
    cases = [
        (token, "replayed"),
        (tokens.issue_token(SECRET, "1000", 300, now - 1000), "expired"),
        (tokens.issue_token(b"x" * 32, "1000", 300, now), "bad_signature"),
        ("garbage", "malformed"),
    ]
    for tok, detail in cases:
        c, ch = h.connect(f"192.0.2.{len(detail)}")
        rid = h.call(c, "login", token=tok)
        error = error_of(ch, rid)
        assert (error.reason, error.data["detail"]) == ("token_invalid", detail)


def test_token_for_user_without_credentials():
    h, tokens = token_harness()
    c, ch = h.connect()
    rid = h.call(c, "login", token=tokens.issue_token(SECRET, "2000", 300, h.clock.seconds()))
    assert error_of(ch, rid).reason == "auth_failed"
    assert h.stack.registrations == []


# --- shutdown, health, metrics -----------------------------------------------------------------------
def test_shutdown_unregisters_everything_then_closes_sockets(h):
    a, ca = h.connect()
    h.login(a, ca)
    b, cb = h.connect()
    sid_b = h.login(b, cb, user="1001")
    h.controller.connection_lost(b)
    pending, cp = h.connect()
    rid_pending = h.call(pending, "login", user="1002", password="x")
    idle, ci = h.connect()
    for reg in h.stack.registrations:
        reg.auto_stop = False
    done = []
    h.controller.shutdown().addCallback(done.append)
    assert error_of(cp, rid_pending).reason == "shutting_down"
    assert ca.events[-1] == ("unregistered", {"user": "1000", "reason": "shutdown"})
    assert all(reg.stop_calls == 1 for reg in h.stack.registrations)
    assert not done and ca.closed is None
    for reg in h.stack.registrations[:2]:
        reg.finish_stop()
    assert not done  # the abandoned login's un-REGISTER is still running
    h.stack.registrations[2].finish_stop()
    assert done == [None]
    assert ca.closed == (CLOSE_GOING_AWAY, "shutdown")
    assert ci.closed == (CLOSE_GOING_AWAY, "shutdown")
    c, ch = h.connect()
    rid = h.call(c, "login", user="1000", password="x")
    assert error_of(ch, rid).reason == "shutting_down"
    rid = h.call(c, "resume", session=sid_b)
    assert error_of(ch, rid).reason == "shutting_down"
    assert h.controller.health()["status"] == "shutting_down"


def test_shutdown_is_bounded(h):
    a, ca = h.connect()
    h.login(a, ca)
    h.stack.last.auto_stop = False
    done = []
    h.controller.shutdown(timeout=5).addCallback(done.append)
    h.clock.advance(5)
    assert done == [None]


def test_health(h):
    a, ca = h.connect()
    h.login(a, ca)
    h.connect()
    health = h.controller.health()
    assert health["status"] == "ok"
    assert (health["connections"], health["sessions"]) == (2, 1)
    assert health["sessions_by_state"] == {"active": 1}


def test_metrics():
    metrics_mod = pytest.importorskip("b2bua.metrics")
    registry = metrics_mod.Registry()
    h = Harness(metrics=registry)
    c, ch = h.connect()
    h.login(c, ch)
    h.call(c, "ping")
    h.call(c, "nope")
    text = registry.render()
    text = text if isinstance(text, str) else text.decode()
    assert 'mpb2bua_ws_requests_total{method="login"} 1' in text
    assert 'mpb2bua_ws_requests_total{method="unknown"} 1' in text
    assert 'mpb2bua_ws_errors_total{reason="method_not_found"} 1' in text
    assert "mpb2bua_ws_connections 1" in text
    assert 'mpb2bua_sessions{state="active"} 1' in text


def test_session_ids_are_never_logged_in_full(h):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        c, ch = h.connect()
        sid = h.login(c, ch)
        h.controller.connection_lost(c)
        c2, _ = h.connect()
        h.call(c2, "resume", session=sid)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    from twisted.logger import formatEvent

    texts = [formatEvent(e) for e in seen]
    assert texts and not any(sid in t or "secret" in t for t in texts)


def test_stop_that_fires_synchronously_is_fine(h):
    client, channel = h.connect()
    h.login(client, channel)
    h.stack.last.stop = lambda: succeed(None)
    rid = h.call(client, "logout")
    assert channel.results[rid] == {}


def test_a_socket_flooding_requests_is_told_then_closed():
    """600 a minute: a burst of 100, then rate_limited answers; a whole burst more of them while
    told to wait closes the socket (4003), since such a client does not back off."""
    h = Harness(ws=WebSocketConfig(requests_per_minute=60))  # burst 10
    c, ch = h.connect()
    calm, cch = h.connect()
    rids = [h.call(c, "ping") for _ in range(10)]
    assert all(rid in ch.results for rid in rids)
    rid = h.call(c, "ping")
    assert error_of(ch, rid).reason == "rate_limited" and error_of(ch, rid).data["retry_after"] == 1.0
    assert h.call(calm, "ping") in cch.results  # per socket
    h.clock.advance(1)
    assert h.call(c, "ping") in ch.results  # it waited: the count of refusals starts again
    for _ in range(10):
        h.call(c, "ping")
    assert ch.closed is None
    h.call(c, "ping")
    assert ch.closed == (4003, "rate_limited") and ch.stopped_reading
