"""The service's Prometheus metrics, on ``prometheus_client``.

The service creates one :class:`Registry` and passes it to whoever records metrics; there is
deliberately no module-level default registry (``prometheus_client``'s global ``REGISTRY`` is never
used). :meth:`Registry.render` produces the Prometheus text exposition format, version 0.0.4,
with ``prometheus_client.generate_latest``.

Metric families, thin wrappers that keep this module's small API over ``prometheus_client``'s
``Counter``, ``Gauge`` and ``Histogram``:

* :class:`Counter` (``inc``), :class:`Gauge` (``inc``/``dec``/``set``) and :class:`Histogram`
  (``observe``). With label names, ``.labels(*values)`` returns a child that holds the value;
  without, the family itself has the methods. Looking a child up again is one dict lookup by
  the tuple of values, and a child may be kept and reused on hot paths::

      rtp_in = registry.counter("mpb2bua_rtp_packets_total", "RTP packets.", ("direction",))
      rtp_in_rx = rtp_in.labels("rx")   # keep this
      rtp_in_rx.inc()

* :class:`CallbackGauge` (:meth:`Registry.gauge_fn`): a gauge whose value is asked for at scrape
  time, for numbers the service already knows (sessions open, registrations by state).

Names are the caller's: counters must end in ``_total`` (``prometheus_client`` names a counter's
series ``<family>_total``) and units should be spelled out (``_seconds``, ``_bytes``). The
``_created`` series that ``prometheus_client`` adds to counters and histograms are not exported:
the names and series are the ones this service has always exposed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import prometheus_client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

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
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_log = logging.getLogger(__name__)

_METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

CallbackValue = float | Mapping[tuple[str, ...], float] | Mapping[str, float]


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


def _samples(metric: Any) -> list[Any]:
    """The samples of a ``prometheus_client`` metric or child, through its public ``collect()``."""
    return [s for family in metric.collect() for s in family.samples]


# --------------------------------------------------------------------------------------------
# children: one series each; the methods are prometheus_client's own (bound once, no extra call)


class CounterChild:
    """One counter series: ``inc(n=1)``; ``value`` is readable (slowly: it collects)."""

    __slots__ = ("_metric", "inc")

    def __init__(self, metric: prometheus_client.Counter) -> None:
        self._metric = metric
        self.inc: Callable[..., None] = metric.inc

    @property
    def value(self) -> float:
        return next(s.value for s in _samples(self._metric) if s.name.endswith("_total"))


class GaugeChild:
    """One gauge series: ``inc``, ``dec``, ``set``; ``value`` is readable."""

    __slots__ = ("_metric", "inc", "dec", "set")

    def __init__(self, metric: prometheus_client.Gauge) -> None:
        self._metric = metric
        self.inc: Callable[..., None] = metric.inc
        self.dec: Callable[..., None] = metric.dec
        self.set: Callable[[float], None] = metric.set

    @property
    def value(self) -> float:
        return _samples(self._metric)[0].value


class HistogramChild:
    """One histogram series: ``observe(v)`` (a value equal to a bound falls in that bucket);
    ``counts`` per bucket (not cumulative), ``sum`` and ``count`` are readable."""

    __slots__ = ("_metric", "observe")

    def __init__(self, metric: prometheus_client.Histogram) -> None:
        self._metric = metric
        self.observe: Callable[[float], None] = metric.observe

    def _series(self, suffix: str) -> list[float]:
        return [s.value for s in _samples(self._metric) if s.name.endswith(suffix)]

    @property
    def counts(self) -> list[int]:
        cumulative = [int(v) for v in self._series("_bucket")]
        return [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]

    @property
    def sum(self) -> float:
        return self._series("_sum")[0]

    @property
    def count(self) -> int:
        return int(self._series("_count")[0])


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


# --------------------------------------------------------------------------------------------
# families


class _Family(Generic[C]):
    """A named metric with its label names; its series live in the ``prometheus_client`` metric."""

    type_name = ""
    _child_type: type[C]

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...], metric: Any) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self._metric = metric
        # any values tuple seen by labels() -> child (e.g. (200,) and ("200",) share a series):
        # the hot path, one dict lookup instead of prometheus_client's checks and lock
        self._lookup: dict[tuple[object, ...], C] = {}
        self._default: C | None = None if labelnames else self._child_type(metric)
        if self._default is not None:
            # unlabelled: the family's inc/dec/set/observe are the series' own (no extra call)
            for method in self._child_type.__slots__[1:]:
                setattr(self, method, getattr(self._default, method))

    def labels(self, *values: object) -> C:
        """The child for these label values (created on first use); values are turned into str."""
        child = self._lookup.get(values)
        if child is None:
            if not self.labelnames:
                raise ValueError(f"{self.name} has no labels")
            if len(values) != len(self.labelnames):
                raise ValueError(
                    f"{self.name} expects {len(self.labelnames)} label values, got {len(values)}"
                )
            child = self._lookup[values] = self._child_type(self._metric.labels(*values))
        return child

    def remove(self, *values: object) -> None:
        """Forget the series for these label values (no error if it does not exist)."""
        if len(values) != len(self.labelnames) or not values:
            return
        key = tuple(str(v) for v in values)
        self._metric.remove(*key)
        for k in [k for k in self._lookup if tuple(str(v) for v in k) == key]:
            del self._lookup[k]

    def clear(self) -> None:
        """Forget every labelled series."""
        if self.labelnames:
            self._metric.clear()
            self._lookup.clear()

    def _unlabelled(self) -> C:
        child = self._default
        if child is None:
            raise ValueError(f"{self.name} has labels {self.labelnames!r}: use .labels(...)")
        return child

    def collect(self) -> Iterator[Metric]:
        for family in self._metric.collect():
            # prometheus_client's own creation-time series: not part of what we expose
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)


class Counter(_Family[CounterChild]):
    """A counter family; see :meth:`Registry.counter`."""

    type_name = "counter"
    _child_type = CounterChild

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (not negative) to an unlabelled counter."""
        self._unlabelled().inc(n)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Gauge(_Family[GaugeChild]):
    """A gauge family; see :meth:`Registry.gauge`."""

    type_name = "gauge"
    _child_type = GaugeChild

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
    _child_type = HistogramChild

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
        metric = prometheus_client.Histogram(name, help, labelnames, registry=None, buckets=self.bounds)
        super().__init__(name, help, labelnames, metric)

    def observe(self, v: float) -> None:
        """Record one observation in an unlabelled histogram."""
        self._unlabelled().observe(v)

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

    def collect(self) -> Iterator[Metric]:
        try:
            family = self._family()
        except Exception:
            # A broken callback must not take the whole scrape down: the family is kept (HELP and
            # TYPE) without samples, and the error is logged.
            _log.exception("metrics callback for %s failed", self.name)
            family = GaugeMetricFamily(self.name, self.help, labels=self.labelnames or None)
        yield family

    def _family(self) -> GaugeMetricFamily:
        result = self.fn()
        name = self.name
        if not self.labelnames:
            if isinstance(result, Mapping):
                raise TypeError(f"{name}: callback returned a mapping but the gauge has no labels")
            return GaugeMetricFamily(name, self.help, value=float(result))
        if not isinstance(result, Mapping):
            raise TypeError(f"{name}: callback must return a mapping of label values to numbers")
        family = GaugeMetricFamily(name, self.help, labels=self.labelnames)
        for key, value in result.items():
            values = [key] if isinstance(key, str) else [str(v) for v in key]
            if len(values) != len(self.labelnames):
                raise ValueError(f"{name}: {len(values)} label values for {len(self.labelnames)} labels")
            family.add_metric(values, float(value))
        return family


_Metric = Counter | Gauge | Histogram | CallbackGauge


# --------------------------------------------------------------------------------------------


class Registry:
    """A set of uniquely named metrics, rendered together in registration order.

    It is a ``prometheus_client`` collector (:meth:`collect`), rendered by
    ``prometheus_client.generate_latest``.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._sample_names: dict[str, str] = {}  # every series name -> owning family

    def _add(self, name: str, labelnames: tuple[str, ...], make: Callable[[], _Metric]) -> Any:
        if not isinstance(name, str) or not _METRIC_NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        metric = make()
        for sample in metric.sample_names:
            owner = self._sample_names.get(sample)
            if owner is not None:
                raise ValueError(f"metric {name!r} clashes with the already registered {owner!r}")
        self._metrics[name] = metric
        for sample in metric.sample_names:
            self._sample_names[sample] = name
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter; its name ends in ``_total``."""
        names = _check_labelnames(name, labelnames)
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        return self._add(
            name,
            names,
            lambda: Counter(name, help, names, prometheus_client.Counter(name, help, names, registry=None)),
        )

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register a gauge that the caller sets."""
        names = _check_labelnames(name, labelnames)
        return self._add(
            name,
            names,
            lambda: Gauge(name, help, names, prometheus_client.Gauge(name, help, names, registry=None)),
        )

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
        names = _check_labelnames(name, labelnames)
        return self._add(name, names, lambda: CallbackGauge(name, help, fn, names))

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        """Register a histogram with these upper bounds (``+Inf`` is added when missing)."""
        names = _check_labelnames(name, labelnames, reserved=("le",))
        return self._add(name, names, lambda: Histogram(name, help, names, buckets))

    def unregister(self, name: str) -> None:
        """Remove a metric by its family name (KeyError when unknown)."""
        metric = self._metrics.pop(name)
        for sample in metric.sample_names:
            self._sample_names.pop(sample, None)

    def __contains__(self, name: object) -> bool:
        return name in self._metrics

    def collect(self) -> Iterator[Metric]:
        """Every metric family, in registration order (the ``prometheus_client`` collector API)."""
        for metric in list(self._metrics.values()):
            yield from metric.collect()

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format 0.0.4 (see :data:`CONTENT_TYPE`)."""
        return prometheus_client.generate_latest(self)
