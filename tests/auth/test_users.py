import hashlib
import shutil
from pathlib import Path

import pytest

from b2bua.auth.users import (
    Credentials,
    FreeSwitchDirectory,
    UserSourceError,
    YamlUsers,
    read_freeswitch_vars,
)
from tests.peers.freeswitch_directory import write_directory

REPO = Path(__file__).resolve().parents[2]
HA1 = hashlib.md5(b"1001:pbx.example.com:s3cret").hexdigest()

FS_SKINNY_XML = """\
<include>
  <user id="skinny-example">
    <params>
      <param name="skinny-device-type" value="Cisco ATA 186"/>
    </params>
  </user>
</include>
"""

FS_VARS_XML = """\
<include>
  <X-PRE-PROCESS cmd="set" data="default_password=4321"/>
  <X-PRE-PROCESS cmd="set" data="domain=$${local_ip_v4}"/>
  <X-PRE-PROCESS cmd="stun-set" data="external_rtp_ip=stun:stun.freeswitch.org"/>
  <X-PRE-PROCESS cmd="exec-set" data="hostname=hostname"/>
  <X-PRE-PROCESS cmd="set" data="outbound_caller_id=$${default_password}0"/>
  <X-PRE-PROCESS cmd="set" data="sound_prefix=$${sounds_dir}/en/us/callie"/>
</include>
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fs_user(user: str, params: str) -> str:
    return f'<include><user id="{user}"><params>{params}</params></user></include>'


@pytest.fixture
def fs_dir(tmp_path: Path) -> Path:
    root = write_directory(tmp_path / "directory", range(1000, 1020))
    write(root / "default" / "skinny-example.xml", FS_SKINNY_XML)
    hashed = fs_user("2001", f'<param name="a1-hash" value="{HA1.upper()}"/>')
    write(root / "default" / "1001-hash.xml", hashed)
    return root


# ---------------------------------------------------------------------------------------------- Credentials

def test_credentials_repr_hides_secrets():
    c = Credentials("1000", password="hunter2")
    assert "hunter2" not in repr(c) and "1000" in repr(c)
    assert HA1 not in repr(Credentials("1001", ha1=HA1))


@pytest.mark.parametrize("kwargs", [{}, {"password": "a", "ha1": HA1}, {"ha1": "zz"}])
def test_credentials_validation(kwargs):
    with pytest.raises(ValueError):
        Credentials("1000", **kwargs)


# ---------------------------------------------------------------------------------------------- YAML

def test_shipped_users_yaml():
    users = YamlUsers(REPO / "etc" / "users.yaml")
    assert users.lookup("1000") == Credentials("1000", "1234", None)
    assert users.lookup("1019") == Credentials("1019", "1234", None)
    assert users.lookup("1020") is None
    assert users.lookup("999") is None


def test_yaml_users_and_ranges(tmp_path):
    f = write(tmp_path / "users.yaml", f"""
users:
  "1000": {{password: "override"}}
  1001: {{ha1: "{HA1.upper()}"}}
  alice: {{password: 0123}}
  "0100": {{password: yes}}
ranges:
  - {{from: 1000, to: 1019, password: "1234"}}
  - from: "0200"
    to: "0299"
    password: zero
  - {{from: 1010, to: 1030, password: "second"}}
""")
    users = YamlUsers(f)
    assert users.lookup("1000") == Credentials("1000", "override", None)
    assert users.lookup("1001") == Credentials("1001", None, HA1)
    assert users.lookup("alice") == Credentials("alice", "0123", None)
    assert users.lookup("0100") == Credentials("0100", "yes", None)
    assert users.lookup("1005").password == "1234"
    assert users.lookup("1015").password == "1234"  # the first range wins
    assert users.lookup("1025").password == "second"
    assert users.lookup("0250") == Credentials("0250", "zero", None)
    assert users.lookup("250") is None
    assert users.lookup("01005") is None
    assert users.lookup("100") is None
    assert users.lookup("１０００") is None  # full-width digits are not 1000
    assert users.lookup("") is None
    assert users.lookup(None) is None  # type: ignore[arg-type]
    assert "1234" not in repr(users)


def test_yaml_empty_file(tmp_path):
    assert YamlUsers(write(tmp_path / "u.yaml", "")).lookup("1000") is None


def test_yaml_reload(tmp_path):
    f = write(tmp_path / "u.yaml", 'users: {"1000": {password: a}}\n')
    users = YamlUsers(f)
    assert users.lookup("1000").password == "a"
    write(f, 'users: {"1000": {password: b}}\n')
    users.reload()
    assert users.lookup("1000").password == "b"
    write(f, "users: [\n")
    with pytest.raises(UserSourceError):
        users.reload()
    assert users.lookup("1000").password == "b"  # kept


@pytest.mark.parametrize("text,message", [
    ("users: [\n", "line"),
    ("- a\n- b\n", "mapping"),
    ("userz: {}\n", "unknown top-level"),
    ("users: [1000]\n", "'users' must be a mapping"),
    ('users: {"1000": "1234"}\n', "expected a mapping"),
    ('users: {"1000": {}}\n', "exactly one"),
    ('users: {"1000": {password: a, ha1: ' + HA1 + "}}\n", "exactly one"),
    ('users: {"1000": {pasword: a}}\n', "unknown keys"),
    ('users: {"1000": {password: ""}}\n', "non-empty"),
    ('users: {"1000": {password: [a]}}\n', "non-empty"),
    ('users: {"1000": {password: }}\n', "exactly one"),
    ('users: {"1000": {ha1: abc}}\n', "32 hexadecimal"),
    ('users: {"1000": {password: a, from: 1}}\n', "ranges"),
    ("users: {? [a]: {password: a}}\n", "unhashable"),
    ('users: {"": {password: a}}\n', "invalid user name"),
    ("users: {~: {password: a}}\n", "invalid user name"),
    ("ranges: {from: 1}\n", "'ranges' must be a list"),
    ("ranges: [{from: 1000, password: a}]\n", "'to'"),
    ("ranges: [{from: x, to: 1, password: a}]\n", "'from'"),
    ("ranges: [{from: -1, to: 1, password: a}]\n", "'from'"),
    ("ranges: [{from: 1019, to: 1000, password: a}]\n", "below"),
    ("ranges: [{from: 0, to: 99999999, password: a}]\n", "more than"),
    ("ranges: [{from: 1, to: 2}]\n", "exactly one"),
    ("!!python/object:os.system {}\n", "line"),
])
def test_yaml_malformed(tmp_path, text, message):
    f = write(tmp_path / "bad.yaml", text)
    with pytest.raises(UserSourceError, match=message) as info:
        YamlUsers(f)
    assert str(f) in str(info.value) and info.value.path == str(f)


def test_yaml_error_does_not_quote_password(tmp_path):
    f = write(tmp_path / "bad.yaml", 'users:\n  "1000": {password: "topsecret" oops}\n')
    with pytest.raises(UserSourceError) as info:
        YamlUsers(f)
    assert "topsecret" not in str(info.value)
    assert "line 2" in str(info.value)


def test_yaml_missing_file(tmp_path):
    with pytest.raises(UserSourceError, match="cannot read"):
        YamlUsers(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------- FreeSWITCH

def test_freeswitch_default_directory(fs_dir):
    d = FreeSwitchDirectory(fs_dir)
    assert d.errors == []
    assert d.lookup("1000") == Credentials("1000", "1234", None)
    assert d.lookup("1019") == Credentials("1019", "1234", None)
    assert d.lookup("2001") == Credentials("2001", None, HA1)
    assert d.lookup("skinny-example") is None
    assert d.lookup("1020") is None
    assert d.lookup(None) is None  # type: ignore[arg-type]
    assert len(d) == 21
    assert "1234" not in repr(d)


def test_freeswitch_variables(fs_dir):
    d = FreeSwitchDirectory(fs_dir, variables={"default_password": "s3cret"})
    assert d.lookup("1000").password == "s3cret"
    d = FreeSwitchDirectory(fs_dir, variables={})
    assert d.lookup("1000") is None
    assert len(d.errors) == 20
    assert all("undefined variable $${default_password}" in e for e in d.errors)
    with pytest.raises(UserSourceError, match="undefined variable"):
        FreeSwitchDirectory(fs_dir, variables={}, strict=True)


def test_freeswitch_vars_xml(tmp_path, fs_dir):
    found = read_freeswitch_vars(write(tmp_path / "vars.xml", FS_VARS_XML))
    assert found["default_password"] == "4321"
    assert found["outbound_caller_id"] == "43210"
    assert found["domain"] == "$${local_ip_v4}"  # unknown variables stay as written
    assert "hostname" not in found and "external_rtp_ip" not in found
    assert FreeSwitchDirectory(fs_dir, variables=found).lookup("1000").password == "4321"


def test_freeswitch_a1_hash_wins_over_password(tmp_path):
    root = tmp_path / "dir"
    params = f'<param name="password" value="x"/><param name="a1-hash" value="{HA1}"/>'
    write(root / "u.xml", fs_user("3000", params))
    assert FreeSwitchDirectory(root).lookup("3000") == Credentials("3000", None, HA1)


def test_freeswitch_several_users_per_file_and_variable_in_id(tmp_path):
    root = tmp_path / "dir"
    write(root / "domain.xml", """<include><domain name="d"><groups><group name="g"><users>
        <user id="$${prefix}1"><params><param name="password" value="p1"/></params></user>
        <user id="x2"><params><param name="Password" value="p$${default_password}"/></params></user>
        <user id="x3" type="pointer"/>
    </users></group></groups></domain></include>""")
    d = FreeSwitchDirectory(root, variables={"prefix": "x", "default_password": "2"})
    assert d.lookup("x1").password == "p1"
    assert d.lookup("x2").password == "p2"
    assert d.lookup("x3") is None


def test_freeswitch_bad_files_are_skipped_and_reported(fs_dir):
    bad = {
        "broken.xml": "<include><user id='9000'>",
        "dtd.xml": '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><include>&lol;</include>',
        "entity.xml": '<!ENTITY x SYSTEM "file:///etc/passwd"><include/>',
        "latin1.xml": None,
        "noid.xml": "<include><user><params><param name='password' value='x'/></params></user></include>",
        "badhash.xml": fs_user("9001", '<param name="a1-hash" value="nothex"/>'),
        "empty-password.xml": fs_user("9002", '<param name="password" value=""/>'),
        "half.xml": fs_user("9003", '<param name="password" value="pw-half-secret"/>').replace(
            "</include>", '<user id="9004"><params><param name="password" value="$${nope}"/></params></user>'
            "</include>"),
        "dup.xml": fs_user("1000", '<param name="password" value="pw-dup-secret"/>'),
    }
    for name, text in bad.items():
        if text is None:
            (fs_dir / "extra").mkdir(exist_ok=True)
            (fs_dir / "extra" / name).write_bytes(b"<include><user id='caf\xe9'/></include>")
        else:
            write(fs_dir / "extra" / name, text)
    write(fs_dir / "extra" / ".hidden.xml", "garbage")
    write(fs_dir / "extra" / "notes.txt", "garbage")
    d = FreeSwitchDirectory(fs_dir)
    assert len(d.errors) == len(bad), d.errors
    joined = "\n".join(d.errors)
    for name in bad:
        assert name in joined
    assert "not allowed" in joined and "not UTF-8" in joined and "already defined" in joined
    assert d.lookup("1000").password == "1234"  # default/ sorts before extra/: the first one wins
    assert d.lookup("9003") is None  # a broken file never half-loads
    assert "pw-" not in joined


def test_freeswitch_strict(fs_dir):
    write(fs_dir / "zz.xml", "<include>")
    with pytest.raises(UserSourceError, match="zz.xml"):
        FreeSwitchDirectory(fs_dir, strict=True)


def test_freeswitch_reload(fs_dir):
    d = FreeSwitchDirectory(fs_dir)
    write(fs_dir / "default" / "1000.xml", fs_user("1000", '<param name="password" value="new"/>'))
    (fs_dir / "default" / "1019.xml").unlink()
    d.reload()
    assert d.lookup("1000").password == "new"
    assert d.lookup("1019") is None
    shutil.rmtree(fs_dir)
    with pytest.raises(UserSourceError, match="not a directory"):
        d.reload()
    assert d.lookup("1000").password == "new"  # kept


def test_freeswitch_missing_folder(tmp_path):
    with pytest.raises(UserSourceError, match="not a directory"):
        FreeSwitchDirectory(tmp_path / "nope")
