"""Request journal: what a client actually sent, so tests can verify calls and benchmarks count them.

Every request an emulated service answers is recorded once, in memory: method, path, query options,
headers (credentials masked), the start of the body, the answer's status. The journal is bounded
(by entries and by body bytes; oldest entries fall out). Counters are kept separately and
cumulatively, so "how many requests did this job make" stays right after old entries have gone.

:class:`JournalQuery` is the one way entries are selected, by the control API and in process alike.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..clock import Clock, iso

DEFAULT_MAXLEN = 10_000
DEFAULT_BODY_LIMIT = 64 * 1024  # bytes of each request body kept for inspection
DEFAULT_BODY_BUDGET = 32 * 1024 * 1024  # body bytes kept in all; older entries go first
MASKED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def status_class(status: int) -> str:
    """``"2xx"``-style bucket; status 0 means the connection was dropped without an answer."""
    if status <= 0:
        return "dropped"
    return f"{status // 100}xx"


@dataclass
class JournalEntry:
    """One request as the service saw it.

    ``id`` is assigned by :meth:`Journal.record` (ascending, never reused until :meth:`Journal.clear`).
    ``status`` 0 means the connection was dropped by fault injection. ``fault`` names the injected
    fault kind (``latency``/``error``/``throttle``/``drop``) and ``rejected_by`` the
    service-protection measure that answered 429, so a test can tell a real answer from a simulated one.
    """

    service: str
    method: str
    path: str
    query: str = ""
    status: int = 0
    duration_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int | None = None
    principal: str | None = None
    client_request_id: str | None = None
    batch_operations: int | None = None
    template: str | None = None
    fault: str | None = None
    rejected_by: str | None = None
    time: str = ""  # on the sandbox's clock, set by Journal.record
    id: int = 0
    query_options: dict[str, str] = field(default_factory=dict)  # decoded, first value of each name
    headers: dict[str, str] = field(default_factory=dict)  # as sent, credentials masked
    body: str | None = None  # the first body_limit bytes as text (undecodable bytes replaced)
    body_truncated: bool = False
    sequence: int = 0  # real monotonic nanoseconds at recording: orders entries across services

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


def mask_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request headers for the journal: credentials keep their scheme, never their secret."""
    shown: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in MASKED_HEADERS:
            scheme = value.strip().split(" ", 1)[0] if " " in value.strip() else ""
            value = f"{scheme} ***".strip()
        shown[name] = value
    return shown


def body_text(raw: bytes, limit: int) -> tuple[str | None, bool]:
    """The start of a request body as text, and whether it was cut."""
    if not raw:
        return None, False
    return raw[:limit].decode("utf-8", errors="replace"), len(raw) > limit


MatchKind = Literal["present", "absent", "equals", "regex"]


class JournalQueryError(ValueError):
    """A journal condition that cannot be used (bad regex, empty name); the message says which."""


@dataclass(frozen=True)
class Condition:
    """One condition on a named value (a header or a query option).

    Written ``NAME`` (present), ``!NAME`` (absent), ``NAME=VALUE`` (equal) or ``NAME~REGEX`` (the
    regular expression matches somewhere in the value); the first ``=`` or ``~`` ends the name.
    """

    name: str
    kind: MatchKind
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Condition:
        positions = [i for i in (text.find("="), text.find("~")) if i >= 0]
        if not positions:
            name, kind, value = text, "present", None
            if name.startswith("!"):
                name, kind = name[1:], "absent"
        else:
            cut = min(positions)
            name, value = text[:cut], text[cut + 1:]
            kind = "equals" if text[cut] == "=" else "regex"
        name = name.strip()
        if not name:
            raise JournalQueryError(f"A condition needs a name: NAME, !NAME, NAME=VALUE or NAME~REGEX; got {text!r}.")
        condition = cls(name, kind, value)  # type: ignore[arg-type]
        if kind == "regex":
            _compile(value or "", text)
        return condition

    def text(self) -> str:
        if self.kind == "present":
            return self.name
        if self.kind == "absent":
            return f"!{self.name}"
        return f"{self.name}{'=' if self.kind == 'equals' else '~'}{self.value}"

    def matches(self, value: str | None) -> bool:
        if self.kind == "absent":
            return value is None
        if value is None:
            return False
        if self.kind == "equals":
            return value == self.value
        if self.kind == "regex":
            return _compile(self.value or "", self.text()).search(value) is not None
        return True


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise JournalQueryError(f"Not a regular expression in {where!r}: {error}.") from None


@dataclass(frozen=True)
class JournalQuery:
    """Which entries to return: every given condition must hold.

    ``path`` is a prefix, ``path_pattern`` a glob over the whole path (``*`` matches ``/`` too),
    ``path_regex`` a regular expression found anywhere in it; ``status`` an exact code or a class
    (``"4xx"``, ``"dropped"``); ``headers`` and ``query`` hold :class:`Condition` objects; ``body``
    is text the body contains, ``body_regex`` a regular expression found in it.
    """

    method: str | None = None
    path: str | None = None
    path_pattern: str | None = None
    path_regex: str | None = None
    status: int | str | None = None
    headers: tuple[Condition, ...] = ()
    query: tuple[Condition, ...] = ()
    body: str | None = None
    body_regex: str | None = None
    since_id: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("path_regex", "body_regex"):
            value = getattr(self, name)
            if value is not None:
                _compile(value, name)

    @classmethod
    def from_args(cls, args: Mapping[str, str | list[str]]) -> JournalQuery:
        """From query-string arguments, each a value or a list (``header`` and ``query`` may repeat);
        raises JournalQueryError with a readable reason."""
        def many(name: str) -> list[str]:
            values = args.get(name) or []
            return [values] if isinstance(values, str) else list(values)

        def one(name: str) -> str | None:
            values = many(name)
            return values[-1] if values and values[-1] != "" else None

        unknown = sorted(set(args) - QUERY_ARGS)
        if unknown:
            raise JournalQueryError(f"Unknown journal filter(s) {', '.join(map(repr, unknown))}; "
                                    f"expected some of {', '.join(sorted(QUERY_ARGS))}.")
        status_text = one("status")
        try:
            status = parse_status_filter(status_text) if status_text else None
        except ValueError as error:
            raise JournalQueryError(str(error)) from None
        return cls(
            method=one("method"),
            path=one("path"),
            path_pattern=one("path_pattern"),
            path_regex=one("path_regex"),
            status=status,
            headers=tuple(Condition.parse(text) for text in many("header")),
            query=tuple(Condition.parse(text) for text in many("query")),
            body=one("body"),
            body_regex=one("body_regex"),
            since_id=_non_negative(one("since"), "since"),
            limit=_non_negative(one("limit"), "limit"),
        )

    def to_args(self) -> dict[str, str | list[str]]:
        """The query-string arguments :meth:`from_args` reads back into this query."""
        args: dict[str, str | list[str]] = {}
        for name in ("method", "path", "path_pattern", "path_regex", "body", "body_regex"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        if self.status is not None:
            args["status"] = str(self.status)
        if self.headers:
            args["header"] = [c.text() for c in self.headers]
        if self.query:
            args["query"] = [c.text() for c in self.query]
        if self.since_id is not None:
            args["since"] = str(self.since_id)
        if self.limit is not None:
            args["limit"] = str(self.limit)
        return args

    def matches(self, entry: JournalEntry) -> bool:
        if self.method and entry.method != self.method.upper():
            return False
        if self.path and not entry.path.startswith(self.path):
            return False
        if self.path_pattern and not fnmatch.fnmatchcase(entry.path, self.path_pattern):
            return False
        if self.path_regex and _compile(self.path_regex, "path_regex").search(entry.path) is None:
            return False
        if self.status is not None and not _status_matches(entry.status, self.status):
            return False
        if not all(c.matches(entry.header(c.name)) for c in self.headers):
            return False
        if not all(c.matches(entry.query_options.get(c.name)) for c in self.query):
            return False
        if self.body is not None and (entry.body is None or self.body not in entry.body):
            return False
        return not (self.body_regex is not None
                    and (entry.body is None or _compile(self.body_regex, "body_regex").search(entry.body) is None))


QUERY_ARGS = frozenset({"method", "path", "path_pattern", "path_regex", "status", "header", "query", "body",
                        "body_regex", "since", "limit"})


def _non_negative(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise JournalQueryError(f"Query parameter '{name}' must be an integer; got {value!r}.") from None
    if number < 0:
        raise JournalQueryError(f"Query parameter '{name}' must not be negative; got {number}.")
    return number


class Journal:
    """Thread-safe, bounded in-memory request log with cumulative counters."""

    def __init__(self, maxlen: int = DEFAULT_MAXLEN, clock: Clock | None = None, *,
                 body_limit: int = DEFAULT_BODY_LIMIT, body_budget: int = DEFAULT_BODY_BUDGET) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.clock = clock or Clock()
        self.body_limit = body_limit
        self._maxlen = maxlen
        self._body_budget = body_budget
        self._body_bytes = 0
        self._entries: deque[JournalEntry] = deque()
        self._lock = threading.Lock()
        self._next_id = 1
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._total = 0
        self._by_method: Counter[str] = Counter()
        self._by_status_class: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._by_template: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._rejections: Counter[str] = Counter()
        self._batch_operations = 0

    @property
    def maxlen(self) -> int:
        return self._maxlen

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Assign the next id, store the entry and count it. Returns the same entry."""
        if not entry.time:
            entry.time = iso(self.clock.now())
        entry.sequence = time.monotonic_ns()
        with self._lock:
            entry.id = self._next_id
            self._next_id += 1
            self._entries.append(entry)
            self._body_bytes += len(entry.body or "")
            while len(self._entries) > self._maxlen or (self._body_bytes > self._body_budget and len(self._entries) > 1):
                self._body_bytes -= len(self._entries.popleft().body or "")
            self._total += 1
            self._by_method[entry.method] += 1
            self._by_status_class[status_class(entry.status)] += 1
            self._by_status[str(entry.status)] += 1
            if entry.template:
                self._by_template[f"{entry.method} {entry.template}"] += 1
            if entry.fault:
                self._faults[entry.fault] += 1
            if entry.rejected_by:
                self._rejections[entry.rejected_by] += 1
            if entry.batch_operations:
                self._batch_operations += entry.batch_operations
        return entry

    def entries(
        self,
        method: str | None = None,
        path_prefix: str | None = None,
        status: int | str | None = None,
        since_id: int | None = None,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        """Matching entries in ascending id order (see :meth:`select` for every condition)."""
        return self.select(JournalQuery(method=method, path=path_prefix, status=status, since_id=since_id,
                                        limit=limit))

    def select(self, query: JournalQuery) -> list[JournalEntry]:
        """Entries matching ``query``, in ascending id order.

        With ``since_id`` the result pages forward (the first ``limit`` entries after that id);
        without it ``limit`` keeps the newest entries, like a tail.
        """
        with self._lock:
            snapshot = list(self._entries)
        selected: Iterable[JournalEntry] = snapshot
        if query.since_id is not None:
            selected = (e for e in selected if e.id > query.since_id)
        result = [e for e in selected if query.matches(e)]
        if query.limit is not None:
            limit = query.limit
            result = result[:limit] if query.since_id is not None else result[max(len(result) - limit, 0):]
        return result

    def last(self) -> JournalEntry | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        """Forget entries and counters; ids restart at 1 so a test sees a fresh journal."""
        with self._lock:
            self._entries.clear()
            self._body_bytes = 0
            self._next_id = 1
            self._reset_counters()

    def counters(self) -> dict[str, Any]:
        """Cumulative figures since the last clear (not limited by ``maxlen``)."""
        with self._lock:
            return {
                "total": self._total,
                "by_method": dict(self._by_method),
                "by_status_class": dict(self._by_status_class),
                "by_status": dict(self._by_status),
                "by_template": dict(self._by_template),
                "faults": dict(self._faults),
                "rejected": dict(self._rejections),
                "batch_operations": self._batch_operations,
                "retained": len(self._entries),
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _status_matches(actual: int, wanted: int | str) -> bool:
    if isinstance(wanted, int):
        return actual == wanted
    text = wanted.strip().lower()
    if text == "dropped":
        return actual == 0
    if len(text) == 3 and text.endswith("xx") and text[0].isdigit():
        return actual // 100 == int(text[0]) and actual > 0
    return text.isdigit() and actual == int(text)


def parse_status_filter(value: str) -> int | str:
    """Validate a status filter given as text; raises ValueError with a readable reason."""
    text = value.strip().lower()
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text)
    if text == "dropped" or (len(text) == 3 and text[0] in "12345" and text.endswith("xx")):
        return text
    raise ValueError(f"status must be an HTTP status code, a class such as '4xx', or 'dropped'; got {value!r}")
