"""``Journal(path=...)``: one request journal for a service served by several forked worker processes.

The entries live in a SQLite file every process opens. These tests fork real processes and check
what a worker relies on: an entry one process recorded is in the next read of any other, ids ascend
across processes, counters count every process's requests (trimmed ones too), bounds hold for every
reader although writers trim only now and then, and clear() clears for all.
"""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mockservers.sandbox.journal import TRIM_EVERY, Journal, JournalEntry, JournalQuery

FORK = multiprocessing.get_context("fork")


def entry(method: str = "GET", status: int = 200, *, body: str | None = None, **facts: Any) -> JournalEntry:
    return JournalEntry(service="s", method=method, path=f"/api/{method.lower()}", status=status, body=body, **facts)


@contextmanager
def forked(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """Run ``target(*args)`` in a forked child; on leaving, wait for it and require a clean exit."""
    child = FORK.Process(target=target, args=args, daemon=True)
    child.start()
    try:
        yield child
    finally:
        child.join(60)
        assert child.exitcode == 0, f"the child failed (exit code {child.exitcode}); its traceback is above"


def record_from_threads(journal: Journal, method: str, threads: int, per_thread: int) -> None:
    """Record from several threads at once; each thread must see its own ids ascend."""
    failures: list[str] = []

    def run() -> None:
        ids = [journal.record(entry(method)).id for _ in range(per_thread)]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            failures.append(f"{method}: ids out of order {ids[:10]}...")

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures


def connection_of(journal: Journal) -> sqlite3.Connection | None:
    """The SQLite connection a journal holds right now (white box: no reopen shows from outside)."""
    store: Any = journal._store
    return store._conn


def rows_in_file(path: Path) -> int:
    """Rows physically in the file, whatever a journal would show."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def test_forked_writers_keep_one_journal_with_ascending_ids(tmp_path: Path) -> None:
    journal = Journal(path=tmp_path / "journal.db")
    go = FORK.Event()

    def writer(method: str) -> None:
        assert go.wait(30)
        record_from_threads(journal, method, threads=4, per_thread=200)

    with forked(writer, "GET"), forked(writer, "POST"):
        go.set()
        record_from_threads(journal, "PATCH", threads=2, per_thread=50)  # the parent writes meanwhile
    total = 2 * 4 * 200 + 2 * 50

    entries = journal.entries()  # read right after the children left: every entry is there
    assert [e.id for e in entries] == list(range(1, total + 1))
    counters = journal.counters()
    assert counters["total"] == total == counters["retained"] == len(journal)
    assert counters["by_method"] == {"GET": 800, "POST": 800, "PATCH": 100}
    assert sum(counters["by_method"].values()) == total
    assert counters["by_status"] == {"200": total}


def test_an_entry_is_in_the_next_read_of_another_process_without_reopening(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    parent_recorded, child_recorded, parent_read = FORK.Event(), FORK.Event(), FORK.Event()

    def worker() -> None:
        mine = Journal(path=path)
        assert parent_recorded.wait(30)
        assert [(e.id, e.method) for e in mine.entries()] == [(1, "GET")]
        mine.record(entry("POST", 201))
        child_recorded.set()
        assert parent_read.wait(30)  # stays alive (connection open, nothing checkpointed) while the parent reads

    with forked(worker):
        writer, reader = Journal(path=path), Journal(path=path)  # two connections of this process
        connection = connection_of(reader)
        assert reader.last() is None
        writer.record(entry("GET"))
        assert [e.id for e in reader.entries()] == [1]
        parent_recorded.set()
        assert child_recorded.wait(30)
        last = reader.last()
        assert last is not None and (last.id, last.method, last.status) == (2, "POST", 201)
        assert [e.id for e in reader.select(JournalQuery(since_id=1))] == [2]
        assert reader.counters()["by_method"] == {"GET": 1, "POST": 1}
        assert connection_of(reader) is connection  # read with the connection it had, not reopened
        parent_read.set()


def test_bounds_hold_for_a_reader_though_writers_trim_lazily(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    writer, reader = Journal(maxlen=10, path=path), Journal(maxlen=10, path=path)
    for _ in range(TRIM_EVERY + 36):
        writer.record(entry(body="x" * 10))
    assert rows_in_file(path) == 10 + 36  # trimmed at id 64, not since
    assert len(reader) == 10
    assert [e.id for e in reader.entries()] == list(range(TRIM_EVERY + 27, TRIM_EVERY + 37))
    assert reader.counters()["total"] == TRIM_EVERY + 36 and reader.counters()["retained"] == 10

    budgeted = Journal(maxlen=100, body_budget=45, path=tmp_path / "bodies.db")
    for index in range(10):
        budgeted.record(entry(body=f"{index}" * 10))
    kept = budgeted.entries()
    assert [e.body for e in kept] == ["6" * 10, "7" * 10, "8" * 10, "9" * 10]  # 40 of 45 body bytes
    budgeted.record(entry(body="y" * 100))  # alone over the budget: still kept, alone
    assert [e.body for e in budgeted.entries()] == ["y" * 100] and len(budgeted) == 1
    assert budgeted.counters()["total"] == 11


def test_bounds_hold_while_other_processes_write(tmp_path: Path) -> None:
    journal = Journal(maxlen=50, body_budget=50 * 20, path=tmp_path / "journal.db")
    stop = FORK.Event()
    written = {"GET": FORK.Value("i", 0), "POST": FORK.Value("i", 0)}

    def writer(method: str) -> None:  # records until told to stop, counting what it recorded
        while not stop.is_set():
            journal.record(entry(method, body="b" * 30))
            written[method].value += 1

    with forked(writer, "GET"), forked(writer, "POST"):
        try:
            while min(count.value for count in written.values()) < 40:  # both are writing, the journal is full
                stop.wait(0.01)
            for _ in range(30):  # reads while both write
                seen = journal.entries()
                assert len(seen) == 33  # 33 bodies of 30 bytes fit in 1000, 34 do not
                assert sum(len(e.body or "") for e in seen) <= 1000
                assert [e.id for e in seen] == list(range(seen[0].id, seen[0].id + 33))
                assert journal.counters()["retained"] == 33
        finally:
            stop.set()
    total = sum(count.value for count in written.values())
    counters = journal.counters()
    assert counters["total"] == total
    assert counters["by_method"] == {method: count.value for method, count in written.items()}
    assert counters["retained"] == len(journal) == 33
    assert [e.id for e in journal.entries()] == list(range(total - 32, total + 1))


# Entries with every counted fact, so the storages' counters can be compared key by key.
VARIED = [
    entry("GET", 200, template="/api/items"),
    entry("POST", 201, template="/api/items", body="{}"),
    entry("GET", 429, template="/api/items", rejected_by="requests"),
    entry("POST", 200, template="/api/$batch", batch_operations=3, body="b" * 30),
    entry("GET", 503, fault="error"),
    entry("DELETE", 0, fault="drop"),
    entry("PATCH", 204, template="/api/items/<id>", body="p" * 15),
    entry("POST", 200, template="/api/$batch", batch_operations=2, body="B" * 60),  # alone over the budget
]


def same_in_both(shared: Journal, in_memory: Journal) -> None:
    """The SQLite journal shows what the in-memory one does: entries, and counters key by key in order."""
    assert [(e.id, e.body) for e in shared.entries()] == [(e.id, e.body) for e in in_memory.entries()]
    assert len(shared) == len(in_memory)
    counters, expected = shared.counters(), in_memory.counters()
    assert counters == expected
    assert [list(f.items()) for f in counters.values() if isinstance(f, dict)] \
        == [list(f.items()) for f in expected.values() if isinstance(f, dict)]


@pytest.mark.parametrize(("maxlen", "body_budget"), [(3, 10_000), (6, 50), (100, 40)])
def test_trimmed_counts_and_bounds_are_exactly_those_in_memory(tmp_path: Path, maxlen: int, body_budget: int) -> None:
    """Counters (trimmed rows folded into their table, plus the rows left) and the entries kept within
    the bounds are the very ones the in-memory journal has, after every record."""
    shared = Journal(maxlen=maxlen, body_budget=body_budget, path=tmp_path / "journal.db")
    in_memory = Journal(maxlen=maxlen, body_budget=body_budget)
    for _ in range(TRIM_EVERY // len(VARIED) * 3):
        for proto in VARIED:
            for journal in (shared, in_memory):
                journal.record(JournalEntry(**{**proto.to_dict(), "id": 0}))
            same_in_both(shared, in_memory)
    assert shared.counters()["total"] == 3 * TRIM_EVERY
    assert shared.counters()["batch_operations"] == 5 * 3 * TRIM_EVERY // len(VARIED)


def test_a_random_mix_is_kept_and_counted_as_in_memory(tmp_path: Path) -> None:
    rng = random.Random(7)
    for run in range(5):
        maxlen, body_budget = rng.randint(1, 40), rng.randint(0, 400)
        shared = Journal(maxlen=maxlen, body_budget=body_budget, path=tmp_path / f"journal{run}.db")
        in_memory = Journal(maxlen=maxlen, body_budget=body_budget)
        for _ in range(rng.randint(50, 300)):
            facts: dict[str, Any] = {
                "method": rng.choice(["GET", "POST", "PATCH"]),
                "status": rng.choice([0, 200, 204, 404, 429]),
                "template": rng.choice([None, "", "/a", "/b"]),
                "fault": rng.choice([None, None, "error"]),
                "rejected_by": rng.choice([None, None, "requests"]),
                "batch_operations": rng.choice([None, 0, 4]),
                "body": rng.choice([None, "x" * rng.randint(0, 120)]),
            }
            shared.record(entry(**facts))
            in_memory.record(entry(**facts))
            if rng.random() < 0.2:
                same_in_both(shared, in_memory)
            if rng.random() < 0.01:
                shared.clear()
                in_memory.clear()
        same_in_both(shared, in_memory)


def test_entries_read_back_as_recorded(tmp_path: Path) -> None:
    journal = Journal(path=tmp_path / "journal.db")
    sent = entry("POST", 201, body="ü\ud800", query_options={"$top": "1"}, headers={"Authorization": "Bearer ***"},
                 body_truncated=True, principal="user", response_bytes=None)
    journal.record(sent)
    [read] = journal.entries()
    assert read == sent and read is not sent
    assert read.time and read.sequence == sent.sequence and read.id == 1


def test_clear_in_one_process_clears_for_all(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(maxlen=5, path=path)
    for _ in range(TRIM_EVERY + 1):
        journal.record(entry("GET"))

    def clearer() -> None:
        mine = Journal(maxlen=5, path=path)
        assert mine.counters()["total"] == TRIM_EVERY + 1
        mine.clear()

    with forked(clearer):
        pass
    assert journal.entries() == [] and len(journal) == 0 and journal.last() is None
    assert journal.counters() == {"total": 0, "by_method": {}, "by_status_class": {}, "by_status": {},
                                  "by_template": {}, "faults": {}, "rejected": {}, "batch_operations": 0,
                                  "retained": 0}
    assert journal.record(entry("POST")).id == 1
    assert journal.counters()["by_method"] == {"POST": 1}


def test_a_journal_opened_before_a_fork_works_in_both_processes(tmp_path: Path) -> None:
    journal = Journal(path=tmp_path / "journal.db")
    assert journal.record(entry("GET")).id == 1  # this process's connection is open now
    parents = connection_of(journal)

    def child() -> None:
        assert [e.id for e in journal.entries()] == [1]
        assert journal.record(entry("POST")).id == 2
        assert journal.counters()["by_method"] == {"GET": 1, "POST": 1}
        assert connection_of(journal) is not parents  # its own, never the one opened in the parent

    with forked(child):
        pass
    assert journal.record(entry("PUT")).id == 3
    assert [e.method for e in journal.entries()] == ["GET", "POST", "PUT"]


def test_a_connection_from_another_process_is_left_alone(tmp_path: Path) -> None:
    """A fork that ran no fork hooks leaves the parent's connection behind: the journal sees the pid
    changed, opens its own and never touches (nor closes) the one it inherited."""
    journal = Journal(path=tmp_path / "journal.db")
    journal.record(entry("GET"))
    store: Any = journal._store
    inherited = connection_of(journal)
    assert inherited is not None
    store._pid = -1  # as though it had been opened in another process
    assert journal.record(entry("POST")).id == 2
    assert store._conn is not inherited
    assert inherited.execute("SELECT COUNT(*) FROM entries").fetchone() == (2,)  # not closed
    assert [e.method for e in journal.entries()] == ["GET", "POST"]


def test_processes_opening_a_new_file_at_once_all_get_it(tmp_path: Path) -> None:
    """Several workers may create the file together (each switches it to WAL, which SQLite refuses
    at once rather than waiting while another does the same)."""
    def opener(path: Path, go: Any) -> None:
        assert go.wait(30)
        Journal(path=path).record(entry())

    for round_ in range(30):
        path, go = tmp_path / f"journal{round_}.db", FORK.Event()
        with forked(opener, path, go), forked(opener, path, go), forked(opener, path, go), \
                forked(opener, path, go):
            go.set()
        assert Journal(path=path).counters()["total"] == 4


def test_a_bad_path_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        Journal(path=tmp_path / "missing" / "journal.db")
