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
