"""Bench instrumentation inside media worker processes (``media.workers`` > 0); no b2bua/ change.

``bench/gwrunner.py`` puts this directory on the workers' PYTHONPATH and sets
``BENCH_WORKER_STATS_DIR``; Python imports ``sitecustomize`` at start-up, before the worker's
``main``. On SIGUSR1 the worker writes ``worker-<pid>.json`` there: its media clock's counters
(as ``gwrunner``'s snapshot has them for the node's own clock), its bridges' uplink counters and,
with ``BENCH_WORKER_HOOKS=1``, the latency samples of bench/hooks.py (then cleared). Any other
process started with this directory on its path and without the variable is left alone.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("BENCH_WORKER_STATS_DIR")

if _DIR:
    import json
    import signal
    import weakref

    from b2bua.media import bridge as _bridge_mod
    from b2bua.media import tick as _tick

    _clocks: list = []
    _bridges: weakref.WeakSet = weakref.WeakSet()
    _hooks = None
    if os.environ.get("BENCH_WORKER_HOOKS"):
        import hooks as _hooks  # bench/, on the path next to this directory

        _hooks.install()

    _clock_init = _tick.MediaClock.__init__

    def _clock_init_tracked(self, *a, **k):
        _clock_init(self, *a, **k)
        _clocks.append(self)

    _tick.MediaClock.__init__ = _clock_init_tracked
    _bridge_init = _bridge_mod.AudioBridge.__init__

    def _bridge_init_tracked(self, *a, **k):
        _bridge_init(self, *a, **k)
        _bridges.add(self)

    _bridge_mod.AudioBridge.__init__ = _bridge_init_tracked

    def _dump(signum, frame) -> None:  # runs in the main thread, between bytecodes
        clocks = list(_clocks)
        stats = [b.stats for b in list(_bridges) if not getattr(b, "closed", False)]
        out = {
            "pid": os.getpid(),
            "clock": {
                "ticks": sum(c.ticks for c in clocks),
                "late": sum(c.late_ticks for c in clocks),
                "skipped": sum(c.skipped_ticks for c in clocks),
                "members": sum(len(c.members) for c in clocks),
                "lag_counts": [sum(x) for x in zip(*(c.lag_counts for c in clocks), strict=True)]
                if clocks else [0] * len(_tick.LAG_BUCKETS_MS),
                "lag_max_ms": max((c.lag_max_ms for c in clocks), default=0.0),
                "busy_counts": [sum(x) for x in zip(*(c.busy_counts for c in clocks), strict=True)]
                if clocks else [0] * len(_tick.BUSY_BUCKETS_MS),
                "busy_max_ms": max((c.busy_max_ms for c in clocks), default=0.0),
            },
            "bridges": len(stats),
            "uplink_underruns": sum(s.uplink_underruns for s in stats),
            "uplink_dropped_ms": sum(s.uplink_dropped_ms for s in stats),
            "concealed_ms": sum(s.concealed_ms for s in stats),
        }
        if _hooks is not None:
            out["latency"] = _hooks.take()
        path = os.path.join(_DIR, f"worker-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, _dump)
