"""Configuration: dataclasses with the defaults, loaded from ``etc/mpb2bua.yaml``.

The schema is the annotations: types, ranges (``Annotated[..., Field(gt=0)]``) and enums
(``Literal``), checked by pydantic when a section is built, from the YAML file or in code.
Unknown keys and wrong values are errors naming the key (a typo must not silently fall back to
a default); every section and key is documented in the shipped YAML file. Relative paths resolve
against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from twisted.logger import Logger

from b2bua.wire.sipuri import UriError, split_hostport

log = Logger()


class ConfigError(ValueError):
    """The configuration file is unreadable or has a wrong key or value."""


# -- value types ------------------------------------------------------------------------------------
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Seconds0 = Annotated[float, Field(ge=0)]  # 0 = off
Port = Annotated[int, Field(ge=1, le=65535)]
Transport = Literal["udp", "tcp", "tls"]
AUDIO_CODECS = ("pcmu", "pcma", "g722", "opus")
MAX_MEDIA_WORKERS = 256
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _codec_list(codecs: list[str]) -> list[str]:
    names = [c.lower() for c in codecs]
    unknown = [c for c in codecs if c.lower() not in AUDIO_CODECS]
    if unknown:
        raise ValueError(f"unknown codec(s) {', '.join(unknown)}: choose from PCMU, PCMA, G722, opus")
    if not names or len(set(names)) != len(names):
        raise ValueError("a non-empty list without repeats")
    return codecs


def _aac_rate(rate: int) -> int:
    if rate not in AAC_RATES:
        raise ValueError(f"an AAC sample rate: {', '.join(map(str, AAC_RATES))}")
    return rate


def _yaml_off(value: Any) -> Any:
    return "off" if value is False else value  # YAML 1.1 reads a bare off as false


def cores() -> int:
    """The CPUs this process may run on (its affinity mask; all of the machine's otherwise)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def _workers(value: Any) -> Any:
    """``auto``: one media worker per core, resolved here so the rest of the code sees an int."""
    if value == "auto":
        return min(cores(), MAX_MEDIA_WORKERS)
    if isinstance(value, str):
        raise ValueError('a number of workers (0: media in the node process) or "auto"')
    return value


def _transports(items: list[str]) -> list[str]:
    if not items or len(set(items)) != len(items):
        raise ValueError("a non-empty list of udp, tcp and/or tls, without repeats")
    return items


class _Section:
    """Checks every field against its annotation when built (pydantic; errors name the key)."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, adapter in _adapters(type(self)).items():
            value = getattr(self, name)
            if dataclasses.is_dataclass(value):
                continue  # a section: checked when it was built
            try:
                object.__setattr__(self, name, adapter.validate_python(value))
            except ValidationError as e:
                raise ConfigError(f"{_key(self.section, name)}: {_explain(e)}") from None
        self.check()

    def check(self) -> None:
        """Checks that involve several keys of the section."""


@cache
def _adapters(cls: type) -> dict[str, TypeAdapter[Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    config = ConfigDict(strict=True)  # no "yes" for true, no 1 for true, no "5" for 5
    return {
        f.name: TypeAdapter(hints[f.name], config=config if _accepts_config(hints[f.name]) else None)
        for f in dataclasses.fields(cls)
        if not f.metadata.get("internal") and not dataclasses.is_dataclass(hints[f.name])
    }


def _accepts_config(hint: Any) -> bool:
    # TypeAdapter refuses a config for types that carry their own (dataclasses, models)
    return not (isinstance(hint, type) and dataclasses.is_dataclass(hint))


def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not isinstance(p, str) or p not in ("function-after",))
    text = first["msg"].removeprefix("Value error, ")
    return f"{text} (item {where})" if where else f"{text}, got {first.get('input')!r}"


@dataclass
class WebSocketConfig(_Section):
    section: ClassVar[str] = "websocket"
    listen: str = "tcp:8080:backlog=1024"  # twisted endpoint description
    tls_listen: str | None = None  # e.g. "ssl:8443:privateKey=key.pem:certKey=cert.pem"
    path: str = "/ws"
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    max_message_size: Annotated[int, Field(ge=1024)] = 65536
    max_sessions: PositiveInt = 20000
    login_attempts_per_minute: PositiveInt = 20  # per client IP address
    grace_period: Seconds0 = 30.0
    auto_ping_interval: Positive = 25.0
    login_timeout: Positive = 40.0  # overall bound on a login's first REGISTER
    # every request of one socket, ping included: a token bucket with a burst of a sixth of it;
    # a socket that goes on past the empty bucket for a whole burst is closed (4003)
    requests_per_minute: Annotated[int, Field(ge=0)] = 600  # 0 = off
    # per session, token buckets (a burst of a sixth of the minute's budget, at least 1)
    calls_per_minute: Annotated[int, Field(ge=0)] = 20  # `call`; 0 = off
    messages_per_minute: Annotated[int, Field(ge=0)] = 60  # `message` and `send_info`
    dtmf_per_minute: Annotated[int, Field(ge=0)] = 120  # `dtmf` requests (each up to 32 digits)
    # per user, whatever the client address: after this many refused logins within
    # failed_login_window seconds, a login that would ask the PBX is refused until one expires
    # (so that one attacker does not get the gateway's address banned at the PBX, e.g. by fail2ban)
    failed_logins_per_user: PositiveInt = 5
    failed_login_window: Positive = 300.0
    # Limits on sockets that have not logged in (docs/operations.md, "Limits")
    login_deadline: Positive = 10.0  # seconds to log in or resume; then close code 4002
    max_unauthenticated: PositiveInt = 2000  # sockets not logged in, in total
    max_unauthenticated_per_address: PositiveInt = 32  # ... and from one client address
    max_send_buffer: PositiveInt = 1048576  # bytes queued for a peer that does not read; then dropped
    # proxies in front (nginx, HAProxy) whose X-Forwarded-For entries are believed: the client
    # address is the entry this many from the end (0: the TCP peer, the header is ignored)
    trusted_proxy_hops: Annotated[int, Field(ge=0, le=10)] = 0


@dataclass
class AuthConfig(_Section):
    section: ClassVar[str] = "auth"
    allow_password: bool = True
    allow_ha1: bool = True
    token_secret: Annotated[str, Field(min_length=16)] | None = None  # token mode on when set
    token_max_ttl: PositiveInt = 3600
    # where token logins take the SIP credentials from (read only in token mode)
    users_source: Literal["yaml", "freeswitch", "none"] = "yaml"
    users_path: str = "users.yaml"  # relative: to the config file's folder
    freeswitch_vars: str | None = None  # FreeSWITCH's vars.xml, for $${default_password} and friends


@dataclass
class SipConfig(_Section):
    section: ClassVar[str] = "sip"
    listen_host: str = "127.0.0.1"
    listen_port: Annotated[int, Field(ge=0, le=65535)] = 5070  # 0: any free port
    transports: Annotated[list[Transport], AfterValidator(_transports)] = field(
        default_factory=lambda: ["udp", "tcp"]
    )
    pbx: Annotated[str, Field(min_length=1)] = "127.0.0.1:5060"  # every request goes there
    pbx_transport: Transport = "udp"  # tls: SIP over TLS (RFC 3261 §26), see the tls_* keys
    # SIP over TLS (b2bua/sip/tls.py; docs/operations.md "SIP over TLS"): the PBX's certificate is
    # verified against tls_ca_file (PEM; the system's store when unset) and the name tls_server_name
    # (the PBX host when unset; an IP address must be an IP SAN), TLS 1.2 or later
    tls_ca_file: str | None = None
    tls_server_name: Annotated[str, Field(min_length=1)] | None = None
    # SHA-256 of the PBX certificate's SubjectPublicKeyInfo: base64 (44 characters) or 64 hex
    # digits; when set, one must match (on top of the CA and name checks)
    tls_pin_sha256: list[str] = field(default_factory=list)
    # PEM certificate (with its chain) and key: shown when the PBX asks for a client certificate,
    # and the certificate of the TLS listener (transports: [..., tls])
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_listen_port: Annotated[int, Field(ge=0, le=65535)] = 5071  # the TLS listener's; 0: any free port
    domain: str | None = None  # AOR domain; the PBX host when unset
    registrar_uri: str | None = None  # Request-URI of REGISTER; sip:<pbx> when unset
    pbx_addresses: list[str] = field(default_factory=list)  # more source addresses allowed to send requests
    dns_servers: list[str] = field(default_factory=list)  # "ip:port" DNS servers; resolv.conf when empty
    realm: str | list[str] | None = None  # digest realm(s) answered; the domain's host when unset; "*": any
    register_expires: Annotated[int, Field(ge=10, le=86400)] = 600
    options_keepalive: Seconds0 = 2.0  # seconds between OPTIONS to the PBX; 0 = off (no fail-over detection)
    pbx_down_after: Positive = 10.0  # the PBX is unreachable once silent this long (>= 2 keepalives)
    reregister_window: Seconds0 = 10.0  # when it answers again, every user re-REGISTERs within this
    public_host: str | None = None  # Via/Contact host when the node is seen under another address
    user_agent: str = "mpb2bua"
    t1: Annotated[float, Field(gt=0, le=10)] = 0.5
    timer_c: Positive = 180.0  # an outgoing INVITE with no response for this long after a 1xx is given up
    # RFC 4028 session interval asked for in our INVITEs and in our 2xx to a PBX that supports
    # timers without asking (s, >= 90); 0 = ask for none (a PBX's own request is still honoured)
    session_expires: int = 1800
    # TCP connections accepted from addresses other than the PBX's (ours to the PBX and the PBX's
    # own are counted apart and never refused for them): in total and per address.
    tcp_max_inbound: Annotated[int, Field(ge=0)] = 256
    tcp_max_inbound_per_address: Annotated[int, Field(ge=0)] = 8
    tcp_first_message_timeout: Positive = 5.0  # an inbound connection must deliver a whole message by then
    tcp_idle_timeout: Positive = 60.0  # an inbound connection from a non-PBX address closed when idle
    # SIP messages a second from non-PBX addresses that are read (and answered 403); the rest
    # are dropped unread: a flood must not take the reactor from the users
    stranger_messages_per_second: Annotated[int, Field(ge=0)] = 200
    stranger_messages_per_second_per_address: Annotated[int, Field(ge=0)] = 20
    # refused requests, bad messages, stray responses: the first log_limit lines of each kind per
    # log_limit_interval seconds, then one summary line
    log_limit: Annotated[int, Field(ge=0)] = 10
    log_limit_interval: Positive = 60.0

    def check(self) -> None:
        if self.session_expires != 0 and not 90 <= self.session_expires <= 86400:
            raise ConfigError(
                f"sip.session_expires: 0 (off) or 90 to 86400 seconds, got {self.session_expires!r}"
            )
        if "tls" in self.transports:
            if not self.tls_cert_file:
                raise ConfigError("sip.tls_cert_file: a TLS listener (transports: tls) needs a certificate")
            if self.tls_listen_port and self.tls_listen_port == self.listen_port:
                raise ConfigError("sip.tls_listen_port: not sip.listen_port (UDP and TCP use it)")


@dataclass
class MediaConfig(_Section):
    section: ClassVar[str] = "media"
    rtp_host: str | None = None  # address RTP sockets bind to; sip.listen_host when unset
    sdp_host: str | None = None  # address written in SDP c= lines; sip.public_host or rtp_host when unset
    rtp_port_min: Port = 20000
    rtp_port_max: Port = 29999
    codecs: Annotated[list[str], AfterValidator(_codec_list)] = field(
        default_factory=lambda: ["PCMU", "PCMA", "G722", "opus"]
    )
    # of the AAC sent to live-player: an AAC rate from 8000 to 48000
    aac_sample_rate: Annotated[int, AfterValidator(_aac_rate)] = 16000
    # uplink FIFO, adaptive (b2bua/media/adaptive.py): the target is the pusher PCM still spare
    # after the 20 ms tick's packet at the FIFO's lowest point; it starts at (and never goes below)
    # uplink_buffer_ms, rises 10 ms per underrun up to uplink_buffer_max_ms, and steps back down
    # after calm periods. The pusher's burst size is absorbed on top, measured, not configured.
    uplink_buffer_ms: Annotated[int, Field(ge=0, le=1000)] = 10
    uplink_buffer_max_ms: Annotated[int, Field(ge=0, le=2000)] = 100
    # auto: RFC 4733 when negotiated, else SIP INFO; or always "rfc4733" / "info"
    dtmf: Literal["auto", "rfc4733", "info"] = "auto"
    # a call up (answered) that receives no RTP nor RTCP from the PBX for this long is ended with
    # BYE and `hangup` MEDIA_TIMEOUT (s; 0 = off); rtp_hold_timeout applies instead while the
    # call is on hold either way or the SDP says the PBX sends nothing (FreeSWITCH sends no RTP
    # to a party that holds)
    rtp_timeout: Seconds0 = 60.0
    rtp_hold_timeout: Seconds0 = 0.0
    # SRTP with SDES keys toward the PBX (docs/operations.md, "SRTP"): off; offer (RTP/AVP with
    # keys, SRTP when the PBX answers one, plain RTP otherwise); require (RTP/SAVP, a call
    # without keys ends). The keys travel in the SDP: require needs sip.pbx_transport: tls.
    srtp: Annotated[Literal["off", "offer", "require"], BeforeValidator(_yaml_off)] = "off"
    # tests and labs only: allow srtp: require over UDP/TCP signalling (the keys in clear)
    srtp_allow_insecure_signalling: bool = False
    # media worker processes (b2bua/media/workers.py): each owns the RTMP connections, RTP sockets
    # and codecs of the calls given to it, listens for RTMP on rtmp.listen's port + its index
    # (0, 1, …) and binds RTP in its own slice of rtp_port_min–max; "auto" = one per core (the
    # CPUs this process may use), resolved to an int when the section is built; 0 = media in the
    # node process
    workers: Annotated[int, BeforeValidator(_workers), Field(ge=0, le=MAX_MEDIA_WORKERS)] = "auto"  # type: ignore[assignment]

    def check(self) -> None:
        if self.rtp_port_min % 2 or self.rtp_port_max <= self.rtp_port_min:
            raise ConfigError(
                "media.rtp_port_min, media.rtp_port_max: an even first port below the last "
                f"(RTP even, RTCP odd), got {self.rtp_port_min}-{self.rtp_port_max}"
            )
        if self.workers and (self.rtp_port_max - self.rtp_port_min + 1) // 2 < self.workers:
            raise ConfigError(
                f"media.workers: {self.workers} workers (auto: one per core) but only "
                f"{(self.rtp_port_max - self.rtp_port_min + 1) // 2} RTP port pairs in "
                f"media.rtp_port_min-rtp_port_max: widen the range or set media.workers"
            )
        if self.uplink_buffer_max_ms < self.uplink_buffer_ms:
            raise ConfigError("media.uplink_buffer_max_ms: not below media.uplink_buffer_ms")


@dataclass
class RtmpConfig(_Section):
    section: ClassVar[str] = "rtmp"
    listen: str = "tcp:1935:backlog=1024"
    app: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "mp"  # the application name in rtmp://host/APP/KEY
    public_url: str | None = None  # base of push/play URLs; rtmp://<public_host>:1935/<app> when unset
    max_connections: PositiveInt = 4096  # RTMP connections in total
    max_connections_per_address: PositiveInt = 64  # ... and from one client address
    max_player_backlog: PositiveInt = 1000000  # bytes written to a player that does not read; then closed


@dataclass
class CallsConfig(_Section):
    section: ClassVar[str] = "calls"
    max_per_session: PositiveInt = 2  # beyond it an incoming INVITE is answered 486, a `call` fails
    ring_timeout: Positive = 60.0  # an unanswered incoming call is ended with 480 after this
    outbound_timeout: Positive = 120.0  # an unanswered outgoing call is cancelled after this


@dataclass
class HttpConfig(_Section):
    section: ClassVar[str] = "http"
    listen: str | None = "tcp:9090:interface=127.0.0.1"  # /healthz and /metrics; None = off


@dataclass
class Config(_Section):
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    rtmp: RtmpConfig = field(default_factory=RtmpConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    public_host: Annotated[str, Field(min_length=1)] = "127.0.0.1"  # clients' name for this node
    base_dir: Path = field(default=Path("."), metadata={"internal": True})  # the config file's folder

    def resolve(self, path: str) -> Path:
        """A path from the config: relative ones to the config file's folder."""
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
    config.base_dir = path.resolve().parent
    for key in TLS_FILE_KEYS:
        value = getattr(config.sip, key)
        if value:
            setattr(config.sip, key, str(config.resolve(value)))
    validate(config)
    return config


#: sip keys that name files: relative paths resolve against the config file's folder
TLS_FILE_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def validate(config: Config) -> None:
    """Checks of values beyond their types (raises :class:`ConfigError`)."""
    dns_servers(config.sip)
    digest_realms(config.sip)
    from b2bua.sip.tls import load_tls  # it builds on this module

    load_tls(config.sip)  # TLS files readable, key matching the certificate, pins well formed
    srtp_signalling(config)
    if config.media.workers:
        parts = (config.rtmp.listen or "").split(":")
        if len(parts) < 2 or parts[0] not in ("tcp", "ssl") or not parts[1].isdigit():
            raise ConfigError(
                "media.workers: rtmp.listen must be tcp:PORT… or ssl:PORT… (worker i listens on PORT + i)"
            )


def srtp_signalling(config: Config) -> None:
    """SDES keys are only as secret as the SIP carrying them: ``media.srtp: require`` needs
    ``sip.pbx_transport: tls`` (refused otherwise), ``offer`` without it is warned about."""
    media = config.media
    if media.srtp == "off" or config.sip.pbx_transport == "tls":
        return
    if media.srtp_allow_insecure_signalling:
        log.warn(
            "media.srtp: {mode} with sip.pbx_transport: {t}: the SRTP keys cross in clear "
            "(media.srtp_allow_insecure_signalling is for tests and labs only)",
            mode=media.srtp,
            t=config.sip.pbx_transport,
        )
        return
    if media.srtp == "require":
        raise ConfigError(
            f"media.srtp: require needs sip.pbx_transport: tls (the keys travel in the SDP), "
            f"got sip.pbx_transport: {config.sip.pbx_transport}"
        )
    log.warn(
        "media.srtp: offer with sip.pbx_transport: {t}: the SRTP keys cross in clear; "
        "use sip.pbx_transport: tls",
        t=config.sip.pbx_transport,
    )


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
    """A section from its YAML mapping: unknown keys refused, nested sections built first, the
    values checked by the section itself (:class:`_Section`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(map(str, set(data) - fields))
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value or {}, _key(where, name))
        else:
            values[name] = value
    return cls(**values)
