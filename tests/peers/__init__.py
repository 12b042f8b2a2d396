"""Helpers that start real peers (Kamailio, sipp, baresip, ffmpeg) on loopback for the tests."""

from __future__ import annotations

import os
import shutil

import pytest

# kamailio and kamcmd live in /usr/sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def in_ci() -> bool:
    """True when missing peers must fail the run instead of skipping (CI sets CI=true)."""
    return os.environ.get("CI") == "true"


def find_binary(name: str) -> str | None:
    """Absolute path of an executable, looking in PATH and the sbin directories."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def require_binary(name: str) -> str:
    """Return the path of ``name``; fail the test under CI=true, skip it otherwise."""
    found = find_binary(name)
    if found is None:
        msg = (
            f"{name!r} not found: install the test peers (as root: apt-get install -y "
            "--no-install-recommends kamailio sip-tester baresip baresip-core ffmpeg sox nginx systemd)"
        )
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found
