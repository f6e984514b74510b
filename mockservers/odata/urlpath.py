"""Resource-path segments: ``accounts(<guid>)/primarycontactid``, ``accounts(accountnumber='A1')``.

Only the URL *path* grammar lives here (segments and key predicates); query options are elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import QuerySyntaxError


@dataclass(frozen=True)
class Segment:
    name: str
    key: str | None = None  # raw text inside the parentheses, None when absent


@dataclass(frozen=True)
class KeyPredicate:
    """A parsed key: a single bare value, or named values (alternate / composite keys)."""

    single: str | None
    named: dict[str, str | int | float | None]
    single_quoted: bool = False


# The characters that change how a path splits; everything between them is copied as it stands.
_SPECIAL = re.compile(r"['()/]")


def split_path(path: str) -> list[Segment]:
    """Split on ``/`` outside quotes and parentheses; parse ``name(key)`` segments.

    Only the quotes, parentheses and slashes are visited (a batch splits thousands of URLs and binds)."""
    segments: list[Segment] = []
    depth = 0
    quoted = False
    start = 0
    for match in _SPECIAL.finditer(path):
        ch = match.group()
        if ch == "'":
            quoted = not quoted  # doubled quotes toggle twice: still correct
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:  # a slash between segments
            if match.start() > start:
                segments.append(_segment(path[start:match.start()]))
            start = match.end()
    if depth != 0 or quoted:
        raise QuerySyntaxError(f"Bad Request - Error in query syntax: unbalanced key in '{path}'.")
    if len(path) > start:
        segments.append(_segment(path[start:]))
    return segments


def _segment(text: str) -> Segment:
    if text.endswith(")") and "(" in text:
        name, _, rest = text.partition("(")
        return Segment(name, rest[:-1])
    if "(" in text or ")" in text:
        raise QuerySyntaxError(f"Bad Request - Error in query syntax: '{text}'.")
    return Segment(text)


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _literal(text: str) -> tuple[str | int | float | None, bool]:
    text = text.strip()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        inner = text[1:-1]
        if re.search(r"(?<!')'(?!')", inner.replace("''", "")):
            raise QuerySyntaxError(f"Bad Request - Error in query syntax: unterminated literal {text}.")
        return inner.replace("''", "'"), True
    if text == "null":
        return None, False
    if _NUMBER.match(text):
        return (float(text) if "." in text else int(text)), False
    return text, False


def parse_key(raw: str) -> KeyPredicate:
    """``<guid>`` | ``'text'`` | ``name=value,name2=value2`` (values may be quoted strings)."""
    parts = _split_commas(raw)
    if len(parts) == 1 and "=" not in _unquoted(parts[0]):
        value, quoted = _literal(parts[0])
        return KeyPredicate(single=None if value is None else str(value), named={}, single_quoted=quoted)
    named: dict[str, str | int | float | None] = {}
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq or not name.strip():
            raise QuerySyntaxError(f"Bad Request - Error in query syntax: key '{raw}'.")
        named[name.strip()] = _literal(value)[0]
    return KeyPredicate(single=None, named=named)


def _unquoted(text: str) -> str:
    return re.sub(r"'(?:[^']|'')*'", "", text)


def _split_commas(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if quoted or any(not p.strip() for p in parts):
        raise QuerySyntaxError(f"Bad Request - Error in query syntax: key '{text}'.")
    return parts
