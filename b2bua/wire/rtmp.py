"""RTMP (Adobe "Real-Time Messaging Protocol" specification 1.0, 2012), server side, sans-IO.

Pieces, each usable alone and none doing I/O:

* :class:`ServerHandshake` — C0/C1/C2 in, S0/S1/S2 out (§5.2). Digest ("complex", Flash
  Player 9) clients are answered with the same simple handshake: S1 carries zero in its
  version field, which tells FFmpeg/librtmp clients not to validate any digest, and S2 echoes C1.
* :class:`ChunkReader` — the chunk stream layer in (§5.3): bytes in, whole :class:`Message`
  objects out. It applies Set Chunk Size (type 1) and Abort (type 2) itself, the moment such a
  message completes, since the very next bytes depend on them, and still returns them.
* :class:`ChunkWriter` — the chunk stream layer out, with header compression.
* Builders and parsers for protocol control messages (types 1, 2, 3, 5, 6), user control
  messages (type 4) and AMF0 commands/data (types 20 and 18).

Chunk stream ids chosen by :class:`ChunkWriter` (the same plan as nginx-rtmp, which
live-player and most players are known to work with):

=====================================================  =====
protocol control and user control (types 1–6)           2
commands and data on stream 0 (NetConnection)           3
commands and data on a media stream (NetStream)         5
audio (type 8)                                          6
video (type 9)                                          7
=====================================================  =====

Errors raise :class:`RtmpError` (a ``ValueError``); after one the connection must be closed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from b2bua.wire import amf0

# --- message types (§5.4, §7.1) -------------------------------------------------------------------

SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

# User control event types (§7.1.7)
STREAM_BEGIN = 0
STREAM_EOF = 1
STREAM_DRY = 2
SET_BUFFER_LENGTH = 3
STREAM_IS_RECORDED = 4
PING_REQUEST = 6
PING_RESPONSE = 7

# Set Peer Bandwidth limit types (§5.4.5)
LIMIT_HARD = 0
LIMIT_SOFT = 1
LIMIT_DYNAMIC = 2

# Chunk stream ids used by ChunkWriter (see the module docstring).
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_STREAM_COMMAND = 5
CSID_AUDIO = 6
CSID_VIDEO = 7

DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 1 << 24  # 16 MiB: a message length is a 24-bit field, bigger chunks are absurd
MAX_MESSAGE_SIZE = 1 << 20
MAX_CHUNK_STREAMS = 64
MAX_CSID = 65599
HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3

_U32 = struct.Struct(">I")
_U32LE = struct.Struct("<I")
_II = struct.Struct(">II")
_HI = struct.Struct(">HI")
_HII = struct.Struct(">HII")
_IB = struct.Struct(">IB")


class RtmpError(ValueError):
    """A protocol violation or an input beyond our limits; close the connection."""


class HandshakeError(RtmpError):
    """The peer's C0/C1/C2 are unacceptable."""


class BufferLimitError(RtmpError):
    """The messages being reassembled would hold more memory than the reader's budget allows."""


@dataclass(slots=True)
class Message:
    """One RTMP message. ``timestamp`` is in milliseconds, modulo 2**32."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


# --- handshake (§5.2) -----------------------------------------------------------------------------


class HandshakeStep(NamedTuple):
    """What :meth:`ServerHandshake.feed` asks of the caller."""

    send: bytes  # write these bytes to the peer (maybe empty)
    done: bool  # the handshake is complete
    leftover: bytes  # bytes received after C2: feed them to the ChunkReader


class ServerHandshake:
    """Server side of the RTMP handshake.

    ``feed(data)`` returns a :class:`HandshakeStep`. Once C0+C1 (1537 bytes) are in, it answers
    S0+S1+S2 in one write; C2 (1536 bytes) is consumed without validation, as real servers do
    (FFmpeg's and librtmp's C2 echo S1, Flash Player's carries a digest). ``random_bytes`` and
    ``uptime_ms`` are injectable for tests.
    """

    def __init__(self, *, random_bytes: Callable[[int], bytes] = os.urandom, uptime_ms: int = 0) -> None:
        self._random_bytes = random_bytes
        self._uptime = uptime_ms & 0xFFFFFFFF
        self._buf = bytearray()
        self._state = 0  # 0: waiting C0+C1, 1: waiting C2, 2: done
        self.c1: bytes | None = None
        self.s1: bytes | None = None

    @property
    def done(self) -> bool:
        return self._state == 2

    @property
    def client_version(self) -> bytes | None:
        """C1 bytes 4–7: zero for simple-handshake clients, a Flash/FFmpeg version for digest ones."""
        return None if self.c1 is None else self.c1[4:8]

    def feed(self, data: bytes) -> HandshakeStep:
        if self._state == 2:
            raise HandshakeError("handshake already complete")
        buf = self._buf
        buf += data
        send = b""
        if self._state == 0:
            if buf and buf[0] != RTMP_VERSION:
                if buf[0] in (6, 8, 9):
                    raise HandshakeError(f"RTMPE (encrypted RTMP, C0 version {buf[0]}) is not supported")
                raise HandshakeError(f"unsupported RTMP version {buf[0]} in C0 (expected 3)")
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return HandshakeStep(b"", False, b"")
            c1 = bytes(buf[1 : 1 + HANDSHAKE_SIZE])
            del buf[: 1 + HANDSHAKE_SIZE]
            s1 = _U32.pack(self._uptime) + b"\x00\x00\x00\x00" + self._random_bytes(HANDSHAKE_SIZE - 8)
            if len(s1) != HANDSHAKE_SIZE:
                raise ValueError("random_bytes returned the wrong number of bytes")
            s2 = c1[:4] + _U32.pack(self._uptime) + c1[8:]
            self.c1, self.s1 = c1, s1
            send = b"\x03" + s1 + s2
            self._state = 1
        if len(buf) < HANDSHAKE_SIZE:
            return HandshakeStep(send, False, b"")
        leftover = bytes(buf[HANDSHAKE_SIZE:])
        buf.clear()
        self._state = 2
        return HandshakeStep(send, True, leftover)


# --- chunk stream layer: reading (§5.3) -----------------------------------------------------------


class _InStream:
    """Per chunk stream id state of the reader: the last header and a message in progress."""

    __slots__ = (
        "timestamp",
        "delta",
        "length",
        "type_id",
        "stream_id",
        "extended",
        "ext_value",
        "remaining",
        "buf",
    )

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False  # the last fmt 0/1/2 header carried an extended timestamp
        self.ext_value = -1  # the last extended timestamp field read
        self.remaining = 0  # bytes still to come of the message in progress (0: none)
        # The message in progress: one growing buffer per message, not a list of chunk pieces
        # (a ``bytes`` object per 2-byte chunk costs ~20 bytes of memory per payload byte).
        self.buf: bytearray | None = None


class ChunkReader:
    """Reassemble messages from the chunk stream.

    ``feed(data)`` returns the messages completed by ``data`` (possibly none) in arrival order.
    Partial chunks are buffered; state changes only when a whole chunk has arrived, so the
    result does not depend on how the bytes are split. On fmt 3 chunks of a chunk stream whose
    last fmt 0/1/2 header had an extended timestamp, the 4-byte extended timestamp comes again
    (spec §5.3.1.3; FFmpeg and librtmp send it): a fmt 3 chunk starting a new message must carry
    it, a continuation chunk may (it is skipped when its 4 bytes equal the extended timestamp of
    the message, as SRS does, since some encoders omit it; such a continuation shorter than 4
    bytes is then only decided when the next bytes arrive). A fmt 3 chunk that starts a new message
    reuses the previous delta; after a fmt 0 header that delta is the fmt 0 timestamp (§5.3.1.2.4).

    ``bytes_received`` counts every byte fed, for Acknowledgement (type 3) against the peer's
    window; ``chunk_size`` is the current inbound chunk size.

    Memory is bounded by three limits the caller may change at any time: ``max_message_size``
    (one message), ``max_buffered`` (the messages being reassembled on all chunk streams
    together, counted at their full length from their first chunk on: :class:`BufferLimitError`
    beyond it) and ``min_chunk_size`` (a smaller Set Chunk Size is an error). With
    ``pause_after_command`` set, :meth:`feed` stops after each command message (types 20 and 17)
    and keeps the rest: :attr:`paused` is then true and ``feed(b"")`` goes on, so that a caller can
    change the limits (e.g. once ``publish`` is accepted) before the next message is read.
    """

    def __init__(
        self,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_chunk_streams: int = MAX_CHUNK_STREAMS,
        max_buffered: int | None = None,
        min_chunk_size: int = 1,
        pause_after_command: bool = False,
    ) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_buffered = max_chunk_streams * max_message_size if max_buffered is None else max_buffered
        self.min_chunk_size = min_chunk_size
        self.pause_after_command = pause_after_command
        self.paused = False
        self.bytes_received = 0
        self.reserved = 0  # full length of the messages being reassembled (see max_buffered)
        self._streams: dict[int, _InStream] = {}
        self._buf = bytearray()
        self._need = 1  # do not try to parse until this many bytes are buffered

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a chunk."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        n = len(data)
        self.bytes_received += n
        buf = self._buf
        if self.paused:
            self.paused = False
            self._need = 1
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif n < self._need:
            if n:
                buf += data
            return []
        elif type(data) is not bytes:
            data = bytes(data)
        out: list[Message] = []
        pos = self._parse(data, out)
        if pos < len(data):
            buf += data[pos:]
        return out

    def _parse(self, data: bytes, out: list[Message]) -> int:
        """Consume whole chunks from ``data``; return the offset of the first unconsumed byte."""
        streams = self._streams
        end = len(data)
        pos = 0
        chunk_size = self.chunk_size
        u32 = _U32.unpack_from
        while pos < end:
            b0 = data[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            h = pos + 1
            if csid < 2:
                if csid == 0:
                    if h >= end:
                        self._need = 2
                        return pos
                    csid = data[h] + 64
                    h += 1
                else:
                    if h + 1 >= end:
                        self._need = 3
                        return pos
                    csid = data[h] + (data[h + 1] << 8) + 64
                    h += 2
            st = streams.get(csid)
            if fmt == 1:
                if h + 7 > end:
                    self._need = h + 7 - pos
                    return pos
                field, lt = _II.unpack_from(data, h - 1)
                field &= 0xFFFFFF
                length = lt >> 8
                type_id = lt & 0xFF
                h += 7
                if st is None:
                    raise RtmpError(f"chunk fmt 1 on chunk stream {csid} with no previous header")
                stream_id = st.stream_id
            elif fmt == 3:
                if st is None:
                    raise RtmpError(f"chunk fmt 3 on chunk stream {csid} with no previous header")
                field = -1
                length = st.length
                type_id = st.type_id
                stream_id = st.stream_id
            elif fmt == 0:
                if h + 11 > end:
                    self._need = h + 11 - pos
                    return pos
                field, lt = _II.unpack_from(data, h - 1)
                field &= 0xFFFFFF
                length = lt >> 8
                type_id = lt & 0xFF
                stream_id = _U32LE.unpack_from(data, h + 7)[0]
                h += 11
            else:
                if h + 3 > end:
                    self._need = h + 3 - pos
                    return pos
                field = u32(data, h - 1)[0] & 0xFFFFFF
                h += 3
                if st is None:
                    raise RtmpError(f"chunk fmt 2 on chunk stream {csid} with no previous header")
                length = st.length
                type_id = st.type_id
                stream_id = st.stream_id
            ext = -1
            if field == 0xFFFFFF:
                if h + 4 > end:
                    self._need = h + 4 - pos
                    return pos
                ext = u32(data, h)[0]
                h += 4
            elif field < 0 and st.extended:
                if h + 4 > end:
                    self._need = h + 4 - pos
                    return pos
                if not st.remaining:
                    ext = u32(data, h)[0]
                    h += 4
                elif u32(data, h)[0] == st.ext_value:
                    h += 4  # the repeated extended timestamp of a continuation chunk
                # else: a sender that does not repeat it on continuation chunks

            if st is not None and st.remaining:
                # A continuation chunk of the message in progress.
                if fmt != 3:
                    raise RtmpError(
                        f"chunk fmt {fmt} on chunk stream {csid} in the middle of a message "
                        f"({st.remaining} of {st.length} bytes missing)"
                    )
                take = st.remaining if st.remaining < chunk_size else chunk_size
                if h + take > end:
                    self._need = h + take - pos
                    return pos
                pos = h + take
                st.buf += data[h:pos]  # type: ignore[operator]
                st.remaining -= take
                if st.remaining:
                    continue
                payload = bytes(st.buf)  # type: ignore[arg-type]
                st.buf = None
                self.reserved -= length
                timestamp = st.timestamp
            else:
                # The first chunk of a new message.
                if length > self.max_message_size:
                    raise RtmpError(
                        f"message of {length} bytes on chunk stream {csid} exceeds the limit of "
                        f"{self.max_message_size}"
                    )
                take = length if length < chunk_size else chunk_size
                if h + take > end:
                    self._need = h + take - pos
                    return pos
                if st is None:
                    if len(streams) >= self.max_chunk_streams:
                        raise RtmpError(f"more than {self.max_chunk_streams} chunk streams in use")
                    if csid > MAX_CSID:  # pragma: no cover - a 3-byte basic header cannot exceed it
                        raise RtmpError(f"chunk stream id {csid} out of range")
                    st = streams[csid] = _InStream()
                if fmt == 0:
                    delta = 0
                    timestamp = ext if ext >= 0 else field
                    st.delta = timestamp
                else:
                    if fmt == 3:
                        delta = ext if ext >= 0 else st.delta
                    else:
                        delta = ext if ext >= 0 else field
                    st.delta = delta
                    timestamp = (st.timestamp + delta) & 0xFFFFFFFF
                if ext >= 0:
                    st.ext_value = ext
                if fmt != 3:
                    st.extended = field == 0xFFFFFF
                    st.length = length
                    st.type_id = type_id
                    st.stream_id = stream_id
                st.timestamp = timestamp
                pos = h + take
                if take < length:
                    if self.reserved + length > self.max_buffered:
                        raise BufferLimitError(
                            f"message of {length} bytes on chunk stream {csid} would hold "
                            f"{self.reserved + length} bytes in reassembly (limit {self.max_buffered})"
                        )
                    self.reserved += length
                    st.remaining = length - take
                    st.buf = bytearray(data[h:pos])
                    continue
                payload = data[h:pos]
            out.append(Message(type_id, stream_id, timestamp, payload))
            if type_id < 3:
                if type_id == SET_CHUNK_SIZE:
                    chunk_size = self.chunk_size = _parse_chunk_size(payload, self.min_chunk_size)
                elif type_id == ABORT:
                    aborted = streams.get(parse_uint32(payload, "Abort"))
                    if aborted is not None and aborted.remaining:
                        aborted.remaining = 0
                        aborted.buf = None
                        self.reserved -= aborted.length
            elif (type_id == COMMAND_AMF0 or type_id == COMMAND_AMF3) and self.pause_after_command:
                if pos < end:
                    self.paused = True
                return pos
        self._need = 1
        return pos


def _parse_chunk_size(payload: bytes, minimum: int = 1) -> int:
    size = parse_uint32(payload, "Set Chunk Size")
    if size & 0x80000000:
        raise RtmpError(f"Set Chunk Size 0x{size:08x} has the reserved top bit set")
    if size < max(1, minimum):
        raise RtmpError(f"Set Chunk Size {size} is below the minimum of {max(1, minimum)}")
    if size > MAX_CHUNK_SIZE:
        raise RtmpError(f"Set Chunk Size {size} exceeds {MAX_CHUNK_SIZE}")
    return size


# --- chunk stream layer: writing ------------------------------------------------------------------


def _default_csid(message: Message) -> int:
    t = message.type_id
    if t == AUDIO:
        return CSID_AUDIO
    if t == VIDEO:
        return CSID_VIDEO
    if t <= SET_PEER_BANDWIDTH:
        return CSID_CONTROL
    return CSID_STREAM_COMMAND if message.stream_id else CSID_COMMAND


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    c = csid - 64
    return bytes(((fmt << 6) | 1, c & 0xFF, c >> 8))


class _OutStream:
    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id")

    def __init__(self, m: Message, timestamp: int, delta: int) -> None:
        self.timestamp = timestamp
        self.delta = delta  # -1 after fmt 0: never follow a fmt 0 with a fmt 3 new message
        self.length = len(m.payload)
        self.type_id = m.type_id
        self.stream_id = m.stream_id


class ChunkWriter:
    """Serialize messages into chunks of the current outbound ``chunk_size``.

    The first message on a chunk stream (or one with another message stream id, or a timestamp
    going backwards) gets a fmt 0 header; later ones fmt 1 (new length or type), fmt 2 (new
    delta) or fmt 3 (same delta as the last fmt 1/2). A fmt 3 new message is never sent right
    after a fmt 0 header, because receivers disagree on its delta (the spec says the fmt 0
    timestamp, nginx-rtmp uses zero). Continuation chunks are fmt 3 and repeat the extended
    timestamp when the header had one.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} out of range 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = chunk_size
        self.bytes_sent = 0
        self._streams: dict[int, _OutStream] = {}

    def set_chunk_size(self, size: int) -> bytes:
        """Return the Set Chunk Size message (sent with the old size); later writes use ``size``."""
        data = self.write(set_chunk_size(size))
        self.chunk_size = size
        return data

    def reset(self, csid: int) -> None:
        """Forget the header state of ``csid`` (e.g. after sending Abort): the next write is fmt 0."""
        self._streams.pop(csid, None)

    def write(self, message: Message, csid: int | None = None) -> bytes:
        if csid is None:
            csid = _default_csid(message)
        elif not 2 <= csid <= MAX_CSID:
            raise ValueError(f"chunk stream id {csid} out of range 2..{MAX_CSID}")
        payload = message.payload
        length = len(payload)
        if length > 0xFFFFFF:
            raise ValueError(f"message of {length} bytes does not fit a 24-bit length")
        ts = message.timestamp & 0xFFFFFFFF
        prev = self._streams.get(csid)
        if prev is None or prev.stream_id != message.stream_id or ts < prev.timestamp:
            field = ts
            ext = field >= 0xFFFFFF
            header = (
                _basic_header(0, csid)
                + _II.pack(0xFFFFFF if ext else field, length << 8 | message.type_id)[1:]
                + _U32LE.pack(message.stream_id)
            )
            self._streams[csid] = _OutStream(message, ts, -1)
        else:
            field = ts - prev.timestamp
            ext = field >= 0xFFFFFF
            tf = 0xFFFFFF if ext else field
            if length != prev.length or message.type_id != prev.type_id:
                header = _basic_header(1, csid) + _II.pack(tf, length << 8 | message.type_id)[1:]
                prev.length = length
                prev.type_id = message.type_id
            elif field != prev.delta:
                header = _basic_header(2, csid) + _U32.pack(tf)[1:]
            else:
                header = _basic_header(3, csid)
            prev.timestamp = ts
            prev.delta = field
        if ext:
            header += _U32.pack(field)
        size = self.chunk_size
        if length <= size:
            data = header + payload
        else:
            cont = _basic_header(3, csid)
            if ext:
                cont += _U32.pack(field)
            view = memoryview(payload)
            parts = [header, view[:size]]
            for i in range(size, length, size):
                parts.append(cont)
                parts.append(view[i : i + size])
            data = b"".join(parts)
        self.bytes_sent += len(data)
        return data

    def write_many(self, messages: list[Message]) -> bytes:
        return b"".join([self.write(m) for m in messages])


# --- protocol control messages (§5.4) -------------------------------------------------------------


def parse_uint32(payload: bytes, what: str = "control message") -> int:
    """The 4-byte value of Set Chunk Size, Abort, Acknowledgement or Window Acknowledgement Size."""
    if len(payload) < 4:
        raise RtmpError(f"{what} payload of {len(payload)} bytes (expected 4)")
    return _U32.unpack_from(payload)[0]


def _control(type_id: int, payload: bytes) -> Message:
    return Message(type_id, 0, 0, payload)


def set_chunk_size(size: int) -> Message:
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {size} out of range 1..{MAX_CHUNK_SIZE}")
    return _control(SET_CHUNK_SIZE, _U32.pack(size))


def abort(csid: int) -> Message:
    return _control(ABORT, _U32.pack(csid))


def acknowledgement(sequence_number: int) -> Message:
    """Acknowledgement of ``sequence_number`` bytes received so far (wraps at 2**32)."""
    return _control(ACKNOWLEDGEMENT, _U32.pack(sequence_number & 0xFFFFFFFF))


def window_ack_size(size: int) -> Message:
    return _control(WINDOW_ACK_SIZE, _U32.pack(size))


def set_peer_bandwidth(size: int, limit_type: int = LIMIT_DYNAMIC) -> Message:
    if limit_type not in (LIMIT_HARD, LIMIT_SOFT, LIMIT_DYNAMIC):
        raise ValueError(f"limit type {limit_type} is not 0, 1 or 2")
    return _control(SET_PEER_BANDWIDTH, _IB.pack(size, limit_type))


def parse_set_peer_bandwidth(payload: bytes) -> tuple[int, int]:
    """Return ``(window size, limit type)``."""
    if len(payload) < 5:
        raise RtmpError(f"Set Peer Bandwidth payload of {len(payload)} bytes (expected 5)")
    size, limit = _IB.unpack_from(payload)
    if limit > LIMIT_DYNAMIC:
        raise RtmpError(f"Set Peer Bandwidth limit type {limit} is not 0, 1 or 2")
    return size, limit


# --- user control messages (§7.1.7) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserControl:
    """A user control event: ``value`` is the stream id, or the timestamp for pings."""

    event: int
    value: int = 0
    buffer_length: int = 0  # SetBufferLength only, milliseconds


def user_control(event: int, value: int, buffer_length: int | None = None) -> Message:
    payload = _HI.pack(event, value) if buffer_length is None else _HII.pack(event, value, buffer_length)
    return _control(USER_CONTROL, payload)


def stream_begin(stream_id: int) -> Message:
    return user_control(STREAM_BEGIN, stream_id)


def stream_eof(stream_id: int) -> Message:
    return user_control(STREAM_EOF, stream_id)


def stream_dry(stream_id: int) -> Message:
    return user_control(STREAM_DRY, stream_id)


def set_buffer_length(stream_id: int, milliseconds: int) -> Message:
    return user_control(SET_BUFFER_LENGTH, stream_id, milliseconds)


def stream_is_recorded(stream_id: int) -> Message:
    return user_control(STREAM_IS_RECORDED, stream_id)


def ping_request(timestamp: int) -> Message:
    return user_control(PING_REQUEST, timestamp & 0xFFFFFFFF)


def ping_response(timestamp: int) -> Message:
    return user_control(PING_RESPONSE, timestamp & 0xFFFFFFFF)


def parse_user_control(payload: bytes) -> UserControl:
    """Parse a type 4 payload. Unknown events (e.g. SWF verification, 26) keep their first
    4 data bytes as ``value`` when present, so the caller can ignore them gracefully."""
    n = len(payload)
    if n < 2:
        raise RtmpError(f"user control payload of {n} bytes (expected at least 2)")
    event = (payload[0] << 8) | payload[1]
    if event == SET_BUFFER_LENGTH:
        if n < 10:
            raise RtmpError(f"SetBufferLength payload of {n} bytes (expected 10)")
        _, value, buffer_length = _HII.unpack_from(payload)
        return UserControl(event, value, buffer_length)
    if n >= 6:
        return UserControl(event, _U32.unpack_from(payload, 2)[0])
    if event in (STREAM_BEGIN, STREAM_EOF, STREAM_DRY, STREAM_IS_RECORDED, PING_REQUEST, PING_RESPONSE):
        raise RtmpError(f"user control event {event} payload of {n} bytes (expected 6)")
    return UserControl(event)


# --- commands and data (§7.1.1, §7.1.2, §7.2) -----------------------------------------------------


@dataclass(slots=True)
class Command:
    """An AMF0 command (type 20) or data message (type 18).

    Data messages have no transaction id nor command object: ``transaction_id`` is ``None``,
    ``command_object`` is ``None`` and every value after the name is in ``args``
    (``@setDataFrame`` → ``args == ["onMetaData", EcmaArray(...)]``).
    """

    name: str
    transaction_id: float | None
    command_object: Any = None
    args: list[Any] = field(default_factory=list)


def parse_command(message: Message) -> Command:
    """Decode the AMF0 body of a command or data message (types 20 and 18; types 17 and 15, the
    AMF3 variants, when their body is AMF0 after the leading format byte, as Flash sends)."""
    t = message.type_id
    payload = message.payload
    if t in (COMMAND_AMF3, DATA_AMF3):
        if payload[:1] != b"\x00":
            raise RtmpError(f"AMF3-encoded message type {t} is not supported")
        payload = payload[1:]
        t = COMMAND_AMF0 if t == COMMAND_AMF3 else DATA_AMF0
    if t not in (COMMAND_AMF0, DATA_AMF0):
        raise RtmpError(f"message type {t} is not a command or data message")
    try:
        values = amf0.decode_all(payload)
    except amf0.Amf0Error as e:
        raise RtmpError(f"bad AMF0 in message type {t}: {e}")
    if not values or not isinstance(values[0], str):
        raise RtmpError(f"message type {t} does not start with a name string")
    if t == DATA_AMF0:
        return Command(values[0], None, None, values[1:])
    if len(values) < 2 or not isinstance(values[1], float):
        raise RtmpError(f"command {values[0]!r} has no transaction id")
    return Command(values[0], values[1], values[2] if len(values) > 2 else None, values[3:])


def command_message(
    name: str,
    transaction_id: float,
    command_object: Any = None,
    *args: Any,
    stream_id: int = 0,
    timestamp: int = 0,
) -> Message:
    return Message(
        COMMAND_AMF0, stream_id, timestamp, amf0.encode(name, transaction_id, command_object, *args)
    )


def data_message(name: str, *args: Any, stream_id: int, timestamp: int = 0) -> Message:
    """A type 18 data message, e.g. ``data_message("onMetaData", EcmaArray(...), stream_id=1)``."""
    return Message(DATA_AMF0, stream_id, timestamp, amf0.encode(name, *args))


def result(transaction_id: float, props: Any = None, info: Any = None, *, stream_id: int = 0) -> Message:
    """``_result`` for a command (``createStream``: ``result(tid, None, stream_id)``)."""
    return command_message("_result", transaction_id, props, info, stream_id=stream_id)


def error(transaction_id: float, props: Any = None, info: Any = None, *, stream_id: int = 0) -> Message:
    return command_message("_error", transaction_id, props, info, stream_id=stream_id)


def status_info(level: str, code: str, description: str, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"level": level, "code": code, "description": description}
    info.update(extra)
    return info


def on_status(stream_id: int, level: str, code: str, description: str, **extra: Any) -> Message:
    """``onStatus`` on a NetStream, e.g. ``on_status(1, "status", "NetStream.Publish.Start", ...)``."""
    return command_message(
        "onStatus", 0.0, None, status_info(level, code, description, **extra), stream_id=stream_id
    )


def connect_result(
    transaction_id: float = 1.0,
    *,
    fms_ver: str = "FMS/3,0,1,123",
    capabilities: float = 31.0,
    object_encoding: float = 0.0,
) -> Message:
    """``_result`` of ``connect``: NetConnection.Connect.Success with the usual properties."""
    props = {"fmsVer": fms_ver, "capabilities": capabilities, "mode": 1.0}
    info = status_info(
        "status",
        "NetConnection.Connect.Success",
        "Connection succeeded.",
        objectEncoding=object_encoding,
    )
    return result(transaction_id, props, info)
