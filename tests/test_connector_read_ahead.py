"""A network source read one chunk ahead of the pass that consumes it (``connector.read_ahead``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from connector.read_ahead import read_ahead


class Source:
    """Rows as a service would page them, noting how many were read and on which threads."""

    def __init__(self, count: int, *, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.read = 0
        self.threads: set[str] = set()

    def __iter__(self) -> Iterator[int]:
        for row in range(self.count):
            if row == self.fail_at:
                raise ConnectionError(f"the service dropped the connection at row {row}")
            self.threads.add(threading.current_thread().name)
            self.read += 1
            yield row


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_rows_come_in_their_order_read_on_another_thread() -> None:
    source = Source(23)
    assert list(read_ahead(source, 5)) == list(range(23))
    assert source.threads and threading.current_thread().name not in source.threads


def test_the_next_chunk_is_read_while_the_current_one_is_consumed_and_no_further() -> None:
    source = Source(10)
    rows = read_ahead(source, 2)
    assert next(rows) == 0  # chunk [0, 1] is handed over; [2, 3] is being read
    assert wait_for(lambda: source.read == 4), source.read
    time.sleep(0.05)
    assert source.read == 4  # not [4, 5] until the consumer reaches [2, 3]
    assert [next(rows) for _ in range(3)] == [1, 2, 3]
    assert wait_for(lambda: source.read == 6), source.read
    rows.close()


def test_an_error_reading_is_raised_where_the_consumer_meets_it() -> None:
    rows = read_ahead(Source(10, fail_at=7), 3)
    assert [next(rows) for _ in range(6)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConnectionError, match="row 7"):
        next(rows)


def test_a_consumer_that_stops_early_leaves_no_reader_behind() -> None:
    source = Source(1000)
    rows = read_ahead(source, 10)
    assert next(rows) == 0
    rows.close()
    assert source.read <= 20  # the chunk handed over, and the one read ahead
    assert not [t for t in threading.enumerate() if t.name.startswith("read-ahead")]
