"""The shipped service and PBX files: etc/systemd/mpb2bua.service passes ``systemd-analyze
verify`` and says what a node needs; etc/freeswitch/ is well-formed FreeSWITCH XML, every
setting commented, naming only codecs the gateway can transcode."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from b2bua.config import ConfigError, MediaConfig
from tests.peers import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "systemd" / "mpb2bua.service"
FREESWITCH = ROOT / "etc" / "freeswitch"
VIDEO_CODECS = {"H264"}


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key`` -> its values, over all sections (comments and blank lines skipped)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_binary("systemd-analyze")  # CI=true: a missing one fails, never skips
    text = UNIT.read_text()
    # verify checks that ExecStart's program exists: point it at this checkout's twistd
    twistd = Path(sys.executable).parent / "twistd"
    assert "/opt/mpb2bua/.venv/bin/twistd " in text
    unit = tmp_path / "mpb2bua.service"
    unit.write_text(text.replace("/opt/mpb2bua/.venv/bin/twistd ", f"{twistd} "))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "mpb2bua" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_the_systemd_unit_runs_the_node_as_the_docs_say():
    settings = unit_settings(UNIT.read_text())
    (exec_start,) = settings["ExecStart"]
    args = exec_start.split()
    assert args[1:5] == ["--nodaemon", "--pidfile=", "mpb2bua", "--config"]
    assert settings["User"] == ["mpb2bua"] and settings["Restart"] == ["on-failure"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    # twistd has no reload: SIGHUP would kill it without un-REGISTERing anyone
    assert "ExecReload" not in settings
    # SIGTERM is the graceful stop; it needs up to 8 s of un-REGISTERs + 20 s of close handshakes
    assert settings["KillSignal"] == ["SIGTERM"] and int(settings["TimeoutStopSec"][0]) >= 30


def parse_with_comments(path: Path) -> ET.Element:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return ET.parse(path, parser).getroot()


FREESWITCH_XML = sorted(FREESWITCH.rglob("*.xml"))


def test_there_are_freeswitch_files_for_the_profile_the_vars_and_the_dialplan():
    names = {p.relative_to(FREESWITCH).as_posix() for p in FREESWITCH_XML}
    assert names == {
        "dialplan/default/mpb2bua_asr.xml",
        "sip_profiles/mpb2bua-internal.xml",
        "vars/mpb2bua-vars.xml",
    }


@pytest.mark.parametrize("path", FREESWITCH_XML, ids=lambda p: p.name)
def test_freeswitch_files_are_well_formed_includes_with_every_setting_commented(path):
    root = parse_with_comments(path)
    assert root.tag == "include"  # what FreeSWITCH's X-PRE-PROCESS include and dialplan/default/ expect
    settings = [e for e in root.iter() if e.tag in ("param", "X-PRE-PROCESS", "extension")]
    assert settings
    for parent in root.iter():
        children = list(parent)
        for i, child in enumerate(children):
            if child.tag in ("param", "X-PRE-PROCESS", "extension"):
                before = children[:i]
                # a comment right before it, or right before the group of settings it belongs to
                j = i - 1
                while j >= 0 and before[j].tag == child.tag:
                    j -= 1
                assert j >= 0 and before[j].tag is ET.Comment, f"{path.name}: {ET.tostring(child)[:80]!r}"


def test_the_profile_keeps_every_contact_and_times_out_dead_calls():
    params = {p.get("name"): p.get("value") for p in parse_with_comments(
        FREESWITCH / "sip_profiles" / "mpb2bua-internal.xml").iter("param")}
    assert params["multiple-registrations"] == "contact"
    assert params["inbound-codec-negotiation"] == "generous"
    assert 0 < int(params["rtp-timeout-sec"]) <= 300
    assert params["enable-timer"] == "true"


def test_the_codecs_freeswitch_is_told_to_use_are_ones_the_gateway_transcodes():
    sets = dict(
        e.get("data").split("=", 1)
        for e in parse_with_comments(FREESWITCH / "vars" / "mpb2bua-vars.xml").iter("X-PRE-PROCESS")
    )
    for name in ("global_codec_prefs", "outbound_codec_prefs"):
        audio = [c for c in sets[name].split(",") if c not in VIDEO_CODECS]
        try:
            MediaConfig(codecs=audio)
        except ConfigError as e:
            pytest.fail(f"{name}: {e}")
    assert "default_password" not in sets  # see the file: the gateway reads vars.xml only


def test_the_asr_extension_sends_info_and_the_lua_it_runs_is_shipped():
    root = parse_with_comments(FREESWITCH / "dialplan" / "default" / "mpb2bua_asr.xml")
    actions = {(a.get("application"), a.get("data")) for a in root.iter("action")}
    assert ("send_info", "${detect_speech_result}") in actions
    (lua,) = [data for app, data in actions if app == "lua"]
    script = (FREESWITCH / "scripts" / lua).read_text()
    assert re.search(r"uuid_send_info .* application json", script)
