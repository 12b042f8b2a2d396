"""A tiny Prometheus metrics registry with no dependencies.

The service creates one :class:`Registry` and passes it to whoever records metrics; there is
deliberately no module-level default registry. :meth:`Registry.render` produces the Prometheus
text exposition format, version 0.0.4.

Metric families:

* :class:`Counter` (``inc``), :class:`Gauge` (``inc``/``dec``/``set``) and :class:`Histogram`
  (``observe``). With label names, ``.labels(*values)`` returns a child that holds the value;
  without, the family itself has the methods. Looking a child up is one dict lookup by the
  tuple of values, and a child may be kept and reused on hot paths::

      rtp_in = registry.counter("mpb2bua_rtp_packets_total", "RTP packets.", ("direction",))
      rtp_in_rx = rtp_in.labels("rx")   # keep this
      rtp_in_rx.inc()

* :class:`CallbackGauge` (:meth:`Registry.gauge_fn`): a gauge whose value is asked for at scrape
  time, for numbers the service already knows (sessions open, registrations by state).

Names are the caller's choice: counters should end in ``_total`` and units should be spelled out
(``_seconds``, ``_bytes``) as the Prometheus naming conventions say; nothing here appends suffixes
except the ``_bucket``/``_sum``/``_count`` series of histograms.

Everything runs on the reactor thread: there are no locks.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = [
    "CallbackGauge",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Registry",
    "CONTENT_TYPE",
]

#: The ``Content-Type`` of :meth:`Registry.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_log = logging.getLogger(__name__)

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

CallbackValue = float | Mapping[tuple[str, ...], float] | Mapping[str, float]


def format_value(value: float) -> str:
    """Format a sample value: integral values without a fraction, ``+Inf``, ``-Inf``, ``NaN``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_pairs(labelnames: Sequence[str], values: Sequence[str]) -> str:
    """``a="x",b="y"`` without braces; empty when there are no labels."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(labelnames, values, strict=True))


def _braced(pairs: str) -> str:
    return "{" + pairs + "}" if pairs else ""


def _check_labelnames(
    metric: str, labelnames: Iterable[str], reserved: Sequence[str] = ()
) -> tuple[str, ...]:
    if isinstance(labelnames, str):
        raise TypeError(f"{metric}: labelnames must be a sequence of names, not a string")
    names = tuple(labelnames)
    for n in names:
        if not isinstance(n, str) or not _LABEL_NAME_RE.match(n) or n.startswith("__"):
            raise ValueError(f"{metric}: invalid label name {n!r}")
        if n in reserved:
            raise ValueError(f"{metric}: label name {n!r} is reserved")
    if len(set(names)) != len(names):
        raise ValueError(f"{metric}: duplicate label names in {names!r}")
    return names


# --------------------------------------------------------------------------------------------
# children: they hold the values


class CounterChild:
    """One counter series. ``value`` is readable."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (must not be negative)."""
        if n < 0:
            raise ValueError("counters can only increase")
        self.value += n


class GaugeChild:
    """One gauge series. ``value`` is readable."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, n: float = 1) -> None:
        self.value += n

    def dec(self, n: float = 1) -> None:
        self.value -= n

    def set(self, v: float) -> None:
        self.value = v


class HistogramChild:
    """One histogram series. ``counts`` are per bucket (not cumulative); ``sum`` and ``count``."""

    __slots__ = ("_bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts: list[int] = [0] * len(bounds)
        self.sum: float = 0
        self.count: int = 0

    def observe(self, v: float) -> None:
        """Record one observation; a value equal to a bound falls in that bucket (``le``)."""
        # bisect_left finds the first bound >= v; NaN compares false everywhere and goes to +Inf.
        i = bisect_left(self._bounds, v) if v == v else len(self._bounds) - 1
        self.counts[i] += 1
        self.sum += v
        self.count += 1


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


# --------------------------------------------------------------------------------------------
# families


class _Family(Generic[C]):
    """A named metric with its label names and its children, keyed by label values."""

    type_name = ""

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        # normalised (str) values -> child, in creation order; rendered from this
        self._children: dict[tuple[str, ...], C] = {}
        # any values tuple seen by labels() -> child (e.g. (200,) and ("200",) share a child)
        self._lookup: dict[tuple[object, ...], C] = {}
        self._pairs: dict[tuple[str, ...], str] = {}
        self._default: C | None = None
        if not labelnames:
            self._default = self._new_child()
            self._children[()] = self._default
            self._pairs[()] = ""

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: object) -> C:
        """The child for these label values (created on first use); values are turned into str."""
        child = self._lookup.get(values)
        if child is not None:
            return child
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} expects {len(self.labelnames)} label values, got {len(values)}")
        key = tuple(v if isinstance(v, str) else str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._new_child()
            self._children[key] = child
            self._pairs[key] = _label_pairs(self.labelnames, key)
        self._lookup[values] = child
        return child

    def remove(self, *values: object) -> None:
        """Forget the series for these label values (no error if it does not exist)."""
        key = tuple(v if isinstance(v, str) else str(v) for v in values)
        child = self._children.pop(key, None)
        if child is None:
            return
        del self._pairs[key]
        for k in [k for k, c in self._lookup.items() if c is child]:
            del self._lookup[k]

    def clear(self) -> None:
        """Forget every labelled series."""
        if self.labelnames:
            self._children.clear()
            self._lookup.clear()
            self._pairs.clear()

    def _unlabelled(self) -> C:
        child = self._default
        if child is None:
            raise ValueError(f"{self.name} has labels {self.labelnames!r}: use .labels(...)")
        return child

    def _header(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.type_name}")

    def _render(self, out: list[str]) -> None:
        self._header(out)
        name = self.name
        pairs = self._pairs
        for key, child in self._children.items():
            out.append(f"{name}{_braced(pairs[key])} {format_value(child.value)}")  # type: ignore[union-attr]

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)


class Counter(_Family[CounterChild]):
    """A counter family; see :meth:`Registry.counter`."""

    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, n: float = 1) -> None:
        """Add ``n`` to an unlabelled counter."""
        self._unlabelled().inc(n)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Gauge(_Family[GaugeChild]):
    """A gauge family; see :meth:`Registry.gauge`."""

    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def inc(self, n: float = 1) -> None:
        self._unlabelled().inc(n)

    def dec(self, n: float = 1) -> None:
        self._unlabelled().dec(n)

    def set(self, v: float) -> None:
        self._unlabelled().set(v)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Histogram(_Family[HistogramChild]):
    """A histogram family; see :meth:`Registry.histogram`. ``bounds`` ends with ``inf``."""

    type_name = "histogram"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...], buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds:
            raise ValueError(f"{name}: at least one bucket is needed")
        increasing = all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
        if not increasing or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be strictly increasing numbers")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._le = [f'le="{format_value(b)}"' for b in self.bounds]
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, v: float) -> None:
        """Record one observation in an unlabelled histogram."""
        self._unlabelled().observe(v)

    def _render(self, out: list[str]) -> None:
        self._header(out)
        name = self.name
        for key, child in self._children.items():
            pairs = self._pairs[key]
            sep = "," if pairs else ""
            cumulative = 0
            for le, n in zip(self._le, child.counts, strict=True):
                cumulative += n
                out.append(f"{name}_bucket{{{pairs}{sep}{le}}} {cumulative}")
            braced = _braced(pairs)
            out.append(f"{name}_sum{braced} {format_value(child.sum)}")
            out.append(f"{name}_count{braced} {child.count}")

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")


class CallbackGauge:
    """A gauge read at scrape time from a callback; see :meth:`Registry.gauge_fn`."""

    type_name = "gauge"

    def __init__(
        self, name: str, help: str, fn: Callable[[], CallbackValue], labelnames: tuple[str, ...]
    ) -> None:
        self.name = name
        self.help = help
        self.fn = fn
        self.labelnames = labelnames

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)

    def _render(self, out: list[str]) -> None:
        try:
            samples = self._samples()
        except Exception:
            # A broken callback must not take the whole scrape down: the family is kept (HELP and
            # TYPE) without samples, and the error is logged.
            _log.exception("metrics callback for %s failed", self.name)
            samples = []
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} gauge")
        out.extend(samples)

    def _samples(self) -> list[str]:
        result = self.fn()
        name = self.name
        if not self.labelnames:
            if isinstance(result, Mapping):
                raise TypeError(f"{name}: callback returned a mapping but the gauge has no labels")
            return [f"{name} {format_value(result)}"]
        if not isinstance(result, Mapping):
            raise TypeError(f"{name}: callback must return a mapping of label values to numbers")
        lines = []
        for key, value in result.items():
            values = (key,) if isinstance(key, str) else tuple(str(v) for v in key)
            pairs = _label_pairs(self.labelnames, values)  # raises ValueError on a wrong length
            lines.append(f"{name}{{{pairs}}} {format_value(value)}")
        return lines


Metric = Counter | Gauge | Histogram | CallbackGauge


# --------------------------------------------------------------------------------------------


class Registry:
    """A set of uniquely named metrics, rendered together in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._sample_names: dict[str, str] = {}  # every series name -> owning family

    def _add(self, metric: Metric) -> None:
        if not isinstance(metric.name, str) or not _METRIC_NAME_RE.match(metric.name):
            raise ValueError(f"invalid metric name {metric.name!r}")
        for sample in metric.sample_names:
            owner = self._sample_names.get(sample)
            if owner is not None:
                raise ValueError(f"metric {metric.name!r} clashes with the already registered {owner!r}")
        self._metrics[metric.name] = metric
        for sample in metric.sample_names:
            self._sample_names[sample] = metric.name

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter (name it ``..._total``)."""
        metric = Counter(name, help, _check_labelnames(name, labelnames))
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register a gauge that the caller sets."""
        metric = Gauge(name, help, _check_labelnames(name, labelnames))
        self._add(metric)
        return metric

    def gauge_fn(
        self,
        name: str,
        help: str,
        fn: Callable[[], CallbackValue],
        labelnames: Sequence[str] = (),
    ) -> CallbackGauge:
        """Register a gauge evaluated at scrape time.

        Without label names ``fn`` returns a number; with them it returns a mapping from tuples
        of label values to numbers (a plain str key is accepted when there is one label), e.g.
        ``lambda: {("registered",): 10, ("failed",): 2}`` for ``labelnames=("state",)``.
        """
        metric = CallbackGauge(name, help, fn, _check_labelnames(name, labelnames))
        self._add(metric)
        return metric

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        """Register a histogram with these upper bounds (``+Inf`` is added when missing)."""
        metric = Histogram(name, help, _check_labelnames(name, labelnames, reserved=("le",)), buckets)
        self._add(metric)
        return metric

    def unregister(self, name: str) -> None:
        """Remove a metric by its family name (KeyError when unknown)."""
        metric = self._metrics.pop(name)
        for sample in metric.sample_names:
            self._sample_names.pop(sample, None)

    def __contains__(self, name: object) -> bool:
        return name in self._metrics

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format 0.0.4 (see :data:`CONTENT_TYPE`)."""
        out: list[str] = []
        for metric in self._metrics.values():
            metric._render(out)
        if not out:
            return b""
        out.append("")
        return "\n".join(out).encode("utf-8")
