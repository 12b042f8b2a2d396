"""JSON-RPC 2.0 framing for the WebSocket signalling channel (pure: no I/O, no logging).

One text frame carries one JSON-RPC object. :func:`parse_frame` turns a frame into a
:class:`Request` (has an ``id``, gets exactly one answer) or a :class:`Notification` (no ``id``),
or raises :class:`RpcError` with the right JSON-RPC code; :func:`result_frame`,
:func:`error_frame` and :func:`notification_frame` build the outgoing frames.

Every error carries ``data.reason``, a stable machine-readable string (the table
:data:`ERROR_CODES` maps each reason to its JSON-RPC code), and optionally ``data.sip_status``,
``data.detail`` and other fields. Clients should branch on ``data.reason``, never on the
human-readable ``message``.

Batch requests (a JSON array) are not supported: they are answered with ``-32600`` and reason
``bad_request``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "ERROR_CODES",
    "RpcError",
    "Request",
    "Notification",
    "parse_frame",
    "result_frame",
    "error_frame",
    "notification_frame",
    "get_str",
    "get_optional_str",
    "reject_unknown_params",
]

JsonId = str | int

# --- JSON-RPC 2.0 reserved codes -------------------------------------------------------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

#: Stable reason -> JSON-RPC error code. Application errors use the -32000..-32099 server range.
#: New reasons are appended; existing entries never change (they are a public contract, see
#: docs/protocol.md).
ERROR_CODES: dict[str, int] = {
    "parse_error": PARSE_ERROR,
    "bad_request": INVALID_REQUEST,  # also used with INVALID_PARAMS, see RpcError.invalid_params
    "method_not_found": METHOD_NOT_FOUND,
    "internal_error": INTERNAL_ERROR,
    "not_logged_in": -32001,
    "auth_failed": -32002,
    "timeout": -32003,
    "pbx_unreachable": -32004,
    "pbx_error": -32005,
    "rate_limited": -32006,
    "too_many_sessions": -32007,
    "already_logged_in": -32008,
    "token_invalid": -32009,
    "method_not_allowed": -32010,
    "session_not_found": -32011,
    "shutting_down": -32012,
    "cancelled": -32013,
    "call_not_found": -32014,
    "bad_state": -32015,
    "too_many_calls": -32016,
    "media_unavailable": -32017,
}

_DEFAULT_MESSAGES: dict[str, str] = {
    "parse_error": "Parse error",
    "bad_request": "Invalid request",
    "method_not_found": "Method not found",
    "internal_error": "Internal error",
    "not_logged_in": "Not logged in",
    "auth_failed": "Authentication failed",
    "timeout": "The PBX did not answer in time",
    "pbx_unreachable": "The PBX cannot be reached",
    "pbx_error": "The PBX refused the request",
    "rate_limited": "Too many attempts, retry later",
    "too_many_sessions": "The gateway has no room for another session",
    "already_logged_in": "This connection is already logged in",
    "token_invalid": "Invalid login token",
    "method_not_allowed": "This login mode is disabled",
    "session_not_found": "No such session (expired or logged out)",
    "shutting_down": "The gateway is shutting down",
    "cancelled": "Cancelled",
    "call_not_found": "No such call",
    "bad_state": "Not possible in the call's current state",
    "too_many_calls": "Too many calls in this session",
    "media_unavailable": "No media ports available",
}

_MAX_ID_LENGTH = 128
#: Deepest nesting of arrays/objects accepted; deeper frames are parse errors. Checked before
#: json.loads so that hostile input never reaches the decoder's recursion limit.
MAX_DEPTH = 32
# A string (possessive, and its closing quote optional, so that an unterminated one is consumed
# once instead of being retried from each of its quotes: linear time) or a bracket.
_TOKEN_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
# A lone surrogate may hide behind these (escaped in JSON, or raw in a str frame).
_SURROGATE_RE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_MAX_METHOD_LENGTH = 64
_METHOD_RE = re.compile(r"[a-z][a-z0-9_.]*\Z")


class RpcError(Exception):
    """A JSON-RPC error: ``reason`` is the stable string; ``code`` defaults from :data:`ERROR_CODES`.

    ``extra`` holds further ``data`` members (``sip_status``, ``detail``, ``retry_after`` ...);
    ``None`` values are left out of the frame. ``request_id`` is filled in by
    :func:`parse_frame` when the failing frame had a usable id.
    """

    def __init__(
        self,
        reason: str,
        message: str | None = None,
        *,
        code: int | None = None,
        sip_status: int | None = None,
        detail: str | None = None,
        request_id: JsonId | None = None,
        **extra: Any,
    ) -> None:
        self.reason = reason
        self.code = code if code is not None else ERROR_CODES.get(reason, -32000)
        self.message = message or _DEFAULT_MESSAGES.get(reason, reason)
        self.request_id = request_id
        self.extra: dict[str, Any] = {"sip_status": sip_status, "detail": detail, **extra}
        super().__init__(f"{self.reason}: {self.message}")

    @classmethod
    def invalid_params(cls, message: str) -> RpcError:
        """``-32602`` with reason ``bad_request``: the method exists but its params are wrong."""
        return cls("bad_request", message, code=INVALID_PARAMS)

    @property
    def data(self) -> dict[str, Any]:
        """The ``error.data`` object: ``reason`` first, then the extra members that are set."""
        data: dict[str, Any] = {"reason": self.reason}
        data.update((k, v) for k, v in self.extra.items() if v is not None)
        return data

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` member of a response."""
        return {"code": self.code, "message": self.message, "data": self.data}


@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects exactly one answer carrying the same ``id``."""

    id: JsonId
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notification:
    """A call without ``id``: the server never answers it."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(text: str) -> bool:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # the common case: no scan at all
    depth = 0
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _encodable(obj: Any) -> bool:
    """False when a string in ``obj`` holds a lone surrogate ("\\ud800"): valid JSON syntax, but no
    UTF-8 answer, log line or SIP message could carry it."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usable_id(value: Any) -> JsonId | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= _MAX_ID_LENGTH:
        return value
    return None


def parse_frame(text: str | bytes) -> Request | Notification:
    """Parse one text frame. Raises :class:`RpcError` (``parse_error``/``bad_request``).

    Accepted ids are strings (at most 128 characters) and integers; ``params`` must be an object
    or absent (all our methods take named parameters; an array is ``-32602``).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RpcError("parse_error", "Frame is not valid UTF-8")
    if _too_deep(text):
        raise RpcError("parse_error", f"Parse error: nested deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise RpcError("parse_error", f"Parse error: {_short(str(exc))}")
    if _SURROGATE_RE.search(text) and not _encodable(obj):
        raise RpcError("parse_error", "Parse error: a string holds a lone UTF-16 surrogate")

    if isinstance(obj, list):
        raise RpcError("bad_request", "Batch requests are not supported")
    if not isinstance(obj, dict):
        raise RpcError("bad_request", "A request must be a JSON object")

    has_id = "id" in obj
    request_id = _usable_id(obj.get("id")) if has_id else None
    if has_id and request_id is None:
        raise RpcError("bad_request", "id must be a string (at most 128 characters) or an integer")
    if obj.get("jsonrpc") != "2.0":
        raise RpcError("bad_request", 'jsonrpc must be "2.0"', request_id=request_id)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError("bad_request", "method must be a non-empty string", request_id=request_id)
    if len(method) > _MAX_METHOD_LENGTH or not _METHOD_RE.match(method):
        raise RpcError("method_not_found", "Method not found", request_id=request_id)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        error = RpcError.invalid_params("params must be an object")
        error.request_id = request_id
        raise error
    if request_id is None:
        return Notification(method, params)
    return Request(request_id, method, params)


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def result_frame(request_id: JsonId, result: Any) -> str:
    """The success answer to a request."""
    return _dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_frame(request_id: JsonId | None, error: RpcError) -> str:
    """The error answer to a request (``id`` null when the request's id could not be read)."""
    return _dumps({"jsonrpc": "2.0", "id": request_id, "error": error.to_dict()})


def notification_frame(method: str, params: Mapping[str, Any]) -> str:
    """A server event: a notification (no ``id``)."""
    return _dumps({"jsonrpc": "2.0", "method": method, "params": dict(params)})


# --- parameter helpers for method handlers ---------------------------------------------------


def get_str(
    params: Mapping[str, Any], name: str, *, max_length: int = 256, pattern: re.Pattern[str] | None = None
) -> str:
    """A required, non-empty string parameter; raises ``-32602 bad_request`` otherwise."""
    value = params.get(name)
    if value is None:
        raise RpcError.invalid_params(f"missing parameter: {name}")
    if not isinstance(value, str) or not value:
        raise RpcError.invalid_params(f"{name} must be a non-empty string")
    if len(value) > max_length:
        raise RpcError.invalid_params(f"{name} is too long (at most {max_length} characters)")
    if pattern is not None and not pattern.fullmatch(value):
        raise RpcError.invalid_params(f"{name} has invalid characters")
    return value


def get_optional_str(
    params: Mapping[str, Any], name: str, *, max_length: int = 256, pattern: re.Pattern[str] | None = None
) -> str | None:
    """Like :func:`get_str` but ``None`` when absent or null."""
    if params.get(name) is None:
        return None
    return get_str(params, name, max_length=max_length, pattern=pattern)


def reject_unknown_params(params: Mapping[str, Any], allowed: frozenset[str] | set[str]) -> None:
    """Raise ``-32602 bad_request`` naming the first parameter not in ``allowed``."""
    for key in params:
        if key not in allowed:
            raise RpcError.invalid_params(f"unknown parameter: {_short(str(key))}")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
