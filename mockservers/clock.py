"""The services' clock: real time by default, frozen or moved forward on demand.

One clock per sandbox is shared by the identity service and both service apps, so everything that
reads the time agrees: `modifiedon`/`lastModifiedDateTime`/`systemModifiedAt`, token `iat`/`exp` and
their validation, service-protection windows, webhook expiry and the request journal. Tests move it
through the control API (``PUT /_sandbox/clock``) to exercise watermark and token-refresh logic
without sleeping.

The clock never runs backwards, as a real service's clock does not: stored timestamps, watermarks
and throttling windows all assume time only grows. Freezing stops it; resuming lets it run on from
where it stood.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


class ClockError(ValueError):
    """A clock change that cannot be made (it would move time backwards, or is not a time)."""


@dataclass(frozen=True)
class ClockState:
    now: datetime
    frozen: bool
    offset_seconds: float  # how far the clock stands ahead of real time

    def to_dict(self) -> dict[str, object]:
        return {"now": iso(self.now), "frozen": self.frozen, "offset_seconds": round(self.offset_seconds, 3)}


def iso(value: datetime) -> str:
    """UTC timestamp with millisecond precision and a ``Z`` suffix, the form both services use."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: object) -> datetime:
    """An ISO 8601 date-time with an offset (``2030-01-01T00:00:00Z``), as an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        raise ClockError(f"'now' must be an ISO 8601 date-time such as 2030-01-01T00:00:00Z; got {value!r}.")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        raise ClockError(f"'now' is not an ISO 8601 date-time: {value!r}.") from None
    if parsed.tzinfo is None:
        raise ClockError(f"'now' needs a time zone offset (Z for UTC): {value!r}.")
    return parsed.astimezone(UTC)


# The clock's whole state: offsets from real time while running, the standing readings while frozen.
_State = tuple[float, float, tuple[float, float] | None]  # (wall offset, monotonic offset, frozen (wall, mono))


class _SharedState:
    """The clock's state in memory that forked processes share, so that a sandbox serving its services
    from several processes keeps one clock: a change made through one service's control API is the
    time every process reads next.

    A sequence count makes reads consistent without a lock (odd while a write is under way; a read
    that saw it change reads again); writes take a lock that spans the processes.
    """

    _LAYOUT = struct.Struct("<Qddddd")  # sequence, wall offset, mono offset, frozen?, frozen wall, frozen mono

    def __init__(self, state: _State) -> None:
        self._memory = mmap.mmap(-1, self._LAYOUT.size)  # anonymous and shared: forked children see writes
        self.lock = multiprocessing.get_context("fork").Lock()
        self.store(state)

    def load(self) -> _State:
        while True:
            before, wall, mono, frozen, frozen_wall, frozen_mono = self._LAYOUT.unpack_from(self._memory)
            if not before & 1 and self._LAYOUT.unpack_from(self._memory)[0] == before:
                return wall, mono, ((frozen_wall, frozen_mono) if frozen else None)

    def store(self, state: _State) -> None:
        """Under ``lock`` (or before any other process exists)."""
        wall, mono, frozen = state
        sequence = self._LAYOUT.unpack_from(self._memory)[0]
        struct.pack_into("<Q", self._memory, 0, sequence + 1)
        self._LAYOUT.pack_into(self._memory, 0, sequence + 1, wall, mono, float(frozen is not None),
                               *(frozen or (0.0, 0.0)))
        struct.pack_into("<Q", self._memory, 0, sequence + 2)


class Clock:
    """Wall time (``now``/``time``) and a matching monotonic time for windows, moved together."""

    def __init__(self) -> None:
        self._lock: Any = threading.Lock()
        self._state: _State = (0.0, 0.0, None)  # replaced whole, so a reader never sees half a change
        self._shared: _SharedState | None = None

    def share(self) -> None:
        """Keep the state where processes forked from here on read and move the same clock."""
        if self._shared is None:
            with self._lock:
                self._shared = _SharedState(self._state)
                self._lock = self._shared.lock

    def _read(self) -> _State:
        shared = self._shared
        return self._state if shared is None else shared.load()

    def _write(self, state: _State) -> None:
        if self._shared is None:
            self._state = state
        else:
            self._shared.store(state)

    def time(self) -> float:
        """Seconds since the epoch on this clock."""
        wall, _mono, frozen = self._read()
        return frozen[0] if frozen is not None else time.time() + wall

    def monotonic(self) -> float:
        """A monotonic reading that moves with this clock (service-protection windows use it)."""
        _wall, mono, frozen = self._read()
        return frozen[1] if frozen is not None else time.monotonic() + mono

    def now(self) -> datetime:
        """The current time, aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def utcnow(self) -> datetime:
        """Naive UTC at millisecond precision: what both services store."""
        now = self.now().replace(tzinfo=None)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    @property
    def frozen(self) -> bool:
        return self._read()[2] is not None

    def state(self) -> ClockState:
        with self._lock:
            now = self.time()
            return ClockState(datetime.fromtimestamp(now, UTC), self.frozen, now - time.time())

    def advance(self, seconds: float) -> ClockState:
        """Move the clock forward by ``seconds`` (frozen or running)."""
        return self.adjust(advance_seconds=seconds)

    def set(self, instant: datetime) -> ClockState:
        """Move the clock forward to ``instant`` (an aware datetime); earlier than now is refused."""
        return self.adjust(now=instant)

    def freeze(self) -> ClockState:
        """Stop the clock where it stands (a no-op when already frozen)."""
        return self.adjust(frozen=True)

    def resume(self) -> ClockState:
        """Let a frozen clock run again from where it stands."""
        return self.adjust(frozen=False)

    def adjust(self, *, now: datetime | None = None, advance_seconds: float | None = None,
               frozen: bool | None = None) -> ClockState:
        """Freeze (first, so a time set here is the time that stays), move forward, or resume, as one
        change: a refused change (backwards, not a number) leaves the clock as it was."""
        if now is not None and advance_seconds is not None:
            raise ClockError("Give 'now' or 'advance_seconds', not both.")
        if advance_seconds is not None and (isinstance(advance_seconds, bool)
                                            or not isinstance(advance_seconds, int | float)
                                            or advance_seconds != advance_seconds):
            raise ClockError(f"'advance_seconds' must be a number of seconds; got {advance_seconds!r}.")
        with self._lock:
            current = self.time()
            step = float(advance_seconds or 0.0)
            if now is not None:
                step = now.timestamp() - current
                if step < -0.001:
                    raise ClockError(f"The sandbox clock does not run backwards: it stands at "
                                     f"{iso(datetime.fromtimestamp(current, UTC))}, later than {iso(now)}.")
                step = max(step, 0.0)
            if step < 0:
                raise ClockError(f"The sandbox clock does not run backwards; 'advance_seconds' was {advance_seconds}.")
            if current + step >= LATEST:
                raise ClockError("The sandbox clock cannot go past 9999-12-31T23:59:59Z (the latest date-time "
                                 "either service stores).")
            wall_offset, mono_offset, standing = self._read()
            if frozen and standing is None:
                standing = (time.time() + wall_offset, time.monotonic() + mono_offset)
            if standing is not None:
                standing = (standing[0] + step, standing[1] + step)
            else:
                wall_offset += step
                mono_offset += step
            if frozen is False and standing is not None:
                wall_offset, mono_offset = standing[0] - time.time(), standing[1] - time.monotonic()
                standing = None
            self._write((wall_offset, mono_offset, standing))
        return self.state()
