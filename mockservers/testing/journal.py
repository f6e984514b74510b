"""Request verification: ask the services' journals what a client sent, and assert on it.

The conditions are the journal's own (:class:`~mockservers.sandbox.journal.JournalQuery`), evaluated by
the services; this module turns Python values into them and the answers into objects:

- ``path``: a glob over the whole path (``/api/data/v9.2/accounts(*)``) or a compiled regex;
- ``headers`` / ``query``: name → ``True`` (present), ``False`` (absent), a string (equal) or a
  compiled regex (found in the value); header names ignore case;
- ``body``: text the body contains, or a compiled regex.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from requests.structures import CaseInsensitiveDict

from ..sandbox.journal import Condition, JournalQuery
from .control import ControlClient

Matcher = bool | str | re.Pattern[str]
_INLINE_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"))


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a service journaled it."""

    service: str
    id: int
    method: str
    path: str
    status: int  # 0: the connection was dropped by a fault
    query: str = ""
    query_options: dict[str, str] = field(default_factory=dict)
    headers: CaseInsensitiveDict[str] = field(default_factory=CaseInsensitiveDict)
    body: str | None = None
    body_truncated: bool = False
    time: datetime | None = None
    duration_ms: float = 0.0
    principal: str | None = None
    fault: str | None = None
    rejected_by: str | None = None
    batch_operations: int | None = None
    template: str | None = None
    sequence: int = 0

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> RecordedRequest:
        stamp = entry.get("time")
        return cls(
            service=entry["service"], id=entry["id"], method=entry["method"], path=entry["path"],
            status=entry["status"], query=entry.get("query", ""),
            query_options=dict(entry.get("query_options") or {}),
            headers=CaseInsensitiveDict(entry.get("headers") or {}),
            body=entry.get("body"), body_truncated=bool(entry.get("body_truncated")),
            time=datetime.fromisoformat(stamp) if stamp else None,
            duration_ms=entry.get("duration_ms", 0.0), principal=entry.get("principal"),
            fault=entry.get("fault"), rejected_by=entry.get("rejected_by"),
            batch_operations=entry.get("batch_operations"), template=entry.get("template"),
            sequence=entry.get("sequence", 0),
        )

    def json(self) -> Any:
        """The body parsed as JSON (ValueError when it is not JSON, or was cut)."""
        if self.body is None:
            raise ValueError(f"{self.method} {self.path} had no body")
        if self.body_truncated:
            raise ValueError(f"{self.method} {self.path}: the journal kept only the start of the body")
        return json.loads(self.body)

    def __str__(self) -> str:
        target = self.path + (f"?{self.query}" if self.query else "")
        return f"{self.service} {self.method} {target} -> {self.status or 'dropped'}"


def query_for(*, method: str | None = None, path: str | re.Pattern[str] | None = None,
              path_prefix: str | None = None, status: int | str | None = None,
              headers: Mapping[str, Matcher] | None = None, query: Mapping[str, Matcher] | None = None,
              body: str | re.Pattern[str] | None = None) -> JournalQuery:
    """The journal query for these Python-side conditions (see the module docstring)."""
    return JournalQuery(
        method=method,
        path=path_prefix,
        path_pattern=path if isinstance(path, str) else None,
        path_regex=_regex(path) if isinstance(path, re.Pattern) else None,
        status=status,
        headers=tuple(_condition(name, value) for name, value in (headers or {}).items()),
        query=tuple(_condition(name, value) for name, value in (query or {}).items()),
        body=body if isinstance(body, str) else None,
        body_regex=_regex(body) if isinstance(body, re.Pattern) else None,
    )


def _regex(pattern: re.Pattern[str]) -> str:
    flags = "".join(letter for flag, letter in _INLINE_FLAGS if pattern.flags & flag)
    return f"(?{flags}){pattern.pattern}" if flags else pattern.pattern


def _condition(name: str, value: Matcher) -> Condition:
    if value is True:
        return Condition(name, "present")
    if value is False:
        return Condition(name, "absent")
    if isinstance(value, re.Pattern):
        return Condition(name, "regex", _regex(value))
    if isinstance(value, str):
        return Condition(name, "equals", value)
    raise TypeError(f"condition on {name!r} must be True, False, a string or a compiled regex; got {value!r}")


def describe(query: JournalQuery) -> str:
    """A one-line account of what a query asks for, for assertion messages."""
    parts = [query.method or "any method"]
    for label, value in (("path", query.path_pattern), ("path ~", query.path_regex), ("path starts", query.path),
                         ("status", query.status), ("body contains", query.body), ("body ~", query.body_regex)):
        if value is not None:
            parts.append(f"{label} {value!r}")
    parts += [f"header {c.text()}" for c in query.headers] + [f"query {c.text()}" for c in query.query]
    return ", ".join(parts)


class JournalView:
    """The request journals of a sandbox's services, asked the way a test asks."""

    def __init__(self, controls: Mapping[str, ControlClient]) -> None:
        self.controls = dict(controls)

    def _services(self, service: str | None) -> tuple[str, ...]:
        if service is None:
            return tuple(self.controls)
        if service not in self.controls:
            raise ValueError(f"unknown service {service!r}; expected one of {', '.join(self.controls)}")
        return (service,)

    def requests(self, service: str | None = None, **conditions: Any) -> list[RecordedRequest]:
        """Requests matching every condition, in the order they were answered; both services unless
        ``service`` is given."""
        query = query_for(**conditions)
        found = [RecordedRequest.from_entry(entry) for name in self._services(service)
                 for entry in self.controls[name].journal(query)]
        return sorted(found, key=lambda r: (r.sequence, r.service, r.id))

    def count(self, service: str | None = None, **conditions: Any) -> int:
        return len(self.requests(service, **conditions))

    def assert_requests(self, count: int, service: str | None = None, **conditions: Any) -> list[RecordedRequest]:
        """Exactly ``count`` requests match; on failure the message lists what was sent instead."""
        found = self.requests(service, **conditions)
        if len(found) != count:
            seen = self.requests(service)
            shown = "\n".join(f"  {r}" for r in seen[-30:]) or "  (nothing)"
            raise AssertionError(
                f"expected {count} request(s) to {service or 'the sandbox'} matching {describe(query_for(**conditions))}; "
                f"found {len(found)}:\n" + ("\n".join(f"  {r}" for r in found[:30]) or "  (none)")
                + f"\nthe journal holds {len(seen)} request(s), the last ones:\n{shown}")
        return found

    def assert_no_requests(self, service: str | None = None, **conditions: Any) -> None:
        self.assert_requests(0, service, **conditions)

    def clear(self, service: str | None = None) -> None:
        for name in self._services(service):
            self.controls[name].clear_journal()
