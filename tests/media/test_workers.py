"""b2bua.media.worker_amp / workers / worker: the AMP boxes, the least-loaded choice, the ports."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.protocols import amp

from b2bua.config import Config
from b2bua.media import worker_amp as cmd
from b2bua.media.stats import LegStats
from b2bua.media.worker import shifted_endpoint, worker_port_range
from b2bua.media.workers import choose_worker, worker_rtmp_base
from b2bua.wire.sdp import SessionDescription, make_offer, negotiate_answer


def round_trip(command: type[amp.Command], side: str, **values):
    """Values → AMP box bytes → values, as the other end sees them."""
    if side == "arguments":
        box = command.makeArguments(values, None)
        parse = command.parseArguments
    else:
        box = command.makeResponse(values, None)
        parse = command.parseResponse
    (received,) = amp.parseString(box.serialize())
    return parse(received, None)


def test_create_leg_box_round_trips():
    args = round_trip(cmd.CreateLeg, "arguments", leg="l1", push_key="p" * 32, play_key="q" * 32, video=True)
    assert args == {"leg": "l1", "push_key": "p" * 32, "play_key": "q" * 32, "video": True}
    assert round_trip(cmd.CreateLeg, "response", audio_port=20000, video_port=0) == {
        "audio_port": 20000, "video_port": 0}


def test_apply_media_carries_the_negotiated_media_whole():
    offer = make_offer("192.0.2.1", 4000, ["PCMU", "telephone-event"], ptime=20)
    codecs = ["PCMA", "PCMU", "telephone-event"]
    _, negotiated = negotiate_answer(SessionDescription.parse(bytes(offer)), codecs, "198.51.100.7",
                                     {"audio": 20000})
    out = round_trip(cmd.ApplyMedia, "arguments", leg="l7", negotiated=negotiated)
    assert out["negotiated"] == negotiated and out["negotiated"].audio.codec == "PCMU"


def test_close_leg_returns_the_stats():
    stats = LegStats(rtp_sent=500, rtp_received=498, lost=2, codec="PCMU")
    assert round_trip(cmd.CloseLeg, "response", stats=stats)["stats"] == stats
    assert round_trip(cmd.CloseLeg, "response", stats=None)["stats"] is None


def test_events_and_reports_need_no_answer():
    for command in (cmd.StreamEvent, cmd.DtmfReceived, cmd.Report):
        assert command.requiresAnswer is False
    out = round_trip(cmd.StreamEvent, "arguments", leg="l1", stream="player", state="gone", id="rtmp-3",
                     reason=None)
    assert out["reason"] is None and out["state"] == "gone"
    report = round_trip(cmd.Report, "arguments", packets={"l1": 10, "l2": 0}, metrics={"late_ticks": 3})
    assert report == {"packets": {"l1": 10, "l2": 0}, "metrics": {"late_ticks": 3}}


def worker(index, legs, ready=True):
    return SimpleNamespace(index=index, legs=dict.fromkeys(range(legs)), ready=ready)


def test_new_calls_go_to_the_least_loaded_running_worker():
    a, b, c = worker(0, 3), worker(1, 1), worker(2, 1)
    assert choose_worker([a, b, c]) is b  # the fewest legs, the lowest index among equals
    b.ready = False  # dead, being restarted
    assert choose_worker([a, b, c]) is c
    assert choose_worker([worker(0, 0, ready=False)]) is None


def test_each_worker_has_its_own_rtp_ports_and_rtmp_port():
    assert worker_port_range(20000, 29999, 0, 2) == (20000, 24999)
    assert worker_port_range(20000, 29999, 1, 2) == (25000, 29999)
    with pytest.raises(ValueError):
        worker_port_range(20000, 20001, 0, 2)
    assert shifted_endpoint("tcp:1935:backlog=1024", 2) == "tcp:1937:backlog=1024"
    with pytest.raises(ValueError):
        shifted_endpoint("unix:/tmp/rtmp", 1)
    config = Config()
    config.public_host = "media.example.com"
    assert worker_rtmp_base(config, 1) == "rtmp://media.example.com:1936/mp"
    config.rtmp.public_url = "rtmp://gw.example.com/live"
    assert worker_rtmp_base(config, 3) == "rtmp://gw.example.com:1938/live"


def test_a_worker_reports_at_once_and_the_node_marks_it_up():
    """The first report goes out as the AMP connection is made (the worker runs, its RTMP port
    listens): the node's ``reported`` is what the test harness waits for; a death clears it."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from b2bua.media.tick import MediaClock
    from b2bua.media.worker import WorkerProtocol
    from b2bua.media.workers import MediaWorker, WorkerPool, _NodeAmp
    from b2bua.metrics import Registry
    from b2bua.rtmp.server import RtmpMetrics
    from b2bua.rtmp.streams import StreamRegistry

    reactor = Clock()
    proto = WorkerProtocol(reactor, Config(), None, StreamRegistry(reactor), MediaClock(reactor),
                           RtmpMetrics(Registry()))
    transport = StringTransport()
    proto.makeConnection(transport)
    sent = transport.value()
    assert b"Report" in sent and b"late_ticks" in sent  # before any time passed
    proto._report.stop()

    config = Config()
    config.media.workers = 1
    pool = WorkerPool(reactor, config, "127.0.0.1")
    (node_worker,) = pool.workers
    assert isinstance(node_worker, MediaWorker) and not node_worker.reported
    node = _NodeAmp(node_worker)  # the node's end of the socketpair
    node.report(packets={}, metrics={"late_ticks": 0})
    assert node_worker.reported
    node_worker.ended(SimpleNamespace(value=SimpleNamespace(exitCode=1, signal=None)))
    assert not node_worker.reported


def test_a_workers_log_lines_come_into_the_nodes_log():
    """The worker writes one JSON event per line (worker.log_line); the node re-emits each at its
    level with the worker's index, tracebacks included, whatever the pipe's chunking; raw text
    (a crash before logging began) comes as an error; a runaway line is cut."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    from twisted.python.failure import Failure

    from b2bua.media.worker import log_line
    from b2bua.media.workers import MAX_LOG_LINE, MediaWorker, _WorkerProcess

    worker = MediaWorker.__new__(MediaWorker)
    worker.index = 1
    proto = _WorkerProcess(worker)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        failure = Failure(ZeroDivisionError("division by zero"))
        lines = (
            log_line({"log_level": LogLevel.warn, "log_format": "tick {n} late", "n": 3})
            + log_line({"log_level": LogLevel.critical, "log_format": "boom", "log_failure": failure})
        ).encode()
        for i in range(0, len(lines), 7):  # a pipe delivers any chunks
            proto.childDataReceived(2, lines[i : i + 7])
        proto.childDataReceived(1, b"Fatal Python error: Segmentation fault\n")
        proto.childDataReceived(2, b"x" * (MAX_LOG_LINE + 10))
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("index") == 1]
    texts = [formatEvent(e) for e in mine]
    levels = [e["log_level"] for e in mine]
    assert levels == [LogLevel.warn, LogLevel.critical, LogLevel.error, LogLevel.error]
    assert texts[0] == "media worker 1: tick 3 late"
    assert texts[1].startswith("media worker 1: boom\n") and "ZeroDivisionError" in texts[1]
    assert texts[2] == "media worker 1: Fatal Python error: Segmentation fault"
    assert len(mine[3]["text"]) == MAX_LOG_LINE
