"""One inbound INVITE offered to every session of the user it reached.

A user's sessions share one registration (:mod:`b2bua.call.bindings`), so an INVITE to its
Contact is for all of them, as a SIP phone with several lines would ring: each session gets its
own ``incoming`` event with its own call id and media. The :class:`RingGroup` is the INVITE
session's listener until one of them answers; then the winner's call takes over and the others
end with ``LOSE_RACE`` (FreeSWITCH's name for "answered elsewhere"). A session that rejects or
leaves only drops out, unless it was the last one ringing or it declined with a 6xx, which
ends the INVITE for all (RFC 3261 §16.7: a 6xx stops every branch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from b2bua.sip.causes import cause_from_sip_status

if TYPE_CHECKING:
    from b2bua.sip.invite import InviteSession
    from b2bua.wire.sip import Request

__all__ = ["RingGroup", "LOSE_RACE"]

LOSE_RACE = "LOSE_RACE"


class RingGroup:
    """The calls (one per session) that ring for one inbound INVITE."""

    def __init__(self) -> None:
        self.calls: list[Any] = []  # b2bua.call.calls.Call, in the order the sessions logged in
        self.invite: InviteSession | None = None

    def add(self, call: Any) -> None:
        self.calls.append(call)
        call.ring_group = self

    def answered_by(self, call: Any) -> None:
        """``call`` answers: it becomes the INVITE session's listener; the others lose the race."""
        assert self.invite is not None
        self.invite.listener = call
        losers = [c for c in self.calls if c is not call]
        self.calls = [call]
        for loser in losers:
            end_fork(loser, LOSE_RACE, "answered elsewhere")

    def drop(self, call: Any, status: int) -> bool:
        """``call``'s session rejects with ``status`` (or leaves). True when the INVITE itself must
        be rejected now: nobody else rings, or a 6xx declines it everywhere; otherwise only this
        call ends and the others keep ringing."""
        if call not in self.calls:
            return False
        if len(self.calls) == 1 or status >= 600:
            return True
        self.calls.remove(call)
        end_fork(call, cause_from_sip_status(status), "rejected")
        return False

    # --- InviteListener until the answer --------------------------------------------------------
    def invite_ended(
        self, session: InviteSession, status: int | None, reason_headers: list[str], by: str, why: str
    ) -> None:
        calls, self.calls = self.calls, []
        for call in calls:
            call.invite_ended(session, status, reason_headers, by, why)

    def invite_request(self, session: InviteSession, request: Request) -> int:
        # INFO/UPDATE/MESSAGE on the early dialog: every ringing session learns of it
        statuses = [call.invite_request(session, request) for call in list(self.calls)]
        return min(statuses) if statuses else 481

    def invite_progress(self, session: InviteSession, status: int, sdp: bytes | None) -> None:
        pass  # only for the INVITEs we send

    def invite_answered(self, session: InviteSession, sdp: bytes | None) -> None:  # pragma: no cover
        # answered_by() makes the winner the listener before the 2xx goes out
        raise AssertionError("an inbound INVITE was answered without a winner")

    def invite_offer(self, session: InviteSession, sdp: bytes) -> bytes | None:
        return None  # no re-INVITE before our 2xx: refused


def end_fork(call: Any, cause: str, reason: str) -> None:
    """End one ringing call of a group on the gateway's side; the INVITE goes on for the others."""
    call._cancel_timer()
    call.state = "ended"
    call.event("hangup", cause=cause, reason=reason, by="local")
    call.manager.m_ended.labels(cause).inc()
    call.manager.forget(call)
