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
    top = make_node(config, Clock())
    children = list(top)
    assert isinstance(children[-1], GcTuningService)
    assert sum(isinstance(c, GcTuningService) for c in children) == 1
