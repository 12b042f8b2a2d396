"""b2bua.metrics: exact Prometheus text exposition (0.0.4) output."""

from __future__ import annotations

import logging
import math

import pytest

from b2bua.metrics import CONTENT_TYPE, Registry, escape_label_value, format_value


def text(registry: Registry) -> str:
    return registry.render().decode("utf-8")


def test_empty_registry_renders_nothing() -> None:
    assert Registry().render() == b""


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_unlabelled_counter() -> None:
    r = Registry()
    c = r.counter("mpb2bua_calls_total", "Calls set up.")
    assert text(r) == (
        "# HELP mpb2bua_calls_total Calls set up.\n"
        "# TYPE mpb2bua_calls_total counter\n"
        "mpb2bua_calls_total 0\n"
    )
    c.inc()
    c.inc(2)
    assert c.value == 3
    assert text(r).splitlines()[-1] == "mpb2bua_calls_total 3"
    c.inc(0.5)
    assert text(r).splitlines()[-1] == "mpb2bua_calls_total 3.5"


def test_counter_cannot_decrease() -> None:
    c = Registry().counter("x_total", "x")
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        c.labels()


def test_labelled_counter() -> None:
    r = Registry()
    c = r.counter("mpb2bua_sip_responses_total", "SIP responses.", ("method", "code"))
    assert text(r) == (
        "# HELP mpb2bua_sip_responses_total SIP responses.\n# TYPE mpb2bua_sip_responses_total counter\n"
    )
    c.labels("INVITE", "200").inc()
    c.labels("REGISTER", "401").inc(2)
    c.labels("INVITE", 200).inc()  # non-str values are turned into str and share the series
    assert text(r) == (
        "# HELP mpb2bua_sip_responses_total SIP responses.\n"
        "# TYPE mpb2bua_sip_responses_total counter\n"
        'mpb2bua_sip_responses_total{method="INVITE",code="200"} 2\n'
        'mpb2bua_sip_responses_total{method="REGISTER",code="401"} 2\n'
    )


def test_labels_returns_the_same_child() -> None:
    c = Registry().counter("x_total", "x", ("a",))
    child = c.labels("v")
    assert c.labels("v") is child
    assert c.labels(1) is c.labels("1")
    with pytest.raises(ValueError):
        c.labels("a", "b")
    with pytest.raises(ValueError):
        c.inc()  # labelled: needs .labels()


def test_remove_and_clear() -> None:
    r = Registry()
    g = r.gauge("g", "g", ("a",))
    g.labels("x").set(1)
    g.labels(2).set(2)
    g.remove("x")
    g.remove("missing")
    assert text(r).splitlines()[2:] == ['g{a="2"} 2']
    g.remove(2)
    assert g.labels(2).value == 0  # a fresh child, not the removed one
    g.clear()
    assert text(r) == "# HELP g g\n# TYPE g gauge\n"


def test_gauge() -> None:
    r = Registry()
    g = r.gauge("mpb2bua_rtp_ports_free", "Free RTP ports.")
    g.set(10)
    g.inc()
    g.dec(3)
    assert g.value == 8
    assert text(r) == (
        "# HELP mpb2bua_rtp_ports_free Free RTP ports.\n"
        "# TYPE mpb2bua_rtp_ports_free gauge\n"
        "mpb2bua_rtp_ports_free 8\n"
    )
    g.set(-0.25)
    assert text(r).splitlines()[-1] == "mpb2bua_rtp_ports_free -0.25"


def test_labelled_gauge() -> None:
    r = Registry()
    g = r.gauge("mpb2bua_calls_active", "Calls in progress.", ("direction",))
    g.labels("out").inc()
    g.labels("out").inc()
    g.labels("in").inc()
    g.labels("out").dec()
    g.labels("in").set(7)
    assert text(r) == (
        "# HELP mpb2bua_calls_active Calls in progress.\n"
        "# TYPE mpb2bua_calls_active gauge\n"
        'mpb2bua_calls_active{direction="out"} 1\n'
        'mpb2bua_calls_active{direction="in"} 7\n'
    )


def test_callback_gauge_plain() -> None:
    r = Registry()
    sessions = [1, 2, 3]
    r.gauge_fn("mpb2bua_sessions", "Open WebSocket sessions.", lambda: len(sessions))
    assert text(r).splitlines()[-1] == "mpb2bua_sessions 3"
    sessions.append(4)
    assert text(r) == (
        "# HELP mpb2bua_sessions Open WebSocket sessions.\n"
        "# TYPE mpb2bua_sessions gauge\n"
        "mpb2bua_sessions 4\n"
    )


def test_callback_gauge_labelled() -> None:
    r = Registry()
    states = {("registered",): 10.0, ("failed",): 2}
    r.gauge_fn("mpb2bua_registrations", "Registrations by state.", lambda: states, ("state",))
    assert text(r) == (
        "# HELP mpb2bua_registrations Registrations by state.\n"
        "# TYPE mpb2bua_registrations gauge\n"
        'mpb2bua_registrations{state="registered"} 10\n'
        'mpb2bua_registrations{state="failed"} 2\n'
    )


def test_callback_gauge_str_keys_and_two_labels() -> None:
    r = Registry()
    r.gauge_fn("one", "one", lambda: {"a": 1}, ("k",))
    r.gauge_fn("two", "two", lambda: {("a", "b"): 1.5}, ("k", "l"))
    lines = text(r).splitlines()
    assert 'one{k="a"} 1' in lines
    assert 'two{k="a",l="b"} 1.5' in lines


def test_broken_callback_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    r = Registry()

    def boom() -> float:
        raise RuntimeError("nope")

    r.gauge_fn("bad", "Broken.", boom)
    r.gauge_fn("wrong_shape", "Mapping without labels.", lambda: {("x",): 1})
    r.gauge_fn("wrong_arity", "Wrong key length.", lambda: {("x", "y"): 1}, ("a",))
    r.counter("good_total", "Fine.").inc()
    with caplog.at_level(logging.ERROR, logger="b2bua.metrics"):
        out = text(r)
    assert out == (
        "# HELP bad Broken.\n# TYPE bad gauge\n"
        "# HELP wrong_shape Mapping without labels.\n# TYPE wrong_shape gauge\n"
        "# HELP wrong_arity Wrong key length.\n# TYPE wrong_arity gauge\n"
        "# HELP good_total Fine.\n# TYPE good_total counter\ngood_total 1\n"
    )
    assert len(caplog.records) == 3


def test_histogram_unlabelled() -> None:
    r = Registry()
    h = r.histogram("mpb2bua_setup_seconds", "Call setup time.", [0.005, 0.1, 1])
    assert h.bounds == (0.005, 0.1, 1.0, math.inf)
    for v in (0.001, 0.005, 0.05, 0.5, 3):
        h.observe(v)
    assert text(r) == (
        "# HELP mpb2bua_setup_seconds Call setup time.\n"
        "# TYPE mpb2bua_setup_seconds histogram\n"
        'mpb2bua_setup_seconds_bucket{le="0.005"} 2\n'
        'mpb2bua_setup_seconds_bucket{le="0.1"} 3\n'
        'mpb2bua_setup_seconds_bucket{le="1"} 4\n'
        'mpb2bua_setup_seconds_bucket{le="+Inf"} 5\n'
        "mpb2bua_setup_seconds_sum 3.556\n"
        "mpb2bua_setup_seconds_count 5\n"
    )


def test_histogram_empty_unlabelled() -> None:
    r = Registry()
    r.histogram("h", "h", [1, math.inf])
    assert text(r) == (
        '# HELP h h\n# TYPE h histogram\nh_bucket{le="1"} 0\nh_bucket{le="+Inf"} 0\nh_sum 0\nh_count 0\n'
    )


def test_histogram_labelled() -> None:
    r = Registry()
    h = r.histogram("lat_seconds", "Latency.", (0.02, 0.04), ("dir",))
    up = h.labels("up")
    up.observe(0.01)
    up.observe(0.04)
    h.labels("down").observe(0.5)
    assert text(r) == (
        "# HELP lat_seconds Latency.\n"
        "# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{dir="up",le="0.02"} 1\n'
        'lat_seconds_bucket{dir="up",le="0.04"} 2\n'
        'lat_seconds_bucket{dir="up",le="+Inf"} 2\n'
        'lat_seconds_sum{dir="up"} 0.05\n'
        'lat_seconds_count{dir="up"} 2\n'
        'lat_seconds_bucket{dir="down",le="0.02"} 0\n'
        'lat_seconds_bucket{dir="down",le="0.04"} 0\n'
        'lat_seconds_bucket{dir="down",le="+Inf"} 1\n'
        'lat_seconds_sum{dir="down"} 0.5\n'
        'lat_seconds_count{dir="down"} 1\n'
    )


def test_histogram_bad_buckets_and_le_label() -> None:
    r = Registry()
    with pytest.raises(ValueError):
        r.histogram("a", "a", [])
    with pytest.raises(ValueError):
        r.histogram("b", "b", [1, 1])
    with pytest.raises(ValueError):
        r.histogram("c", "c", [2, 1])
    with pytest.raises(ValueError):
        r.histogram("d", "d", [1], ("le",))


def test_escaping() -> None:
    r = Registry()
    c = r.counter("esc_total", 'Help with \\ backslash, "quotes"\nand a newline.', ("v",))
    c.labels('a\\b"c\nd').inc()
    assert text(r) == (
        '# HELP esc_total Help with \\\\ backslash, "quotes"\\nand a newline.\n'
        "# TYPE esc_total counter\n"
        'esc_total{v="a\\\\b\\"c\\nd"} 1\n'
    )
    assert escape_label_value('\\"\n') == '\\\\\\"\\n'


def test_utf8_label_values() -> None:
    r = Registry()
    r.gauge("u", "u", ("name",)).labels("呼叫").set(1)
    assert r.render().endswith('u{name="呼叫"} 1\n'.encode())


def test_format_value() -> None:
    assert format_value(0) == "0"
    assert format_value(3.0) == "3"
    assert format_value(0.1) == "0.1"
    assert format_value(1e20) == "1e+20"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_duplicate_names_raise() -> None:
    r = Registry()
    r.counter("dup_total", "x")
    with pytest.raises(ValueError):
        r.counter("dup_total", "x")
    with pytest.raises(ValueError):
        r.gauge("dup_total", "x")
    with pytest.raises(ValueError):
        r.gauge_fn("dup_total", "x", lambda: 1)
    r.histogram("lat", "x", [1])
    with pytest.raises(ValueError):  # would clash with the histogram's series
        r.gauge("lat_count", "x")
    r.gauge("h_sum", "x")
    with pytest.raises(ValueError):
        r.histogram("h", "x", [1])


def test_invalid_names_raise() -> None:
    r = Registry()
    with pytest.raises(ValueError):
        r.counter("1bad", "x")
    with pytest.raises(ValueError):
        r.counter("bad-name", "x")
    with pytest.raises(ValueError):
        r.counter("ok_total", "x", ("bad-label",))
    with pytest.raises(ValueError):
        r.counter("ok_total", "x", ("__reserved",))
    with pytest.raises(ValueError):
        r.counter("ok_total", "x", ("a", "a"))
    with pytest.raises(TypeError):
        r.counter("ok_total", "x", "state")  # a str, not a sequence of names
    assert "ok_total" not in r
    r.counter("ok_total", "x", ["a"])
    assert "ok_total" in r


def test_unregister() -> None:
    r = Registry()
    r.histogram("h", "h", [1])
    r.unregister("h")
    assert r.render() == b""
    r.gauge("h_count", "now free")
    with pytest.raises(KeyError):
        r.unregister("missing")


def test_render_keeps_registration_order() -> None:
    r = Registry()
    r.gauge("z", "z")
    r.counter("a_total", "a")
    types = [line for line in text(r).splitlines() if line.startswith("# TYPE")]
    assert types == ["# TYPE z gauge", "# TYPE a_total counter"]
