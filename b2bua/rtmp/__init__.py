"""RTMP server for live-pusher (publish) and live-player (play): the Twisted side of
:mod:`b2bua.wire.rtmp`.

* :mod:`b2bua.rtmp.streams` — :class:`StreamRegistry`, the only authority on stream keys, the
  :class:`PublishSink` the media bridge implements for the uplink and the :class:`PlayerGroup` it
  feeds for the downlink;
* :mod:`b2bua.rtmp.protocol` — one connection (handshake, commands, publish/play, slow players);
* :mod:`b2bua.rtmp.server` — :class:`RtmpServerFactory` and its metrics.

The chunk layer is our own sans-IO code rather than ``pyrtmp``: measured here, pyrtmp's
bitstring-based chunk reader took 161 µs per 200-byte audio message (about 7 ms of CPU per second
of a 44.1 kHz AAC uplink, more than the whole codec cost of a call) against 1.9 µs for a plain
``bytes``/``int.from_bytes`` parser; pyrtmp is also asyncio-only.
"""

from b2bua.rtmp.server import RtmpServerFactory
from b2bua.rtmp.streams import (
    PlayerGroup,
    PlaySource,
    PublishSink,
    StreamEndpoint,
    StreamRefused,
    StreamRegistry,
)

__all__ = [
    "PlaySource",
    "PlayerGroup",
    "PublishSink",
    "RtmpServerFactory",
    "StreamEndpoint",
    "StreamRefused",
    "StreamRegistry",
]
