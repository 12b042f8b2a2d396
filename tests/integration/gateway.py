"""Start an mpb2bua node in the test process, on free loopback ports, against a given PBX.

The media runs in the node process (``media.workers: 0``, fast) unless the test passes
``media__workers`` or the environment sets ``MPB2BUA_TEST_MEDIA_WORKERS`` (e.g. 2: every gateway
of the run with two media worker processes). Tests whose point is the media run in both modes
through a ``media_workers`` fixture parametrized with :data:`MEDIA_MODES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import greenlet
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from b2bua.config import Config
from b2bua.service import make_node
from tests.integration.helpers import wait_until
from tests.peers.ports import free_port, free_port_run

ENV_WORKERS = "MPB2BUA_TEST_MEDIA_WORKERS"
MEDIA_MODES = [0, 2]  # media in the node, in two worker processes
MEDIA_MODE_IDS = ["workers0", "workers2"]
#: a test (or fixture) parameter running it in both media modes: ``@both_media_modes``
both_media_modes = pytest.mark.parametrize("media_workers", MEDIA_MODES, ids=MEDIA_MODE_IDS)
WORKERS_START_TIMEOUT = 30.0  # s: python, PyAV and numpy imported on a busy 2-core machine


def default_media_workers() -> int:
    """The media workers of a gateway whose test does not say: ``$MPB2BUA_TEST_MEDIA_WORKERS``, else 0."""
    text = os.environ.get(ENV_WORKERS, "").strip()
    return int(text) if text else 0


@dataclass
class Gateway:
    node: object
    config: Config
    ws_url: str
    http_port: int
    sip_port: int

    @property
    def stack(self):
        return self.node.stack

    @property
    def controller(self):
        return self.node.controller

    @property
    def workers(self) -> int:
        return self.config.media.workers

    def stop(self) -> None:
        if self.node.running:
            pytest_twisted.blockon(self.node.stopService())

    def workers_up(self) -> defer.Deferred:
        """Fires once every media worker process has reported (runs, its RTMP port listens)."""
        pool = self.node.media_workers
        if pool is None:
            return defer.succeed(None)
        return wait_until(lambda: all(w.reported for w in pool.workers), timeout=WORKERS_START_TIMEOUT,
                          interval=0.05, what=f"{len(pool.workers)} media workers to start")


def _can_block() -> bool:
    # pytest_twisted runs inlineCallbacks test bodies in the reactor's greenlet, where one cannot
    # wait for the reactor; fixtures run in the main greenlet (no parent)
    return greenlet.getcurrent().parent is None


def start_gateway(pbx_host: str, pbx_port: int, **overrides) -> Gateway:
    """``overrides``: ``section__key=value`` (e.g. ``sip__register_expires=30``).

    With media workers, ``rtmp.listen`` (and ``rtmp.public_url``) get a run of free ports, one
    per worker; called from a fixture, this returns once the workers run. Called from a test's
    body it cannot wait (the reactor runs that body): commands to a worker not yet up wait in its
    socketpair, and the body may ``yield gw.workers_up()``."""
    config = Config()
    workers = overrides.pop("media__workers", None)
    if workers is None:
        workers = default_media_workers()
    config.media.workers = workers
    ws_port, http_port, sip_port = free_port("tcp"), free_port("tcp"), free_port("both")
    config.websocket.listen = f"tcp:{ws_port}:interface=127.0.0.1:backlog=1024"
    rtmp_port = free_port_run(workers) if workers else free_port("tcp")
    config.rtmp.listen = f"tcp:{rtmp_port}:interface=127.0.0.1"
    config.rtmp.public_url = f"rtmp://127.0.0.1:{rtmp_port}/mp"
    config.http.listen = f"tcp:{http_port}:interface=127.0.0.1"
    config.sip.listen_host = "127.0.0.1"
    config.sip.listen_port = sip_port
    config.sip.pbx = f"{pbx_host}:{pbx_port}"
    # Kamailio takes only "127.0.0.1:PORT" as itself: call targets must carry the port
    config.sip.domain = f"{pbx_host}:{pbx_port}"
    config.sip.options_keepalive = 0
    config.auth.users_source = "none"
    # the tests drive one session far beyond a person's pace; the limits' own tests set them
    config.websocket.calls_per_minute = config.websocket.messages_per_minute = 1_000_000
    config.websocket.dtmf_per_minute = config.websocket.requests_per_minute = 1_000_000
    # every test client comes from 127.0.0.1: the per-address caps would refuse a crowd
    config.websocket.max_unauthenticated_per_address = config.websocket.max_unauthenticated = 100_000
    config.rtmp.max_connections_per_address = 100_000
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        target = getattr(config, section)
        if not hasattr(target, name):
            raise AttributeError(key)
        setattr(target, name, value)
    node = make_node(config, reactor)
    node.startService()
    gw = Gateway(node, config, f"ws://127.0.0.1:{ws_port}/ws", http_port, sip_port)
    if workers and _can_block():
        try:
            pytest_twisted.blockon(gw.workers_up())
        except BaseException:
            gw.stop()
            raise
    return gw
