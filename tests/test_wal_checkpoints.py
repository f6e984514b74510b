"""A SQLite store's WAL is copied back into its database file by a thread of its own, not by a commit
(mockservers/odata/checkpoints.py). What the thread copied is observable in the file itself: a row
committed into the log is in the database file only once a checkpoint has run."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mockservers.odata import checkpoints
from mockservers.odata.database import create_engine

WAIT_SECONDS = 15  # for a thread that checkpoints within DELAY_SECONDS (not a performance bound)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE note (text VARCHAR)")
    yield engine
    engine.dispose()


def write(engine: sa.Engine) -> bytes:
    """Commit a row whose text appears nowhere else; that text, as the file would hold it."""
    marker = f"marker-{uuid.uuid4().hex}"
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO note VALUES (?)", (marker,))
    return marker.encode()


def in_database_file(engine: sa.Engine, marker: bytes) -> bool:
    return marker in Path(str(engine.url.database)).read_bytes()


def eventually(check: object) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sandbox-wal-checkpoint"]


def test_a_commit_is_checkpointed_into_the_database_file_without_a_request_paying_for_it(engine: sa.Engine) -> None:
    with engine.connect() as conn:  # the commit's own checkpoint is pushed far away
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == checkpoints.FALLBACK_PAGES
    marker = write(engine)
    assert eventually(lambda: in_database_file(engine, marker))


def test_the_thread_ends_with_the_engine_and_comes_back_with_the_next_commit(tmp_path: Path) -> None:
    path = tmp_path / "own.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("CREATE TABLE note (text VARCHAR)")
    checkpointer = checkpoints.attach(engine, str(path))
    before = set(checkpoint_threads())
    marker = write(engine)
    assert eventually(lambda: checkpointer.passes >= 1 and in_database_file(engine, marker))
    ours = set(checkpoint_threads()) - before
    assert len(ours) == 1

    engine.dispose()
    assert not any(thread.is_alive() for thread in ours)

    marker = write(engine)
    assert eventually(lambda: in_database_file(engine, marker))
    assert len(set(checkpoint_threads()) - before) == 1
    engine.dispose()


def test_a_forked_child_checkpoints_its_own_commits(engine: sa.Engine) -> None:
    first = write(engine)  # this process's thread runs, checkpoints, then waits for its next commit
    assert eventually(lambda: in_database_file(engine, first))
    marker = f"child-{uuid.uuid4().hex}".encode()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            engine.dispose(close=False)  # SQLAlchemy's way after a fork: the parent's connections stay its own
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO note VALUES (?)", (marker.decode(),))
            code = 0 if eventually(lambda: in_database_file(engine, marker)) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def wal_bytes(engine: sa.Engine) -> int:
    path = Path(f"{engine.url.database}-wal")
    return path.stat().st_size if path.exists() else 0


def test_a_long_log_is_cut_back_once_no_reader_is_in_it(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads that overlap the writes keep SQLite from starting its log over, so it only grows (600 MB in
    an initial sync of 100k records). Once no reader is in it, the thread cuts it back; while a reader
    is, it leaves the log alone (cutting would make the reader, or the writers, wait)."""
    limit = 256 * 1024
    monkeypatch.setattr(checkpoints, "TRUNCATE_BYTES", limit)
    reader = engine.connect()
    reader.exec_driver_sql("SELECT count(*) FROM note").scalar()  # a read transaction: its snapshot pins the log
    try:
        for _ in range(40):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO note VALUES (?)", ("x" * 20_000,))
        pinned = write(engine)
        time.sleep(3 * checkpoints.DELAY_SECONDS)  # passes ran while the reader was in the log
        assert wal_bytes(engine) > limit and not in_database_file(engine, pinned)
    finally:
        reader.close()  # the reader leaves
    marker = write(engine)  # the next commit wakes the thread
    assert eventually(lambda: wal_bytes(engine) <= limit)
    assert in_database_file(engine, marker)  # cut back only once copied: nothing was lost
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM note").scalar() == 42
