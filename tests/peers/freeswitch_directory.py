"""FreeSWITCH's stock directory files (conf/vanilla, 1.10), for tests of the directory user source."""

from __future__ import annotations

from pathlib import Path

# directory/default/1000.xml as shipped; other users are the same file with their number
FS_1000_XML = """\
<include>
  <user id="1000">
    <params>
      <param name="password" value="$${default_password}"/>
      <param name="vm-password" value="1000"/>
    </params>
    <variables>
      <variable name="toll_allow" value="domestic,international,local"/>
      <variable name="accountcode" value="1000"/>
      <variable name="user_context" value="default"/>
      <variable name="effective_caller_id_name" value="Extension 1000"/>
      <variable name="effective_caller_id_number" value="1000"/>
      <variable name="outbound_caller_id_name" value="$${outbound_caller_name}"/>
      <variable name="outbound_caller_id_number" value="$${outbound_caller_id}"/>
      <variable name="callgroup" value="techsupport"/>
    </variables>
  </user>
</include>
"""


# directory/default.xml (abridged): the domain, including default/*.xml, and a group of pointer
# users (no passwords of their own)
FS_DEFAULT_XML = """\
<?xml version="1.0" encoding="utf-8"?>
<include>
  <!-- Comments are fine. -->
  <domain name="$${domain}">
    <params>
      <param name="dial-string"
             value="{^^:sip_invite_domain=${dialed_domain}}${sofia_contact(*/${dialed_user}@${dialed_domain})}"/>
    </params>
    <variables>
      <variable name="record_stereo" value="true"/>
    </variables>
    <groups>
      <group name="default">
        <users>
          <X-PRE-PROCESS cmd="include" data="default/*.xml"/>
        </users>
      </group>
      <group name="sales">
        <users>
          <user id="1000" type="pointer"/>
          <user id="1001" type="pointer"/>
        </users>
      </group>
    </groups>
  </domain>
</include>
"""


def user_xml(user: str) -> str:
    """The stock default/1000.xml, for ``user``."""
    return FS_1000_XML.replace("1000", user)


def write_directory(root: Path, users) -> Path:
    """A directory/ tree at ``root``: default.xml and default/<user>.xml for each of ``users``."""
    (root / "default").mkdir(parents=True, exist_ok=True)
    (root / "default.xml").write_text(FS_DEFAULT_XML)
    for user in users:
        (root / "default" / f"{user}.xml").write_text(user_xml(str(user)))
    return root
