"""The probe's command line and its timing arithmetic (no network)."""

from __future__ import annotations

import argparse
import importlib
import io
import tomllib
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from b2bua.probe import cli

ROOT = Path(__file__).resolve().parent.parent.parent


def test_console_script_points_at_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["mpb2bua-probe"].partition(":")
    assert getattr(importlib.import_module(module), name) is cli.main


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no credentials
        ["--user", "1000"],
        ["--token", "t", "--user", "1000"],
        ["--user", "1000", "--password", "x", "--tone", "5000"],
        ["--user", "1000", "--password", "x", "--ffmpeg", "/nonexistent/ffmpeg"],
    ],
)
def test_bad_arguments_exit_2(argv, monkeypatch):
    monkeypatch.delenv("MPB2BUA_PASSWORD", raising=False)
    monkeypatch.delenv("MPB2BUA_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == cli.EXIT_USAGE


def test_secrets_from_the_environment(monkeypatch):
    monkeypatch.setattr(cli.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setenv("MPB2BUA_TOKEN", "tok")
    args = cli.parse_args([])
    assert (args.token, args.password, args.user) == ("tok", None, None)
    monkeypatch.setenv("MPB2BUA_PASSWORD", "pw")
    args = cli.parse_args(["--user", "1000"])
    assert (args.password, args.token) == ("pw", None)  # a password wins over a token


def test_stream_keys_are_cut():
    assert cli.short_url("rtmp://gw:1935/mp/AbCdEfGhIjKlMnOp") == "rtmp://gw:1935/mp/AbCd…"


def test_round_trip_uses_the_least_delayed_reports_from_the_onset_on():
    probe = cli.Probe(Clock(), argparse.Namespace(), out=io.StringIO())
    # publisher started at wall 10.0: its progress reports lag by 0..50 ms
    probe.progress = [(10.0 + t + 0.05 * (i % 2), t) for i, t in enumerate(x / 10 for x in range(60))]
    # the player's first 3 s arrive in one burst at wall 14.0 (ffmpeg probing), then in real time:
    # recording time s arrives at wall 10.3 + s
    chunks = [(14.0, int(s * 2 * cli.PLAY_RATE)) for s in (1.0, 2.0, 3.0)]
    chunks += [(10.3 + s, int(s * 2 * cli.PLAY_RATE)) for s in (3.5, 4.0, 4.5)]
    probe.play_chunks = chunks
    # onset heard at recording 2.5 s ↔ wall 10.3 + 2.5 = 12.8; sent at 10.0 + SILENCE_S = 12.0
    assert probe.round_trip(2.5) == pytest.approx(0.8)
    probe.play_chunks = []
    assert probe.round_trip(2.5) is None
