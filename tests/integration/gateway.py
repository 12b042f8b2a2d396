"""Start an mpb2bua node in the test process, on free loopback ports, against a given PBX."""

from __future__ import annotations

from dataclasses import dataclass

import pytest_twisted
from twisted.internet import reactor

from b2bua.config import Config
from b2bua.service import make_node
from tests.peers.ports import free_port


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

    def stop(self) -> None:
        if self.node.running:
            pytest_twisted.blockon(self.node.stopService())


def start_gateway(pbx_host: str, pbx_port: int, **overrides) -> Gateway:
    """``overrides``: ``section__key=value`` (e.g. ``sip__register_expires=30``)."""
    config = Config()
    ws_port, http_port, sip_port = free_port("tcp"), free_port("tcp"), free_port("both")
    config.websocket.listen = f"tcp:{ws_port}:interface=127.0.0.1:backlog=1024"
    rtmp_port = free_port("tcp")
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
    return Gateway(node, config, f"ws://127.0.0.1:{ws_port}/ws", http_port, sip_port)
