"""The INVITE session usage (RFC 3261 §13–15, RFC 6026, RFC 4028): one call leg, either direction.

It owns the dialog and the SIP side of a call: INVITE with digest auth, provisional
responses, 2xx/ACK (with the UAS's 2xx retransmissions), CANCEL, BYE, re-INVITE and
UPDATE both ways, session timers, and in-dialog INFO/MESSAGE/NOTIFY/REFER. SDP is opaque
here: offers and answers come from and go to the listener (the call layer), which owns
media. Time comes from the stack's reactor.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from b2bua.sip.dialog import ALLOW, Dialog, DialogError
from b2bua.sip.transaction import ServerTransaction, make_cancel
from b2bua.wire.digest import DigestError
from b2bua.wire.sip import Request, Response, make_response

if TYPE_CHECKING:
    from b2bua.sip.registration import Registration
    from b2bua.sip.ua import SipStack

log = Logger()

SDP = "application/sdp"
MIN_SE = 90  # RFC 4028 §4: the smallest session interval allowed
# FreeSWITCH (mod_sofia) reads X-FS-Support from the INVITE it receives and from the 180/183/200
# to an INVITE it sent; "send_info" lets uuid_send_info and the send_info application reach us
# without fs_send_unsupported_info=true. Not "update_display": that makes it send INFOs of type
# message/update_display whose content is in X- headers the `info` event does not carry.
FS_SUPPORT = ("X-FS-Support", "send_info")


class InviteListener(Protocol):
    def invite_progress(self, session: InviteSession, status: int, sdp: bytes | None) -> None: ...

    def invite_answered(self, session: InviteSession, sdp: bytes | None) -> None: ...

    def invite_ended(
        self, session: InviteSession, status: int | None, reason_headers: list[str], by: str, why: str
    ) -> None: ...

    def invite_offer(self, session: InviteSession, sdp: bytes) -> bytes | None: ...

    def invite_request(self, session: InviteSession, request: Request) -> int: ...

    def invite_make_offer(self, session: InviteSession) -> bytes | None:
        """A fresh offer for our 2xx to a re-INVITE without SDP (None: refuse it with 488)."""
        ...

    def invite_answer(self, session: InviteSession, sdp: bytes | None) -> None:
        """The ACK to that 2xx came: ``sdp`` is the answer to our offer (None if it had none)."""
        ...


def sdp_of(message: Request | Response) -> bytes | None:
    content_type = (message.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return message.body if message.body and content_type == SDP else None


class InviteSession:
    """States: calling, early (uac); incoming, answering (uas); confirmed; cancelling; terminated."""

    def __init__(self, stack: SipStack, reg: Registration, role: str, listener: InviteListener) -> None:
        self.stack = stack
        self.reg = reg
        self.role = role
        self.listener = listener
        self.state = "idle"
        self.dialog: Dialog | None = None
        self.invite: Request | None = None
        self.local_sdp: bytes | None = None
        self.remote_sdp: bytes | None = None
        self.local_tag = secrets.token_hex(6)
        self.ended_by: str | None = None
        self._txn = None  # our INVITE's client transaction, or their INVITE's server transaction
        self._ack: Request | None = None
        self._auth_fresh = False
        self._challenge = None
        self._proxy = False
        self._got_provisional = False
        self._cancel_pending = False
        self._timers: dict[str, object] = {}
        self._pending_2xx: tuple[Response, object, int] | None = None  # (response, target, cseq)
        self._reinvite: Deferred | None = None
        self.session_expires: int | None = None
        self.refresher: str | None = None
        self._se_ask = 0  # the Session-Expires our INVITE asks for (0: none; a 422 raises it)
        self._min_se = MIN_SE
        self.to_uri = ""
        self._extra: list[tuple[str, str]] = []
        self._call_id = ""
        self._cseq = 0
        self._we_are: str | None = None
        self._late_answers: set[str] = set()  # To tags of 2xx that came after we gave up
        self._ended_uac: _EndedUac | None = None
        self._bye_after_ack = False
        self._offer_in_2xx: int | None = None  # CSeq of a re-INVITE whose 2xx carried our offer

    def __repr__(self) -> str:
        call_id = self.invite.call_id if self.invite is not None else "-"
        return f"<InviteSession {self.role} {self.state} call-id={call_id}>"

    @property
    def call_id(self) -> str:
        return self.invite.call_id if self.invite is not None else ""

    @property
    def late_offer(self) -> bool:
        """An incoming INVITE without SDP: our 2xx carries the offer, the ACK the answer."""
        return self.role == "uas" and self.invite is not None and sdp_of(self.invite) is None

    # == UAC ==============================================================================================
    @classmethod
    def outgoing(
        cls,
        stack: SipStack,
        reg: Registration,
        to_uri: str,
        offer: bytes,
        listener: InviteListener,
        headers: Iterable[tuple[str, str]] = (),
    ) -> InviteSession:
        session = cls(stack, reg, "uac", listener)
        session.to_uri = to_uri
        session.local_sdp = offer
        session._extra = list(headers)
        session._call_id = f"{secrets.token_hex(12)}@mpb2bua"
        session._cseq = random.randint(1, 10000)
        session._se_ask = _session_expires_config(stack)
        return session

    def start(self) -> None:
        self.state = "calling"
        self._send_invite()

    def _send_invite(self) -> None:
        stack = self.stack
        self._cseq += 1
        request = stack.new_request(
            "INVITE",
            self.to_uri,
            from_uri=stack.aor(self.reg.user),
            from_tag=self.local_tag,
            to_uri=self.to_uri,
            call_id=self._call_id,
            cseq=self._cseq,
        )
        self._add_common(request)
        request.headers.add("Supported", "timer")
        if self._se_ask:
            # RFC 4028 §7.1: ask for a session timer, the UAS picks the refresher; a dead PBX
            # then ends the call instead of leaving it up and silent
            request.headers.add("Session-Expires", str(self._se_ask))
            request.headers.add("Min-SE", str(self._min_se))
        request.headers.add(*FS_SUPPORT)
        for name, value in self._extra:
            request.headers.add(name, value)
        if self._challenge is not None:
            try:
                value = self.reg.digest.authorization(self._challenge, "INVITE", self.to_uri)
            except DigestError as e:
                self._end(None, [], "local", f"auth: {e}")
                return
            request.headers.add("Proxy-Authorization" if self._proxy else "Authorization", value)
        request.headers.add("Content-Type", SDP)
        request.body = self.local_sdp or b""
        self.invite = request
        self._txn = stack.send_request(request, self._on_invite_response)
        self._arm_timer_c()

    def _add_common(self, message: Request | Response) -> None:
        message.headers.add("Contact", f"<{self.stack.contact_uri(self.reg.contact_user)}>")

    def _on_invite_response(self, response: Response) -> None:
        status = response.status
        if self.state == "terminated":
            if 200 <= status < 300:
                self._after_end().on_2xx(response)
            return
        if status < 200:
            # §9.1: any provisional response, 100 included, allows the CANCEL
            self._got_provisional = True
            if self._cancel_pending:
                self._send_cancel()
            if status == 100:
                return
            if self.state in ("calling", "early"):
                self._arm_timer_c()  # §16.7: each provisional but 100 re-arms Timer C
            if self.state == "calling":
                self.state = "early"
            if self.state != "cancelling":
                sdp = sdp_of(response)
                if sdp is not None:
                    self.remote_sdp = sdp
                self.listener.invite_progress(self, status, sdp)
            return
        if 200 <= status < 300:
            self._on_2xx(response)
            return
        self._txn = None
        if status == 422 and self.state in ("calling", "early") and self._retry_min_se(response):
            return
        if status in (401, 407) and self.state in ("calling", "early"):
            name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
            try:
                challenge = self.reg.digest.choose(response.headers.get_all(name))
            except DigestError:
                challenge = None
            if challenge is not None and (not self._auth_fresh or challenge.stale):
                self._challenge, self._proxy, self._auth_fresh = challenge, status == 407, True
                self._send_invite()
                return
        why = "cancelled" if self.state == "cancelling" else ("timeout" if response.local else "rejected")
        by = "local" if self.state == "cancelling" or response.local else "remote"
        self._end(status, response.headers.get_all("Reason"), by, why)

    def _on_2xx(self, response: Response) -> None:
        if self.state == "confirmed":
            if self._ack is not None:  # a 2xx retransmission: our ACK was lost
                self._resend_ack()
            return
        self._cancel_timer("C")
        try:
            dialog = Dialog.for_uac(self.invite, response)
        except DialogError as e:
            log.warn("unusable 2xx to INVITE {call_id}: {e}", call_id=self.call_id, e=e)
            self._end(response.status, [], "remote", f"bad 2xx: {e}")
            return
        self.dialog = dialog
        self.stack.register_dialog(self)
        self._send_ack(response)
        if self.state == "cancelling":
            # the answer crossed our CANCEL: the call is up, so end it with a BYE (§9.1)
            self._send_bye()
            self._end(487, [], "local", "cancelled")
            return
        self.state = "confirmed"
        self.remote_sdp = sdp_of(response) or self.remote_sdp
        self._start_session_timer(response, we_are="uac")
        self.listener.invite_answered(self, self.remote_sdp)

    def _send_ack(self, response: Response) -> None:
        ack = self.dialog.new_request(self.stack, "ACK", cseq=self.invite.cseq[0])
        auth = self.invite.headers.get("Proxy-Authorization") or self.invite.headers.get("Authorization")
        if auth is not None:
            name = (
                "Proxy-Authorization" if self.invite.headers.get("Proxy-Authorization") else "Authorization"
            )
            ack.headers.add(name, auth)
        self._ack = ack
        self.stack.send_request(ack, _ignore, target=self.dialog.next_hop())

    def _resend_ack(self) -> None:
        try:
            self.stack.send(self._ack, self.dialog.next_hop())
        except Exception as e:
            log.warn("ACK retransmission failed: {e}", e=e)

    def _after_end(self) -> _EndedUac:
        if self._ended_uac is None:
            self._ended_uac = _EndedUac(self.stack, self.invite, self.dialog, self._ack, self._late_answers)
        return self._ended_uac

    def _send_cancel(self) -> None:
        self._cancel_pending = False
        if self.invite is None:
            return
        cancel = make_cancel(self.invite)
        self.stack.send_request(cancel, _ignore)
        # §9.1: if no final response comes within 64*T1 the call is considered gone, and so is
        # the INVITE's transaction (in proceeding it has no timer of its own)
        guard = 64 * self.stack.config.t1
        self._timer("cancel", guard, self._cancel_timed_out)
        if self._txn is not None:
            self._txn.abandon(guard)

    def _cancel_timed_out(self) -> None:
        self._end(487, [], "local", "cancelled")

    def _arm_timer_c(self) -> None:
        """Timer C (RFC 3261 §16.6: > 3 min): an INVITE that got a provisional response and then
        nothing more (a PBX that died) is given up when it runs out."""
        self._timer("C", self.stack.config.timer_c, self._timer_c_expired)

    def _timer_c_expired(self) -> None:
        if self.state not in ("calling", "early"):
            return
        log.info("no response to INVITE {call_id} for {t} s (Timer C): giving up",
                 call_id=self.call_id, t=self.stack.config.timer_c)
        if self._got_provisional:
            self._send_cancel()
        # §16.8: without a provisional response it is as if a 408 had come (Timer B ends the
        # transaction); the caller is told now, whatever the CANCEL brings
        self._end(408, [], "local", "no progress")

    def _retry_min_se(self, response: Response) -> bool:
        """RFC 4028 §7.4: a 422 names the smallest interval the far end takes: ask again with it
        (only ever upwards, so this ends)."""
        value = (response.headers.get("Min-SE") or "").partition(";")[0].strip()
        if not self._se_ask or not value.isdigit() or int(value) <= self._se_ask:
            return False
        self._se_ask = self._min_se = int(value)
        self._send_invite()
        return True

    # == UAS ==============================================================================================
    @classmethod
    def incoming(
        cls,
        stack: SipStack,
        reg: Registration,
        request: Request,
        txn: ServerTransaction,
        listener: InviteListener,
    ) -> InviteSession:
        session = cls(stack, reg, "uas", listener)
        session.invite = request
        session._txn = txn
        session.state = "incoming"
        session.dialog = Dialog.for_uas(request, session.local_tag)  # DialogError → the caller answers 400
        session.remote_sdp = sdp_of(request)
        stack.register_dialog(session)
        return session

    def ring(self, status: int = 180) -> None:
        if self.state == "incoming":
            self._respond_invite(status)

    def answer(self, sdp: bytes) -> None:
        if self.state != "incoming":
            raise InviteStateError(f"cannot answer in state {self.state}")
        self.local_sdp = sdp
        self.state = "answering"
        response = self._response(self.invite, 200)
        response.headers.add(*FS_SUPPORT)
        self._add_session_timer_answer(response)
        response.headers.add("Content-Type", SDP)
        response.body = sdp
        self._send_2xx(self._txn, response)

    def reject(self, status: int = 486, reason: str | None = None) -> None:
        if self.state != "incoming":
            raise InviteStateError(f"cannot reject in state {self.state}")
        self._respond_invite(status, reason)
        self._end(status, [], "local", "rejected")

    def _respond_invite(self, status: int, reason: str | None = None) -> None:
        response = self._response(self.invite, status, reason)
        if 100 < status < 200:
            response.headers.add(*FS_SUPPORT)
        try:
            self._txn.respond(response)
        except Exception:
            log.failure("responding {status} to INVITE failed", status=status)

    def _response(self, request: Request, status: int, reason: str | None = None) -> Response:
        response = make_response(request, status, reason, to_tag=self.local_tag)
        if 100 < status < 300:
            self._add_common(response)
            if request.method == "INVITE":  # §12.1.1: the route set of the dialog goes back to the caller
                for route in request.headers.get_all("Record-Route"):
                    response.headers.add("Record-Route", route)
        if status < 300 and request.method in ("INVITE", "UPDATE"):
            response.headers.add("Allow", ALLOW)
        return response

    def _send_2xx(self, txn: ServerTransaction, response: Response) -> None:
        """2xx to an INVITE: retransmitted by us until the ACK comes (RFC 6026, §13.3.1.4)."""
        txn.respond(response)
        self._pending_2xx = (response, txn.source, response.cseq[0])
        t1 = self.stack.config.t1
        self._retransmit_2xx(t1, 0.0)

    def _retransmit_2xx(self, interval: float, elapsed: float) -> None:
        t1 = self.stack.config.t1
        if self._pending_2xx is None:
            return
        if elapsed >= 64 * t1:
            self._pending_2xx = None
            log.warn("no ACK for our 2xx on {call_id}: ending the call", call_id=self.call_id)
            self._send_bye()
            self._end(408, [], "local", "no ACK")
            return
        if elapsed > 0:
            response, target, _ = self._pending_2xx
            try:
                self.stack.send(response, target)
            except Exception as e:
                log.warn("2xx retransmission failed: {e}", e=e)
        delay = min(interval, 64 * t1 - elapsed)  # give up at 64*T1 exactly, not up to T2 later
        self._timer("2xx", delay, lambda: self._retransmit_2xx(min(2 * interval, 4.0), elapsed + delay))

    def cancelled(self, cancel_txn: ServerTransaction, cancel: Request) -> None:
        """The PBX CANCELled the INVITE we have not answered yet (§9.2)."""
        cancel_txn.respond(make_response(cancel, 200, to_tag=self.local_tag))
        if self.state == "incoming":
            self._respond_invite(487)
            self._end(487, cancel.headers.get_all("Reason"), "remote", "cancelled")

    # == both: in-dialog requests received ================================================================
    def handle_request(self, request: Request, txn: ServerTransaction | None) -> None:
        method = request.method
        if method == "ACK":
            self._on_ack(request)
            return
        if txn is None:
            return
        if not self.dialog.accept_remote_cseq(request):
            txn.respond(self._response(request, 500, "Server Internal Error (CSeq out of order)"))
            return
        if method == "BYE":
            txn.respond(self._response(request, 200))
            if self.state == "incoming":  # §15.1.2: BYE on an early dialog: the INVITE gets a 487
                self._respond_invite(487)
            self._end(None, request.headers.get_all("Reason"), "remote", "bye")
        elif method in ("INVITE", "UPDATE"):
            self._on_remote_offer(request, txn)
        elif method in ("INFO", "MESSAGE", "NOTIFY", "OPTIONS"):
            status = 200 if method == "OPTIONS" else self.listener.invite_request(self, request)
            txn.respond(self._response(request, status))
        else:
            txn.respond(self._response(request, 501))

    def _on_ack(self, ack: Request) -> None:
        if self._pending_2xx is not None and ack.cseq[0] == self._pending_2xx[2]:
            self._pending_2xx = None
            self._cancel_timer("2xx")
            sdp = sdp_of(ack)
            if self.state == "answering" and self._bye_after_ack:
                self._send_bye()  # §15: the callee that hung up meanwhile waited for this ACK
                self._end(None, [], "local", "bye")
            elif self.state == "answering":
                self.state = "confirmed"
                if sdp is not None:
                    self.remote_sdp = sdp
                self._start_session_timer(self.invite, we_are="uas")
                # late offer: the ACK's SDP (or its absence) is the answer to our 2xx's offer
                self.listener.invite_answered(self, sdp if self.late_offer else self.remote_sdp)
            elif self.state == "confirmed" and self._offer_in_2xx == ack.cseq[0]:
                self._offer_in_2xx = None
                if sdp is not None:
                    self.remote_sdp = sdp
                self.listener.invite_answer(self, sdp)

    def _on_remote_offer(self, request: Request, txn: ServerTransaction) -> None:
        if self.state not in ("confirmed",) and request.method == "INVITE":
            txn.respond(self._response(request, 491))
            return
        if self._reinvite is not None or self._pending_2xx is not None:
            txn.respond(self._response(request, 491))  # glare: our own offer is outstanding
            return
        offer = sdp_of(request)
        answer = self.local_sdp
        if offer is not None:
            answer = self.listener.invite_offer(self, offer)
            if answer is None:
                txn.respond(self._response(request, 488))
                return
            self.remote_sdp = offer
            self.local_sdp = answer
        elif request.method == "INVITE":
            # RFC 3264 §5 / RFC 6337 §4.2: a re-INVITE without SDP asks for our offer in the 2xx;
            # the answer comes in the ACK (FreeSWITCH sends these for 3pcc and some transfers)
            answer = self.listener.invite_make_offer(self)
            if answer is None:
                txn.respond(self._response(request, 488))
                return
            self.local_sdp = answer
            self._offer_in_2xx = request.cseq[0]
        self.dialog.update_target(request)
        response = self._response(request, 200)
        self._add_session_timer_answer(response, refresh=request)
        if answer and (offer is not None or request.method == "INVITE"):
            response.headers.add("Content-Type", SDP)
            response.body = answer
        if request.method == "INVITE":
            self._send_2xx(txn, response)
        else:
            txn.respond(response)
        self._restart_session_timer(request)

    # == both: requests we send in the dialog =============================================================
    def hangup(self, reason: str | None = None) -> None:
        """End the call whatever its state: CANCEL, BYE, or reject an unanswered incoming call.
        ``reason``: a Reason header value (RFC 3326) for the BYE of a confirmed call."""
        if self.state in ("calling", "early"):
            self.state = "cancelling"
            self._cancel_timer("C")
            if self._got_provisional:
                self._send_cancel()
            else:
                self._cancel_pending = True  # §9.1: CANCEL only after a provisional response
                self._timer("cancel", 64 * self.stack.config.t1, self._cancel_timed_out)
        elif self.state == "incoming":
            self.reject(486)
        elif self.state == "answering":
            self._bye_after_ack = True  # §15: no BYE before the ACK of our 2xx (or its timeout)
        elif self.state == "confirmed":
            self._send_bye(reason)
            self._end(None, [], "local", "bye")

    def _send_bye(self, reason: str | None = None) -> None:
        if self.dialog is not None:
            self.request("BYE", headers=[("Reason", reason)] if reason else ())

    def request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Deferred:
        """An in-dialog non-INVITE request; fires with the final response (auth answered once)."""
        d: Deferred = Deferred()
        if self.dialog is None:
            d.errback(InviteStateError("no dialog"))
            return d
        headers = list(headers)

        def send(auth: tuple[str, str] | None) -> None:
            request = self.dialog.new_request(self.stack, method)
            for name, value in headers:
                request.headers.add(name, value)
            if auth is not None:
                request.headers.add(*auth)
            if content_type:
                request.headers.add("Content-Type", content_type)
            request.body = body
            self.stack.send_request(
                request, lambda r: on_response(request, r, auth is not None), target=self.dialog.next_hop()
            )

        def on_response(request: Request, response: Response, authed: bool) -> None:
            if response.status < 200 or d.called:
                return
            if response.status in (401, 407) and not authed:
                auth = self._answer_challenge(response, method, request.uri)
                if auth is not None:
                    send(auth)
                    return
            d.callback(response)

        send(None)
        return d

    def _answer_challenge(self, response: Response, method: str, uri: str) -> tuple[str, str] | None:
        name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
        try:
            challenge = self.reg.digest.choose(response.headers.get_all(name))
            value = self.reg.digest.authorization(challenge, method, uri)
        except DigestError:
            return None
        return ("Proxy-Authorization" if response.status == 407 else "Authorization", value)

    def reinvite(self, sdp: bytes) -> Deferred:
        """Send a new offer (hold, resume, refresh); fires with (status, remote sdp or None)."""
        d: Deferred = Deferred()
        if self.state != "confirmed" or self._reinvite is not None or self._pending_2xx is not None:
            d.errback(InviteStateError(f"cannot re-INVITE in state {self.state}"))
            return d
        self._reinvite = d
        self._send_reinvite(sdp, None, retry_glare=True)
        return d

    def _send_reinvite(self, sdp: bytes, auth: tuple[str, str] | None, retry_glare: bool) -> None:
        request = self.dialog.new_request(self.stack, "INVITE")
        self._add_common(request)
        request.headers.add("Supported", "timer")
        if self.session_expires:
            # we are this re-INVITE's UAC: refresher= is relative to it, self.refresher to the first INVITE
            refresher = self.refresher if self.role == "uac" else _flip(self.refresher)
            request.headers.add("Session-Expires", f"{self.session_expires};refresher={refresher}")
        if auth is not None:
            request.headers.add(*auth)
        request.headers.add("Content-Type", SDP)
        request.body = sdp

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            d = self._reinvite
            if 200 <= response.status < 300:
                self.dialog.update_target(response)  # a target refresh: the ACK goes to the new Contact
                ack = self.dialog.new_request(self.stack, "ACK", cseq=request.cseq[0])
                self.stack.send_request(ack, _ignore, target=self.dialog.next_hop())
                if d is None:
                    return  # a retransmitted 2xx after we were done
                self._reinvite = None
                self.local_sdp = sdp
                answer = sdp_of(response)
                if answer is not None:
                    self.remote_sdp = answer
                self._restart_session_timer(response)
                d.callback((response.status, answer))
                return
            if d is None:
                return
            if response.status in (401, 407) and auth is None:
                value = self._answer_challenge(response, "INVITE", request.uri)
                if value is not None:
                    self._send_reinvite(sdp, value, retry_glare)
                    return
            if response.status == 491 and retry_glare:
                # §14.1: the owner of the Call-ID (the UAC that made the dialog) waits 2.1–4 s,
                # the other side 0–2 s, so that the two retries do not collide again
                delay = random.uniform(2.1, 4.0) if self.role == "uac" else random.uniform(0.0, 2.0)
                self._timer("glare", delay, lambda: self._send_reinvite(sdp, auth, False))
                return
            self._reinvite = None
            d.callback((response.status, None))
            if response.status in (408, 481):  # §14.1: the dialog is gone
                self._send_bye()
                self._end(response.status, [], "remote", "re-INVITE failed")

        self.stack.send_request(request, on_response, target=self.dialog.next_hop())

    # == session timers (RFC 4028) ========================================================================
    def _add_session_timer_answer(self, response: Response, refresh: Request | None = None) -> None:
        request = refresh or self.invite
        supported = "timer" in (request.headers.get("Supported") or "").replace(" ", "").split(",")
        value = request.headers.get("Session-Expires")
        if value:
            interval, refresher = _parse_session_expires(value)
            if interval is None:
                return
            if refresher is None:
                refresher = "uac" if supported else "uas"
        elif supported and (self.session_expires or _session_expires_config(self.stack)):
            # §9: the caller supports timers but asks for none: we may ask in our 2xx. The
            # caller (the PBX) refreshes; if it dies, no refresh comes and the call ends.
            interval = self.session_expires or _session_expires_config(self.stack)
            min_se = (request.headers.get("Min-SE") or "").partition(";")[0].strip()
            if min_se.isdigit():
                interval = max(interval, int(min_se))
            refresher = "uac"
        else:
            return
        self.session_expires = max(interval, MIN_SE)
        # kept relative to the first INVITE; the remote is the UAC of a refresh it sends
        self.refresher = _flip(refresher) if refresh is not None and self.role == "uac" else refresher
        response.headers.add("Session-Expires", f"{self.session_expires};refresher={refresher}")
        if supported:
            response.headers.add("Require", "timer")

    def _start_session_timer(self, message: Request | Response, we_are: str) -> None:
        if isinstance(message, Response):
            interval, refresher = _parse_session_expires(message.headers.get("Session-Expires") or "")
            if interval is None:
                return
            self.session_expires, self.refresher = interval, refresher or "uac"
        if not self.session_expires:
            return
        self._we_are = we_are
        self._arm_session_timer()

    def _restart_session_timer(self, message: Request | Response) -> None:
        if self.session_expires and self.state == "confirmed":
            self._arm_session_timer()

    def _arm_session_timer(self) -> None:
        interval = self.session_expires
        if self.refresher == self._we_are:
            self._timer("refresh", interval / 2, self._refresh_session)
        # §10: the session ends without a successful refresh, whoever was to send it: a refresh
        # of ours that failed (500, 488 …) or could not go out does not keep a dead call up
        self._timer("session", interval - min(32, interval / 3), self._session_expired)

    def _refresh_session(self) -> None:
        if self.state == "confirmed" and self.local_sdp is not None and self._reinvite is None:
            self.reinvite(self.local_sdp).addErrback(lambda f: None)

    def _session_expired(self) -> None:
        if self.state == "confirmed":
            log.info("session timer expired on {call_id}: ending the call", call_id=self.call_id)
            self._send_bye()
            self._end(408, [], "local", "session timer expired")

    # == helpers ==========================================================================================
    def _timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        self._cancel_timer(name)

        def fire() -> None:
            self._timers.pop(name, None)
            try:
                fn()
            except Exception:
                log.failure("{name} timer of {session!r} failed", name=name, session=self)

        self._timers[name] = self.stack.reactor.callLater(delay, fire)

    def _cancel_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _end(self, status: int | None, reason_headers: list[str], by: str, why: str) -> None:
        if self.state == "terminated":
            return
        self.state = "terminated"
        self.ended_by = by
        for name in list(self._timers):
            self._cancel_timer(name)
        self._pending_2xx = None
        if self.role == "uac" and self._txn is not None and self.invite is not None:
            # our INVITE's transaction outlives the call (Timer M, 32 s): it passes 2xx on to
            # a small handler, not to this session and, through the listener, the whole call
            self._txn.on_response = self._after_end().on_response
        if self._reinvite is not None and not self._reinvite.called:
            d, self._reinvite = self._reinvite, None
            d.callback((487, None))
        self.stack.forget_session(self)
        try:
            self.listener.invite_ended(self, status, reason_headers, by, why)
        except Exception:
            log.failure("invite_ended listener failed")
        finally:
            # The listener (the call) holds this session and this session held the listener: a
            # reference cycle that left every ended call and its media to the cyclic GC. Nothing
            # is reported after the end, so drop the reference and let refcounting free the call.
            self.listener = _ENDED_LISTENER


class _EndedListener:
    """The listener of a terminated session: ignores what comes late, refuses in-dialog requests."""

    def invite_progress(self, session: InviteSession, status: int, sdp: bytes | None) -> None:
        pass

    def invite_answered(self, session: InviteSession, sdp: bytes | None) -> None:
        pass

    def invite_ended(
        self, session: InviteSession, status: int | None, reason_headers: list[str], by: str, why: str
    ) -> None:
        pass

    def invite_offer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        return None

    def invite_request(self, session: InviteSession, request: Request) -> int:
        return 481  # Call/Transaction Does Not Exist

    def invite_make_offer(self, session: InviteSession) -> bytes | None:
        return None

    def invite_answer(self, session: InviteSession, sdp: bytes | None) -> None:
        pass


_ENDED_LISTENER = _EndedListener()


class _EndedUac:
    """What an ended UAC session still does with 2xx to its INVITE (§13.2.2.4): ACK each one;
    a 2xx from a dialog that was never confirmed (it came after we gave up, or forked) also
    gets a BYE, once per To tag. A retransmission of the confirmed dialog's 2xx (our ACK was
    lost) is only ACKed again: that dialog has had its BYE."""

    def __init__(self, stack: SipStack, invite: Request, dialog: Dialog | None, ack: Request | None,
                 late_answers: set[str]) -> None:
        self.stack = stack
        self.invite = invite
        self.dialog = dialog
        self.ack = ack
        self.late_answers = late_answers

    def on_response(self, response: Response) -> None:
        if 200 <= response.status < 300:
            self.on_2xx(response)

    def on_2xx(self, response: Response) -> None:
        try:
            dialog = Dialog.for_uac(self.invite, response)
        except DialogError:
            return
        if self.dialog is not None and self.ack is not None and dialog.remote_tag == self.dialog.remote_tag:
            try:
                self.stack.send(self.ack, self.dialog.next_hop())
            except Exception as e:
                log.warn("ACK retransmission failed: {e}", e=e)
            return
        ack = dialog.new_request(self.stack, "ACK", cseq=self.invite.cseq[0])
        self.stack.send_request(ack, _ignore, target=dialog.next_hop())
        if dialog.remote_tag in self.late_answers:
            return  # a retransmission of the same late 2xx: ACK it again, the BYE is under way
        self.late_answers.add(dialog.remote_tag)
        bye = dialog.new_request(self.stack, "BYE")
        self.stack.send_request(bye, _ignore, target=dialog.next_hop())


class InviteStateError(Exception):
    """A call-control action that the session's state does not allow."""


def _parse_session_expires(value: str) -> tuple[int | None, str | None]:
    head, _, params = value.partition(";")
    head = head.strip()
    if not head.isdigit():
        return None, None
    refresher = None
    for param in params.split(";"):
        name, _, v = param.strip().partition("=")
        if name.strip().lower() == "refresher" and v.strip().lower() in ("uac", "uas"):
            refresher = v.strip().lower()
    return int(head), refresher


def _session_expires_config(stack: SipStack) -> int:
    """The session interval we ask for (``sip.session_expires``; 0: none), never below Min-SE."""
    value = stack.config.session_expires
    return max(value, MIN_SE) if value > 0 else 0


def _flip(refresher: str | None) -> str | None:
    return {"uac": "uas", "uas": "uac"}.get(refresher or "", refresher)


def _ignore(response: Response) -> None:
    pass
