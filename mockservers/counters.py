"""Named counters that forked processes share: how workers serving one service learn that another
worker changed something they keep in memory (a table written, an org's settings reloaded).

The counters live in anonymous shared memory (``mmap(-1, ...)``), which a forked child shares with
its parent, so a count taken in one process is the count every process reads next. Counts only
grow; a reader compares what it reads with what it saw last. Increments take a lock that spans
the processes; reads take none (an aligned 8-byte read is never torn on the platforms served).
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

_SLOT = struct.Struct("<Q")


class Counters:
    """A fixed set of named counters, private to this process until :meth:`share` is called."""

    def __init__(self, names: Iterable[str]) -> None:
        self._index = {name: i for i, name in enumerate(dict.fromkeys(names))}
        self._local = [0] * len(self._index)
        self._memory: mmap.mmap | None = None
        self._lock: AbstractContextManager[Any] = threading.Lock()

    def share(self) -> None:
        """Move the counts into memory that processes forked from now on share (call before forking)."""
        if self._memory is not None:
            return
        memory = mmap.mmap(-1, max(_SLOT.size * len(self._index), _SLOT.size))
        for i, value in enumerate(self._local):
            _SLOT.pack_into(memory, i * _SLOT.size, value)
        self._lock = multiprocessing.get_context("fork").Lock()
        self._memory = memory

    def get(self, name: str) -> int:
        i = self._index[name]
        if self._memory is None:
            return self._local[i]
        return int(_SLOT.unpack_from(self._memory, i * _SLOT.size)[0])

    def add(self, names: Iterable[str]) -> None:
        """Count one more for each name (in one step under the lock)."""
        slots = [self._index[name] for name in names]
        with self._lock:
            if self._memory is None:
                for i in slots:
                    self._local[i] += 1
                return
            for i in slots:
                offset = i * _SLOT.size
                _SLOT.pack_into(self._memory, offset, _SLOT.unpack_from(self._memory, offset)[0] + 1)
