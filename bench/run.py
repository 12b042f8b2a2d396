"""Run the gateway benchmarks and write bench/results/*.json and the plots.

    python bench/run.py            # full run (≈ 15 min): figures of docs/performance.md
    python bench/run.py --short    # < 5 min smoke version (tox -e bench)
    python bench/run.py --only media,latency --profile

Each phase is one ``bench/loadgen.py`` process (see its docstring for the placement: gateway
alone on core 0, everything else on core 1). Plots need matplotlib
(``pip install matplotlib`` or ``pip install -e .[bench]``); without it only JSON is written.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def phases(short: bool, profile: bool) -> dict[str, list[str]]:
    if short:
        return {
            "media": ["media", "--steps", "10,25", "--window", "5", "--warmup", "2", "--budget", "60"],
            "latency": ["media", "--hooks", "--steps", "10", "--window", "5", "--warmup", "2"],
            "media-workers": [
                "media", "--workers", "0,1,2", "--steps", "10,20", "--window", "5", "--warmup", "2"
            ],
            "register": ["register", "--users", "1000", "--expires", "20", "--window", "25"],
            "setup": [
                "setup",
                "--sessions",
                "50",
                "--rate",
                "50",
                "--seconds",
                "3",
                "--rates",
                "100,200",
                "--step-seconds",
                "3",
            ],
        }
    media = [
        "media",
        "--steps",
        "10,50,100,120,130,140,150,175,200",
        "--window",
        "20",
        "--budget",
        "600",
        "--keep-going",
    ]
    if profile:
        media += ["--profile", str(RESULTS / "profile-media.txt"), "--profile-seconds", "15"]
    return {
        "media": media,
        "latency": ["media", "--hooks", "--steps", "10,25,50", "--window", "15", "--keep-going"],
        # media.workers 0, 1 and 2 one after the other (placement: bench/loadgen.py placement())
        "media-workers": ["media", "--workers", "0,1,2", "--steps", "30,40,50,60,75", "--window", "15",
                          "--keep-going", "--budget", "200"],
        "latency-workers": ["media", "--hooks", "--workers", "0,1", "--steps", "10,25", "--window", "10",
                            "--keep-going"],
        "register": ["register", "--users", "10000", "--expires", "60", "--window", "90"],
        "setup": [
            "setup",
            "--sessions",
            "100",
            "--rate",
            "50",
            "--seconds",
            "10",
            "--rates",
            "100,200,300,400,500,600",
            "--step-seconds",
            "5",
        ],
    }


def summarise_profile(path: Path, top: int = 25) -> dict:
    """py-spy raw output (collapsed stacks 'f1;f2;... count') → self and inclusive shares."""
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in self_t.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 2)],
    }


def plot(results: dict, suffix: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    made = []
    media = results.get("media")
    if media and media.get("steps"):
        steps = media["steps"]
        n = [s["calls"] for s in steps]
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(n, [s["gw_cpu_ms_per_call_s"] for s in steps], "o-", label="gateway")
        floor = media["codec_floor"]["total_ms_per_s"]
        ax[0].axhline(floor, color="g", ls="--", label=f"bare PyAV codec cost, 1 stream ({floor:.2f} ms)")
        inter = media.get("codec_floor_interleaved", {})
        if inter:
            xs = sorted(int(k) for k in inter)
            ys = [inter[str(k)]["total_ms_per_s"] for k in xs]
            ax[0].plot(xs, ys, "g.-", label="bare PyAV codec cost, N streams side by side")
            ax[0].plot(xs, [1.5 * y for y in ys], "r:", label="bar: 1.5 × codec cost (N streams)")
        else:
            ax[0].axhline(1.5 * floor, color="r", ls=":", label="bar: 1.5 × codec cost")
        ax[0].set_xlabel("concurrent calls")
        ax[0].set_ylabel("gateway CPU, ms per call-second")
        ax[0].set_ylim(bottom=0)
        ax[0].legend()
        ax[1].plot(n, [100 * s["gw_cpu_util"] for s in steps], "o-", label="gateway CPU %")
        ax[1].plot(n, [s["rtp_late_ms_max"] for s in steps], "s-", label="max RTP lateness at echo (ms)")
        ax[1].plot(n, [min(s["player_max_gap_ms"], 1000) for s in steps], "^-", label="max player gap (ms)")
        for s in steps:
            if not s["pass"]:
                ax[1].axvline(s["calls"], color="r", ls=":")
        ax[1].set_xlabel("concurrent calls")
        ax[1].set_yscale("log")
        ax[1].legend()
        fig.tight_layout()
        p = RESULTS / f"media-cpu{suffix}.png"
        fig.savefig(p, dpi=90)
        made.append(str(p))
    lat = results.get("latency")
    if lat and lat.get("steps"):
        steps = [s for s in lat["steps"] if "uplink_ms" in s]
        n = [s["calls"] for s in steps]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (
            ("uplink_first_ms", "uplink RTMP in → RTP out (first sample)"),
            ("uplink_ms", "uplink (last sample of the message)"),
            ("downlink_ms", "downlink RTP in → RTMP out"),
        ):
            if all(key in s for s in steps):
                ax.plot(n, [s[key]["p50"] for s in steps], "o-", label=f"{label} p50")
                ax.plot(n, [s[key]["p99"] for s in steps], "o--", label=f"{label} p99")
        ax.axhline(40, color="r", ls=":", label="uplink bar p99 40 ms")
        ax.axhline(84, color="m", ls=":", label="downlink bar p99 64+20 ms (16 kHz AAC)")
        ax.set_xlabel("concurrent calls")
        ax.set_ylabel("added one-way latency, ms")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = RESULTS / f"latency{suffix}.png"
        fig.savefig(p, dpi=90)
        made.append(str(p))
    reg = results.get("register")
    if reg and reg.get("refresh_histogram_per_s"):
        fig, ax = plt.subplots(figsize=(6, 3))
        h = reg["refresh_histogram_per_s"]
        ax.bar(range(len(h)), h, width=1.0)
        ax.set_xlabel("second of the window")
        ax.set_ylabel("REGISTER refreshes")
        ax.set_title(f"{reg['users']} users, expires {reg['expires']} s")
        fig.tight_layout()
        p = RESULTS / f"register-refresh{suffix}.png"
        fig.savefig(p, dpi=90)
        made.append(str(p))
    setup = results.get("setup")
    if setup and setup.get("rates"):
        r = setup["rates"]
        fig, ax = plt.subplots(figsize=(6, 4))
        x = [s["offered_rate"] for s in r]
        ax.plot(x, [s["setup_ms_p50"] for s in r], "o-", color="C0", label="handler → INVITE p50")
        ax.plot(x, [s["setup_ms_p99"] for s in r], "o--", color="C0", label="handler → INVITE p99")
        if all(s.get("read_to_invite_ms_p99") is not None for s in r):
            ax.plot(x, [s["read_to_invite_ms_p50"] for s in r], "s-", color="C1",
                    label="WS socket read → INVITE p50")
            ax.plot(x, [s["read_to_invite_ms_p99"] for s in r], "s--", color="C1",
                    label="WS socket read → INVITE p99")
        ax.axhline(5, color="r", ls=":", label="bar p99 5 ms")
        ax.set_yscale("log")
        ax.set_xlabel("offered call setups + teardowns per second")
        ax.set_ylabel("ms (log)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        p = RESULTS / f"setup{suffix}.png"
        fig.savefig(p, dpi=90)
        made.append(str(p))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway at the last media step")
    parser.add_argument(
        "--only", help="comma list of phases: media,latency,media-workers,latency-workers,register,setup"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-short" if args.short else ""
    todo = phases(args.short, args.profile)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    results = {}
    for name, cmd_args in todo.items():
        out = RESULTS / f"{name}{suffix}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), *cmd_args, "--out", str(out)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT, timeout=1800).returncode
        print(f"== {name}: rc {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if rc == 0 and out.exists():
            results[name] = json.loads(out.read_text())
    for name in ("media", "latency", "register", "setup"):
        if name not in results and (RESULTS / f"{name}{suffix}.json").exists():
            results[name] = json.loads((RESULTS / f"{name}{suffix}.json").read_text())
    prof = results.get("media", {}).get("profile")
    if prof and Path(prof["file"]).exists():
        summary = summarise_profile(Path(prof["file"]))
        summary.update(prof)
        (RESULTS / "profile-media-summary.json").write_text(json.dumps(summary, indent=1))
    for p in plot(results, suffix):
        print("plot", p)


if __name__ == "__main__":
    main()
