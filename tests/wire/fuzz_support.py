"""Shared pieces of the property-based fuzz tests (tests/wire/test_fuzz_*.py, tests/ws/test_fuzz_jsonrpc.py).

Settings: ``derandomize=True`` and no example database, so every run (CI or local) tries the same
examples and a failure reproduces exactly. To hunt for new bugs locally, set
``MPB2BUA_FUZZ_EXPLORE=<factor>``: examples are then random and ``factor`` times as many.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_EXPLORE = int(os.environ.get("MPB2BUA_FUZZ_EXPLORE", "0") or 0)


def fuzz(max_examples: int = 200) -> settings:
    """Settings for one fuzz test: deterministic, fast, no deadline (CI machines are slow)."""
    return settings(
        max_examples=max_examples * (_EXPLORE or 1),
        deadline=None,
        derandomize=not _EXPLORE,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` after a few random edits: truncation, byte flips, duplicated or deleted ranges,
    inserted garbage. What a hostile or broken peer sends after starting with something valid."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        n = len(data)
        op = draw(st.sampled_from(("truncate", "flip", "set", "duplicate", "delete", "insert")))
        if op == "insert" or n == 0:
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, n - 1))
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x0D, 0x20, 0x3A)))
        else:
            j = draw(st.integers(i, min(n, i + 64)))
            if op == "duplicate":
                data[j:j] = data[i:j] * draw(st.integers(1, 3))
            else:
                del data[i:j]
    return bytes(data)


def peak_allocation(func: Callable[..., Any], *args: Any) -> int:
    """Peak bytes allocated while ``func(*args)`` runs (its exception, if any, is swallowed)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        try:
            func(*args)
        except Exception:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def assert_bounded(
    func: Callable[..., Any], data: bytes | str, factor: int, constant: int = 64 * 1024
) -> None:
    """Parsing ``data`` allocates at most ``factor`` times its size plus ``constant`` bytes."""
    peak = peak_allocation(func, data)
    limit = factor * len(data) + constant
    assert peak <= limit, f"parsing {len(data)} bytes peaked at {peak} bytes allocated (limit {limit})"
