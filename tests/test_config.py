"""Config values checked beyond their types: sip.realm and sip.dns_servers."""

from __future__ import annotations

import pytest

from b2bua.config import ConfigError, SipConfig, digest_realms, load_config


def test_realm_defaults_to_the_domain_host_else_the_pbx_host():
    assert digest_realms(SipConfig()) == {"127.0.0.1"}
    assert digest_realms(SipConfig(pbx="PBX.example.com")) == {"pbx.example.com"}
    assert digest_realms(SipConfig(domain="127.0.0.1:5080")) == {"127.0.0.1"}  # no port in a realm
    assert digest_realms(SipConfig(pbx="10.0.0.1", domain="voice.example")) == {"voice.example"}


def test_realm_given_as_one_a_list_or_any():
    assert digest_realms(SipConfig(realm="Other")) == {"other"}
    assert digest_realms(SipConfig(realm=["a", "b"])) == {"a", "b"}
    assert digest_realms(SipConfig(realm="*")) is None
    assert digest_realms(SipConfig(realm=["*"])) is None
    for bad in ("", [], ["a", "*"], [" a"]):
        with pytest.raises(ConfigError, match="sip.realm"):
            digest_realms(SipConfig(realm=bad))


def test_file_values_are_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sip:\n  realm: [pbx.example, '*']\n")
    with pytest.raises(ConfigError, match="sip.realm"):
        load_config(path)
    path.write_text("sip:\n  dns_servers: [ns1.example]\n")
    with pytest.raises(ConfigError, match="sip.dns_servers"):
        load_config(path)
    path.write_text("sip:\n  dns_servers: ['127.0.0.1:5353']\n  realm: '*'\n")
    config = load_config(path)
    assert config.sip.dns_servers == ["127.0.0.1:5353"] and config.sip.realm == "*"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the values the hardening probe found accepted at start (then every call failed)
        ("media:\n  codecs: [G729]\n", "media.codecs: unknown codec(s) G729"),
        ("media:\n  aac_sample_rate: 12345\n", "media.aac_sample_rate: an AAC sample rate"),
        ("sip:\n  t1: -1\n", "sip.t1: Input should be greater than 0"),
        ("sip:\n  pbx_transport: sctp\n", "sip.pbx_transport: Input should be 'udp', 'tcp' or 'tls'"),
        ("sip:\n  listen_port: 70000\n", "sip.listen_port"),
        ("sip:\n  transports: []\n", "sip.transports"),
        ("media:\n  dtmf: tones\n", "media.dtmf"),
        ("media:\n  rtp_port_min: 20001\n", "media.rtp_port_min"),
        ("media:\n  rtp_port_min: 30000\n  rtp_port_max: 20000\n", "media.rtp_port_max"),
        ("websocket:\n  max_sessions: 0\n", "websocket.max_sessions"),
        ("websocket:\n  trusted_proxy_hops: -1\n", "websocket.trusted_proxy_hops"),
        ("websocket:\n  trusted_proxy_hops: 11\n", "websocket.trusted_proxy_hops"),
        ("websocket:\n  trusted_proxy_hops: true\n", "websocket.trusted_proxy_hops"),
        ("websocket:\n  grace_period: yes\n", "websocket.grace_period: Input should be a valid number"),
        ("calls:\n  ring_timeout: '60'\n", "calls.ring_timeout"),
        ("auth:\n  users_source: ldap\n", "auth.users_source"),
        ("auth:\n  token_secret: short\n", "auth.token_secret"),
        ("rtmp:\n  app: 'a/b'\n", "rtmp.app"),
        ("sip:\n  regsiter_expires: 60\n", "sip: unknown key(s) regsiter_expires"),
        ("media: 5\n", "media: expected a mapping"),
        # media.workers: a number, or auto (one per core)
        ("media:\n  workers: two\n",
         'media.workers: a number of workers (0: media in the node process) or "auto"'),
        ("media:\n  workers: -1\n", "media.workers: Input should be greater than or equal to 0"),
        ("media:\n  workers: 257\n", "media.workers: Input should be less than or equal to 256"),
        ("media:\n  workers: true\n", "media.workers: Input should be a valid integer"),
        ("media:\n  workers: '2'\n", "media.workers"),
        ("media:\n  workers: 3\n  rtp_port_min: 20000\n  rtp_port_max: 20003\n",
         "media.workers: 3 workers (auto: one per core) but only 2 RTP port pairs"),
        ("media:\n  workers: 2\nrtmp:\n  listen: unix:/tmp/rtmp.sock\n",
         "media.workers: rtmp.listen must be tcp:PORT"),
    ],
)
def test_wrong_values_stop_the_start_naming_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one line, no traceback-like dump


def test_good_values_are_taken_as_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "media:\n  codecs: [opus, pcmu]\n  aac_sample_rate: 48000\n  rtp_timeout: 0\n"
        "sip:\n  t1: 0.25\n  options_keepalive: 0\n  transports: [udp]\n"
    )
    config = load_config(path)
    assert config.media.codecs == ["opus", "pcmu"] and config.media.aac_sample_rate == 48000
    assert config.sip.t1 == 0.25 and config.sip.transports == ["udp"]


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    path = folder / "gw.yaml"
    path.write_text("auth:\n  users_path: users.yaml\n")
    config = load_config(path)
    assert config.resolve("users.yaml") == folder / "users.yaml"
    assert config.resolve("/abs/users.yaml").as_posix() == "/abs/users.yaml"


def test_files_of_a_disabled_feature_are_not_read(tmp_path):
    """A config outside any etc/ folder with token login off must start: the users file (which
    does not exist here) is only for token logins."""
    from b2bua.service import make_node

    path = tmp_path / "gw.yaml"
    path.write_text("auth:\n  users_source: yaml\n  users_path: missing.yaml\nhttp:\n  listen: null\n")
    config = load_config(path)
    assert config.auth.token_secret is None
    make_node(config)  # no exception: missing.yaml is never opened
    path.write_text(
        "auth:\n  users_source: yaml\n  users_path: missing.yaml\n  token_secret: 0123456789abcdef0123\n"
    )
    with pytest.raises(ConfigError, match="auth.users_path: .*missing.yaml: cannot read"):
        make_node(load_config(path))


def test_media_workers_default_to_one_per_core(tmp_path, monkeypatch):
    """``auto`` (the default, and the shipped file's value) is resolved when the config is built:
    the rest of the code sees the count of CPUs this process may run on."""
    import os

    from b2bua import config as config_module
    from b2bua.config import Config, MediaConfig

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert Config().media.workers == 3 and MediaConfig(workers="auto").workers == 3
    path = tmp_path / "c.yaml"
    path.write_text("media:\n  workers: auto\n")
    assert load_config(path).media.workers == 3
    path.write_text("media: {}\n")
    assert load_config(path).media.workers == 3
    # without an affinity mask (macOS): the machine's CPUs
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert config_module.cores() == 5 and MediaConfig().workers == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert MediaConfig().workers == 1
    # a number is taken as it is; 0: the media in the node process
    for text, count in (("0", 0), ("2", 2), ("256", 256)):
        path.write_text(f"media:\n  workers: {text}\n")
        assert load_config(path).media.workers == count


def test_shipped_config_asks_for_one_worker_per_core():
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "etc" / "mpb2bua.yaml"
    assert "\n  workers: auto\n" in shipped.read_text()


def test_auto_workers_with_a_narrow_rtp_range_say_so(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    path = tmp_path / "c.yaml"
    path.write_text("media:\n  rtp_port_min: 20000\n  rtp_port_max: 20005\n")
    with pytest.raises(ConfigError, match=r"media.workers: 8 workers \(auto: one per core\) but only 3"):
        load_config(path)
