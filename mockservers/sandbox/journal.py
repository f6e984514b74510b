"""Request journal: what a client actually sent, so tests can verify calls and benchmarks count them.

Every request an emulated service answers is recorded once: method, path, query options, headers
(credentials masked), the start of the body, the answer's status. The journal is bounded (by entries
and by body bytes; oldest entries fall out). Counters are kept separately and cumulatively, so "how
many requests did this job make" stays right after old entries have gone.

Entries are kept in memory, or, for a service served by several forked worker processes, in a SQLite
file all of them share (``Journal(path=...)``): one journal, whichever worker answered or reads.

:class:`JournalQuery` is the one way entries are selected, by the control API and in process alike.
"""

from __future__ import annotations

import fnmatch
import json
import multiprocessing
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

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


class _Tally:
    """Cumulative counts in the shape :meth:`Journal.counters` returns.

    Both storages count through it, so the two cannot drift apart; a key keeps the place it was first
    counted in. :meth:`items` and :meth:`add_item` flatten it into rows for a table.
    """

    COUNTERS = ("by_method", "by_status_class", "by_status", "by_template", "faults", "rejected")

    def __init__(self) -> None:
        self.total = 0
        self.by_method: Counter[str] = Counter()
        self.by_status_class: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_template: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.batch_operations = 0

    def add(self, method: str, status: int, template: str | None, fault: str | None, rejected_by: str | None,
            batch_operations: int | None, count: int = 1) -> None:
        """Count ``count`` requests that share these facts (``batch_operations`` is their sum)."""
        self.total += count
        self.by_method[method] += count
        self.by_status_class[status_class(status)] += count
        self.by_status[str(status)] += count
        if template:
            self.by_template[f"{method} {template}"] += count
        if fault:
            self.faults[fault] += count
        if rejected_by:
            self.rejected[rejected_by] += count
        if batch_operations:
            self.batch_operations += batch_operations

    def add_groups(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Count groups of requests: rows of the facts :meth:`add` takes, the count last."""
        for method, status, template, fault, rejected_by, batch_operations, count in rows:
            self.add(method, status, template, fault, rejected_by, batch_operations, count)

    def items(self) -> Iterator[tuple[str, str, int]]:
        """Every figure as ``(kind, key, count)``, kind being a :meth:`to_dict` name."""
        yield "total", "", self.total
        for kind in self.COUNTERS:
            for key, count in getattr(self, kind).items():
                yield kind, key, count
        yield "batch_operations", "", self.batch_operations

    def add_item(self, kind: str, key: str, count: int) -> None:
        """Add back one row of :meth:`items`."""
        if kind == "total":
            self.total += count
        elif kind == "batch_operations":
            self.batch_operations += count
        else:
            getattr(self, kind)[key] += count

    def to_dict(self, retained: int) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_method": dict(self.by_method),
            "by_status_class": dict(self.by_status_class),
            "by_status": dict(self.by_status),
            "by_template": dict(self.by_template),
            "faults": dict(self.faults),
            "rejected": dict(self.rejected),
            "batch_operations": self.batch_operations,
            "retained": retained,
        }


class _Entries(Protocol):
    """Where a journal keeps its entries: ids, bounds and counts are the storage's business, because
    only the storage can make them hold for everyone who reads it."""

    def add(self, entry: JournalEntry) -> None:
        """Store ``entry``, setting its id."""

    def after(self, since_id: int | None) -> list[JournalEntry]:
        """The retained entries with an id above ``since_id`` (all when None), in ascending id order."""

    def last(self) -> JournalEntry | None: ...

    def clear(self) -> None: ...

    def counters(self) -> dict[str, Any]: ...

    def __len__(self) -> int: ...


class _MemoryEntries:
    """Entries in this process's memory: the fast default, for a service that one process serves."""

    def __init__(self, maxlen: int, body_budget: int) -> None:
        self._maxlen = maxlen
        self._body_budget = body_budget
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._entries: deque[JournalEntry] = deque()
        self._body_bytes = 0
        self._next_id = 1
        self._tally = _Tally()

    def add(self, entry: JournalEntry) -> None:
        with self._lock:
            entry.id = self._next_id
            self._next_id += 1
            self._entries.append(entry)
            self._body_bytes += len(entry.body or "")
            while len(self._entries) > self._maxlen or (self._body_bytes > self._body_budget and len(self._entries) > 1):
                self._body_bytes -= len(self._entries.popleft().body or "")
            self._tally.add(entry.method, entry.status, entry.template, entry.fault, entry.rejected_by,
                            entry.batch_operations)

    def after(self, since_id: int | None) -> list[JournalEntry]:
        with self._lock:
            snapshot = list(self._entries)
        return snapshot if since_id is None else [e for e in snapshot if e.id > since_id]

    def last(self) -> JournalEntry | None:
        with self._lock:
            return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        with self._lock:
            self._reset()

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return self._tally.to_dict(len(self._entries))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


TRIM_EVERY = 64  # a writer trims the SQLite journal when its id is a multiple of this; a reader always
BUSY_TIMEOUT_SECONDS = 10.0

SCHEMA_VERSION = 1  # PRAGMA user_version of a journal file; a file of another version is started afresh
_SCHEMA = (
    # id is the rowid: the INSERT assigns it under the database's write lock, so ids ascend across
    # processes; with no AUTOINCREMENT they restart at 1 once the table is empty. Since only the
    # oldest rows are ever deleted, the ids present have no gaps. body_upto is the body length of this
    # entry and of every one before it since the last clear, so that the body bytes from any entry on
    # are one subtraction. data comes last: scans of the columns before it skip its overflow pages.
    """CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY, method TEXT NOT NULL, status INTEGER NOT NULL, template TEXT, fault TEXT,
        rejected_by TEXT, batch_operations INTEGER, body_length INTEGER NOT NULL, body_upto INTEGER NOT NULL,
        data TEXT NOT NULL)""",
    # the counts of trimmed entries, as _Tally.items() rows; rowid order is the order keys were first seen
    "CREATE TABLE IF NOT EXISTS trimmed (kind TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL, "
    "UNIQUE (kind, key))",
)
_INSERT = ("INSERT INTO entries (method, status, template, fault, rejected_by, batch_operations, body_length, "
           "body_upto, data) VALUES (?, ?, ?, ?, ?, ?, ?, "
           "? + COALESCE((SELECT body_upto FROM entries ORDER BY id DESC LIMIT 1), 0), ?)")
# the facts _Tally.add counts, grouped, of the entries below an id; in the order they were first seen
_FACTS = ("SELECT method, status, template, fault, rejected_by, SUM(batch_operations), COUNT(*) FROM entries "
          "WHERE id < ? GROUP BY method, status, template, fault, rejected_by ORDER BY MIN(id)")
_FOLD = ("INSERT INTO trimmed (kind, key, count) VALUES (?, ?, ?) "
         "ON CONFLICT (kind, key) DO UPDATE SET count = count + excluded.count")
_NO_ID_ABOVE = 2**63 - 1
WRITER_QUEUE_SECONDS = 5.0  # a writer waits this long for another process's writer, then goes ahead
_STORED_FIELDS = tuple(f.name for f in fields(JournalEntry) if f.name != "id")


class _SqliteEntries:
    """Entries in a SQLite file that every process opening it shares, so that the forked workers of
    one service keep one journal: an entry one worker recorded is in the next read any worker answers.

    Recording is one INSERT in autocommit. Bounds are kept by trimming the oldest rows: a writer does
    it now and then (every ``TRIM_EVERY``-th id), every read does it first, in the transaction it
    reads in, so no reader sees more than the bounds allow. A trim folds the counts of the rows it
    deletes into ``trimmed`` in the same transaction: counters are ``trimmed`` plus the rows left.

    Each process opens its own connection on first use (one SQLite connection must never cross a
    fork); the threads of a process share it under a lock.
    """

    def __init__(self, path: Path, maxlen: int, body_budget: int) -> None:
        self.path = path
        self._maxlen = maxlen
        self._body_budget = body_budget
        self._lock = threading.Lock()
        # Writers of every process forked from this one queue here first: SQLite's own wait for its
        # write lock sleeps a millisecond or more a time, which costs workers a tenth of their
        # throughput; this lock wakes the next writer at once. Only a courtesy: SQLite's locking keeps
        # the file right without it (a writer that waits too long goes ahead).
        self._writers = multiprocessing.get_context("fork").Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._connection()  # creates the file now: a bad path fails here, and WAL is set before any fork
        _SHARED.add(self)

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, held for a write: this process's lock, then the writers' queue."""
        with self._lock:
            queued = self._writers.acquire(timeout=WRITER_QUEUE_SECONDS)
            try:
                yield self._connection()
            finally:
                if queued:
                    self._writers.release()

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened on first use in each process; the caller holds the lock."""
        if self._conn is not None and self._pid != os.getpid():
            # Inherited through a fork that ran no fork hooks: SQLite must not touch it in this process,
            # not even to close it (which would release locks and could checkpoint under the parent).
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = _open(self.path)
            self._pid = os.getpid()
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this process's connection; other processes' writers wait for it
        (up to the busy timeout), their readers see the state before it."""
        with self._writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def add(self, entry: JournalEntry) -> None:
        # What to_dict() gives without its deep copy (json.dumps copies nothing; the copy costs more than
        # the INSERT); no id: the row's is the entry's.
        data = {name: getattr(entry, name) for name in _STORED_FIELDS}
        length = len(entry.body or "")
        row = (entry.method, entry.status, entry.template, entry.fault, entry.rejected_by, entry.batch_operations,
               length, length, json.dumps(data))
        with self._writing() as conn:
            entry.id = conn.execute(_INSERT, row).lastrowid or 0
        if entry.id % TRIM_EVERY == 0:
            with self._transaction() as conn:
                self._trim(conn)

    def _trim(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest rows beyond the bounds (keeping the newest one at least, as the deque does),
        folding their counts into ``trimmed``. Runs inside a write transaction; costs a few index
        lookups plus the rows it deletes, however many are kept."""
        newest = conn.execute("SELECT id, body_upto FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        if newest is None:
            return
        newest_id, upto = newest
        by_count = newest_id - self._maxlen + 1  # ids have no gaps
        # the oldest entry from which on the bodies fit the budget (the rows are scanned from the oldest
        # one that may stay, and only up to the first that fits); none fits: the newest stays alone
        fitting = conn.execute("SELECT id FROM entries WHERE id >= ? AND body_upto - body_length >= ? "
                               "ORDER BY id LIMIT 1", (by_count, upto - self._body_budget)).fetchone()
        keep_from = newest_id if fitting is None else fitting[0]
        if conn.execute("SELECT MIN(id) FROM entries").fetchone()[0] >= keep_from:
            return
        folded = _Tally()
        folded.add_groups(conn.execute(_FACTS, (keep_from,)))
        conn.executemany(_FOLD, [item for item in folded.items() if item[2]])
        conn.execute("DELETE FROM entries WHERE id < ?", (keep_from,))

    def after(self, since_id: int | None) -> list[JournalEntry]:
        with self._transaction() as conn:
            self._trim(conn)
            rows = conn.execute("SELECT id, data FROM entries WHERE id > ? ORDER BY id",
                                (-1 if since_id is None else since_id,)).fetchall()
        return [_decode(row_id, data) for row_id, data in rows]

    def last(self) -> JournalEntry | None:
        """The newest entry; no trim needed first, since a trim always keeps the newest."""
        with self._lock:
            row = self._connection().execute("SELECT id, data FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else _decode(*row)

    def clear(self) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM entries")
            conn.execute("DELETE FROM trimmed")

    def counters(self) -> dict[str, Any]:
        tally = _Tally()
        with self._transaction() as conn:
            self._trim(conn)
            for kind, key, count in conn.execute("SELECT kind, key, count FROM trimmed ORDER BY rowid"):
                tally.add_item(kind, key, count)
            tally.add_groups(conn.execute(_FACTS, (_NO_ID_ABOVE,)))
            retained = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return tally.to_dict(retained)

    def __len__(self) -> int:
        with self._transaction() as conn:
            self._trim(conn)
            return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def before_fork(self) -> None:
        """Finish what this process's threads are doing and close the connection, so that the child
        inherits neither a held lock nor SQLite's state; both processes reopen on next use."""
        self._lock.acquire()
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
            self._conn = None

    def after_fork_in_parent(self) -> None:
        self._lock.release()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


def _open(path: Path) -> sqlite3.Connection:
    """A connection for this process: WAL (readers never wait for the writer), no fsync (a diagnostic
    log, not data) and a generous busy timeout (writers of all processes queue for one lock)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = OFF")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _create(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, trying again while another process does the same: SQLite answers
    "database is locked" to that at once instead of waiting its busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                return
            problem = "the file stays out of WAL mode"
        except sqlite3.OperationalError as error:
            if not error.sqlite_errorname.startswith("SQLITE_BUSY"):
                raise
            problem = str(error)
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"Cannot put the journal in WAL mode: {problem}.")
        time.sleep(0.002)


def _create(conn: sqlite3.Connection) -> None:
    """Create the tables; a journal file left by another version is emptied first (it is only a log)."""
    conn.execute("BEGIN IMMEDIATE")  # processes opening a new file at once: one creates, the others see it
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            if version != 0:
                conn.execute("DROP TABLE IF EXISTS entries")
                conn.execute("DROP TABLE IF EXISTS trimmed")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _decode(row_id: int, data: str) -> JournalEntry:
    return JournalEntry(**json.loads(data), id=row_id)


_SHARED: weakref.WeakSet[_SqliteEntries] = weakref.WeakSet()  # open SQLite journals, for the fork hooks
_INHERITED: list[sqlite3.Connection] = []  # connections a fork without hooks left behind; never used again


def _before_fork() -> None:
    for store in list(_SHARED):
        store.before_fork()


def _after_fork_in_parent() -> None:
    for store in list(_SHARED):
        store.after_fork_in_parent()


def _after_fork_in_child() -> None:
    for store in list(_SHARED):
        store.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


class Journal:
    """Thread-safe, bounded request log with cumulative counters.

    Entries live in this process's memory by default. With ``path`` they live in a SQLite file at
    that path (created if missing), which every process that opens it shares: the forked workers of
    one service keep one journal, with ids ascending across them and one set of counters. Every
    process should open it with the same bounds: the smallest is the one that holds.
    """

    def __init__(self, maxlen: int = DEFAULT_MAXLEN, clock: Clock | None = None, *,
                 body_limit: int = DEFAULT_BODY_LIMIT, body_budget: int = DEFAULT_BODY_BUDGET,
                 path: Path | None = None) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.clock = clock or Clock()
        self.body_limit = body_limit
        self._maxlen = maxlen
        self._path = path
        self._store: _Entries = (_MemoryEntries(maxlen, body_budget) if path is None
                                 else _SqliteEntries(path, maxlen, body_budget))

    @property
    def maxlen(self) -> int:
        return self._maxlen

    @property
    def path(self) -> Path | None:
        """The SQLite file the entries are shared in, or None when they are in this process's memory."""
        return self._path

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Assign the next id, store the entry and count it. Returns the same entry."""
        if not entry.time:
            entry.time = iso(self.clock.now())
        entry.sequence = time.monotonic_ns()
        self._store.add(entry)
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
        result = [e for e in self._store.after(query.since_id) if query.matches(e)]
        if query.limit is not None:
            limit = query.limit
            result = result[:limit] if query.since_id is not None else result[max(len(result) - limit, 0):]
        return result

    def last(self) -> JournalEntry | None:
        return self._store.last()

    def clear(self) -> None:
        """Forget entries and counters; ids restart at 1 so a test sees a fresh journal."""
        self._store.clear()

    def counters(self) -> dict[str, Any]:
        """Cumulative figures since the last clear (not limited by ``maxlen``)."""
        return self._store.counters()

    def __len__(self) -> int:
        return len(self._store)


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
