"""Who may publish or play which RTMP stream key, and the fan-out to players.

:class:`StreamRegistry` is the only authority on stream keys. The call layer registers the two keys
of a call leg (``add(push_key, "publish", sink)``, ``add(play_key, "play", source)``) and removes
them when the leg ends; the RTMP protocol asks the registry at ``publish``/``play`` time and is
refused anything else.

Uplink (publish): the media bridge implements :class:`PublishSink`. Only one publisher at a time.
A second ``publish`` on a key while the current publisher is alive is refused
(``NetStream.Publish.BadName``), as nginx-rtmp and SRS do by default. But live-pusher reconnects by
itself after a network change (statechange 1102) and its old TCP connection may not be dead yet
from our side (no FIN or RST arrives from a phone that changed networks). So, like nginx-rtmp's
``drop_idle_publisher``, a new publisher takes over when the current one has sent **no bytes at
all** for ``takeover_after`` seconds (default 3 s): the old connection is aborted, its sink sees
``publisher_stopped("replaced")``, then the new one starts. A live uplink (AAC every ~23 ms) is
never displaced.

Downlink (play): a key maps to a :class:`PlayerGroup`. The bridge calls its ``set_audio_header``,
``set_video_header``, ``send_audio`` and ``send_video``; the group remembers the sequence headers
and the current group of pictures (GOP, from the last keyframe on, bounded) so that a player that
joins late gets headers first, then a decodable picture, then live data. ``on_player_joined`` and
``on_player_left`` tell the owner when players come and go.

Callbacks report what the peers do, never what the owner asked for: ``remove()`` and ``end()``
do not call ``publisher_stopped`` or ``on_player_left``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

Direction = Literal["publish", "play"]
DIRECTIONS = ("publish", "play")

DEFAULT_TAKEOVER_AFTER = 3.0  # seconds of silence after which a new publisher replaces the current one
DEFAULT_GOP_CACHE_BYTES = 2_000_000  # a GOP bigger than this is not cached (late joiners wait)

# Refusal reasons (also the metric label values).
UNKNOWN_KEY = "unknown_key"
WRONG_DIRECTION = "wrong_direction"
BUSY = "busy"
ENDED = "ended"


def key_prefix(key: str) -> str:
    """What may be logged of a stream key: its first 6 characters."""
    return key[:6] + "…"


class StreamRefused(Exception):
    """A ``publish`` or ``play`` the registry refuses; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


# --- what the media bridge implements ---------------------------------------------------------------


class PublishSink(Protocol):
    """The uplink of one call leg. Called on the reactor thread, in this order per publisher:
    ``publisher_started`` once, then ``audio``/``video`` any number of times, then
    ``publisher_stopped`` once. Several publishers may follow each other on the same key
    (reconnects): each gets its own started/stopped pair, never overlapping.

    ``publisher_started`` comes just before the publisher's first media message or metadata,
    whichever is first, so ``metadata`` is the ``onMetaData`` object when the client sent one before
    its media (FFmpeg and live-pusher do, right after ``publish``), else ``None``.

    ``audio``/``video`` get the FLV tag body as received (``0xAF 0x00`` + AudioSpecificConfig for
    the AAC sequence header, ``0xAF 0x01`` + frame for raw AAC; AVC likewise) and the RTMP timestamp
    in milliseconds (modulo 2**32). This is the hot path: return quickly.

    ``publisher_stopped`` reasons: ``unpublished`` (FCUnpublish/deleteStream/closeStream),
    ``disconnected`` (TCP closed), ``replaced`` (a reconnect took over), ``error`` (bad input),
    ``timeout``.
    """

    def publisher_started(self, publisher_id: str, metadata: dict[str, Any] | None) -> None: ...

    def audio(self, timestamp_ms: int, payload: bytes) -> None: ...

    def video(self, timestamp_ms: int, payload: bytes) -> None: ...

    def publisher_stopped(self, reason: str) -> None: ...


class PlaySource(Protocol):
    """Optional owner of a play key: told when players join and leave (see :class:`PlayerGroup`)."""

    def player_joined(self, player_id: str) -> None: ...

    def player_left(self, player_id: str, reason: str) -> None: ...


# --- what the RTMP protocol implements --------------------------------------------------------------


class Publisher(Protocol):
    """One publishing connection, as the registry sees it."""

    publisher_id: str
    last_received: float  # clock seconds when the connection last received any byte

    def kick(self, reason: str) -> None:
        """Stop publishing and drop the connection now, without calling the sink."""


class Player(Protocol):
    """One playing connection, as :class:`PlayerGroup` sees it."""

    player_id: str

    def send_config(self, type_id: int, timestamp_ms: int, payload: bytes) -> None:
        """A sequence header or metadata: always sent."""

    def send_audio(self, timestamp_ms: int, payload: bytes) -> None: ...

    def send_video(self, timestamp_ms: int, payload: bytes, keyframe: bool) -> None:
        """May be dropped by the slow-player policy; after a drop, only a keyframe resumes video."""

    def end(self, reason: str) -> None:
        """Tell the player the stream is over (StreamEOF) and close the connection."""


# --- publish side ------------------------------------------------------------------------------------


class Publication:
    """The current publisher of a publish key and the started/stopped pairing toward the sink."""

    __slots__ = ("endpoint", "publisher", "started", "stopped", "metadata")

    def __init__(self, endpoint: StreamEndpoint, publisher: Publisher) -> None:
        self.endpoint = endpoint
        self.publisher = publisher
        self.started = False
        self.stopped = False
        self.metadata: dict[str, Any] | None = None

    @property
    def sink(self) -> PublishSink:
        return self.endpoint.sink

    def start(self) -> PublishSink:
        """Call ``publisher_started`` if not done yet; return the sink for the media path."""
        if not self.started and not self.stopped:
            self.started = True
            _call(self.sink.publisher_started, self.publisher.publisher_id, self.metadata)
        return self.sink

    def stop(self, reason: str, notify: bool = True) -> None:
        """End this publication; the sink hears ``publisher_stopped`` if it heard ``started``."""
        if self.stopped:
            return
        self.stopped = True
        if self.endpoint.publication is self:
            self.endpoint.publication = None
        if self.started and notify:
            _call(self.sink.publisher_stopped, reason)


# --- play side ---------------------------------------------------------------------------------------


class PlayerGroup:
    """The players of one play key, fed by the media bridge.

    ``send_audio``/``send_video`` recognise AAC/AVC sequence headers and route them to
    ``set_audio_header``/``set_video_header``, so a bridge may forward FLV tags blindly.
    A header that changes is re-sent to every player. Late joiners get: the audio header, the video
    header, then the cached GOP (the last keyframe and the frames after it; ``cached_keyframe`` is
    its first entry), then live data. Without a cached GOP their video starts at the next keyframe.
    """

    def __init__(
        self,
        key: str,
        *,
        on_player_joined: Callable[[str], None] | None = None,
        on_player_left: Callable[[str, str], None] | None = None,
        gop_cache_bytes: int = DEFAULT_GOP_CACHE_BYTES,
    ) -> None:
        self.key = key
        self.on_player_joined = on_player_joined
        self.on_player_left = on_player_left
        self.gop_cache_bytes = gop_cache_bytes
        self.audio_header: bytes | None = None
        self.video_header: bytes | None = None
        self.metadata: dict[str, Any] | None = None
        self.ended = False
        self._players: tuple[Player, ...] = ()
        self._gop: list[tuple[int, bytes]] = []
        self._gop_bytes = 0
        self._last_ts = 0

    def __repr__(self) -> str:
        return f"<PlayerGroup {key_prefix(self.key)} players={len(self._players)}>"

    @property
    def players(self) -> tuple[Player, ...]:
        return self._players

    @property
    def cached_keyframe(self) -> tuple[int, bytes] | None:
        """``(timestamp_ms, payload)`` of the keyframe late joiners start from, if cached."""
        return self._gop[0] if self._gop else None

    # -- owner side -------------------------------------------------------------------------------------

    def set_metadata(self, metadata: dict[str, Any] | None) -> None:
        """The ``onMetaData`` object sent to players when they start (not re-sent to current ones)."""
        self.metadata = metadata

    def set_audio_header(self, payload: bytes, timestamp_ms: int | None = None) -> None:
        """The AAC sequence header tag body (``0xAF 0x00`` + AudioSpecificConfig)."""
        if payload == self.audio_header:
            return
        self.audio_header = payload
        ts = self._last_ts if timestamp_ms is None else timestamp_ms
        for p in self._players:
            p.send_config(8, ts, payload)

    def set_video_header(self, payload: bytes, timestamp_ms: int | None = None) -> None:
        """The AVC sequence header tag body (``0x17 0x00`` + AVCDecoderConfigurationRecord)."""
        if payload == self.video_header:
            return
        self.video_header = payload
        self._gop = []  # frames coded with the old parameter sets
        self._gop_bytes = 0
        ts = self._last_ts if timestamp_ms is None else timestamp_ms
        for p in self._players:
            p.send_config(9, ts, payload)

    def send_audio(self, timestamp_ms: int, payload: bytes) -> None:
        if len(payload) > 1 and payload[1] == 0 and payload[0] >> 4 == 10:
            self.set_audio_header(payload, timestamp_ms)
            return
        self._last_ts = timestamp_ms
        for p in self._players:
            p.send_audio(timestamp_ms, payload)

    def send_video(self, timestamp_ms: int, payload: bytes, keyframe: bool) -> None:
        if len(payload) > 1 and payload[1] == 0 and payload[0] & 0x0F == 7:
            self.set_video_header(payload, timestamp_ms)
            return
        self._last_ts = timestamp_ms
        if keyframe:
            self._gop = [(timestamp_ms, payload)]
            self._gop_bytes = len(payload)
        elif self._gop:
            self._gop_bytes += len(payload)
            if self._gop_bytes > self.gop_cache_bytes:
                self._gop = []
                self._gop_bytes = 0
            else:
                self._gop.append((timestamp_ms, payload))
        for p in self._players:
            p.send_video(timestamp_ms, payload, keyframe)

    def end(self, reason: str = "ended") -> None:
        """StreamEOF to every player and close them; the group accepts no more players."""
        self.ended = True
        players, self._players = self._players, ()
        for p in players:
            try:
                p.end(reason)
            except Exception:
                log.failure("ending player {player} failed", player=p.player_id)

    # -- protocol side ----------------------------------------------------------------------------------

    def attach(self, player: Player) -> None:
        """Add a player that has been told NetStream.Play.Start: headers, GOP, then live data."""
        if self.ended:
            raise StreamRefused(ENDED, "the stream has ended")
        self._players = (*self._players, player)
        ts = self._last_ts
        if self.audio_header is not None:
            player.send_config(8, ts, self.audio_header)
        if self.video_header is not None:
            player.send_config(9, self._gop[0][0] if self._gop else ts, self.video_header)
        for i, (vts, payload) in enumerate(self._gop):
            player.send_video(vts, payload, i == 0)
        if self.on_player_joined is not None:
            _call(self.on_player_joined, player.player_id)

    def detach(self, player: Player, reason: str) -> None:
        """Remove a player (it stopped, disconnected or was closed as too slow)."""
        if player not in self._players:
            return
        self._players = tuple(p for p in self._players if p is not player)
        if self.on_player_left is not None and not self.ended:
            _call(self.on_player_left, player.player_id, reason)


# --- the registry ------------------------------------------------------------------------------------


@dataclass(eq=False)
class StreamEndpoint:
    """One registered key: a publish key has ``sink``, a play key has ``group``."""

    key: str
    direction: Direction
    sink: Any = None
    group: PlayerGroup | None = None
    publication: Publication | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<StreamEndpoint {self.direction} {key_prefix(self.key)}>"


class StreamRegistry:
    """Stream keys → endpoints. ``clock`` (an ``IReactorTime``) gives the time for the takeover rule."""

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        takeover_after: float = DEFAULT_TAKEOVER_AFTER,
        gop_cache_bytes: int = DEFAULT_GOP_CACHE_BYTES,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.takeover_after = takeover_after
        self.gop_cache_bytes = gop_cache_bytes
        self._endpoints: dict[str, StreamEndpoint] = {}

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, key: object) -> bool:
        return key in self._endpoints

    # -- owner side -------------------------------------------------------------------------------------

    def add(self, key: str, direction: Direction, sink: Any = None) -> StreamEndpoint:
        """Register ``key`` for one direction.

        ``publish``: ``sink`` is the :class:`PublishSink` (required). ``play``: ``sink`` is an
        optional :class:`PlaySource` whose ``player_joined``/``player_left`` become the group's
        callbacks (they may also be set on ``endpoint.group`` directly).
        """
        if not isinstance(key, str) or not key:
            raise ValueError("a stream key must be a non-empty string")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not 'publish' or 'play'")
        if key in self._endpoints:
            raise ValueError(f"stream key {key_prefix(key)} is already registered")
        if direction == "publish":
            if sink is None:
                raise ValueError("a publish key needs a sink")
            endpoint = StreamEndpoint(key, direction, sink)
        else:
            group = PlayerGroup(key, gop_cache_bytes=self.gop_cache_bytes)
            if sink is not None:
                group.on_player_joined = sink.player_joined
                group.on_player_left = sink.player_left
            endpoint = StreamEndpoint(key, direction, sink, group)
        self._endpoints[key] = endpoint
        return endpoint

    def remove(self, key: str) -> None:
        """Forget ``key``: its publisher is disconnected, its players get StreamEOF and are closed.
        No callbacks. Unknown keys are ignored."""
        endpoint = self._endpoints.pop(key, None)
        if endpoint is None:
            return
        pub = endpoint.publication
        if pub is not None:
            pub.stop("removed", notify=False)
            pub.publisher.kick("removed")
        if endpoint.group is not None:
            endpoint.group.end("removed")

    def lookup(self, key: str, direction: Direction) -> StreamEndpoint | None:
        endpoint = self._endpoints.get(key)
        if endpoint is None or endpoint.direction != direction:
            return None
        return endpoint

    def group(self, key: str) -> PlayerGroup | None:
        """The player group of a play key."""
        endpoint = self.lookup(key, "play")
        return None if endpoint is None else endpoint.group

    # -- protocol side ----------------------------------------------------------------------------------

    def _endpoint(self, key: str, direction: Direction) -> StreamEndpoint:
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            raise StreamRefused(UNKNOWN_KEY, "no such stream")
        if endpoint.direction != direction:
            raise StreamRefused(WRONG_DIRECTION, f"this stream cannot be used to {direction}")
        return endpoint

    def publish(self, key: str, publisher: Publisher) -> Publication:
        """Make ``publisher`` the publisher of ``key`` or raise :class:`StreamRefused`."""
        endpoint = self._endpoint(key, "publish")
        current = endpoint.publication
        if current is not None:
            silent = self.clock.seconds() - current.publisher.last_received
            if silent < self.takeover_after:
                raise StreamRefused(BUSY, "the stream is already being published")
            log.info(
                "RTMP publisher {new} takes over stream {key} from {old}, silent for {silent:.1f} s",
                new=publisher.publisher_id,
                key=key_prefix(key),
                old=current.publisher.publisher_id,
                silent=silent,
            )
            current.stop("replaced")
            current.publisher.kick("replaced")
        pub = endpoint.publication = Publication(endpoint, publisher)
        return pub

    def play(self, key: str) -> PlayerGroup:
        """Check that ``key`` may be played; the caller then sends Play.Start and ``attach``es."""
        endpoint = self._endpoint(key, "play")
        group = endpoint.group
        assert group is not None
        if group.ended:
            raise StreamRefused(ENDED, "the stream has ended")
        return group


def _call(fn: Callable[..., object], *args: Any) -> None:
    """Call an owner's callback; its failure is logged, never raised into the protocol."""
    try:
        fn(*args)
    except Exception:
        log.failure("RTMP stream callback {fn} failed", fn=getattr(fn, "__qualname__", fn))
