"""One RTMP connection: a thin Twisted protocol over the sans-IO :mod:`b2bua.wire.rtmp`.

The connection goes handshake → ``connect`` → (``createStream``) → ``publish`` or ``play``, one
role per connection. The protocol frames and parses; :class:`~b2bua.rtmp.streams.StreamRegistry`
decides who may publish or play what.

What clients send and what they get back (FFmpeg 5.1, GStreamer's librtmp, live-pusher and
live-player, which are librtmp-like):

=====================  ======================================================================
``connect``            Window Ack Size, Set Peer Bandwidth (dynamic), Set Chunk Size 4096,
                       ``_result`` NetConnection.Connect.Success; a wrong app name gets
                       ``_error`` NetConnection.Connect.Rejected and the connection is closed
``releaseStream``      ``_result`` (FFmpeg treats an error there as harmless, some clients wait)
``FCPublish``          ``onFCPublish`` NetStream.Publish.Start, then ``_result``
``FCSubscribe``        ``onFCSubscribe`` NetStream.Play.Start, ``_result`` (librtmp with live=1)
``FCUnpublish``        ``onFCUnpublish`` NetStream.Unpublish.Success, ``_result``; stops publishing
``getStreamLength``    ``_result`` 0 (live)
``createStream``       ``_result`` stream id 1 (as nginx-rtmp: one media stream per connection)
``publish``            StreamBegin + onStatus NetStream.Publish.Start, or onStatus
                       NetStream.Publish.BadName and close (unknown key, play key, busy)
``play``               StreamBegin, onStatus NetStream.Play.Reset and NetStream.Play.Start,
                       ``|RtmpSampleAccess``, ``onMetaData``, the sequence headers, the cached GOP,
                       then live data; or onStatus NetStream.Play.StreamNotFound and close
``deleteStream``,      stop publishing/playing (no reply: FFmpeg sends them with transaction 0)
``closeStream``
other commands         ``_error`` NetConnection.Call.Failed when a reply is expected (transaction
                       id ≠ 0), else ignored
=====================  ======================================================================

Memory per connection is bounded by what the connection may do. Until ``publish`` or ``play`` is
accepted, a message may be 64 KiB and the messages being reassembled on all chunk streams together
64 KiB (``connect`` and friends are a few hundred bytes; the reader stops after each command, so a
message pipelined behind an accepted ``publish`` is read under the publisher's limits); then 512 KiB
per message and 1 MiB together. Beyond it the connection is closed (``buffer_limit``). Set Chunk
Size below 128 is refused (``bad_input``). Connections are capped in total and per client address
by the factory.

A ``publish`` or ``play`` that the registry refuses (unknown key, key of the other direction, call
ended, another publisher live) always gets the same answer, :data:`REFUSED_DESCRIPTION` with the
command's usual code, so that a client cannot tell an existing key from a made-up one; the reason
is in the log and in ``mpb2bua_rtmp_refused_total{reason}``.

Acknowledgements are sent every window (the peer's Window Ack Size, or our own 2 500 000 until it
sends one); Ping Requests are answered. Timeouts: 5 s for the handshake, then 15 s to start
publishing or playing (re-armed when a stream stops). Any bad input (RtmpError, AMF0 errors,
commands of the wrong shape) is logged (rate-limited) and closes this connection only.

Players are streaming producers of their transport: when Twisted pauses us (its write buffer
passed 64 KiB on top of a full kernel socket buffer), video is dropped and resumes at the next
keyframe; audio keeps flowing; a player paused for longer than ``max_stall`` seconds, or with more
than ``max_backlog`` bytes written while paused, is closed. Memory per slow player stays bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from b2bua.rtmp.streams import PlayerGroup, Publication, StreamRefused, key_prefix
from b2bua.wire import amf0, rtmp
from b2bua.wire.rtmp import Message, RtmpError, ServerHandshake

if TYPE_CHECKING:
    from b2bua.rtmp.server import RtmpServerFactory

log = Logger()

AUDIO = rtmp.AUDIO
VIDEO = rtmp.VIDEO

HANDSHAKE = "handshake"
WAIT_CONNECT = "wait_connect"
CONNECTED = "connected"
CLOSED = "closed"  # we are closing it
LOST = "lost"  # connectionLost was called

# Replies to our own calls (we make none) and flow-control hints a live server need not answer.
_IGNORED = frozenset(
    ("_result", "_error", "onStatus", "receiveAudio", "receiveVideo", "onBWDone", "pause", "FCUnsubscribe")
)

MIN_ACK_WINDOW = 4096  # a peer asking for acks more often than this is ignored (no ack floods)
# Chunk streams a client may use at once (FFmpeg and librtmp use 2–8).
MAX_CHUNK_STREAMS = 24
# a live-pusher keyframe is tens of KB; this bounds one message of a publisher
MAX_MESSAGE_SIZE = 512 * 1024
# the messages a publisher may have in reassembly at once (a keyframe interleaved with audio)
MAX_BUFFERED = 1024 * 1024
# Before publish/play: connect, createStream, publish... are a few hundred bytes each. This is
# all an anonymous connection can make us hold (plus one partial chunk of at most this size).
PRE_STREAM_BUFFER = 64 * 1024
# Set Chunk Size floor. The spec allows 1, but 128 is the default every client starts from and
# none is known to lower it; each chunk costs a header parse (~1 µs of Python), so a peer at
# chunk size 2 makes us spend ~0.5 s of CPU per MB it sends. Refusing below the default keeps the
# cost of a chunk proportional to what a normal client costs, and costs no real client anything.
MIN_CHUNK_SIZE = 128

#: The onStatus description of every refused publish/play (see the module docstring).
REFUSED_DESCRIPTION = "Stream key not accepted."


def send_now(transport: Any, data: bytes) -> None:
    """Write to a TCP transport, straight to its socket when nothing is queued before it.

    ``transport.write`` registers the socket for writability and sends at the next poll: two
    ``epoll_ctl`` calls and a reactor round per media message to every player. When Twisted's
    buffer is empty (the usual case: a player keeps up) one ``send`` does it now; whatever the
    kernel does not take goes through ``transport.write``, behind nothing, so order holds.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or getattr(transport, "TLS", True)
        or transport.dataBuffer
        or transport._tempDataBuffer
        or transport.disconnecting
        or not transport.connected
    ):
        transport.write(data)
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.write(data)  # let Twisted meet the error and close the connection its way
        return
    if sent < len(data):
        transport.write(data[sent:])


def stream_name_key(name: str) -> str:
    """The stream key in a ``publish``/``play`` name: the query (``KEY?token=…``) stripped."""
    return name.split("?", 1)[0].strip("/")


def normalise_app(app: str) -> str:
    """``connect``'s app as clients send it: ``mp``, ``mp/``, ``mp?args``."""
    return app.split("?", 1)[0].strip("/")


@implementer(IPushProducer)
class RtmpServerProtocol(Protocol):
    """Server side of one RTMP connection. Created by :class:`~b2bua.rtmp.server.RtmpServerFactory`."""

    factory: RtmpServerFactory

    def __init__(self, factory: RtmpServerFactory, conn_id: str) -> None:
        self.factory = factory
        self.conn_id = conn_id
        self.peer_host = "?"  # the client address the factory counts this connection under
        self.publisher_id = self.player_id = conn_id
        self.state = HANDSHAKE
        self.role: str | None = None  # "publish" or "play" once accepted
        self.key: str | None = None
        self.bytes_received = 0
        self.last_received = 0.0
        self._clock = factory.reactor
        self._metrics = factory.metrics
        self._handshake: ServerHandshake | None = ServerHandshake(uptime_ms=0)
        self._handshake_leftover = b""
        self._reader: rtmp.ChunkReader | None = None
        self._writer = rtmp.ChunkWriter()
        self._ack_window = factory.window_ack_size
        self._last_ack = 0
        self._timer: Any = None
        self._sid = 1
        # publishing
        self._publication: Publication | None = None
        self._media_sink: Any = None
        # playing
        self._group: PlayerGroup | None = None
        self._paused = False
        self._paused_since = 0.0
        self._backlog = 0
        self._need_keyframe = True
        self.video_dropped = 0

    def __repr__(self) -> str:
        return f"<RtmpServerProtocol {self.conn_id} {self.state} {self.role or ''}>"

    # -- Twisted hooks ----------------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.last_received = self._clock.seconds()
        self.factory.connection_made(self)
        self._metrics.connections.inc()
        self._timer = self._clock.callLater(self.factory.handshake_timeout, self._timed_out, HANDSHAKE)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        if self.state == LOST:
            return
        self.state = LOST
        self._cancel_timer()
        self._stop_publishing("disconnected")
        self._stop_playing("disconnected")
        self.factory.connection_lost(self)
        self._metrics.connections.dec()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.state is CLOSED or self.state is LOST:
            return
        n = len(data)
        self.bytes_received += n
        self.last_received = self._clock.seconds()
        self._metrics.bytes_in.inc(n)
        try:
            reader = self._reader
            if reader is None:
                reader = self._feed_handshake(data)
                if reader is None:
                    return
                data = self._handshake_leftover
                if not data:
                    return
            messages = reader.feed(data)
            if self.bytes_received - self._last_ack >= self._ack_window:
                self._last_ack = self.bytes_received
                self._write(self._writer.write(rtmp.acknowledgement(self.bytes_received)))
            while True:
                for m in messages:
                    t = m.type_id
                    if t == AUDIO or t == VIDEO:
                        sink = self._media_sink
                        if sink is None:
                            sink = self._start_media()
                            if sink is None:
                                continue
                        try:
                            if t == AUDIO:
                                sink.audio(m.timestamp, m.payload)
                            else:
                                sink.video(m.timestamp, m.payload)
                        except Exception:
                            self._sink_failed()
                    else:
                        self._on_message(m)
                    if self.state is CLOSED:
                        return
                if not reader.paused:
                    break
                messages = reader.feed(b"")  # the rest, read under the limits the commands set
        except rtmp.BufferLimitError as e:
            self._drop("buffer_limit", str(e))
        except (RtmpError, amf0.Amf0Error, _BadInput) as e:
            self._bad_input(str(e))
        except Exception as e:
            if self.factory.limiter.allow():
                log.failure("RTMP connection {conn} failed", conn=self.conn_id)
            self._bad_input(f"internal error: {e.__class__.__name__}")

    # -- IPushProducer (players) ------------------------------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        if not self._paused:
            self._paused = True
            self._paused_since = self._clock.seconds()
            self._backlog = 0

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:  # noqa: N802
        pass

    # -- handshake --------------------------------------------------------------------------------------

    def _feed_handshake(self, data: bytes) -> rtmp.ChunkReader | None:
        assert self._handshake is not None
        step = self._handshake.feed(data)
        if step.send:
            self._write(step.send)
        if not step.done:
            return None
        self._handshake = None
        self._handshake_leftover = step.leftover
        self._reader = rtmp.ChunkReader(
            max_message_size=PRE_STREAM_BUFFER,
            max_chunk_streams=MAX_CHUNK_STREAMS,
            max_buffered=PRE_STREAM_BUFFER,
            min_chunk_size=MIN_CHUNK_SIZE,
            pause_after_command=True,
        )
        self.state = WAIT_CONNECT
        self._arm_timer(self.factory.idle_timeout, "idle")
        return self._reader

    # -- messages ---------------------------------------------------------------------------------------

    def _on_message(self, m: Message) -> None:
        t = m.type_id
        if t == rtmp.COMMAND_AMF0 or t == rtmp.COMMAND_AMF3:
            self._on_command(rtmp.parse_command(m), m)
        elif t == rtmp.DATA_AMF0 or t == rtmp.DATA_AMF3:
            self._on_data(rtmp.parse_command(m))
        elif t == rtmp.USER_CONTROL:
            uc = rtmp.parse_user_control(m.payload)
            if uc.event == rtmp.PING_REQUEST:
                self._send(rtmp.ping_response(uc.value))
        elif t == rtmp.WINDOW_ACK_SIZE:
            self._ack_window = max(MIN_ACK_WINDOW, rtmp.parse_uint32(m.payload, "Window Ack Size"))
        elif t == rtmp.SET_PEER_BANDWIDTH:
            rtmp.parse_set_peer_bandwidth(m.payload)
        # Set Chunk Size and Abort are applied by the reader; Acknowledgements, aggregates and shared
        # objects are ignored.

    def _on_command(self, cmd: rtmp.Command, m: Message) -> None:
        name = cmd.name
        tid = cmd.transaction_id or 0.0
        if self.state == WAIT_CONNECT:
            if name != "connect":
                raise _BadInput(f"command {name!r} before connect")
            self._on_connect(cmd)
            return
        sid = m.stream_id or self._sid
        if name == "publish":
            self._on_publish(_string_arg(cmd, "publish"), sid)
        elif name == "play":
            self._on_play(_string_arg(cmd, "play"), sid)
        elif name == "createStream":
            self._send(rtmp.result(tid, None, float(self._sid)))
        elif name in ("releaseStream", "getStreamLength"):
            if tid:
                self._send(rtmp.result(tid, None, 0.0 if name == "getStreamLength" else amf0.Undefined))
        elif name == "FCPublish":
            info = rtmp.status_info("status", "NetStream.Publish.Start", "FCPublish")
            self._send(rtmp.command_message("onFCPublish", 0.0, None, info))
            if tid:
                self._send(rtmp.result(tid, None, amf0.Undefined))
        elif name == "FCSubscribe":
            info = rtmp.status_info("status", "NetStream.Play.Start", "FCSubscribe")
            self._send(rtmp.command_message("onFCSubscribe", 0.0, None, info))
            if tid:
                self._send(rtmp.result(tid, None, amf0.Undefined))
        elif name == "FCUnpublish":
            self._stop_publishing("unpublished")
            self._send(
                rtmp.command_message(
                    "onFCUnpublish",
                    0.0,
                    None,
                    rtmp.status_info("status", "NetStream.Unpublish.Success", "FCUnpublish"),
                )
            )
            if tid:
                self._send(rtmp.result(tid, None, amf0.Undefined))
        elif name in ("deleteStream", "closeStream"):
            self._stop_publishing("unpublished")
            self._stop_playing("stopped")
        elif name == "connect":
            raise _BadInput("a second connect")
        elif name in _IGNORED:
            pass
        elif tid:
            why = f"unsupported command {name[:40]!r}"
            info = rtmp.status_info("error", "NetConnection.Call.Failed", why)
            self._send(rtmp.error(tid, None, info))

    def _on_data(self, cmd: rtmp.Command) -> None:
        args = cmd.args
        if cmd.name == "@setDataFrame" and args and args[0] == "onMetaData":
            meta = args[1] if len(args) > 1 else None
        elif cmd.name == "onMetaData":
            meta = args[0] if args else None
        else:
            return
        pub = self._publication
        if pub is None or not isinstance(meta, dict):
            return
        pub.metadata = dict(meta)
        if not pub.started:
            self._media_sink = pub.start()

    # -- connect ----------------------------------------------------------------------------------------

    def _on_connect(self, cmd: rtmp.Command) -> None:
        obj = cmd.command_object
        if not isinstance(obj, dict):
            raise _BadInput("connect without a command object")
        app = obj.get("app")
        if not isinstance(app, str):
            raise _BadInput("connect without an app name")
        tid = cmd.transaction_id or 1.0
        if normalise_app(app) != self.factory.app:
            self._refused("wrong_app", f"app {app[:40]!r}")
            info = rtmp.status_info("error", "NetConnection.Connect.Rejected", "Unknown application.")
            self._send(rtmp.error(tid, None, info))
            self._close()
            return
        self.state = CONNECTED
        w = self._writer
        window = self.factory.window_ack_size
        self._write(
            w.write(rtmp.window_ack_size(window))
            + w.write(rtmp.set_peer_bandwidth(window, rtmp.LIMIT_DYNAMIC))
            + w.set_chunk_size(self.factory.chunk_size)
            + w.write(rtmp.connect_result(tid))
        )

    # -- publish ----------------------------------------------------------------------------------------

    def _on_publish(self, name: str, sid: int) -> None:
        key = stream_name_key(name)
        if self.role is not None:
            self._refuse_publish("busy", sid, key, "this connection already has a stream")
            return
        try:
            pub = self.factory.registry.publish(key, self)
        except StreamRefused as e:
            self._refuse_publish(e.reason, sid, key, REFUSED_DESCRIPTION)
            return
        self.role = "publish"
        self.key = key
        self._sid = sid
        self._publication = pub
        self._media_sink = None
        self._stream_limits(True)
        self._cancel_timer()
        self._metrics.publishers.inc()
        self._send(rtmp.stream_begin(sid))
        self._send(rtmp.on_status(sid, "status", "NetStream.Publish.Start", "Start publishing."))
        log.info("RTMP {conn} publishing {key}", conn=self.conn_id, key=key_prefix(key))

    def _refuse_publish(self, reason: str, sid: int, key: str, description: str) -> None:
        self._refused(reason, f"publish {key_prefix(key)}")
        self._send(rtmp.on_status(sid, "error", "NetStream.Publish.BadName", description))
        self._close()

    def _start_media(self) -> Any:
        """The first media message of a publication: tell the sink the publisher started."""
        pub = self._publication
        if pub is None:
            return None  # media from a connection that does not publish: ignored
        sink = self._media_sink = pub.start()
        return sink

    def _stop_publishing(self, reason: str, notify: bool = True) -> None:
        pub = self._publication
        if pub is None:
            return
        self._publication = None
        self._media_sink = None
        self.role = None
        pub.stop(reason, notify)
        self._stream_limits(False)
        self._metrics.publishers.dec()
        log.info(
            "RTMP {conn} stopped publishing {key}: {reason}",
            conn=self.conn_id,
            key=key_prefix(self.key or ""),
            reason=reason,
        )
        if self.state == CONNECTED:
            self._arm_timer(self.factory.idle_timeout, "idle")

    def kick(self, reason: str) -> None:
        """Called by the registry (takeover, key removed): drop this publisher now."""
        self._stop_publishing(reason, notify=False)
        self._close(abort=True)

    def _sink_failed(self) -> None:
        if self.factory.limiter.allow():
            log.failure("RTMP publish sink failed on {conn}", conn=self.conn_id)

    # -- play -------------------------------------------------------------------------------------------

    def _on_play(self, name: str, sid: int) -> None:
        key = stream_name_key(name)
        if self.role is not None:
            self._refuse_play("busy", sid, key, "this connection already has a stream")
            return
        try:
            group = self.factory.registry.play(key)
        except StreamRefused as e:
            self._refuse_play(e.reason, sid, key, REFUSED_DESCRIPTION)
            return
        self.role = "play"
        self.key = key
        self._sid = sid
        self._stream_limits(True)
        self._cancel_timer()
        self._send(rtmp.stream_begin(sid))
        self._send(rtmp.on_status(sid, "status", "NetStream.Play.Reset", "Playing and resetting."))
        self._send(rtmp.on_status(sid, "status", "NetStream.Play.Start", "Start live."))
        self._send(rtmp.data_message("|RtmpSampleAccess", True, True, stream_id=sid))
        meta = amf0.EcmaArray(group.metadata or {})
        if group.metadata is None:
            if group.audio_header is not None:
                meta["audiocodecid"] = 10.0
            if group.video_header is not None:
                meta["videocodecid"] = 7.0
        self._send(rtmp.data_message("onMetaData", meta, stream_id=sid))
        if self.transport is not None:
            self.transport.registerProducer(self, True)
        self._group = group
        self._need_keyframe = True
        self._metrics.players.inc()
        log.info("RTMP {conn} playing {key}", conn=self.conn_id, key=key_prefix(key))
        group.attach(self)

    def _refuse_play(self, reason: str, sid: int, key: str, description: str) -> None:
        self._refused(reason, f"play {key_prefix(key)}")
        self._send(rtmp.on_status(sid, "error", "NetStream.Play.StreamNotFound", description))
        self._close()

    def _stop_playing(self, reason: str) -> None:
        group = self._group
        if group is None:
            return
        self._group = None
        self.role = None
        self._stream_limits(False)
        self._metrics.players.dec()
        log.info(
            "RTMP {conn} stopped playing {key}: {reason}",
            conn=self.conn_id,
            key=key_prefix(self.key or ""),
            reason=reason,
        )
        group.detach(self, reason)
        if self.state == CONNECTED:
            self._arm_timer(self.factory.idle_timeout, "idle")

    # Player interface (called by PlayerGroup)

    def send_config(self, type_id: int, timestamp_ms: int, payload: bytes) -> None:
        if self._group is not None:
            self._send(Message(type_id, self._sid, timestamp_ms, payload))

    def send_audio(self, timestamp_ms: int, payload: bytes) -> None:
        if self._paused and self._stalled():
            return
        data = self._writer.write(Message(AUDIO, self._sid, timestamp_ms, payload))
        self._write(data)

    def send_video(self, timestamp_ms: int, payload: bytes, keyframe: bool) -> None:
        if self._paused:
            if not self._stalled():
                self._need_keyframe = True
                self.video_dropped += 1
            return
        if self._need_keyframe:
            if not keyframe:
                self.video_dropped += 1
                return
            self._need_keyframe = False
        self._write(self._writer.write(Message(VIDEO, self._sid, timestamp_ms, payload)))

    def end(self, reason: str) -> None:
        """The group ended: NetStream.Play.UnpublishNotify, StreamEOF, then close."""
        if self._group is None:
            return
        sid = self._sid
        self._group = None
        self.role = None
        self._metrics.players.dec()
        self._send(rtmp.on_status(sid, "status", "NetStream.Play.UnpublishNotify", "Stream ended."))
        self._send(rtmp.stream_eof(sid))
        self._close()

    def _stalled(self) -> bool:
        """While paused: close the player if it is stuck for too long or too far behind."""
        f = self.factory
        if self._backlog <= f.max_backlog and self._clock.seconds() - self._paused_since <= f.max_stall:
            return False
        if self.state is not CLOSED and self.state is not LOST:
            if f.limiter.allow():
                log.warn(
                    "RTMP player {conn} too slow ({backlog} bytes behind for {secs:.1f} s): closing",
                    conn=self.conn_id,
                    backlog=self._backlog,
                    secs=self._clock.seconds() - self._paused_since,
                )
            self._metrics.refused.labels("slow_player").inc()
            self._stop_playing("slow")
            self._close(abort=True)
        return True

    # -- output, errors, timers -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.state is CLOSED or self.state is LOST:
            return
        if self._paused:
            self._backlog += len(data)
        self._metrics.bytes_out.inc(len(data))
        send_now(self.transport, data)

    def _send(self, message: Message) -> None:
        self._write(self._writer.write(message))

    def _refused(self, reason: str, what: str) -> None:
        self._metrics.refused.labels(reason).inc()
        if self.factory.limiter.allow():
            log.info("RTMP {conn} refused {what} ({reason})", conn=self.conn_id, what=what, reason=reason)

    def _stream_limits(self, streaming: bool) -> None:
        """The chunk reader's limits for a connection that publishes/plays, or not (yet)."""
        reader = self._reader
        if reader is None:
            return
        reader.pause_after_command = not streaming
        reader.max_message_size = MAX_MESSAGE_SIZE if streaming else PRE_STREAM_BUFFER
        reader.max_buffered = MAX_BUFFERED if streaming else PRE_STREAM_BUFFER

    def _drop(self, reason: str, why: str) -> None:
        """Close the connection for going beyond a memory limit."""
        self._metrics.refused.labels(reason).inc()
        if self.factory.limiter.allow():
            log.warn(
                "RTMP {conn} closed ({reason}) in state {state}: {why}",
                conn=self.conn_id,
                reason=reason,
                state=self.state,
                why=why[:200],
            )
        self._stop_publishing("error")
        self._stop_playing("error")
        self._close(abort=True)

    def _bad_input(self, why: str) -> None:
        self._metrics.refused.labels("bad_input").inc()
        if self.factory.limiter.allow():
            log.warn(
                "RTMP {conn} closed on bad input in state {state}: {why}",
                conn=self.conn_id,
                state=self.state,
                why=why[:200],
            )
        self._stop_publishing("error")
        self._stop_playing("error")
        self._close()

    def _close(self, abort: bool = False) -> None:
        if self.state is CLOSED or self.state is LOST:
            return
        self.state = CLOSED
        self._cancel_timer()
        if self.transport is None:
            return
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _arm_timer(self, seconds: float, what: str) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(seconds, self._timed_out, what)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self, what: str) -> None:
        self._timer = None
        self._metrics.refused.labels(f"{what}_timeout").inc()
        if self.factory.limiter.allow():
            log.info("RTMP {conn} {what} timeout ({state})", conn=self.conn_id, what=what, state=self.state)
        self._stop_publishing("timeout")
        self._stop_playing("timeout")
        self._close(abort=True)


class _BadInput(ValueError):
    """A well-formed message that makes no sense here (a command of the wrong shape or order)."""


def _string_arg(cmd: rtmp.Command, what: str) -> str:
    if not cmd.args or not isinstance(cmd.args[0], str) or not cmd.args[0]:
        raise _BadInput(f"{what} without a stream name")
    return cmd.args[0]
