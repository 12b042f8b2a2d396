"""Shared fixtures. Real peers are started per test on free loopback ports.

A missing peer binary skips its tests, except under CI=true (or ``--require-peers``) where it
fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import require_binary
from tests.peers.kamailio import Kamailio


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-peers",
        action="store_true",
        default=False,
        help="fail (instead of skip) tests whose peer binaries are missing; implied by CI=true",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--require-peers"):
        os.environ["CI"] = "true"


def _dump_log(name: str, text: str) -> None:
    # printed at teardown: pytest shows it only for tests that failed
    tail = text[-8000:]
    print(f"\n----- {name} (last {len(tail)} chars) -----\n{tail}")


@pytest.fixture
def kamailio_factory(tmp_path: Path) -> Iterator[Callable[..., Kamailio]]:
    """Start Kamailios with custom arguments: ``kamailio_factory(min_expires=10, users=[...])``."""
    require_binary("kamailio")
    started: list[Kamailio] = []

    def make(**kwargs: object) -> Kamailio:
        kam = Kamailio(tmp_path / f"kamailio{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(kam)
        return kam.start()

    yield make
    for kam in started:
        kam.close()
        _dump_log(f"kamailio log {kam.log_path}", kam.log_text())


@pytest.fixture
def kamailio(kamailio_factory: Callable[..., Kamailio]) -> Kamailio:
    """A Kamailio registrar/proxy: users 1000-1999, password 1234, domain 127.0.0.1."""
    return kamailio_factory()
