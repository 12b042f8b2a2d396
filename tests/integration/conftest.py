"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.gateway import start_gateway
from tests.peers.sipp import Sipp


@pytest.fixture
def media_workers() -> int | None:
    """The media workers of the test's gateways (``gateway_factory``): None = the harness's
    default (``$MPB2BUA_TEST_MEDIA_WORKERS``, else 0). Modules and tests whose point is the
    media override it with both modes (``tests.integration.gateway.both_media_modes``)."""
    return None


@pytest.fixture
def gateway_factory(media_workers):
    """Start in-process gateways against a PBX (``make(host, port, section__key=value…)``);
    all are stopped at the end. Login rate limiting is lifted unless a test sets it."""
    started = []

    def make(kam_host, kam_port, **overrides):
        overrides.setdefault("websocket__login_attempts_per_minute", 100_000)
        if media_workers is not None:
            overrides.setdefault("media__workers", media_workers)
        gw = start_gateway(kam_host, kam_port, **overrides)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def far(kamailio, tmp_path):
    """Start sipp far-end phones (``start(scenario, user="1500", …)``) registered at the test's
    Kamailio; all are stopped at the end, and their logs printed."""
    started = []

    def start(scenario, user="1500", **kwargs):
        phone = Sipp(tmp_path / f"sipp{len(started)}", scenario, kamailio, user=user, **kwargs)
        started.append(phone)
        phone.start()
        return phone

    yield start
    for phone in started:
        phone.stop()
        print(phone.explain())
