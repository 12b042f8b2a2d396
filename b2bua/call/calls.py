"""Calls: the JSON-RPC call-control methods and events, joined to SIP INVITE sessions and media legs.

One ``CallManager`` per node. Each ``Call`` is one SIP call leg of one session (a logged-in
user), with a stable id the mini-program uses in every request and event.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from b2bua.call.ringing import RingGroup
from b2bua.call.session import ACTIVE, DETACHED, Session
from b2bua.call.watchdog import RtpWatchdog
from b2bua.media.backend import LocalMediaBackend, MediaBackend
from b2bua.media.leg import MediaNegotiationError
from b2bua.media.ports import NoPortsAvailable
from b2bua.media.tick import MediaClock
from b2bua.rtmp.streams import StreamRegistry
from b2bua.sip.causes import cause_from_reason, cause_from_sip_status, parse_reason_header, reason_header
from b2bua.sip.dialog import DialogError
from b2bua.sip.invite import InviteSession, InviteStateError
from b2bua.wire.sip import Request, Response, make_response
from b2bua.wire.sipuri import NameAddr, SipUri, UriError
from b2bua.ws.jsonrpc import RpcError, get_str, reject_unknown_params

if TYPE_CHECKING:
    from b2bua.call.controller import Client, Controller
    from b2bua.config import Config
    from b2bua.metrics import Registry
    from b2bua.sip.registration import Registration
    from b2bua.sip.transaction import ServerTransaction
    from b2bua.sip.ua import SipStack

log = Logger()

CALL_ID_RE = re.compile(r"^c[A-Za-z0-9_-]{8,40}$")
NUMBER_RE = re.compile(r"^[A-Za-z0-9*#+._~-]{1,64}$")
DIGITS_RE = re.compile(r"^[0-9*#A-Da-d]{1,32}$")
HEADER_NAME_RE = re.compile(r"^X-[A-Za-z0-9-]{1,60}$")
CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")
MAX_HEADERS = 10
MAX_BODY = 16384
DTMF_DURATION_MS = 160
# the `hangup` cause when the media worker holding a call's media died; the PBX's BYE says
# Q.850 41 NORMAL_TEMPORARY_FAILURE (the worker is started again: a new call will work)
MEDIA_WORKER_FAILED = "MEDIA_WORKER_FAILED"
MEDIA_WORKER_FAILED_REASON = "NORMAL_TEMPORARY_FAILURE"
# endings the gateway decided by a timer of its own: their status was never received
_LOCAL_DECISIONS = ("no ACK", "session timer expired", "no answer", "no progress")


class Call:
    """One call leg: its SIP INVITE session, its media, its state as the mini-program sees it."""

    def __init__(self, manager: CallManager, session: Session, direction: str, engine, video: bool) -> None:
        self.id = "c" + secrets.token_urlsafe(12)
        self.manager = manager
        self.session = session
        self.direction = direction
        self.engine = engine  # the leg's media, in this process or a worker (b2bua/media/backend.py)
        engine.events = self
        self.media = engine.leg  # the SDP side, the ports, the stream keys and URLs
        self.with_video = video
        self.state = "new"
        self.invite: InviteSession | None = None
        self.answer_sdp: bytes | None = None
        self.held = False
        self.remote_held = False
        self.no_answer = False  # set when outbound_timeout cancels the call
        self._bad_sdp: str | None = None  # why we hung up on an unusable SDP answer
        self.media_timeout: str | None = None  # why the watchdog ended it ("no RTP for 60 s")
        self.media_failure: str | None = None  # why its media worker failed
        self.ring_group: RingGroup | None = None  # inbound, until answered: the user's other sessions
        self.announced: dict[str, Any] | None = None  # inbound: the `incoming` event's caller members
        self._timer = None

    @property
    def bridge(self):
        """The leg's AudioBridge when its media runs in this process (tests, introspection)."""
        return getattr(self.engine, "bridge", None)

    @property
    def players(self):
        """The play key's PlayerGroup when its media runs in this process."""
        return getattr(self.engine, "players", None)

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.direction} {self.state} user={self.session.user}>"

    def event(self, name: str, **params: Any) -> None:
        params = {"call": self.id, **{k: v for k, v in params.items() if v is not None}}
        self.session.send_event(name, params)

    # -- InviteListener ---------------------------------------------------------------------------------
    def invite_progress(self, session: InviteSession, status: int, sdp: bytes | None) -> None:
        if sdp is not None:
            try:
                self.media.accept_answer(sdp)
            except MediaNegotiationError as e:
                log.warn("call {call}: unusable early-media SDP ignored: {e}", call=self.id, e=e)
                sdp = None
        if sdp is not None:
            self.state = "early"
            self.start_media()
            self.event("early_media", status=status, codec=self.media.codec_name)
        else:
            self.state = "ringing"
            self.event("ringing", status=status)

    def invite_answered(self, session: InviteSession, sdp: bytes | None) -> None:
        self._cancel_timer()
        # ours was the offer: outbound, or an inbound INVITE without SDP (late offer: our 200
        # carried the offer, the ACK the answer)
        if self.direction == "outbound" or session.late_offer:
            where = "2xx" if self.direction == "outbound" else "ACK"
            if not self._take_answer(session, sdp, where):
                return
        self.state = "active"
        self.start_media()
        self.manager.watchdog.watch(self)  # from the answer on, no media for too long ends it
        self.manager.m_answered.inc()
        # what the answer negotiated, not what was asked for: a PBX without H.264 answers m=video 0
        video = self.media.has_video if self.with_video else None
        self.event("answered", codec=self.media.codec_name, video=video)

    def _take_answer(self, session: InviteSession, sdp: bytes | None, where: str) -> bool:
        """Apply the SDP answer to our offer; on none or an unusable one, hang up (BYE) and
        report it (``INCOMPATIBLE_DESTINATION``)."""
        try:
            if sdp is None:
                raise MediaNegotiationError(f"{where} without SDP answer")
            self.media.accept_answer(sdp)
        except MediaNegotiationError as e:
            log.warn("call {call}: bad SDP answer in {where}, hanging up: {e}",
                     call=self.id, where=where, e=e)
            self._bad_sdp = str(e)
            session.hangup()
            return False
        return True

    def invite_ended(
        self, session: InviteSession, status: int | None, reason_headers: list[str], by: str, why: str
    ) -> None:
        self._cancel_timer()
        self.state = "ended"
        if why == "cancelled" and self.no_answer:
            why = "no answer"
        cause = _cause(status, reason_headers, why, by)
        reason = self._bad_sdp or _reason_text(reason_headers) or why
        if self._bad_sdp:
            cause = "INCOMPATIBLE_DESTINATION"
        elif self.media_failure and by == "local":
            cause, reason = MEDIA_WORKER_FAILED, self.media_failure
        elif self.media_timeout and by == "local":
            cause, reason = "MEDIA_TIMEOUT", self.media_timeout
        # a status we decided ourselves (no ACK, session timer) was never received: not reported
        received = not (by == "local" and why in _LOCAL_DECISIONS)
        sip_status = status if status and status >= 300 and received else None

        def report(stats: dict | None) -> None:
            self.event("hangup", sip_status=sip_status, cause=cause, reason=reason, by=by, media=stats)

        # in-process the statistics are there at once; a worker sends them back
        self.stop_media().addCallback(report)
        self.manager.m_ended.labels(cause).inc()
        self.manager.forget(self)

    def invite_offer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        try:
            answer, remote_hold = self.media.answer_offer(sdp, hold=self.held)
        except MediaNegotiationError as e:
            log.warn("call {call}: refused re-offer: {e}", call=self.id, e=e)
            return None
        if self.engine.started:
            self.engine.apply(self.media.negotiated)
        self._remote_hold(remote_hold)
        return answer

    def invite_make_offer(self, session: InviteSession) -> bytes | None:
        return self.media.make_offer(hold=self.held)

    def invite_answer(self, session: InviteSession, sdp: bytes | None) -> None:
        """The ACK of a re-INVITE without SDP: the answer to the offer of our 200."""
        if not self._take_answer(session, sdp, "ACK"):
            return
        self.start_media()  # re-points the running bridge (or starts it)
        self._remote_hold(self.media.negotiated.on_hold)

    def _remote_hold(self, held: bool) -> None:
        if held != self.remote_held:
            self.remote_held = held
            self.event("hold", held=held, by="remote")

    def invite_request(self, session: InviteSession, request: Request) -> int:
        if len(request.body) > MAX_BODY:
            return 413
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        text = request.body.decode("utf-8", errors="replace")
        if request.method == "NOTIFY":
            return self._on_notify(request, text)
        if content_type == "application/dtmf-relay":
            digit = _dtmf_relay_signal(text)
            if digit is None:
                return 400
            self.event("dtmf", digits=digit, via="info")
            return 200
        self.event(
            "info",
            method=request.method,
            content_type=content_type or None,
            body=_parse_body(content_type, text),
        )
        return 200

    def _on_notify(self, request: Request, text: str) -> int:
        if (request.headers.get("Event") or "").split(";")[0].strip().lower() != "refer":
            return 489
        status, _, phrase = text.partition("\r\n")[0].removeprefix("SIP/2.0 ").partition(" ")
        final = "terminated" in (request.headers.get("Subscription-State") or "").lower()
        self.event(
            "transfer_progress",
            status=int(status) if status.isdigit() else None,
            reason=phrase.strip() or None,
            final=final,
        )
        return 200

    # -- media --------------------------------------------------------------------------------------------
    def start_media(self) -> None:
        """Start (or re-point) the RTMP⇄RTP bridge once the SDP exchange is complete."""
        negotiated = self.media.negotiated
        if negotiated is not None:
            self.engine.apply(negotiated)

    def stop_media(self) -> Deferred:
        """Stop the leg's media (once): a Deferred of the `hangup` event's ``media`` member (fired
        at once in-process; None when media never started or its worker died)."""
        if getattr(self, "_stopping", None) is None:

            def done(stats) -> dict | None:
                if stats is None:
                    return None
                self.manager.record_media(stats)
                return stats.as_event()

            self._stopping = maybeDeferred(self.engine.stop).addCallback(done)
            self._stopping.addErrback(lambda f: log.failure("call {call}: media stop", f, call=self.id))
        d: Deferred = Deferred()
        self._stopping.addCallback(lambda r: (d.callback(r), r)[1])
        return d

    # the dead-call watchdog's view (b2bua/call/watchdog.py)
    def media_packets(self) -> int:
        return self.engine.packets_in

    def media_state(self) -> tuple[bool, tuple]:
        """RTP is due unless the call is on hold either way or the SDP says the far end sends
        none (a=sendonly from us, a=inactive/recvonly from it); its media address too, since a
        re-INVITE that moves the media restarts the count."""
        negotiated = self.media.negotiated
        if negotiated is None:
            return False, ()
        audio = negotiated.audio
        expects = audio.receives and not audio.on_hold and not self.held and not self.remote_held
        return expects, (audio.remote_addr, audio.remote_port)

    # LegEvents (b2bua/media/engine.py): what the leg's media reports
    def dtmf_received(self, digit: str) -> None:
        self.event("dtmf", digits=digit, via="rfc4733")

    def media_failed(self, reason: str) -> None:
        """Its media worker died: the call cannot go on (BYE, `hangup` MEDIA_WORKER_FAILED)."""
        self.manager.media_failed(self, reason)

    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None:
        self.event("media", stream="publisher", state="connected")

    def publisher_stopped(self, reason: str) -> None:
        self.event("media", stream="publisher", state="gone", reason=reason)

    def player_joined(self, player_id: str) -> None:
        self.event("media", stream="player", state="connected")

    def player_left(self, player_id: str, reason: str) -> None:
        self.event("media", stream="player", state="gone", reason=reason)

    # -- timers -----------------------------------------------------------------------------------------
    def start_timer(self, delay: float, fn) -> None:
        self._cancel_timer()
        self._timer = self.manager.reactor.callLater(delay, fn)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class CallManager:
    """The call-control methods, the inbound INVITE/MESSAGE handler of the SIP stack, the call table."""

    def __init__(
        self,
        reactor,
        stack: SipStack,
        controller: Controller,
        config: Config,
        metrics: Registry,
        streams: StreamRegistry | None = None,
        clock: MediaClock | None = None,
        backend: MediaBackend | None = None,
    ) -> None:
        self.reactor = reactor
        self.streams = streams if streams is not None else StreamRegistry(reactor)
        self.clock = clock if clock is not None else MediaClock(reactor)
        self.stack = stack
        self.controller = controller
        self.config = config
        self.calls: dict[str, Call] = {}
        # calls of a session whose media legs are being allocated (a worker answers later): they
        # count against calls.max_per_session like the calls that exist
        self._allocating: Counter = Counter()
        media = config.media
        self.watchdog = RtpWatchdog(reactor, media.rtp_timeout, media.rtp_hold_timeout, self._media_timeout)
        self.sdp_host = sdp_host(config)
        rtmp = config.rtmp
        port = rtmp.listen.split(":")[1] if rtmp.listen.startswith("tcp:") else "1935"
        self.rtmp_base = rtmp.public_url or f"rtmp://{config.public_host}:{port}/{rtmp.app}"
        # where the media runs: here (media.workers: 0) or in worker processes (b2bua/media/workers.py)
        self.backend: MediaBackend = backend or LocalMediaBackend(
            reactor, config, self.streams, self.clock, self.sdp_host, self.rtmp_base
        )
        stack.inbound = self
        controller.session_end_hooks.append(self.session_ended)
        controller.session_calls = self.live_calls
        for name, handler in (
            ("call", self.call),
            ("answer", self.answer),
            ("reject", self.reject),
            ("hangup", self.hangup),
            ("dtmf", self.dtmf),
            ("hold", self.hold),
            ("unhold", self.unhold),
            ("transfer", self.transfer),
            ("send_info", self.send_info),
            ("message", self.message),
        ):
            controller.add_method(name, handler)
        self.m_started = metrics.counter("mpb2bua_calls_total", "Calls set up, by direction", ("direction",))
        self.m_answered = metrics.counter("mpb2bua_calls_answered_total", "Calls answered")
        self.m_ended = metrics.counter("mpb2bua_calls_ended_total", "Calls ended, by cause", ("cause",))
        metrics.gauge_fn("mpb2bua_calls", "Live calls by state", self._states, ("state",))
        self.m_setup = metrics.histogram(
            "mpb2bua_call_setup_seconds",
            "WS `call` handled to INVITE written to the socket",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
        )
        self.setup_samples: deque[float] = deque(maxlen=10000)  # seconds, for benchmarks and tests
        self.m_rtp = metrics.counter(
            "mpb2bua_rtp_packets_total", "RTP packets of ended calls, by direction", ("direction",)
        )
        self.m_media = metrics.counter(
            "mpb2bua_media_events_total",
            "Media impairments of ended calls (lost, late, concealed ms…)",
            ("what",),
        )
        metrics.gauge_fn(
            "mpb2bua_media_clock_late_ticks",
            "Media ticks run late (all time)",
            lambda: float(self.backend.clock_stats()["late_ticks"]),
        )
        metrics.gauge_fn(
            "mpb2bua_media_tick_lag_max_seconds",
            "Largest delay of a media tick behind its 20 ms grid point (all time)",
            lambda: self.backend.clock_stats()["lag_max_ms"] / 1000.0,
        )
        metrics.gauge_fn(
            "mpb2bua_media_tick_busy_max_seconds",
            "Longest a media tick's own work ran (all time): at 20 ms the next tick cannot start on time",
            lambda: self.backend.clock_stats()["busy_max_ms"] / 1000.0,
        )
        metrics.gauge_fn(
            "mpb2bua_media_ticks_lagging_5ms",
            "Media ticks that began more than 5 ms behind their grid point (all time)",
            lambda: float(self.backend.clock_stats()["ticks_lagging_5ms"]),
        )

    def _states(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for call in self.calls.values():
            out[(call.state,)] = out.get((call.state,), 0.0) + 1
        return out

    def counts(self) -> dict[str, int]:
        return {"calls": len(self.calls), "rtp_ports": self.backend.rtp_ports_in_use()}

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _session_calls(self, session: Session) -> list[Call]:
        return [c for c in self.calls.values() if c.session is session]

    def _session_busy(self, session: Session) -> int:
        """The session's calls, those being set up included."""
        return len(self._session_calls(session)) + self._allocating[id(session)]

    def _allocated(self, sessions: list[Session], result: Any) -> Any:
        for session in sessions:
            self._allocating[id(session)] -= 1
            if self._allocating[id(session)] <= 0:
                del self._allocating[id(session)]
        return result

    def forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.watchdog.unwatch(call)
        call.stop_media()
        call.engine.close()

    def _media_timeout(self, call: Call, reason: str) -> None:
        """The watchdog found an answered call without media for too long: BYE (with the Reason
        FreeSWITCH would send) and `hangup` MEDIA_TIMEOUT."""
        if call.invite is None or call.invite.state != "confirmed":
            return
        log.info("call {call}: {reason}: hanging up (MEDIA_TIMEOUT)", call=call.id, reason=reason)
        call.media_timeout = reason
        call.invite.hangup(reason=reason_header("MEDIA_TIMEOUT"))

    def media_failed(self, call: Call, reason: str) -> None:
        """The call's media worker died: BYE (CANCEL, or a 503 to a ringing INVITE) and `hangup`
        MEDIA_WORKER_FAILED."""
        if call.state == "ended" or call.invite is None:
            return
        call.media_failure = reason
        if call.invite.state == "confirmed":
            call.invite.hangup(reason=reason_header(MEDIA_WORKER_FAILED_REASON))
        elif call.invite.state == "incoming" and call.direction == "inbound":
            self._reject(call, 503)
        else:
            call.invite.hangup()

    def record_media(self, stats) -> None:
        self.m_rtp.labels("out").inc(stats.rtp_sent)
        self.m_rtp.labels("in").inc(stats.rtp_received)
        for what in ("lost", "late", "rtp_bad", "rtp_foreign", "uplink_underruns", "srtp_auth_failed"):
            value = getattr(stats, what)
            if value:
                self.m_media.labels(what).inc(value)

    def live_calls(self, session: Session) -> list[dict[str, Any]]:
        """The session's calls as ``resume`` reports them: enough to pick up a call whose
        ``incoming`` event or ``call`` result was lost with a dead socket."""
        out = []
        for c in self._session_calls(session):
            if c.state == "ended":
                continue
            entry = {"call": c.id, "state": c.state, "direction": c.direction,
                     "push_url": c.media.push_url, "play_url": c.media.play_url}
            if c.state == "incoming" and c.announced:
                entry.update((k, v) for k, v in c.announced.items() if v is not None)
            out.append(entry)
        return out

    def session_ended(self, session: Session) -> None:
        for call in self._session_calls(session):
            if call.state == "incoming" and call.ring_group is not None:
                self._reject(call, 480)
            else:
                self._hang_up(call)
            if call.state != "ended":  # a CANCEL/BYE may still be under way: free the media now
                self.forget(call)

    def _new_media(self, video: bool) -> Deferred:
        """A leg's media handle (b2bua/media/backend.py); fails with NoPortsAvailable."""

        def refused(f):
            if f.check(NoPortsAvailable):
                log.error("no RTP ports left: call refused ({e})", e=f.getErrorMessage())
            return f

        return self.backend.new_leg(video).addErrback(refused)

    def _get_call(self, client: Client, params: dict[str, Any], allowed: frozenset[str]) -> Call:
        reject_unknown_params(params, allowed)
        call_id = get_str(params, "call", max_length=48, pattern=CALL_ID_RE)
        call = self.calls.get(call_id)
        if call is None or call.session is not client.session:
            raise RpcError("call_not_found", detail=call_id)
        return call

    # -- outbound ---------------------------------------------------------------------------------------
    def call(self, client: Client, params: dict[str, Any]) -> Deferred:
        """``call {to, video?, headers?}`` → ``{call, push_url, play_url}``."""
        started = time.perf_counter()
        reject_unknown_params(params, frozenset({"to", "video", "headers"}))
        session = client.session
        to_uri = self._target_uri(get_str(params, "to", max_length=256))
        video = params.get("video", False)
        if not isinstance(video, bool):
            raise RpcError.invalid_params("video must be true or false")
        headers = _custom_headers(params.get("headers"))
        if session.registration is None or session.registration.state != "registered":
            raise RpcError("bad_state", detail="not registered")
        if self._session_busy(session) >= self.config.calls.max_per_session:
            raise RpcError("too_many_calls")

        def no_media(f):
            f.trap(NoPortsAvailable)
            raise RpcError("media_unavailable")

        self._allocating[id(session)] += 1
        d = self._new_media(video).addBoth(lambda r: self._allocated([session], r)).addCallbacks(
            lambda engine: self._place_call(session, to_uri, video, headers, engine, started), no_media
        )
        return d

    def _place_call(
        self, session: Session, to_uri: str, video: bool, headers, engine, started: float
    ) -> dict[str, Any]:
        if session.registration is None or session.registration.state != "registered":
            engine.close()  # unregistered while its media was being set up
            raise RpcError("bad_state", detail="not registered")
        media = engine.leg
        call = Call(self, session, "outbound", engine, video)
        self.calls[call.id] = call
        call.invite = InviteSession.outgoing(
            self.stack, session.registration, to_uri, media.make_offer(), call, headers
        )
        call.state = "calling"
        call.invite.start()
        elapsed = time.perf_counter() - started
        self.m_setup.observe(elapsed)
        self.setup_samples.append(elapsed)
        call.start_timer(self.config.calls.outbound_timeout, lambda: self._outbound_timeout(call))
        self.m_started.labels("outbound").inc()
        log.info("call {call}: {user} → {to}", call=call.id, user=session.user, to=to_uri)
        return {"call": call.id, "push_url": media.push_url, "play_url": media.play_url}

    def _target_uri(self, to: str) -> str:
        if to.startswith(("sip:", "sips:")):
            try:
                return str(SipUri.parse(to))
            except UriError as e:
                raise RpcError.invalid_params(f"bad SIP URI: {e}") from None
        if not NUMBER_RE.match(to):
            raise RpcError.invalid_params("to: an extension, a number or a sip: URI")
        return f"sip:{to}@{self.stack.domain}"

    # -- inbound ----------------------------------------------------------------------------------------
    def incoming_invite(self, reg: Registration, request: Request, txn: ServerTransaction) -> None:
        """An INVITE to a user's Contact rings every session of that user (see b2bua.call.ringing)."""
        binding = reg.listener
        sessions = [s for s in getattr(binding, "sessions", ()) if s.state in (ACTIVE, DETACHED)]
        if not sessions:
            txn.respond(make_response(request, 480, to_tag=secrets.token_hex(6)))
            return
        max_calls = self.config.calls.max_per_session
        sessions = [s for s in sessions if self._session_busy(s) < max_calls]
        if not sessions:
            txn.respond(make_response(request, 486, to_tag=secrets.token_hex(6)))
            return
        offer = _sdp_body(request)
        video = offer is not None and b"m=video" in offer and b"m=video 0 " not in offer
        # the SDP answer names the RTP ports: the legs first (at once in-process; a worker answers)
        for s in sessions:
            self._allocating[id(s)] += 1
        allocations = [self._new_media(video) for _ in sessions]
        DeferredList(allocations, consumeErrors=True).addCallback(
            lambda results: self._ring(reg, request, txn, sessions, offer, video,
                                       self._allocated(sessions, results))
        ).addErrback(lambda f: log.failure("incoming INVITE", f))

    def _ring(self, reg: Registration, request: Request, txn: ServerTransaction, sessions: list[Session],
              offer: bytes | None, video: bool, results: list) -> None:
        engines = [engine for ok, engine in results if ok]  # ring those that got media
        group = RingGroup()
        legs: list[tuple[Session, Any, bytes]] = []
        try:
            for session, engine in zip(sessions, engines, strict=False):
                media = engine.leg
                legs.append((session, engine, b""))
                if offer is not None:
                    answer, _ = media.answer_offer(offer)
                else:
                    answer = media.make_offer()  # offer in our 2xx, answer in the ACK
                legs[-1] = (session, engine, answer)
        except MediaNegotiationError as e:
            log.warn("incoming INVITE from {src} refused: {e}", src=request.headers.get("From"), e=e)
            for engine in engines:
                engine.close()
            txn.respond(
                make_response(
                    request, 488, f"Not Acceptable Here ({_ascii(str(e))})", to_tag=secrets.token_hex(6)
                )
            )
            return
        for engine in engines[len(legs):]:
            engine.close()
        if not legs:
            txn.respond(
                make_response(
                    request, 503, "Service Unavailable (no media ports)", to_tag=secrets.token_hex(6)
                )
            )
            return
        try:
            group.invite = InviteSession.incoming(self.stack, reg, request, txn, group)
        except DialogError as e:
            for _, engine, _ in legs:
                engine.close()
            txn.respond(
                make_response(request, 400, f"Bad Request ({_ascii(str(e))})", to_tag=secrets.token_hex(6))
            )
            return
        caller = _name_addr(request.headers.get("From"))
        headers = {n: v for n, v in request.headers if n.lower().startswith("x-")} or None
        for session, engine, answer in legs:
            media = engine.leg
            call = Call(self, session, "inbound", engine, video)
            call.invite = group.invite
            call.answer_sdp = answer
            call.state = "incoming"
            group.add(call)
            self.calls[call.id] = call
            self.m_started.labels("inbound").inc()
            call.announced = {
                "from": caller.uri.user if caller else None,
                "from_uri": str(caller.uri) if caller else None,
                "display": caller.display if caller else None,
                # the user the INVITE reached (its To names our Contact, as FreeSWITCH's
                # user/1000 does, or whatever the caller dialled)
                "to": session.user,
                "video": media.has_video,  # what our answer accepted, not what was offered
                "headers": headers,
            }
            call.event("incoming", **call.announced, push_url=media.push_url, play_url=media.play_url)
            call.start_timer(self.config.calls.ring_timeout, lambda call=call: self._ring_timeout(call))
        group.invite.ring()

    def _outbound_timeout(self, call: Call) -> None:
        if call.invite is not None and call.invite.state in ("calling", "early"):
            call.no_answer = True
            call.invite.hangup()

    def _ring_timeout(self, call: Call) -> None:
        if call.invite is not None and call.invite.state == "incoming":
            call.invite.reject(480)

    def incoming_message(self, reg: Registration, request: Request) -> int:
        """A MESSAGE to a user's Contact goes to every session of that user."""
        sessions = [s for s in getattr(reg.listener, "sessions", ()) if s.state in (ACTIVE, DETACHED)]
        if not sessions:
            return 480
        if len(request.body) > MAX_BODY:
            return 413
        sender = _name_addr(request.headers.get("From"))
        content_type = (request.headers.get("Content-Type") or "text/plain").split(";")[0].strip().lower()
        text = request.body.decode("utf-8", errors="replace")
        body: Any = text
        if content_type == "application/json":
            try:
                body = json.loads(text)
            except ValueError:
                pass
        params = {
            "from": sender.uri.user if sender else None,
            "from_uri": str(sender.uri) if sender else None,
            "content_type": content_type,
            "body": body,
        }
        for session in sessions:
            session.send_event("message", params)
        return 200

    # -- call control -----------------------------------------------------------------------------------
    def answer(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        call = self._get_call(client, params, frozenset({"call"}))
        if call.direction != "inbound" or call.invite is None or call.invite.state != "incoming":
            raise RpcError("bad_state", detail=f"call is {call.state}")
        call._cancel_timer()
        if call.ring_group is not None:
            call.ring_group.answered_by(call)  # the user's other sessions stop ringing
            call.ring_group = None
        call.invite.answer(call.answer_sdp)
        call.state = "answering"
        call.start_media()
        return {"call": call.id}

    def reject(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        call = self._get_call(client, params, frozenset({"call", "status"}))
        status = params.get("status", 486)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 699:
            raise RpcError.invalid_params("status: a SIP status from 400 to 699")
        if call.direction != "inbound" or call.invite is None or call.invite.state != "incoming":
            raise RpcError("bad_state", detail=f"call is {call.state}")
        self._reject(call, status)
        return {}

    def _reject(self, call: Call, status: int) -> None:
        """Refuse a ringing inbound call for this session; the INVITE itself only when no other
        session of the user still rings (or with a 6xx)."""
        group = call.ring_group
        if group is None or group.drop(call, status):
            call.invite.reject(status)

    def hangup(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        call = self._get_call(client, params, frozenset({"call"}))
        self._hang_up(call)
        return {}

    def _hang_up(self, call: Call) -> None:
        if call.invite is None:
            return
        if call.invite.state == "incoming" and call.direction == "inbound":
            self._reject(call, 486)
        else:
            call.invite.hangup()

    def _active(self, client: Client, params: dict[str, Any], allowed: frozenset[str]) -> Call:
        call = self._get_call(client, params, allowed)
        if call.invite is None or call.invite.state != "confirmed":
            raise RpcError("bad_state", detail=f"call is {call.state}")
        return call

    def dtmf(self, client: Client, params: dict[str, Any]) -> Deferred:
        call = self._active(client, params, frozenset({"call", "digits", "mode"}))
        digits = get_str(params, "digits", max_length=32, pattern=DIGITS_RE).upper()
        mode = params.get("mode") or self.config.media.dtmf
        if mode not in ("auto", "rfc4733", "info"):
            raise RpcError.invalid_params("mode: auto, rfc4733 or info")
        negotiated = call.media.negotiated
        rfc4733 = (
            call.engine.started and negotiated is not None and negotiated.audio.dtmf_payload_type is not None
        )
        if mode == "rfc4733" and not rfc4733:
            raise RpcError("bad_state", detail="telephone-event was not negotiated")
        if mode != "info" and rfc4733:
            call.engine.send_dtmf(digits)
            return {"via": "rfc4733"}
        return self._send_digits(call, digits).addCallback(lambda _: {"via": "info"})

    def _send_digits(self, call: Call, digits: str) -> Deferred:
        d: Deferred = Deferred()

        def next_digit(index: int) -> None:
            if index == len(digits):
                d.callback({})
                return
            body = f"Signal={digits[index]}\r\nDuration={DTMF_DURATION_MS}\r\n".encode()
            request = call.invite.request("INFO", body=body, content_type="application/dtmf-relay")

            def done(response: Response) -> None:
                if 200 <= response.status < 300:
                    next_digit(index + 1)
                else:
                    d.errback(RpcError("pbx_error", sip_status=response.status))

            request.addCallback(done)
            request.addErrback(
                lambda f: d.called or d.errback(RpcError("bad_state", detail=f.getErrorMessage()))
            )

        next_digit(0)
        return d

    def hold(self, client: Client, params: dict[str, Any]) -> Deferred:
        return self._set_hold(self._active(client, params, frozenset({"call"})), True)

    def unhold(self, client: Client, params: dict[str, Any]) -> Deferred:
        return self._set_hold(self._active(client, params, frozenset({"call"})), False)

    def _set_hold(self, call: Call, held: bool) -> Deferred:
        offer = call.media.make_offer(hold=held)
        try:
            d = call.invite.reinvite(offer)
        except InviteStateError as e:
            raise RpcError("bad_state", detail=str(e)) from None

        def done(result: tuple[int, bytes | None]) -> dict[str, Any]:
            status, answer = result
            if not 200 <= status < 300:
                raise RpcError("pbx_error", sip_status=status)
            if answer is not None:
                try:
                    call.media.accept_answer(answer)
                    if call.engine.started:
                        call.engine.apply(call.media.negotiated)
                except MediaNegotiationError as e:
                    log.warn("call {call}: bad answer to our re-INVITE: {e}", call=call.id, e=e)
            call.held = held
            call.state = "held" if held else "active"
            return {"call": call.id, "held": held}

        def failed(f):
            if f.check(InviteStateError):
                raise RpcError("bad_state", detail=f.getErrorMessage())
            return f

        return d.addCallbacks(done, failed)

    def transfer(self, client: Client, params: dict[str, Any]) -> Deferred:
        call = self._active(client, params, frozenset({"call", "to"}))
        target = self._target_uri(get_str(params, "to", max_length=256))
        d = call.invite.request(
            "REFER",
            headers=[("Refer-To", f"<{target}>"), ("Referred-By", f"<{self.stack.aor(call.session.user)}>")],
        )
        return d.addCallback(_status_result)

    def send_info(self, client: Client, params: dict[str, Any]) -> Deferred:
        call = self._active(client, params, frozenset({"call", "content_type", "body"}))
        content_type, body = _content(params)
        return call.invite.request("INFO", body=body, content_type=content_type).addCallback(_status_result)

    def message(self, client: Client, params: dict[str, Any]) -> Deferred:
        """``message {to, content_type?, body}``: a SIP MESSAGE outside any call."""
        reject_unknown_params(params, frozenset({"to", "content_type", "body"}))
        session = client.session
        if session.registration is None or session.registration.state != "registered":
            raise RpcError("bad_state", detail="not registered")
        target = self._target_uri(get_str(params, "to", max_length=256))
        content_type, body = _content(params)
        d = self.stack.send_out_of_dialog(
            session.registration, "MESSAGE", target, body=body, content_type=content_type
        )
        return d.addCallback(_status_result)


# -- helpers -------------------------------------------------------------------------------------------------
def sdp_host(config: Config) -> str:
    """The address our SDP names for RTP."""
    media = config.media
    return media.sdp_host or config.sip.public_host or media.rtp_host or config.sip.listen_host


def _status_result(response: Response) -> dict[str, Any]:
    if not 200 <= response.status < 300:
        raise RpcError("pbx_error", sip_status=response.status, detail=response.reason)
    return {"sip_status": response.status}


def _content(params: dict[str, Any]) -> tuple[str, bytes]:
    content_type = params.get("content_type") or "text/plain"
    if not isinstance(content_type, str) or not CONTENT_TYPE_RE.match(content_type):
        raise RpcError.invalid_params("content_type: type/subtype")
    body = params.get("body")
    if isinstance(body, dict | list):
        body = json.dumps(body, separators=(",", ":"))
        if content_type == "text/plain":
            content_type = "application/json"
    if not isinstance(body, str):
        raise RpcError.invalid_params("body: a string or a JSON object")
    data = body.encode("utf-8")
    if len(data) > MAX_BODY:
        raise RpcError.invalid_params(f"body larger than {MAX_BODY} bytes")
    return content_type, data


def _custom_headers(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise RpcError.invalid_params(f"headers: an object of at most {MAX_HEADERS} X- headers")
    out = []
    for name, v in value.items():
        if not isinstance(name, str) or not HEADER_NAME_RE.match(name):
            raise RpcError.invalid_params("headers: names must be X-… tokens")
        if not isinstance(v, str) or len(v) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise RpcError.invalid_params(f"headers: bad value for {name}")
        out.append((name, v))
    return out


def _sdp_body(request: Request) -> bytes | None:
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return request.body if request.body and content_type == "application/sdp" else None


def _name_addr(value: str | None) -> NameAddr | None:
    if not value:
        return None
    try:
        return NameAddr.parse(value)
    except UriError:
        return None


def _parse_body(content_type: str, text: str) -> Any:
    """JSON bodies arrive parsed; FreeSWITCH's send_info uses freeswitch/data for whatever it carries."""
    if (
        content_type == "application/json"
        or content_type.endswith("+json")
        or (content_type == "freeswitch/data" and text.lstrip()[:1] in ("{", "["))
    ):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:80]


def _dtmf_relay_signal(text: str) -> str | None:
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip().lower() == "signal":
            value = value.strip().upper()
            return value if len(value) == 1 and value in "0123456789*#ABCD" else None
    return None


def _reason_text(reason_headers: list[str]) -> str | None:
    for value in reason_headers:
        try:
            _, _, text = parse_reason_header(value)
        except ValueError:
            continue
        if text:
            return text
    return None


def _cause(status: int | None, reason_headers: list[str], why: str, by: str) -> str:
    cause = cause_from_reason(reason_headers)
    if cause:
        return cause
    if why == "cancelled":
        return "ORIGINATOR_CANCEL"
    if why == "bye":
        return "NORMAL_CLEARING"
    if why in ("timeout", "no ACK", "session timer expired", "no progress"):
        return "RECOVERY_ON_TIMER_EXPIRE"
    if why == "no answer":
        return "NO_ANSWER"
    if why.startswith("auth"):
        return "CALL_REJECTED"
    if why.startswith("bad 2xx"):
        return "NORMAL_TEMPORARY_FAILURE"
    if status is not None and status >= 300:
        return cause_from_sip_status(status)
    return "NORMAL_CLEARING"
