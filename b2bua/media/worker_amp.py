"""The AMP commands between a node and its media workers (``media.workers`` > 0).

Node → worker: :class:`CreateLeg` (binds the RTP/RTCP ports, registers the two stream keys the
node drew; returns the ports for the SDP), :class:`ApplyMedia` (every negotiated media: the
first starts the bridge; hold and unhold are the directions in it), :class:`SendDtmf`,
:class:`CloseLeg` (returns the leg's statistics). Worker → node: :class:`StreamEvent`
(publisher/player connected or gone), :class:`DtmfReceived`, :class:`Report` (each second: the
packets received per leg, for the dead-call watchdog, and the worker's media metrics).

Negotiated media and statistics travel pickled: the two ends are one program, a node and the
child it spawned, talking over a private socketpair; nothing else can write to it.
"""

from __future__ import annotations

import pickle
from typing import Any

from twisted.protocols import amp

NO_PORTS = b"NO_PORTS"
UNKNOWN_LEG = b"UNKNOWN_LEG"
REPORT_LEGS_PER_BOX = 1000  # an AMP value holds at most 65,535 bytes


class Pickled(amp.Argument):
    """A Python value (dataclasses of b2bua.wire.sdp and b2bua.media.stats)."""

    def toString(self, inObject: Any) -> bytes:  # noqa: N802, N803
        return pickle.dumps(inObject, protocol=pickle.HIGHEST_PROTOCOL)

    def fromString(self, inString: bytes) -> Any:  # noqa: N802, N803
        return pickle.loads(inString)  # noqa: S301 (our own child process, see the module doc)


class NoPorts(Exception):
    """The worker has no free RTP port pair."""


class UnknownLeg(Exception):
    """No such leg in the worker (already closed)."""


_ERRORS = {NoPorts: NO_PORTS, UnknownLeg: UNKNOWN_LEG}


class CreateLeg(amp.Command):
    arguments = [(b"leg", amp.Unicode()), (b"push_key", amp.Unicode()), (b"play_key", amp.Unicode()),
                 (b"video", amp.Boolean())]
    response = [(b"audio_port", amp.Integer()), (b"video_port", amp.Integer())]  # 0: no video
    errors = _ERRORS


class ApplyMedia(amp.Command):
    arguments = [(b"leg", amp.Unicode()), (b"negotiated", Pickled())]
    response: list = []
    errors = _ERRORS


class SendDtmf(amp.Command):
    arguments = [(b"leg", amp.Unicode()), (b"digits", amp.Unicode())]
    response: list = []
    errors = _ERRORS


class CloseLeg(amp.Command):
    arguments = [(b"leg", amp.Unicode())]
    response = [(b"stats", Pickled())]  # LegStats, or None when media never started
    errors = _ERRORS


class StreamEvent(amp.Command):
    """``stream``: publisher or player; ``state``: connected or gone."""

    arguments = [(b"leg", amp.Unicode()), (b"stream", amp.Unicode()), (b"state", amp.Unicode()),
                 (b"id", amp.Unicode()), (b"reason", amp.Unicode(optional=True))]
    response: list = []
    requiresAnswer = False


class DtmfReceived(amp.Command):
    arguments = [(b"leg", amp.Unicode()), (b"digit", amp.Unicode())]
    response: list = []
    requiresAnswer = False


class Report(amp.Command):
    """``packets``: {leg: datagrams received}; ``metrics``: the worker's totals (see
    b2bua.media.worker.metrics_snapshot), in the first box of a report only."""

    arguments = [(b"packets", Pickled()), (b"metrics", Pickled(optional=True))]
    response: list = []
    requiresAnswer = False
