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

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

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


class Clock:
    """Wall time (``now``/``time``) and a matching monotonic time for windows, moved together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wall_offset = 0.0  # while running, readings are the real ones plus these offsets
        self._mono_offset = 0.0
        self._frozen: tuple[float, float] | None = None  # (wall, monotonic) readings while frozen

    def time(self) -> float:
        """Seconds since the epoch on this clock."""
        frozen = self._frozen
        return frozen[0] if frozen is not None else time.time() + self._wall_offset

    def monotonic(self) -> float:
        """A monotonic reading that moves with this clock (service-protection windows use it)."""
        frozen = self._frozen
        return frozen[1] if frozen is not None else time.monotonic() + self._mono_offset

    def now(self) -> datetime:
        """The current time, aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)

    def utcnow(self) -> datetime:
        """Naive UTC at millisecond precision: what both services store."""
        now = self.now().replace(tzinfo=None)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def state(self) -> ClockState:
        with self._lock:
            now = self.time()
            return ClockState(datetime.fromtimestamp(now, UTC), self._frozen is not None, now - time.time())

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
            if frozen and self._frozen is None:
                self._frozen = (time.time() + self._wall_offset, time.monotonic() + self._mono_offset)
            if self._frozen is not None:
                wall, mono = self._frozen
                self._frozen = (wall + step, mono + step)
            else:
                self._wall_offset += step
                self._mono_offset += step
            if frozen is False and self._frozen is not None:
                wall, mono = self._frozen
                self._wall_offset = wall - time.time()
                self._mono_offset = mono - time.monotonic()
                self._frozen = None
        return self.state()
