"""A network source read one chunk ahead of the pass that consumes it.

A pass over rows read from a service used to wait for each page of them before it could look up
the chunk's couplings and ask for its destinations; reading the next chunk on a thread of its own
lets the service answer it while the pass decides and records the current one. Sources on disk (the
spools) gain nothing from it: their reading is work for the same interpreter, not waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .clients._chunks import chunks

T = TypeVar("T")


def read_ahead(items: Iterable[T], size: int) -> Iterator[T]:
    """``items`` in their order, read ``size`` at a time on a thread, one chunk ahead of the consumer.

    An error met reading them is raised where the consumer would have met it. A consumer that stops
    early leaves at most one more chunk read."""
    source = chunks(items, size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as reader:
        upcoming = reader.submit(next, source, None)
        while (chunk := upcoming.result()) is not None:
            upcoming = reader.submit(next, source, None)
            yield from chunk
