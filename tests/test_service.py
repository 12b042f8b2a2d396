"""The node's start-up GC set-up (b2bua.service.tune_gc / GcTuningService)."""

from __future__ import annotations

import gc

import pytest
from twisted.internet.task import Clock

from b2bua.config import Config
from b2bua.service import GC_GEN0_THRESHOLD, GcTuningService, make_node


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_gc_tuning_freezes_startup_objects_and_raises_gen0_threshold(restore_gc):
    class StartupThing:
        pass

    before = StartupThing()
    svc = GcTuningService()
    svc.startService()
    assert svc.running
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD > 700
    assert gc.get_freeze_count() > 1000
    # frozen: no collection walks it again (get_objects lists generations 0-2 only)
    assert not any(o is before for o in gc.get_objects())
    after = StartupThing()
    assert any(o is after for o in gc.get_objects())


def test_make_node_tunes_gc_after_everything_else_started(restore_gc):
    config = Config()
    config.websocket.listen = config.rtmp.listen = config.http.listen = ""
    config.websocket.tls_listen = ""
    config.media.workers = 0  # no RTMP listener: the media in the node
    top = make_node(config, Clock())
    children = list(top)
    assert isinstance(children[-1], GcTuningService)
    assert sum(isinstance(c, GcTuningService) for c in children) == 1


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_make_node_gives_the_trusted_proxy_hops_to_every_websocket_listener(restore_gc, hops):
    config = Config()
    config.websocket.listen = "tcp:0:interface=127.0.0.1"
    config.websocket.tls_listen = "tcp:0:interface=127.0.0.1"  # stands in for ssl: (not listened on)
    config.rtmp.listen = config.http.listen = ""
    config.media.workers = 0  # no RTMP listener: the media in the node
    config.websocket.trusted_proxy_hops = hops
    top = make_node(config, Clock())
    factories = [c.factory for c in top if hasattr(c, "factory")]
    assert len(factories) == 2
    assert all(f.trustXForwardedFor == hops for f in factories)
