"""One sandbox per data dir: an advisory lock on ``<data-dir>/sandbox.lock`` holding the owner's PID (POSIX).

Two processes on one set of SQLite files would each believe they own the row-version sequence and
the admin token. The lock is a kernel ``flock``/``lockf``, so it goes away with its process: a
``kill -9`` leaves the file (with a dead PID in it) but no lock, and the next ``serve`` takes over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILENAME = "sandbox.lock"


class DataDirLocked(RuntimeError):
    """Another live process holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "another process"
        super().__init__(f"the data dir {data_dir} is in use by {holder} (another `mockservers serve`); "
                         "stop it first or pass another --data-dir")
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """Holds the lock from :meth:`acquire` until :meth:`release` (or the end of the process)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir.resolve(), pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a reader never finds a PID that no longer holds it
        os.close(fd)  # closing the descriptor drops the lock

    def forget(self) -> None:
        """In a process forked from the holder: close this copy of the descriptor. The lock belongs to
        the open file, which the holder keeps, so it stays held and goes away with the holder."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
