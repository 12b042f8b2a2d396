"""Configuration: dataclasses with the defaults, loaded from ``etc/mpb2bua.yaml``.

Unknown keys and wrong types are errors (a typo must not silently fall back to a
default); every section and key is documented in the shipped YAML file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from b2bua.wire.sipuri import UriError, split_hostport


class ConfigError(ValueError):
    """The configuration file is unreadable or has a wrong key or value."""


@dataclass
class WebSocketConfig:
    listen: str = "tcp:8080:backlog=1024"  # twisted endpoint description
    tls_listen: str | None = None  # e.g. "ssl:8443:privateKey=key.pem:certKey=cert.pem"
    path: str = "/ws"
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    max_message_size: int = 65536
    max_sessions: int = 20000
    login_attempts_per_minute: int = 20  # per client IP address
    grace_period: float = 30.0
    auto_ping_interval: float = 25.0
    login_timeout: float = 40.0  # overall bound on a login's first REGISTER


@dataclass
class AuthConfig:
    allow_password: bool = True
    allow_ha1: bool = True
    token_secret: str | None = None  # token mode on when set
    token_max_ttl: int = 3600
    users_source: str = "yaml"  # yaml | freeswitch | none
    users_path: str = "etc/users.yaml"
    freeswitch_vars: str | None = None  # FreeSWITCH's vars.xml, for $${default_password} and friends


@dataclass
class SipConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 5070
    transports: list[str] = field(default_factory=lambda: ["udp", "tcp"])
    pbx: str = "127.0.0.1:5060"  # where every request goes (registrar and outbound proxy)
    pbx_transport: str = "udp"
    domain: str | None = None  # AOR domain; the PBX host when unset
    registrar_uri: str | None = None  # Request-URI of REGISTER; sip:<pbx> when unset
    pbx_addresses: list[str] = field(default_factory=list)  # more source addresses allowed to send requests
    dns_servers: list[str] = field(default_factory=list)  # "ip:port" DNS servers; resolv.conf when empty
    realm: str | list[str] | None = None  # digest realm(s) answered; the domain's host when unset; "*": any
    register_expires: int = 600
    options_keepalive: float = 2.0  # seconds between OPTIONS to the PBX; 0 = off (no fail-over detection)
    pbx_down_after: float = 10.0  # the PBX is unreachable once silent this long (>= 2 keepalives)
    reregister_window: float = 10.0  # when it answers again, every user re-REGISTERs within this
    public_host: str | None = None  # Via/Contact host when the node is seen under another address
    user_agent: str = "mpb2bua"
    t1: float = 0.5
    timer_c: float = 180.0  # an outgoing INVITE with no response for this long after a 1xx is given up
    # TCP connections accepted from addresses other than the PBX's (ours to the PBX and the PBX's
    # own are counted apart and never refused for them): in total and per address.
    tcp_max_inbound: int = 256
    tcp_max_inbound_per_address: int = 8
    tcp_first_message_timeout: float = 5.0  # an inbound connection must deliver a whole message by then
    tcp_idle_timeout: float = 60.0  # an inbound connection from a non-PBX address closed when idle
    # SIP messages a second from non-PBX addresses that are read (and answered 403); the rest
    # are dropped unread: a flood must not take the reactor from the users
    stranger_messages_per_second: int = 200
    stranger_messages_per_second_per_address: int = 20
    # refused requests, bad messages, stray responses: the first log_limit lines of each kind per
    # log_limit_interval seconds, then one summary line
    log_limit: int = 10
    log_limit_interval: float = 60.0

    def __post_init__(self) -> None:
        if not self.timer_c > 0:
            raise ConfigError(f"sip.timer_c: must be more than 0 seconds, got {self.timer_c!r}")
        for name in ("tcp_first_message_timeout", "tcp_idle_timeout", "log_limit_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sip.{name}: must be more than 0 seconds, got {getattr(self, name)!r}")
        for name in (
            "tcp_max_inbound",
            "tcp_max_inbound_per_address",
            "log_limit",
            "stranger_messages_per_second",
            "stranger_messages_per_second_per_address",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"sip.{name}: must be 0 or more, got {getattr(self, name)!r}")


@dataclass
class MediaConfig:
    rtp_host: str | None = None  # address RTP sockets bind to; sip.listen_host when unset
    sdp_host: str | None = None  # address written in SDP c= lines; sip.public_host or rtp_host when unset
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA", "G722", "opus"])
    aac_sample_rate: int = 16000  # of the AAC sent to live-player (8000–48000)
    # uplink FIFO, adaptive (b2bua/media/adaptive.py): the target is the pusher PCM still spare
    # after the 20 ms tick's packet at the FIFO's lowest point; it starts at (and never goes below)
    # uplink_buffer_ms, rises 10 ms per underrun up to uplink_buffer_max_ms, and steps back down
    # after calm periods. The pusher's burst size is absorbed on top, measured, not configured.
    uplink_buffer_ms: int = 10
    uplink_buffer_max_ms: int = 100
    dtmf: str = "auto"  # auto: RFC 4733 when negotiated, else SIP INFO; or always "rfc4733" / "info"


@dataclass
class RtmpConfig:
    listen: str = "tcp:1935:backlog=1024"
    app: str = "mp"  # the application name in rtmp://host/APP/KEY
    public_url: str | None = None  # base of push/play URLs; rtmp://<public_host>:1935/<app> when unset


@dataclass
class CallsConfig:
    max_per_session: int = 2  # beyond it an incoming INVITE is answered 486, a `call` fails
    ring_timeout: float = 60.0  # an unanswered incoming call is ended with 480 after this
    outbound_timeout: float = 120.0  # an unanswered outgoing call is cancelled after this


@dataclass
class HttpConfig:
    listen: str | None = "tcp:9090:interface=127.0.0.1"  # /healthz and /metrics; None = off


@dataclass
class Config:
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    public_host: str = "127.0.0.1"  # the host name clients use for this node (RTMP URLs)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder's parent (the install root)."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    config = _build(Config, data, "")
    validate(config)
    config.base_dir = path.resolve().parent.parent if path.resolve().parent.name == "etc" else path.parent
    return config


def validate(config: Config) -> None:
    """Checks of values beyond their types (raises :class:`ConfigError`)."""
    dns_servers(config.sip)
    digest_realms(config.sip)


def dns_servers(sip: SipConfig) -> list[tuple[str, int]]:
    """``sip.dns_servers`` as (address, port) pairs: ``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``
    (port 53 when absent). Name servers are given by address: a name would need DNS to find DNS."""
    servers = []
    for text in sip.dns_servers:
        try:
            host, port = split_hostport(text)
            address = ipaddress.ip_address(host.strip("[]"))
        except (UriError, ValueError):
            raise ConfigError(
                f"sip.dns_servers: {text!r} is not IP[:PORT] (an IPv6 address in brackets: [::1]:53)"
            ) from None
        servers.append((str(address), port or 53))
    return servers


def digest_realms(sip: SipConfig) -> frozenset[str] | None:
    """The digest realms the credentials may answer, lower-cased; None = any realm (``"*"``).

    Unset: the host of ``sip.domain``, else of ``sip.pbx`` (FreeSWITCH challenges with its
    domain as the realm)."""
    realms = sip.realm
    if realms is None:
        try:
            host, _ = split_hostport(sip.domain or sip.pbx)
        except UriError as e:
            raise ConfigError(f"sip.{'domain' if sip.domain else 'pbx'}: {e}") from None
        return frozenset({host.lower()})
    values = [realms] if isinstance(realms, str) else list(realms)
    if not values or any(not v or v != v.strip() for v in values):
        raise ConfigError('sip.realm: expected a realm, a non-empty list of realms, or "*"')
    if "*" in values:
        if len(values) > 1:
            raise ConfigError('sip.realm: "*" (any realm) cannot be listed with other realms')
        return None
    return frozenset(v.lower() for v in values)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(map(str, unknown))}")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value or {}, key)
        else:
            values[name] = _check(hint, value, key)
    return cls(**values)


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid value")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return [_check(item, v, key) for v in value]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # "5060" written as a number
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__}")
    return value
