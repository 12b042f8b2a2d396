"""``twistd mpb2bua`` options: each flag overrides its key of the YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from b2bua.tap import Options

SHIPPED = Path(__file__).resolve().parent.parent / "etc" / "mpb2bua.yaml"


def parse(*flags: str) -> Options:
    options = Options()
    options.parseOptions(["--config", str(SHIPPED), *flags])
    return options


def test_flags_override_the_file():
    config = parse(
        "--ws", "tcp:18080:interface=127.0.0.1",
        "--rtmp", "tcp:11935:interface=127.0.0.1",
        "--http", "tcp:19090:interface=127.0.0.1",
        "--sip-listen", "127.0.0.2:5072",
        "--pbx", "10.0.0.5:5060",
        "--public-host", "gw.example.com",
    ).config  # fmt: skip
    assert config.websocket.listen == "tcp:18080:interface=127.0.0.1"
    assert config.rtmp.listen == "tcp:11935:interface=127.0.0.1"
    assert config.http.listen == "tcp:19090:interface=127.0.0.1"
    assert (config.sip.listen_host, config.sip.listen_port) == ("127.0.0.2", 5072)
    assert config.sip.pbx == "10.0.0.5:5060" and config.public_host == "gw.example.com"


def test_without_flags_the_shipped_file_listens_as_the_readme_says():
    config = parse().config
    assert config.websocket.listen == "tcp:8080:backlog=1024"  # every interface
    assert config.rtmp.listen == "tcp:1935:backlog=1024"  # every interface
    assert config.http.listen == "tcp:9090:interface=127.0.0.1"
    assert config.sip.pbx == "127.0.0.1:5060" and config.sip.listen_port == 5070


def test_bad_sip_listen_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="HOST:PORT"):
        parse("--sip-listen", "5072")
