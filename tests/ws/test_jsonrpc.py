import json
import time

import pytest

from b2bua.ws.jsonrpc import (
    ERROR_CODES,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Notification,
    Request,
    RpcError,
    error_frame,
    get_optional_str,
    get_str,
    notification_frame,
    parse_frame,
    reject_unknown_params,
    result_frame,
)


def parse_error(text):
    with pytest.raises(RpcError) as info:
        parse_frame(text)
    return info.value


def test_request_with_params():
    msg = parse_frame('{"jsonrpc":"2.0","id":1,"method":"login","params":{"user":"1000"}}')
    assert msg == Request(1, "login", {"user": "1000"})


def test_request_string_id_and_no_params():
    assert parse_frame(b'{"jsonrpc":"2.0","id":"a-1","method":"ping"}') == Request("a-1", "ping", {})


def test_null_params_are_empty():
    assert parse_frame('{"jsonrpc":"2.0","id":2,"method":"ping","params":null}').params == {}


def test_notification_has_no_id():
    assert parse_frame('{"jsonrpc":"2.0","method":"ping"}') == Notification("ping", {})


@pytest.mark.parametrize("text", ["{", "not json", "", '{"a":NaN}', "[" * 100000, b"\xff\xfe"])
def test_parse_error(text):
    error = parse_error(text)
    assert (error.code, error.reason, error.request_id) == (PARSE_ERROR, "parse_error", None)


def test_nesting_depth_is_bounded_but_strings_do_not_count():
    deep = '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":%s}}'
    assert "deeper" in parse_error(deep % ("[" * 40 + "]" * 40)).message
    assert parse_frame(deep % ("[" * 20 + "]" * 20)).params["a"]
    assert parse_frame(deep % json.dumps("[" * 100)).params["a"] == "[" * 100


def test_depth_check_is_linear_on_unterminated_strings():
    # found by fuzzing: the string-stripping regex backtracked from every quote of an unterminated
    # string, so 64 KiB of '\\"' and 40 brackets (within the default frame size) took ~26 s
    text = '"' + '\\"' * 32000 + "[" * 40
    start = time.perf_counter()
    assert parse_error(text).reason == "parse_error"
    assert time.perf_counter() - start < 1.0
    deep = '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":%s,"b":"[\\"{"}}'
    assert "deeper" in parse_error(deep % ("[" * 40 + "]" * 40)).message
    assert parse_frame(deep % ("[" * 29 + "]" * 29)).params["b"] == '["{'


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}',
        '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"a\\uDFFFb"}}',
        '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\\udbff":1}}',
        '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":["\\ude00\\ud83d"]}}',
        '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\ud800"}}',  # a raw one in a str frame
    ],
)
def test_lone_surrogates_are_parse_errors(text):
    # found by fuzzing: "\ud800" decoded to a str that no answer or SIP message can encode to
    # UTF-8 (result_frame(...).encode() raised UnicodeEncodeError in the protocol)
    assert parse_error(text).reason == "parse_error"


def test_surrogate_pairs_are_characters():
    frame = parse_frame(b'{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"ping","params":{"x":"\\\\ud800"}}')
    assert frame.id == "\U0001f600" and frame.params == {"x": "\\ud800"}
    result_frame(frame.id, frame.params).encode("utf-8")


@pytest.mark.parametrize("text", ["[]", '[{"jsonrpc":"2.0","id":1,"method":"ping"}]'])
def test_batch_is_not_supported(text):
    error = parse_error(text)
    assert (error.code, error.reason) == (INVALID_REQUEST, "bad_request")
    assert "Batch" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "1",
        '"x"',
        "null",
        '{"id":1,"method":"ping"}',
        '{"jsonrpc":"1.0","id":1,"method":"ping"}',
        '{"jsonrpc":"2.0","id":1}',
        '{"jsonrpc":"2.0","id":1,"method":""}',
        '{"jsonrpc":"2.0","id":1,"method":5}',
        '{"jsonrpc":"2.0","id":true,"method":"ping"}',
        '{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
        '{"jsonrpc":"2.0","id":null,"method":"ping"}',
        '{"jsonrpc":"2.0","id":{},"method":"ping"}',
    ],
)
def test_invalid_request(text):
    error = parse_error(text)
    assert (error.code, error.reason) == (INVALID_REQUEST, "bad_request")


def test_invalid_request_keeps_a_usable_id():
    assert parse_error('{"jsonrpc":"1.0","id":7,"method":"ping"}').request_id == 7


def test_too_long_id_is_invalid():
    error = parse_error(json.dumps({"jsonrpc": "2.0", "id": "x" * 129, "method": "ping"}))
    assert error.reason == "bad_request"


@pytest.mark.parametrize("method", ["Login", "rpc-x", "x" * 65, "a b"])
def test_impossible_method_names_are_not_found(method):
    error = parse_error(json.dumps({"jsonrpc": "2.0", "id": 3, "method": method}))
    assert (error.code, error.reason, error.request_id) == (METHOD_NOT_FOUND, "method_not_found", 3)


@pytest.mark.parametrize("params", ["[1,2]", '"x"', "3"])
def test_positional_params_are_invalid_params(params):
    error = parse_error('{"jsonrpc":"2.0","id":4,"method":"login","params":%s}' % params)
    assert (error.code, error.reason, error.request_id) == (INVALID_PARAMS, "bad_request", 4)


def test_result_frame():
    assert json.loads(result_frame(1, {"pong": 5})) == {"jsonrpc": "2.0", "id": 1, "result": {"pong": 5}}


def test_error_frame_carries_reason_and_extras():
    frame = json.loads(error_frame("q", RpcError("auth_failed", sip_status=403)))
    assert frame == {
        "jsonrpc": "2.0",
        "id": "q",
        "error": {
            "code": ERROR_CODES["auth_failed"],
            "message": "Authentication failed",
            "data": {"reason": "auth_failed", "sip_status": 403},
        },
    }


def test_error_frame_detail_and_null_id():
    frame = json.loads(error_frame(None, RpcError("token_invalid", detail="expired")))
    assert frame["id"] is None
    assert frame["error"]["data"] == {"reason": "token_invalid", "detail": "expired"}


def test_extra_data_members():
    assert RpcError("rate_limited", retry_after=2.5).data == {"reason": "rate_limited", "retry_after": 2.5}


def test_notification_frame_has_no_id():
    frame = json.loads(notification_frame("registered", {"user": "1000", "expires": 600}))
    assert frame == {"jsonrpc": "2.0", "method": "registered", "params": {"user": "1000", "expires": 600}}


def test_frames_are_compact_utf8():
    assert notification_frame("m", {"t": "é"}) == '{"jsonrpc":"2.0","method":"m","params":{"t":"é"}}'


def test_reason_codes_are_unique_and_stable():
    app = {k: v for k, v in ERROR_CODES.items() if -32099 <= v <= -32000}
    assert len(set(app.values())) == len(app)
    assert ERROR_CODES["not_logged_in"] == -32001
    assert ERROR_CODES["session_not_found"] == -32011


def test_unknown_reason_gets_generic_server_code():
    assert RpcError("something_new").code == -32000


def test_param_helpers():
    assert get_str({"user": "1000"}, "user") == "1000"
    assert get_optional_str({}, "ha1") is None
    assert get_optional_str({"ha1": None}, "ha1") is None
    for params in ({}, {"user": ""}, {"user": 5}, {"user": "x" * 300}):
        with pytest.raises(RpcError) as info:
            get_str(params, "user")
        assert (info.value.code, info.value.reason) == (INVALID_PARAMS, "bad_request")
    with pytest.raises(RpcError) as info:
        reject_unknown_params({"user": "1", "pasword": "x"}, {"user", "password"})
    assert "pasword" in info.value.message
