"""One JSON body reader for both services, plain requests and both kinds of ``$batch``.

The standard library's parser follows a body as deep as it nests (a thousand ``[`` end in a
RecursionError) and turns ``"\\ud800"`` escapes, and on bytes input even the raw bytes
``ED A0 80``, into lone surrogates that no database driver can store. The .NET readers behind the
real services limit nesting (``System.Text.Json`` and Json.NET both stop at 64 levels by default)
and accept only well-formed UTF-8, so a body that breaks either rule is the client's error here too.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ODataError

MAX_DEPTH = 64


class InvalidJson(ODataError):
    """The body is not a JSON document the services accept; each service words its own 400."""

    def __init__(self, message: str, *, reason: str = "syntax") -> None:
        super().__init__(message)
        self.reason = reason  # "empty" | "encoding" | "syntax" | "depth" | "surrogate"


def parse_json(raw: bytes | str, *, max_depth: int = MAX_DEPTH, allow_surrogates: bool = False) -> Any:
    """The JSON value of ``raw``; raises ``InvalidJson`` for anything a strict reader refuses.

    Bytes are decoded strictly (UTF-8, with or without a byte-order mark, or the UTF-16/32 forms
    RFC 8259 permits to be detected). ``allow_surrogates`` keeps escaped lone surrogates, for an
    envelope (a BC ``$batch``) whose inner bodies are checked one by one.
    """
    if isinstance(raw, bytes):
        if not raw.strip():
            raise InvalidJson("The request body is empty.", reason="empty")
        encoding = json.detect_encoding(raw)
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise InvalidJson(f"The request body is not valid {encoding.upper().removesuffix('-SIG')}: "
                              f"invalid byte at position {error.start}.", reason="encoding") from None
        if not text.strip():  # a byte-order mark and nothing else
            raise InvalidJson("The request body is not valid JSON: it holds no value.")
    else:
        text = raw
        if not text.strip():
            raise InvalidJson("The request body is empty.", reason="empty")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidJson(_too_deep(max_depth), reason="depth") from None
    except ValueError as error:
        raise InvalidJson(f"The request body is not valid JSON: {error}.") from None
    _check(value, max_depth, allow_surrogates)
    return value


def check_json(value: Any, *, max_depth: int = MAX_DEPTH, allow_surrogates: bool = False) -> Any:
    """``value``, decoded already (a BC ``$batch`` operation's body, read with its envelope), held to
    what :func:`parse_json` holds a body to once it is decoded; raises ``InvalidJson``."""
    _check(value, max_depth, allow_surrogates)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep(max_depth: int) -> str:
    return f"The request body nests JSON arrays and objects deeper than the maximum of {max_depth} levels."


def _check(value: Any, max_depth: int, allow_surrogates: bool) -> None:
    """Walk the parsed value once, without recursion: nesting depth and lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InvalidJson(_too_deep(max_depth), reason="depth")
            for key, child in item.items():
                if not allow_surrogates:
                    _no_surrogate(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise InvalidJson(_too_deep(max_depth), reason="depth")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and not allow_surrogates:
            _no_surrogate(item)


def _no_surrogate(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidJson(f"The request body holds an unpaired UTF-16 surrogate (\\u{ord(text[error.start]):04x}); "
                          "JSON text must be valid Unicode.", reason="surrogate") from None
