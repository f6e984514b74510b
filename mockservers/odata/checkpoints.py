"""WAL checkpoints of a SQLite store, run by a thread of their own instead of by a request.

In WAL mode SQLite copies the log back into the database file (a checkpoint) from inside whichever
commit first finds the log over ``wal_autocheckpoint`` pages, and with ``synchronous=NORMAL`` that
checkpoint ends in an fsync of the database file (https://www.sqlite.org/wal.html#ckpt). With 100,000
rows a batch of 100 creates dirties about a hundred pages of the primary-key index (the ids are random
GUIDs), so every eighth batch or so paid for a checkpoint and its fsync: about a tenth of a bulk write's
time at that size. SQLite's documentation names the way out: turn the automatic checkpoint down and run
``PRAGMA wal_checkpoint(PASSIVE)`` from a thread or process of one's own; a passive checkpoint never
blocks a reader or a writer, and while the sqlite3 module waits in it, the GIL is free.

The automatic checkpoint stays on at a much larger size (:data:`FALLBACK_PAGES`): should the thread fall
behind, a checkpoint still happens without this thread.

A checkpoint copies the log; it does not shorten it. SQLite starts the log over only when a writer finds
all of it copied and no reader in it, and under reads and writes that overlap for minutes (an initial
sync of 100,000 records) that moment never comes: the log grew to 600 MB and stayed so. Once a pass has
copied everything, the thread also asks for a ``TRUNCATE`` checkpoint when the log is over
:data:`TRUNCATE_BYTES`; with no busy timeout for that one statement, it cuts the log to nothing when no
reader is in it and gives up at once when one is, so no request waits behind it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from typing import Any
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Engine

DELAY_SECONDS = 0.2  # after a commit, wait this long for more before checkpointing (commits coalesce)
FALLBACK_PAGES = 16_000  # wal_autocheckpoint left on connections: SQLite's own, should the thread lag (64 MB)
BUSY_TIMEOUT_MS = 30_000  # what the thread's connection waits for a lock, as the stores' own connections do
TRUNCATE_BYTES = 64 * 1024 * 1024  # a log larger than this is cut back once it is all copied and unread


class Checkpointer:
    """The checkpoint thread of one database file (one per engine and process). It starts with the first
    commit a process makes and stops when the engine is disposed or collected; a forked child starts its
    own with its first commit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pid = 0  # the process the thread and its events belong to
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.passes = 0  # checkpoints run, for tests and the curious

    def committed(self) -> None:
        """A commit happened: a checkpoint follows within :data:`DELAY_SECONDS`."""
        if self._pid != os.getpid():
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # New events: a fork's child must not share the parent thread's (it did not come along).
            self._wake, self._stop = threading.Event(), threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._wake, self._stop),
                                            name="sandbox-wal-checkpoint", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        """End this process's thread, after the pass it may be in; the next commit starts another."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                return
            thread, self._thread, self._pid = self._thread, None, 0
            self._stop.set()
            self._wake.set()
        if thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self, wake: threading.Event, stop: threading.Event) -> None:
        try:  # mode=rw: a file removed under a stopping sandbox is not made again
            conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
        except sqlite3.Error:
            return
        try:
            while True:
                wake.wait()
                if stop.wait(DELAY_SECONDS):  # the delay lets the commits of a burst share one pass
                    return
                wake.clear()
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if not busy and 0 < frames == copied and self._log_bytes() > TRUNCATE_BYTES:
                        self._cut_back(conn)
                except sqlite3.Error:  # the file went away under a stopping sandbox: the next pass tries again
                    continue
                self.passes += 1
        finally:
            conn.close()

    @staticmethod
    def _cut_back(conn: sqlite3.Connection) -> None:
        """Truncate the (all copied) log, or give up at once: with no busy timeout, the checkpoint waits
        neither for a reader still in the log nor for a writer, so no request waits behind it."""
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _log_bytes(self) -> int:
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0


def attach(engine: Engine, path: str) -> Checkpointer:
    """Checkpoint ``engine``'s database file (a SQLite file in WAL mode) from a thread of its own."""
    checkpointer = Checkpointer(path)

    def on_commit(conn: Any) -> None:
        checkpointer.committed()

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "engine_disposed", lambda _engine: checkpointer.stop())
    weakref.finalize(engine, checkpointer.stop)
    return checkpointer
