"""Records set aside on disk for a later step of the same command.

Match-based coupling over a whole table finds, in one pass, the records to create in Dataverse and the
pairs to synchronize, and only then works through them. Held in lists, a table of 100,000 customers
kept some 300 MB of dicts alive for the rest of the command; spooled, they cost one line of JSON each
in a temporary file and come back one at a time, in the order they were set aside.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import Any

_IN_MEMORY_BYTES = 1 << 20  # a small spool never touches the disk


class RecordSpool:
    """An append-only sequence of JSON records that reads back lazily, as often as needed."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY_BYTES, mode="w+b")  # noqa: SIM115 - closed by close()
        self._count = 0

    def append(self, record: dict[str, Any]) -> None:
        self._file.seek(0, 2)
        self._file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        position = 0
        for _ in range(self._count):
            self._file.seek(position)
            line = self._file.readline()
            position = self._file.tell()
            yield json.loads(line)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordSpool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
