"""Hangup causes, named and mapped the way FreeSWITCH does it.

The WebSocket ``hangup`` event carries ``cause``: the cause *name* exactly as FreeSWITCH spells it
(``switch_call_cause_t`` without its ``SWITCH_CAUSE_`` prefix), so that clients written against
FreeSWITCH/mod_verto read the same words. The facts below were taken from FreeSWITCH
(signalwire/freeswitch) and re-expressed here:

* ``CAUSES`` — the ``switch_call_cause_t`` enum (``src/include/switch_types.h``) and its name table
  ``CAUSE_CHART`` (``src/switch_channel.c``). Values 1..127 are Q.850; FreeSWITCH's own causes
  (``SUCCESS`` 142, ``ORIGINATOR_CANCEL`` 487, ``CRASH`` 500 … ``STALE_DATE`` 624) are numbers it
  chose, not SIP statuses, even where they look like one.
* ``cause_from_sip_status`` — ``sofia_glue_sip_cause_to_freeswitch`` (mod_sofia/sofia_glue.c), the
  RFC 4497 §8.4.4 table FreeSWITCH applies to a final response with no usable Reason header.
* ``sip_status_for_cause`` — ``hangup_cause_to_sip`` (mod_sofia/mod_sofia.c), RFC 4497 §8.4.1 plus
  FreeSWITCH's own additions, used for the status of a rejected INVITE.
* ``cause_from_reason`` — like ``sofia_handle_sip_i_bye`` (mod_sofia/sofia.c): a Reason with protocol
  ``Q.850`` (or ``FreeSWITCH``, which FreeSWITCH also trusts) overrides the status mapping.
"""

from __future__ import annotations

import re

__all__ = [
    "CAUSES",
    "CAUSE_NUMBERS",
    "DEFAULT_CAUSE",
    "DEFAULT_SIP_STATUS",
    "cause_from_reason",
    "cause_from_sip_status",
    "parse_reason_header",
    "reason_header",
    "sip_status_for_cause",
]

# switch_call_cause_t: number -> name (switch_types.h enum, switch_channel.c CAUSE_CHART).
CAUSES: dict[int, str] = {
    0: "NONE",
    1: "UNALLOCATED_NUMBER",
    2: "NO_ROUTE_TRANSIT_NET",
    3: "NO_ROUTE_DESTINATION",
    6: "CHANNEL_UNACCEPTABLE",
    7: "CALL_AWARDED_DELIVERED",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    18: "NO_USER_RESPONSE",
    19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT",
    21: "CALL_REJECTED",
    22: "NUMBER_CHANGED",
    23: "REDIRECTION_TO_NEW_DESTINATION",
    25: "EXCHANGE_ROUTING_ERROR",
    27: "DESTINATION_OUT_OF_ORDER",
    28: "INVALID_NUMBER_FORMAT",
    29: "FACILITY_REJECTED",
    30: "RESPONSE_TO_STATUS_ENQUIRY",
    31: "NORMAL_UNSPECIFIED",
    34: "NORMAL_CIRCUIT_CONGESTION",
    38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE",
    42: "SWITCH_CONGESTION",
    43: "ACCESS_INFO_DISCARDED",
    44: "REQUESTED_CHAN_UNAVAIL",
    45: "PRE_EMPTED",
    50: "FACILITY_NOT_SUBSCRIBED",
    52: "OUTGOING_CALL_BARRED",
    54: "INCOMING_CALL_BARRED",
    57: "BEARERCAPABILITY_NOTAUTH",
    58: "BEARERCAPABILITY_NOTAVAIL",
    63: "SERVICE_UNAVAILABLE",
    65: "BEARERCAPABILITY_NOTIMPL",
    66: "CHAN_NOT_IMPLEMENTED",
    69: "FACILITY_NOT_IMPLEMENTED",
    79: "SERVICE_NOT_IMPLEMENTED",
    81: "INVALID_CALL_REFERENCE",
    88: "INCOMPATIBLE_DESTINATION",
    95: "INVALID_MSG_UNSPECIFIED",
    96: "MANDATORY_IE_MISSING",
    97: "MESSAGE_TYPE_NONEXIST",
    98: "WRONG_MESSAGE",
    99: "IE_NONEXIST",
    100: "INVALID_IE_CONTENTS",
    101: "WRONG_CALL_STATE",
    102: "RECOVERY_ON_TIMER_EXPIRE",
    103: "MANDATORY_IE_LENGTH_ERROR",
    111: "PROTOCOL_ERROR",
    127: "INTERWORKING",
    # FreeSWITCH's own (not Q.850) causes.
    142: "SUCCESS",
    487: "ORIGINATOR_CANCEL",
    500: "CRASH",
    501: "SYSTEM_SHUTDOWN",
    502: "LOSE_RACE",
    503: "MANAGER_REQUEST",
    600: "BLIND_TRANSFER",
    601: "ATTENDED_TRANSFER",
    602: "ALLOTTED_TIMEOUT",
    603: "USER_CHALLENGE",
    604: "MEDIA_TIMEOUT",
    605: "PICKED_OFF",
    606: "USER_NOT_REGISTERED",
    607: "PROGRESS_TIMEOUT",
    608: "INVALID_GATEWAY",
    609: "GATEWAY_DOWN",
    610: "INVALID_URL",
    611: "INVALID_PROFILE",
    612: "NO_PICKUP",
    613: "SRTP_READ_ERROR",
    614: "BOWOUT",
    615: "BUSY_EVERYWHERE",
    616: "DECLINE",
    617: "DOES_NOT_EXIST_ANYWHERE",
    618: "NOT_ACCEPTABLE",
    619: "UNWANTED",
    620: "NO_IDENTITY",
    621: "BAD_IDENTITY_INFO",
    622: "UNSUPPORTED_CERTIFICATE",
    623: "INVALID_IDENTITY",
    624: "STALE_DATE",
}

# name -> number.
CAUSE_NUMBERS: dict[str, int] = {name: code for code, name in CAUSES.items()}

# sofia_glue_sip_cause_to_freeswitch: any status not listed gives NORMAL_UNSPECIFIED.
DEFAULT_CAUSE = "NORMAL_UNSPECIFIED"


def _by_status(groups: dict[str, tuple[int, ...]]) -> dict[int, str]:
    table: dict[int, str] = {}
    for name, statuses in groups.items():
        assert name in CAUSE_NUMBERS, name
        for status in statuses:
            assert status not in table, status
            table[status] = name
    return table


_SIP_STATUS_TO_CAUSE: dict[int, str] = _by_status(
    {
        "NORMAL_CLEARING": (200,),
        "CALL_REJECTED": (401, 402, 403, 407, 603),
        "UNALLOCATED_NUMBER": (404,),
        "NO_ROUTE_DESTINATION": (485, 604),
        "RECOVERY_ON_TIMER_EXPIRE": (408, 504),
        "NUMBER_CHANGED": (410,),
        "INTERWORKING": (413, 414, 416, 420, 421, 423, 505, 513),
        "NO_USER_RESPONSE": (480,),
        "NORMAL_TEMPORARY_FAILURE": (400, 481, 500, 503),
        "USER_BUSY": (486, 600),
        "INVALID_NUMBER_FORMAT": (484,),
        "INCOMPATIBLE_DESTINATION": (488, 606),
        "NETWORK_OUT_OF_ORDER": (502,),
        "SERVICE_UNAVAILABLE": (405,),
        "SERVICE_NOT_IMPLEMENTED": (406, 415, 501),
        "EXCHANGE_ROUTING_ERROR": (482, 483),
        "ORIGINATOR_CANCEL": (487,),
    }
)

# hangup_cause_to_sip: any cause not listed (NORMAL_CLEARING included) gives 480.
DEFAULT_SIP_STATUS = 480

_CAUSE_TO_SIP_STATUS: dict[str, int] = {
    name: status
    for status, names in {
        404: ("UNALLOCATED_NUMBER", "NO_ROUTE_TRANSIT_NET", "NO_ROUTE_DESTINATION"),
        486: ("USER_BUSY",),
        408: ("NO_USER_RESPONSE",),
        480: ("NO_ANSWER", "SUBSCRIBER_ABSENT", "NORMAL_UNSPECIFIED"),
        603: ("CALL_REJECTED", "DECLINE"),
        410: ("NUMBER_CHANGED", "REDIRECTION_TO_NEW_DESTINATION"),
        502: ("DESTINATION_OUT_OF_ORDER", "INVALID_PROFILE"),
        484: ("INVALID_NUMBER_FORMAT", "INVALID_URL", "INVALID_GATEWAY"),
        501: ("FACILITY_REJECTED", "FACILITY_NOT_IMPLEMENTED", "SERVICE_NOT_IMPLEMENTED"),
        503: (
            "REQUESTED_CHAN_UNAVAIL",
            "NORMAL_CIRCUIT_CONGESTION",
            "NETWORK_OUT_OF_ORDER",
            "NORMAL_TEMPORARY_FAILURE",
            "SWITCH_CONGESTION",
            "GATEWAY_DOWN",
            "BEARERCAPABILITY_NOTAVAIL",
        ),
        403: ("OUTGOING_CALL_BARRED", "INCOMING_CALL_BARRED", "BEARERCAPABILITY_NOTAUTH"),
        488: ("BEARERCAPABILITY_NOTIMPL", "INCOMPATIBLE_DESTINATION"),
        504: ("RECOVERY_ON_TIMER_EXPIRE",),
        487: ("ORIGINATOR_CANCEL",),
        483: ("EXCHANGE_ROUTING_ERROR",),
        # FreeSWITCH's additions beyond RFC 4497.
        600: ("BUSY_EVERYWHERE",),
        604: ("DOES_NOT_EXIST_ANYWHERE",),
        606: ("NOT_ACCEPTABLE",),
        607: ("UNWANTED",),
    }.items()
    for name in names
}
assert set(_CAUSE_TO_SIP_STATUS) <= set(CAUSE_NUMBERS)


def cause_from_sip_status(status: int) -> str:
    """The cause FreeSWITCH gives a call ended by final response ``status`` (no Reason header)."""
    return _SIP_STATUS_TO_CAUSE.get(status, DEFAULT_CAUSE)


def sip_status_for_cause(name: str) -> int:
    """The final status FreeSWITCH answers an INVITE with when refusing it for cause ``name``.

    Like FreeSWITCH's ``switch_channel_str2cause`` the name is matched case-insensitively and a
    decimal cause number is accepted too; anything unknown gets the default, 480.
    """
    key = name.strip().upper()
    if key.isdigit():
        key = CAUSES.get(int(key), "")
    return _CAUSE_TO_SIP_STATUS.get(key, DEFAULT_SIP_STATUS)


# --- Reason header (RFC 3326) -------------------------------------------------------------------------

def reason_header(name: str) -> str:
    """The Reason value FreeSWITCH puts on a BYE it sends for cause ``name``: Q.850 for the ISDN
    causes (1..127), its own protocol token for the others (e.g. 604 ``MEDIA_TIMEOUT``), which
    FreeSWITCH reads back as the cause of the call it receives the BYE on."""
    number = CAUSE_NUMBERS[name]
    protocol = "Q.850" if 0 < number < 128 else "FreeSWITCH"
    return f'{protocol};cause={number};text="{name}"'


_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_GEN_VALUE = re.compile(r"""("(?:[^"\\]|\\.)*")|[A-Za-z0-9\-.!%*_+`'~:\[\]]+""")
_CANONICAL_PROTOCOLS = {"q.850": "Q.850", "sip": "SIP", "freeswitch": "FreeSWITCH"}


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (backslash escapes honoured inside them)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted or escaped:
        raise ValueError(f"unterminated quoted string in {text!r}")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if '"' in value:
        raise ValueError(f"stray quote in {value!r}")
    return value


def parse_reason_header(value: str) -> tuple[str, int | None, str | None]:
    """Parse one Reason value: ``'Q.850;cause=16;text="NORMAL_CLEARING"'`` -> ``("Q.850", 16, ...)``.

    Tolerant of whitespace around ``;`` and ``=``, of parameter-name case, of a quoted cause and of an
    unquoted text; the protocols Q.850, SIP and FreeSWITCH come back in their usual spelling, others
    as written. Unknown parameters are ignored. Raises ValueError for anything not of that shape
    (empty, bad protocol token, non-numeric or repeated cause, unbalanced quotes, several
    comma-separated values — split those first, as :func:`cause_from_reason` does).
    """
    if not isinstance(value, str):
        raise ValueError(f"Reason value must be a string, not {type(value).__name__}")
    parts = _split_unquoted(value, ";")
    if len(_split_unquoted(value, ",")) > 1:
        raise ValueError(f"more than one reason in {value!r}")
    protocol = parts[0].strip()
    if not _TOKEN.fullmatch(protocol):
        raise ValueError(f"bad Reason protocol in {value!r}")
    protocol = _CANONICAL_PROTOCOLS.get(protocol.lower(), protocol)
    cause: int | None = None
    text: str | None = None
    seen: set[str] = set()
    for param in parts[1:]:
        param = param.strip()
        if not param:
            raise ValueError(f"empty parameter in {value!r}")
        name, eq, raw = param.partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if not _TOKEN.fullmatch(name) or (eq and not raw):
            raise ValueError(f"bad Reason parameter {param!r}")
        if name in seen and name in ("cause", "text"):
            raise ValueError(f"repeated {name} in {value!r}")
        seen.add(name)
        if name == "cause":
            digits = _unquote(raw).strip()
            if not eq or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
                raise ValueError(f"bad Reason cause in {value!r}")
            cause = int(digits)
        elif name == "text":
            if not eq:
                raise ValueError(f"Reason text without a value in {value!r}")
            text = _unquote(raw)
        elif eq and not _GEN_VALUE.fullmatch(raw):
            raise ValueError(f"bad Reason parameter {param!r}")
    return protocol, cause, text


def cause_from_reason(values: list[str]) -> str | None:
    """The FreeSWITCH cause name carried by Reason header values, or None.

    Each value may hold several comma-separated reasons. The first ``Q.850`` reason with a known
    cause wins; failing that, a ``FreeSWITCH`` one (FreeSWITCH trusts that protocol too). SIP-protocol
    reasons are ignored (the response status says that already), as are malformed values and cause
    numbers FreeSWITCH has no name for.
    """
    fallback: str | None = None
    for value in values:
        try:
            reasons = _split_unquoted(value, ",")
        except ValueError:
            continue
        for reason in reasons:
            try:
                protocol, cause, _text = parse_reason_header(reason)
            except ValueError:
                continue
            if cause is None or cause not in CAUSES or cause == 0:
                continue
            if protocol == "Q.850":
                if cause <= 127:
                    return CAUSES[cause]
            elif protocol == "FreeSWITCH" and fallback is None:
                fallback = CAUSES[cause]
    return fallback
