"""``twistd mpb2bua``: command-line options and the service they make."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from b2bua.config import ConfigError, load_config
from b2bua.service import make_node, make_user_source


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "WeChat mini-program ⇄ SIP gateway. Settings come from the YAML file; these flags override it."
    optParameters = [
        ["config", "c", "etc/mpb2bua.yaml", "YAML configuration file."],
        ["ws", None, None, "WebSocket listen endpoint, e.g. tcp:8080:interface=0.0.0.0."],
        [
            "wss",
            None,
            None,
            "Secure WebSocket listen endpoint, e.g. ssl:8443:privateKey=k.pem:certKey=c.pem.",
        ],
        ["sip-listen", None, None, "SIP listen address HOST:PORT (UDP and TCP)."],
        ["pbx", None, None, "PBX (registrar and proxy) address HOST:PORT."],
        ["rtmp", None, None, "RTMP listen endpoint (push and play URLs), e.g. tcp:1935:interface=10.0.0.5."],
        ["http", None, None, "Status HTTP endpoint (/healthz, /metrics), e.g. tcp:9090:interface=127.0.0.1."],
        ["public-host", None, None, "Host name that clients use for this node."],
    ]

    def postOptions(self) -> None:  # noqa: N802
        try:
            config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["ws"]:
            config.websocket.listen = self["ws"]
        if self["wss"]:
            config.websocket.tls_listen = self["wss"]
        if self["rtmp"]:
            config.rtmp.listen = self["rtmp"]
        if self["http"]:
            config.http.listen = self["http"]
        if self["pbx"]:
            config.sip.pbx = self["pbx"]
        if self["public-host"]:
            config.public_host = self["public-host"]
        if self["sip-listen"]:
            host, _, port = self["sip-listen"].rpartition(":")
            if not host or not port.isdigit():
                raise usage.UsageError("--sip-listen must be HOST:PORT")
            config.sip.listen_host, config.sip.listen_port = host.strip("[]"), int(port)
        try:
            make_user_source(config)  # a token mode users file that cannot be read: one line, no traceback
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self.config = config


def makeService(options: Options) -> service.IService:  # noqa: N802
    return make_node(options.config)
