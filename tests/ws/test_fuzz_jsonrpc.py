"""Property-based fuzzing of the JSON-RPC layer (b2bua.ws.jsonrpc).

Only :class:`RpcError` may come out of :func:`parse_frame`; whatever it accepts, an answer to it
(result or error, echoing id and params) encodes to UTF-8 as the protocol sends it; time and memory
stay proportional to the frame.
"""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from b2bua.ws.jsonrpc import (
    MAX_DEPTH,
    Notification,
    Request,
    RpcError,
    error_frame,
    get_optional_str,
    notification_frame,
    parse_frame,
    reject_unknown_params,
    result_frame,
)
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
ids = st.integers() | st.text(max_size=130) | st.none() | st.booleans() | st.floats()
methods = st.sampled_from(["login", "call", "hangup", "ping", "a.b_c"]) | st.text(max_size=70)


@st.composite
def frames(draw: st.DrawFn) -> str:
    obj: dict[str, object] = {}
    for key, value in (
        ("jsonrpc", st.sampled_from(["2.0", "2.0", "1.0", 2.0])),
        ("id", ids),
        ("method", methods),
        ("params", st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values),
    ):
        if draw(st.integers(0, 9)):  # each member present nine times in ten
            obj[key] = draw(value)
    return json.dumps(obj, ensure_ascii=draw(st.booleans()))


def _serve(frame: str | bytes) -> None:
    """What the protocol does with a frame: parse it, answer it, encode the answer."""
    try:
        message = parse_frame(frame)
    except RpcError as error:
        error_frame(error.request_id, error).encode("utf-8")
        return
    assert isinstance(message, Request | Notification)
    if isinstance(message, Request):
        result_frame(message.id, message.params).encode("utf-8")
    notification_frame(message.method, message.params).encode("utf-8")
    try:
        reject_unknown_params(message.params, {"a"})
        get_optional_str(message.params, "a")
    except RpcError as error:
        error_frame(getattr(message, "id", None), error).encode("utf-8")


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(240)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _serve(data)


@fuzz(240)
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _serve(text)
    _serve(text.encode("utf-8"))


@fuzz(180)
@given(st.text("[]{}\",:\\u0123456789abcdefd ", max_size=200))
def test_json_punctuation(text: str) -> None:
    _serve(text)


# --- (b) valid frames, mutated ---------------------------------------------------------------------


@fuzz(90)
@given(frames())
def test_structured_frames(frame: str) -> None:
    _serve(frame)


@fuzz(90)
@given(st.data())
def test_mutated_frames(data: st.DataObject) -> None:
    _serve(data.draw(mutated(data.draw(frames()).encode("utf-8"))))


@fuzz(120)
@given(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ude00\\ud83d", "\\\\ud800", "\\u0000"]),
       st.sampled_from(["id", "method", "key", "value"]))
def test_escapes_and_surrogates(escape: str, where: str) -> None:
    fields = {"id": '"i"', "method": '"ping"', "key": "k", "value": '"v"'}
    fields[where] = '"%s"' % escape if where != "key" else escape
    frame = '{"jsonrpc":"2.0","id":%(id)s,"method":%(method)s,"params":{"%(key)s":%(value)s}}' % fields
    _serve(frame)
    _serve(frame.encode("utf-8"))


# --- (c) round trips -------------------------------------------------------------------------------


@fuzz(60)
@given(st.integers() | st.text(max_size=128), st.sampled_from(["ping", "login", "call.x"]),
       st.dictionaries(st.text(max_size=10), json_values, max_size=4))
def test_request_round_trip(request_id: int | str, method: str, params: dict) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    assert parse_frame(frame) == Request(request_id, method, params)
    assert parse_frame(frame.encode("utf-8")) == Request(request_id, method, params)
    out = notification_frame(method, params)
    assert parse_frame(out) == Notification(method, params)
    answer = json.loads(result_frame(request_id, params))
    assert answer == {"jsonrpc": "2.0", "id": request_id, "result": params}


# --- (d) time and memory bounded by the input ------------------------------------------------------


HOSTILE = [
    '"' + '\\"' * 32000 + "[" * 40,  # unterminated string of escaped quotes, then brackets
    "[" * 65000,
    '{"a":' * 13000,
    "[" * 32 + "]" * 32 + "[" * 40,
    "[" + "[]," * 21000 + "[]]",  # 21,000 empty lists: the most objects per byte
    '{"jsonrpc":"2.0","id":1,"method":"m","params":{' + ",".join('"k%d":{}' % i for i in range(7000)) + "}}",
    "1" * 5000,  # an int beyond Python's 4300-digit limit
    '"' + "\\u0041" * 10000 + '"',
    '"' + "\\ud800" * 10000 + '"',
]


def test_hostile_frames_are_fast_and_bounded() -> None:
    for text in HOSTILE:
        text = text[:65536]
        start = time.perf_counter()
        _serve(text)
        assert time.perf_counter() - start < 1.0, text[:40]
        # json.loads makes an object per few bytes: "[]," is a 56-byte list and an 8-byte slot
        assert_bounded(_serve, text, factor=32)


def test_depth_limit() -> None:
    frame = '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":%s}}'
    inner = MAX_DEPTH - 2  # the frame and its params are two levels
    assert parse_frame(frame % ("[" * inner + "]" * inner)).params["a"]
    try:
        parse_frame(frame % ("[" * (inner + 1) + "]" * (inner + 1)))
    except RpcError as error:
        assert error.reason == "parse_error"
    else:
        raise AssertionError("a frame nested deeper than MAX_DEPTH was accepted")
