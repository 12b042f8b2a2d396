"""b2bua.metrics: the Registry API over prometheus_client, and what /metrics means.

The exposition is read back with a small independent parser (families in order with their HELP and
TYPE, and every sample's value by name and label set), so the tests check what a Prometheus server
would understand, not how ``prometheus_client`` spells numbers or orders labels.
"""

from __future__ import annotations

import logging
import math
import re

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from b2bua.metrics import CONTENT_TYPE, Registry

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|\Z)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def scrape(registry: Registry) -> tuple[list[tuple[str, str, str]], Samples]:
    """``([(family, type, help)...] in order, {(sample name, labels): value})`` of the exposition."""
    text = registry.render().decode("utf-8")
    assert text == "" or text.endswith("\n")
    families: list[tuple[str, str, str]] = []
    helps: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = re.sub(r"\\\\|\\n", lambda m: _UNESCAPE[m.group()], doc)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            families.append((name, kind, helps[name]))
        else:
            m = _SAMPLE.match(line)
            assert m, line
            labels = []
            rest = m.group(2) or ""
            while rest:
                lm = _LABEL.match(rest)
                assert lm, rest
                value = re.sub(r'\\\\|\\"|\\n', lambda e: _UNESCAPE[e.group()], lm.group(2))
                labels.append((lm.group(1), value))
                rest = rest[lm.end() :]
            key = (m.group(1), frozenset(labels))
            assert key not in samples, f"duplicate series {line}"
            samples[key] = _value(m.group(3))
    # and prometheus_client's own parser agrees that it is valid
    assert sum(len(f.samples) for f in text_string_to_metric_families(text)) == len(samples)
    return families, samples


def s(sample: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (sample, frozenset(labels.items()))


def test_empty_registry_renders_nothing() -> None:
    assert Registry().render() == b""


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_the_global_prometheus_registry_is_not_used() -> None:
    before = set(prometheus_client.REGISTRY._names_to_collectors)  # noqa: SLF001 (test only)
    r = Registry()
    r.counter("mpb2bua_global_check_total", "x").inc()
    r.histogram("mpb2bua_global_check_seconds", "x", [1])
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before  # noqa: SLF001
    Registry().counter("mpb2bua_global_check_total", "a second registry may reuse every name")


def test_unlabelled_counter() -> None:
    r = Registry()
    c = r.counter("mpb2bua_calls_total", "Calls set up.")
    assert scrape(r) == ([("mpb2bua_calls_total", "counter", "Calls set up.")], {s("mpb2bua_calls_total"): 0})
    c.inc()
    c.inc(2)
    assert c.value == 3
    assert scrape(r)[1] == {s("mpb2bua_calls_total"): 3}
    c.inc(0.5)
    assert scrape(r)[1] == {s("mpb2bua_calls_total"): 3.5}


def test_counter_cannot_decrease_and_is_named_total() -> None:
    r = Registry()
    c = r.counter("x_total", "x")
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        c.labels()
    with pytest.raises(ValueError, match="_total"):
        r.counter("calls", "a counter not named ..._total")


def test_labelled_counter() -> None:
    r = Registry()
    c = r.counter("mpb2bua_sip_responses_total", "SIP responses.", ("method", "code"))
    assert scrape(r) == ([("mpb2bua_sip_responses_total", "counter", "SIP responses.")], {})
    c.labels("INVITE", "200").inc()
    c.labels("REGISTER", "401").inc(2)
    c.labels("INVITE", 200).inc()  # non-str values are turned into str and share the series
    assert scrape(r)[1] == {
        s("mpb2bua_sip_responses_total", method="INVITE", code="200"): 2,
        s("mpb2bua_sip_responses_total", method="REGISTER", code="401"): 2,
    }


def test_labels_returns_the_same_child() -> None:
    c = Registry().counter("x_total", "x", ("a",))
    child = c.labels("v")
    assert c.labels("v") is child
    assert c.labels(1).value == c.labels("1").value == 0
    c.labels(1).inc()
    assert c.labels("1").value == 1
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
    g.remove("too", "many")
    assert scrape(r)[1] == {s("g", a="2"): 2}
    g.remove(2)
    assert g.labels(2).value == 0  # a fresh child, not the removed one
    g.clear()
    assert scrape(r) == ([("g", "gauge", "g")], {})


def test_gauge() -> None:
    r = Registry()
    g = r.gauge("mpb2bua_rtp_ports_free", "Free RTP ports.")
    g.set(10)
    g.inc()
    g.dec(3)
    assert g.value == 8
    assert scrape(r) == (
        [("mpb2bua_rtp_ports_free", "gauge", "Free RTP ports.")],
        {s("mpb2bua_rtp_ports_free"): 8},
    )
    g.set(-0.25)
    assert scrape(r)[1] == {s("mpb2bua_rtp_ports_free"): -0.25}


def test_labelled_gauge() -> None:
    r = Registry()
    g = r.gauge("mpb2bua_calls_active", "Calls in progress.", ("direction",))
    g.labels("out").inc()
    g.labels("out").inc()
    g.labels("in").inc()
    g.labels("out").dec()
    g.labels("in").set(7)
    assert scrape(r)[1] == {
        s("mpb2bua_calls_active", direction="out"): 1,
        s("mpb2bua_calls_active", direction="in"): 7,
    }


def test_callback_gauge_plain() -> None:
    r = Registry()
    sessions = [1, 2, 3]
    r.gauge_fn("mpb2bua_sessions", "Open WebSocket sessions.", lambda: len(sessions))
    assert scrape(r)[1] == {s("mpb2bua_sessions"): 3}
    sessions.append(4)
    families = [("mpb2bua_sessions", "gauge", "Open WebSocket sessions.")]
    assert scrape(r) == (families, {s("mpb2bua_sessions"): 4})


def test_callback_gauge_labelled() -> None:
    r = Registry()
    states = {("registered",): 10.0, ("failed",): 2}
    r.gauge_fn("mpb2bua_registrations", "Registrations by state.", lambda: states, ("state",))
    assert scrape(r) == (
        [("mpb2bua_registrations", "gauge", "Registrations by state.")],
        {s("mpb2bua_registrations", state="registered"): 10, s("mpb2bua_registrations", state="failed"): 2},
    )


def test_callback_gauge_str_keys_and_two_labels() -> None:
    r = Registry()
    r.gauge_fn("one", "one", lambda: {"a": 1}, ("k",))
    r.gauge_fn("two", "two", lambda: {("a", "b"): 1.5}, ("k", "l"))
    assert scrape(r)[1] == {s("one", k="a"): 1, s("two", k="a", l="b"): 1.5}


def test_counter_and_gauge_of_related_names() -> None:
    # the service has both: mpb2bua_calls_total (counter) and mpb2bua_calls (gauge by state)
    r = Registry()
    r.counter("mpb2bua_calls_total", "Calls set up, by direction", ("direction",)).labels("inbound").inc()
    r.gauge_fn("mpb2bua_calls", "Live calls by state", lambda: {("active",): 1}, ("state",))
    families, samples = scrape(r)
    assert [f[:2] for f in families] == [("mpb2bua_calls_total", "counter"), ("mpb2bua_calls", "gauge")]
    assert samples == {
        s("mpb2bua_calls_total", direction="inbound"): 1,
        s("mpb2bua_calls", state="active"): 1,
    }


def test_broken_callback_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    r = Registry()

    def boom() -> float:
        raise RuntimeError("nope")

    r.gauge_fn("bad", "Broken.", boom)
    r.gauge_fn("wrong_shape", "Mapping without labels.", lambda: {("x",): 1})
    r.gauge_fn("wrong_arity", "Wrong key length.", lambda: {("x", "y"): 1}, ("a",))
    r.counter("good_total", "Fine.").inc()
    with caplog.at_level(logging.ERROR, logger="b2bua.metrics"):
        families, samples = scrape(r)
    assert families == [
        ("bad", "gauge", "Broken."),
        ("wrong_shape", "gauge", "Mapping without labels."),
        ("wrong_arity", "gauge", "Wrong key length."),
        ("good_total", "counter", "Fine."),
    ]
    assert samples == {s("good_total"): 1}
    assert len(caplog.records) == 3


def test_histogram_unlabelled() -> None:
    r = Registry()
    h = r.histogram("mpb2bua_setup_seconds", "Call setup time.", [0.005, 0.1, 1])
    assert h.bounds == (0.005, 0.1, 1.0, math.inf)
    for v in (0.001, 0.005, 0.05, 0.5, 3):
        h.observe(v)
    families, samples = scrape(r)
    assert families == [("mpb2bua_setup_seconds", "histogram", "Call setup time.")]
    assert samples == {
        s("mpb2bua_setup_seconds_bucket", le="0.005"): 2,
        s("mpb2bua_setup_seconds_bucket", le="0.1"): 3,
        s("mpb2bua_setup_seconds_bucket", le="1.0"): 4,
        s("mpb2bua_setup_seconds_bucket", le="+Inf"): 5,
        s("mpb2bua_setup_seconds_sum"): pytest.approx(3.556),
        s("mpb2bua_setup_seconds_count"): 5,
    }
    child = h._unlabelled()  # noqa: SLF001 (the per-series view)
    assert (child.counts, child.count) == ([2, 1, 1, 1], 5)
    assert child.sum == pytest.approx(3.556)


def test_histogram_empty_unlabelled() -> None:
    r = Registry()
    r.histogram("h", "h", [1, math.inf])
    assert scrape(r) == (
        [("h", "histogram", "h")],
        {s("h_bucket", le="1.0"): 0, s("h_bucket", le="+Inf"): 0, s("h_sum"): 0, s("h_count"): 0},
    )


def test_histogram_labelled() -> None:
    r = Registry()
    h = r.histogram("lat_seconds", "Latency.", (0.02, 0.04), ("dir",))
    up = h.labels("up")
    up.observe(0.01)
    up.observe(0.04)
    h.labels("down").observe(0.5)
    assert scrape(r)[1] == {
        s("lat_seconds_bucket", dir="up", le="0.02"): 1,
        s("lat_seconds_bucket", dir="up", le="0.04"): 2,
        s("lat_seconds_bucket", dir="up", le="+Inf"): 2,
        s("lat_seconds_sum", dir="up"): 0.05,
        s("lat_seconds_count", dir="up"): 2,
        s("lat_seconds_bucket", dir="down", le="0.02"): 0,
        s("lat_seconds_bucket", dir="down", le="0.04"): 0,
        s("lat_seconds_bucket", dir="down", le="+Inf"): 1,
        s("lat_seconds_sum", dir="down"): 0.5,
        s("lat_seconds_count", dir="down"): 1,
    }


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
    assert scrape(r) == (
        [("esc_total", "counter", 'Help with \\ backslash, "quotes"\nand a newline.')],
        {s("esc_total", v='a\\b"c\nd'): 1},
    )


def test_utf8_label_values() -> None:
    r = Registry()
    r.gauge("u", "u", ("name",)).labels("呼叫").set(1)
    assert scrape(r)[1] == {s("u", name="呼叫"): 1}


def test_special_values() -> None:
    r = Registry()
    g = r.gauge("g", "g", ("v",))
    for name, value in (("big", 1e20), ("inf", math.inf), ("minf", -math.inf), ("tenth", 0.1)):
        g.labels(name).set(value)
    g.labels("nan").set(math.nan)
    samples = scrape(r)[1]
    assert samples[s("g", v="big")] == 1e20 and samples[s("g", v="tenth")] == 0.1
    assert samples[s("g", v="inf")] == math.inf and samples[s("g", v="minf")] == -math.inf
    assert math.isnan(samples[s("g", v="nan")])


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
        r.counter("1bad_total", "x")
    with pytest.raises(ValueError):
        r.counter("bad-name_total", "x")
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
    assert [f[:2] for f in scrape(r)[0]] == [("z", "gauge"), ("a_total", "counter")]
    assert not [line for line in r.render().decode().splitlines() if "_created" in line]
