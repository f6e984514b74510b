"""Request journal: what a client actually sent, so tests can verify calls and benchmarks count them.

Every request an emulated service answers is recorded once, in memory, in a bounded deque (oldest
entries fall out). Counters are kept separately and cumulatively, so "how many requests did this job
make" stays right even after the deque has wrapped.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_MAXLEN = 10_000


def utc_now_iso() -> str:
    """UTC timestamp with millisecond precision and a ``Z`` suffix, the form both services use."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    time: str = field(default_factory=utc_now_iso)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Journal:
    """Thread-safe, bounded in-memory request log with cumulative counters."""

    def __init__(self, maxlen: int = DEFAULT_MAXLEN) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._entries: deque[JournalEntry] = deque(maxlen=maxlen)
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
        return self._entries.maxlen or DEFAULT_MAXLEN

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Assign the next id, store the entry and count it. Returns the same entry."""
        with self._lock:
            entry.id = self._next_id
            self._next_id += 1
            self._entries.append(entry)
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
        """Matching entries in ascending id order.

        ``status`` is an exact code (``429`` or ``"429"``) or a class (``"4xx"``, ``"dropped"``).
        With ``since_id`` the result pages forward (the first ``limit`` entries after that id);
        without it ``limit`` keeps the newest entries, like a tail.
        """
        wanted_method = method.upper() if method else None
        with self._lock:
            snapshot = list(self._entries)
        selected: Iterable[JournalEntry] = snapshot
        if since_id is not None:
            selected = (e for e in selected if e.id > since_id)
        if wanted_method:
            selected = (e for e in selected if e.method == wanted_method)
        if path_prefix:
            selected = (e for e in selected if e.path.startswith(path_prefix))
        if status is not None:
            selected = (e for e in selected if _status_matches(e.status, status))
        result = list(selected)
        if limit is not None:
            result = result[:limit] if since_id is not None else result[max(len(result) - limit, 0):]
        return result

    def last(self) -> JournalEntry | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        """Forget entries and counters; ids restart at 1 so a test sees a fresh journal."""
        with self._lock:
            self._entries.clear()
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
