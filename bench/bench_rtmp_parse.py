"""Chunk parser cost per audio message (b2bua.wire.rtmp.ChunkReader).

Two realistic inbound streams of 200-byte AAC audio messages (fmt 1 headers, 23/24 ms deltas,
as FFmpeg sends them): with the default 128-byte chunk size each message is two chunks (fmt 1 +
fmt 3); with a 4096-byte chunk size (what FFmpeg sets after connect) it is one. The stream is
fed in 4 KiB reads, like TCP delivers it. Prints microseconds per message.

    python bench/bench_rtmp_parse.py [messages]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua.wire import flv, rtmp  # noqa: E402


def make_stream(count: int, chunk_size: int) -> tuple[bytes, int]:
    writer = rtmp.ChunkWriter(chunk_size)
    parts = []
    ts = 0.0
    for i in range(count):
        payload = flv.build_aac_raw(bytes((i + j) & 0xFF for j in range(198 + (i % 3))))
        parts.append(writer.write(rtmp.Message(rtmp.AUDIO, 1, int(ts), payload)))
        ts += 1024 * 1000 / 44100
    return b"".join(parts), chunk_size


def run(data: bytes, chunk_size: int, count: int, read_size: int = 4096, rounds: int = 5) -> float:
    best = float("inf")
    reads = [data[i : i + read_size] for i in range(0, len(data), read_size)]
    for _ in range(rounds):
        reader = rtmp.ChunkReader()
        reader.chunk_size = chunk_size
        got = 0
        t0 = time.perf_counter()
        for r in reads:
            got += len(reader.feed(r))
        elapsed = time.perf_counter() - t0
        assert got == count, (got, count)
        best = min(best, elapsed)
    return best / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    cases = ((128, "2-chunk (fmt 1 + fmt 3, chunk size 128)"), (4096, "1-chunk (chunk size 4096)"))
    for chunk_size, label in cases:
        data, cs = make_stream(count, chunk_size)
        us = run(data, cs, count)
        print(f"{label}: {us:.2f} µs per 200-byte audio message ({count} messages, {len(data)} bytes)")
        # Parsing the AAC tag body too, as the uplink does per message:
        reader = rtmp.ChunkReader()
        reader.chunk_size = cs
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(data), 4096):
            for m in reader.feed(data[i : i + 4096]):
                flv.parse_audio(m.payload)
                n += 1
        print(f"  + flv.parse_audio: {(time.perf_counter() - t0) / n * 1e6:.2f} µs per message")


if __name__ == "__main__":
    main()
