"""The localhost HTTP status endpoint: ``GET /healthz`` and ``GET /metrics``.

:func:`make_site` returns a :class:`twisted.web.server.Site`; the service listens on it, by default
on ``tcp:9090:interface=127.0.0.1``::

    endpoint = serverFromString(reactor, "tcp:9090:interface=127.0.0.1")
    endpoint.listen(make_site(registry, health))

* ``/healthz``: 200 with ``{"status": "ok", ...details}`` when ``health()`` says so, otherwise 503
  with ``{"status": "fail", ...details}``; a health callback that raises is a failure too.
* ``/metrics``: :meth:`Registry.render <b2bua.metrics.Registry.render>` as
  ``text/plain; version=0.0.4; charset=utf-8``.
* Any other path: 404. A method other than GET or HEAD on a known path: 405 with ``Allow``.

Requests are not written to an access log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from b2bua.metrics import CONTENT_TYPE, Registry

__all__ = ["HealthCallback", "StatusResource", "make_site"]

HealthCallback = Callable[[], tuple[bool, dict[str, Any]]]

_log = Logger()

_ALLOWED = (b"GET", b"HEAD")
_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


class StatusResource(Resource):
    """Serves ``/healthz`` and ``/metrics`` below wherever it is mounted (it is a leaf)."""

    isLeaf = True

    def __init__(self, registry: Registry, health: HealthCallback) -> None:
        super().__init__()
        self._registry = registry
        self._health = health
        self._routes: dict[bytes, Callable[[Request], tuple[int, bytes, bytes]]] = {
            b"healthz": self._render_health,
            b"metrics": self._render_metrics,
        }

    def render(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        path = b"/".join(request.postpath or [b""])
        route = self._routes.get(path)
        if route is None:
            code, ctype, body = http.NOT_FOUND, _TEXT, b"not found\n"
        elif request.method not in _ALLOWED:
            request.setHeader(b"allow", b", ".join(_ALLOWED))
            code, ctype, body = http.NOT_ALLOWED, _TEXT, b"method not allowed\n"
        else:
            code, ctype, body = route(request)
        request.setResponseCode(code)
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method == b"HEAD":
            # Returning the body would make twisted.web log a warning before dropping it.
            return b""
        return body

    def _render_health(self, request: Request) -> tuple[int, bytes, bytes]:
        try:
            ok, details = self._health()
        except Exception:
            _log.failure("health check raised")
            ok, details = False, {"error": "health check raised"}
        doc: dict[str, Any] = {"status": "ok" if ok else "fail"}
        doc.update((k, v) for k, v in details.items() if k != "status")
        body = json.dumps(doc, default=str, separators=(",", ":")).encode("utf-8") + b"\n"
        return (http.OK if ok else http.SERVICE_UNAVAILABLE), _JSON, body

    def _render_metrics(self, request: Request) -> tuple[int, bytes, bytes]:
        try:
            body = self._registry.render()
        except Exception:
            _log.failure("rendering metrics failed")
            return http.INTERNAL_SERVER_ERROR, _TEXT, b"metrics unavailable\n"
        return http.OK, CONTENT_TYPE.encode("ascii"), body


class _QuietSite(Site):
    """A Site with no access log (nor its once-a-second timestamp timer) and no start/stop logs."""

    noisy = False
    displayTracebacks = False

    def startFactory(self) -> None:
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: Request) -> None:
        pass


def make_site(registry: Registry, health: HealthCallback, *, reactor: IReactorTime | None = None) -> Site:
    """The status Site; ``health()`` returns ``(ok, details)`` with JSON-serialisable details.

    ``reactor`` drives the connection idle timeouts (the global reactor when omitted).
    """
    return _QuietSite(StatusResource(registry, health), logPath=None, reactor=reactor)
