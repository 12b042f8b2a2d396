"""Assembles one mpb2bua node: SIP stack, WebSocket listeners, status HTTP."""

from __future__ import annotations

import gc
import time

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from b2bua.auth.tokens import TokenVerifier
from b2bua.auth.users import FreeSwitchDirectory, UserSourceError, YamlUsers, read_freeswitch_vars
from b2bua.call.calls import CallManager, sdp_host
from b2bua.call.controller import Controller
from b2bua.config import Config, ConfigError
from b2bua.http_status import make_site
from b2bua.media.tick import MediaClock
from b2bua.media.workers import WorkerPool
from b2bua.metrics import Registry
from b2bua.rtmp.server import RtmpServerFactory
from b2bua.rtmp.streams import StreamRegistry
from b2bua.sip.ua import SipStack
from b2bua.ws.factory import SocketLimits, WsListenerService, make_ws_factory

log = Logger()


class _NoUsers:
    """User source when token logins are off or no credentials store is configured."""

    def lookup(self, user: str) -> None:
        return None


def make_user_source(config: Config):
    """Where token logins take the SIP credentials from; nothing is read when token login is off
    (the only use of the source)."""
    kind = config.auth.users_source
    if kind == "none" or not config.auth.token_secret:
        return _NoUsers()
    try:
        return _read_user_source(config, kind)
    except UserSourceError as e:
        raise ConfigError(f"auth.users_path: {e}") from None


def _read_user_source(config: Config, kind: str):
    path = config.resolve(config.auth.users_path)
    if kind == "yaml":
        return YamlUsers(path)
    if kind == "freeswitch":
        variables = None
        if config.auth.freeswitch_vars:
            variables = read_freeswitch_vars(config.resolve(config.auth.freeswitch_vars))
        source = FreeSwitchDirectory(path, variables)
        for error in source.errors:
            log.warn("FreeSWITCH directory: {error}", error=error)
        return source
    raise ConfigError(f"auth.users_source: unknown source {kind!r} (yaml, freeswitch, none)")


#: Young-generation threshold of the cyclic GC (CPython's default: 700 net allocations of
#: container objects). Every SIP message, call and WebSocket frame allocates dozens of them, so at
#: 400 call setups/s the default ran ~100 young collections a second and promoted whatever was
#: alive at that instant (calls and transactions in progress) to the old generation, where it
#: only goes away in a full collection; those took up to 260 ms. 10,000 cuts young collections
#: ~15x and lets short-lived cyclic garbage die young; a young collection then takes ~1-3 ms.
GC_GEN0_THRESHOLD = 10_000


def tune_gc(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Set the cyclic GC up for a long-running node, once everything is imported and built.

    ``gc.freeze()`` moves every object alive now (modules, classes, functions, config: ~100,000
    objects) to the permanent generation, which no collection traverses again, so full
    collections only walk what the traffic made. Objects frozen here that die later are still
    freed by reference counting; only a reference cycle among them would never be collected,
    which is why this runs once, at start-up, and not periodically.
    """
    gc.collect()  # do not freeze start-up garbage
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


class GcTuningService(service.Service):
    """Runs :func:`tune_gc` when the node starts, after the services started before it."""

    def startService(self) -> None:  # noqa: N802
        super().startService()
        tune_gc()


class SipStackService(service.Service):
    """Starts the SIP stack first and stops it last, after every session has un-registered."""

    def __init__(self, stack: SipStack, controller: Controller) -> None:
        self.stack = stack
        self.controller = controller

    def startService(self) -> None:  # noqa: N802
        self.stack.start()
        super().startService()

    def stopService(self) -> Deferred:  # noqa: N802
        super().stopService()
        d = maybeDeferred(self.controller.shutdown)
        d.addBoth(lambda _: self.stack.stop())
        return d


def make_node(config: Config, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    metrics = Registry()
    stack = SipStack(reactor, config.sip, metrics)
    verifier = None
    if config.auth.token_secret:
        verifier = TokenVerifier(
            config.auth.token_secret.encode(), max_ttl=config.auth.token_max_ttl, clock=time.time
        )
    controller = Controller(
        reactor, config.websocket, config.auth, stack, make_user_source(config), verifier, metrics=metrics
    )

    streams = StreamRegistry(reactor)
    clock = MediaClock(reactor)
    workers = None
    if config.media.workers:
        # the media in worker processes, each with its own RTMP listener (b2bua/media/workers.py)
        workers = WorkerPool(reactor, config, sdp_host(config))
        workers.export_metrics(metrics)
    calls = CallManager(
        reactor, stack, controller, config, metrics, streams=streams, clock=clock, backend=workers
    )
    stack.pbx_listeners.append(controller.pbx_state_changed)

    top = service.MultiService()
    if workers is not None:
        workers.setServiceParent(top)  # started first, stopped last: after the calls' BYEs
    SipStackService(stack, controller).setServiceParent(top)
    ws = config.websocket
    limits = SocketLimits(
        ws.max_unauthenticated, ws.max_unauthenticated_per_address, metrics, reactor.seconds
    )
    for listen, scheme in ((ws.listen, "ws"), (ws.tls_listen, "wss")):
        if not listen:
            continue
        url = f"{scheme}://{config.public_host}{ws.path}"
        factory = make_ws_factory(
            controller, ws, url, reactor=reactor, limits=limits,
            trust_x_forwarded_for=ws.trusted_proxy_hops,
        )
        endpoint = endpoints.serverFromString(reactor, listen)
        # waits on stop until the sockets are closed, so that their 1001 close frames go out
        WsListenerService(endpoint, factory).setServiceParent(top)
    if config.rtmp.listen and workers is None:
        rtmp = RtmpServerFactory(
            streams,
            app=config.rtmp.app,
            reactor=reactor,
            metrics=metrics,
            max_backlog=config.rtmp.max_player_backlog,
            max_connections=config.rtmp.max_connections,
            max_connections_per_address=config.rtmp.max_connections_per_address,
        )
        StreamServerEndpointService(
            endpoints.serverFromString(reactor, config.rtmp.listen), rtmp
        ).setServiceParent(top)
    if config.http.listen:

        def health() -> tuple[bool, dict]:
            details = controller.health()
            details["pbx_reachable"] = stack.pbx_reachable
            # pbx_target (None until DNS answers), pbx_dns, sip_listening, pbx_connection (TCP)
            details.update(stack.health())
            ok = stack.pbx_reachable is not False and stack.pbx_target is not None and stack.healthy()
            return ok, details

        site = make_site(metrics, health)
        StreamServerEndpointService(
            endpoints.serverFromString(reactor, config.http.listen), site
        ).setServiceParent(top)
    GcTuningService().setServiceParent(top)  # last: freezes what the others built
    top.stack = stack  # for tests and introspection
    top.controller = controller
    top.calls = calls
    top.streams = streams
    top.media_clock = clock
    top.media_workers = workers
    return top
