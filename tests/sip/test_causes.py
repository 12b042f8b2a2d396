"""Cause names and SIP <-> cause mappings, checked against FreeSWITCH's own tables."""

from __future__ import annotations

import pytest

from b2bua.sip.causes import (
    CAUSE_NUMBERS,
    CAUSES,
    cause_from_reason,
    cause_from_sip_status,
    parse_reason_header,
    sip_status_for_cause,
)

# --- CAUSES ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "NONE"),
        (1, "UNALLOCATED_NUMBER"),
        (3, "NO_ROUTE_DESTINATION"),
        (16, "NORMAL_CLEARING"),
        (17, "USER_BUSY"),
        (18, "NO_USER_RESPONSE"),
        (19, "NO_ANSWER"),
        (21, "CALL_REJECTED"),
        (28, "INVALID_NUMBER_FORMAT"),
        (31, "NORMAL_UNSPECIFIED"),
        (41, "NORMAL_TEMPORARY_FAILURE"),
        (63, "SERVICE_UNAVAILABLE"),
        (65, "BEARERCAPABILITY_NOTIMPL"),
        (88, "INCOMPATIBLE_DESTINATION"),
        (102, "RECOVERY_ON_TIMER_EXPIRE"),
        (127, "INTERWORKING"),
        (142, "SUCCESS"),
        (487, "ORIGINATOR_CANCEL"),
        (500, "CRASH"),
        (503, "MANAGER_REQUEST"),
        (602, "ALLOTTED_TIMEOUT"),
        (604, "MEDIA_TIMEOUT"),
        (607, "PROGRESS_TIMEOUT"),
        (609, "GATEWAY_DOWN"),
        (612, "NO_PICKUP"),
        (616, "DECLINE"),
        (624, "STALE_DATE"),
    ],
)
def test_cause_numbers_and_names(code, name):
    assert CAUSES[code] == name
    assert CAUSE_NUMBERS[name] == code


def test_cause_table_shape():
    assert len(CAUSES) == len(set(CAUSES.values())) == 81
    assert all(name == name.upper() and " " not in name for name in CAUSES.values())
    # Q.850 numbers that FreeSWITCH leaves unnamed.
    for code in (4, 5, 26, 47, 112, 128):
        assert code not in CAUSES


# --- cause_from_sip_status (sofia_glue_sip_cause_to_freeswitch) -----------------------------------


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (200, "NORMAL_CLEARING"),
        (400, "NORMAL_TEMPORARY_FAILURE"),
        (401, "CALL_REJECTED"),
        (402, "CALL_REJECTED"),
        (403, "CALL_REJECTED"),
        (404, "UNALLOCATED_NUMBER"),
        (405, "SERVICE_UNAVAILABLE"),
        (406, "SERVICE_NOT_IMPLEMENTED"),
        (407, "CALL_REJECTED"),
        (408, "RECOVERY_ON_TIMER_EXPIRE"),
        (410, "NUMBER_CHANGED"),
        (413, "INTERWORKING"),
        (414, "INTERWORKING"),
        (415, "SERVICE_NOT_IMPLEMENTED"),
        (416, "INTERWORKING"),
        (420, "INTERWORKING"),
        (421, "INTERWORKING"),
        (423, "INTERWORKING"),
        (480, "NO_USER_RESPONSE"),
        (481, "NORMAL_TEMPORARY_FAILURE"),
        (482, "EXCHANGE_ROUTING_ERROR"),
        (483, "EXCHANGE_ROUTING_ERROR"),
        (484, "INVALID_NUMBER_FORMAT"),
        (485, "NO_ROUTE_DESTINATION"),
        (486, "USER_BUSY"),
        (487, "ORIGINATOR_CANCEL"),
        (488, "INCOMPATIBLE_DESTINATION"),
        (500, "NORMAL_TEMPORARY_FAILURE"),
        (501, "SERVICE_NOT_IMPLEMENTED"),
        (502, "NETWORK_OUT_OF_ORDER"),
        (503, "NORMAL_TEMPORARY_FAILURE"),
        (504, "RECOVERY_ON_TIMER_EXPIRE"),
        (505, "INTERWORKING"),
        (513, "INTERWORKING"),
        (600, "USER_BUSY"),
        (603, "CALL_REJECTED"),
        (604, "NO_ROUTE_DESTINATION"),
        (606, "INCOMPATIBLE_DESTINATION"),
    ],
)
def test_sip_status_to_cause(status, cause):
    assert cause_from_sip_status(status) == cause


@pytest.mark.parametrize(
    "status", [409, 411, 422, 429, 489, 491, 493, 499, 506, 580, 599, 605, 607, 608, 699]
)
def test_unlisted_status_gives_normal_unspecified(status):
    assert cause_from_sip_status(status) == "NORMAL_UNSPECIFIED"


def test_every_mapped_cause_is_a_known_name():
    for status in range(100, 700):
        assert cause_from_sip_status(status) in CAUSE_NUMBERS


# --- sip_status_for_cause (hangup_cause_to_sip) ---------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        ("UNALLOCATED_NUMBER", 404),
        ("NO_ROUTE_TRANSIT_NET", 404),
        ("NO_ROUTE_DESTINATION", 404),
        ("USER_BUSY", 486),
        ("NO_USER_RESPONSE", 408),
        ("NO_ANSWER", 480),
        ("SUBSCRIBER_ABSENT", 480),
        ("CALL_REJECTED", 603),
        ("NUMBER_CHANGED", 410),
        ("REDIRECTION_TO_NEW_DESTINATION", 410),
        ("DESTINATION_OUT_OF_ORDER", 502),
        ("INVALID_PROFILE", 502),
        ("INVALID_NUMBER_FORMAT", 484),
        ("INVALID_URL", 484),
        ("INVALID_GATEWAY", 484),
        ("FACILITY_REJECTED", 501),
        ("NORMAL_UNSPECIFIED", 480),
        ("REQUESTED_CHAN_UNAVAIL", 503),
        ("NORMAL_CIRCUIT_CONGESTION", 503),
        ("NETWORK_OUT_OF_ORDER", 503),
        ("NORMAL_TEMPORARY_FAILURE", 503),
        ("SWITCH_CONGESTION", 503),
        ("GATEWAY_DOWN", 503),
        ("OUTGOING_CALL_BARRED", 403),
        ("INCOMING_CALL_BARRED", 403),
        ("BEARERCAPABILITY_NOTAUTH", 403),
        ("BEARERCAPABILITY_NOTAVAIL", 503),
        ("BEARERCAPABILITY_NOTIMPL", 488),
        ("INCOMPATIBLE_DESTINATION", 488),
        ("FACILITY_NOT_IMPLEMENTED", 501),
        ("SERVICE_NOT_IMPLEMENTED", 501),
        ("RECOVERY_ON_TIMER_EXPIRE", 504),
        ("ORIGINATOR_CANCEL", 487),
        ("EXCHANGE_ROUTING_ERROR", 483),
        ("BUSY_EVERYWHERE", 600),
        ("DECLINE", 603),
        ("DOES_NOT_EXIST_ANYWHERE", 604),
        ("NOT_ACCEPTABLE", 606),
        ("UNWANTED", 607),
    ],
)
def test_cause_to_sip_status(cause, status):
    assert sip_status_for_cause(cause) == status


@pytest.mark.parametrize(
    "cause", ["NORMAL_CLEARING", "SERVICE_UNAVAILABLE", "INTERWORKING", "ALLOTTED_TIMEOUT", "NONE", "CRASH"]
)
def test_unlisted_cause_gives_480(cause):
    assert sip_status_for_cause(cause) == 480


def test_cause_lookup_is_case_insensitive_and_takes_numbers():
    assert sip_status_for_cause("user_busy") == 486
    assert sip_status_for_cause(" User_Busy ") == 486
    assert sip_status_for_cause("17") == 486
    assert sip_status_for_cause("21") == 603
    assert sip_status_for_cause("487") == 487


@pytest.mark.parametrize("name", ["", "NOT_A_CAUSE", "999", "BUSY"])
def test_unknown_cause_gives_480(name):
    assert sip_status_for_cause(name) == 480


# --- parse_reason_header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ('Q.850;cause=16;text="NORMAL_CLEARING"', ("Q.850", 16, "NORMAL_CLEARING")),
        ('SIP;cause=200;text="Call completed elsewhere"', ("SIP", 200, "Call completed elsewhere")),
        ('  Q.850 ; cause = 17 ; text = "USER_BUSY"  ', ("Q.850", 17, "USER_BUSY")),
        ("q.850;CAUSE=21;Text=CALL_REJECTED", ("Q.850", 21, "CALL_REJECTED")),
        ('Q.850;text="NO_ANSWER";cause=19', ("Q.850", 19, "NO_ANSWER")),
        ('Q.850;cause="34"', ("Q.850", 34, None)),
        ("Q.850;cause=16", ("Q.850", 16, None)),
        ("Q.850", ("Q.850", None, None)),
        ("sip;cause=487", ("SIP", 487, None)),
        ('FreeSWITCH;cause=602;text="ALLOTTED_TIMEOUT"', ("FreeSWITCH", 602, "ALLOTTED_TIMEOUT")),
        ('preemption;cause=1;text="UA Preemption"', ("preemption", 1, "UA Preemption")),
        ('SIP;cause=480;text="a; b, \\"c\\""', ("SIP", 480, 'a; b, "c"')),
        ('Q.850;cause=16;text="";foo=bar;baz', ("Q.850", 16, "")),
        ('Q.850;cause=16;x="quoted;value";y=[2001:db8::1]', ("Q.850", 16, None)),
        ("Q.850;cause=0016", ("Q.850", 16, None)),
    ],
)
def test_parse_reason_variants(value, parsed):
    assert parse_reason_header(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ";cause=16",
        '"Q.850";cause=16',
        "Q 850;cause=16",
        "Q.850;cause=",
        "Q.850;cause",
        "Q.850;cause=abc",
        "Q.850;cause=-1",
        "Q.850;cause=1.5",
        "Q.850;cause=16junk",
        "Q.850;cause=１６",
        "Q.850;cause=99999999999",
        "Q.850;cause=16;cause=17",
        'Q.850;cause=16;text="unterminated',
        'Q.850;cause=16;text=bad"quote',
        "Q.850;text",
        "Q.850;;cause=16",
        "Q.850;cause=16;",
        "Q.850;=16",
        "Q.850;cause=16, SIP;cause=200",
        "Q.850;cause=16;x=a b",
        "Reason: Q.850;cause=16",
    ],
)
def test_parse_reason_garbage(value):
    with pytest.raises(ValueError):
        parse_reason_header(value)


def test_parse_reason_rejects_non_string():
    with pytest.raises(ValueError):
        parse_reason_header(None)  # type: ignore[arg-type]


# --- cause_from_reason ----------------------------------------------------------------------------


def test_cause_from_reason_q850():
    assert cause_from_reason(['Q.850;cause=16;text="NORMAL_CLEARING"']) == "NORMAL_CLEARING"
    assert cause_from_reason(["Q.850;cause=17"]) == "USER_BUSY"


def test_cause_from_reason_name_comes_from_the_number_not_the_text():
    assert cause_from_reason(['Q.850;cause=17;text="whatever the peer says"']) == "USER_BUSY"


def test_cause_from_reason_prefers_q850_over_sip():
    values = ['SIP;cause=600;text="Busy Everywhere"', 'Q.850;cause=17;text="USER_BUSY"']
    assert cause_from_reason(values) == "USER_BUSY"
    assert cause_from_reason(["SIP;cause=486, Q.850;cause=21"]) == "CALL_REJECTED"


def test_cause_from_reason_first_q850_wins():
    assert cause_from_reason(["Q.850;cause=16", "Q.850;cause=17"]) == "NORMAL_CLEARING"


def test_cause_from_reason_sip_only_gives_none():
    assert cause_from_reason(['SIP;cause=200;text="Call completed elsewhere"']) is None
    assert cause_from_reason([]) is None


def test_cause_from_reason_freeswitch_protocol_is_a_fallback():
    assert cause_from_reason(['FreeSWITCH;cause=602;text="ALLOTTED_TIMEOUT"']) == "ALLOTTED_TIMEOUT"
    assert cause_from_reason(["FreeSWITCH;cause=602", "Q.850;cause=19"]) == "NO_ANSWER"


def test_cause_from_reason_skips_garbage_and_unknown_numbers():
    assert cause_from_reason(["garbage;;", "Q.850;cause=abc", "Q.850;cause=16"]) == "NORMAL_CLEARING"
    assert cause_from_reason(["Q.850;cause=5"]) is None  # Q.850 5 has no FreeSWITCH name
    assert cause_from_reason(["Q.850;cause=0"]) is None
    assert cause_from_reason(["Q.850;cause=487"]) is None  # not a Q.850 number
    assert cause_from_reason(['Q.850;text="unterminated', "Q.850;cause=18"]) == "NO_USER_RESPONSE"
    assert cause_from_reason(["Q.850"]) is None


def test_reason_header_is_what_freeswitch_sends_and_reads_back():
    from b2bua.sip.causes import reason_header

    assert reason_header("NORMAL_CLEARING") == 'Q.850;cause=16;text="NORMAL_CLEARING"'
    assert reason_header("MEDIA_TIMEOUT") == 'FreeSWITCH;cause=604;text="MEDIA_TIMEOUT"'
    assert cause_from_reason([reason_header("MEDIA_TIMEOUT")]) == "MEDIA_TIMEOUT"
