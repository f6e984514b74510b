"""Service-protection limits: the per-user throttling both clouds apply, so clients meet 429 locally.

Per principal (user object id or app id) three measures are kept over a sliding window:
number of requests, combined execution time, and requests in flight. Business Central additionally
queues requests beyond its small concurrency limit instead of rejecting them at once; set
``max_queued`` for that. Rejected requests are not counted, so ``Retry-After`` is an honest
"the window will have slid far enough by then".

All time comes from an injectable monotonic clock so tests can slide the window without sleeping;
only the BC-style queue wait uses real time (it blocks a server thread).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

Clock = Callable[[], float]

# The measures a Rejection can name.
REQUESTS = "requests"
EXECUTION_TIME = "execution_time"
CONCURRENCY = "concurrency"
QUEUE_TIMEOUT = "queue_timeout"

# measure -> (error code, message template). Templates are ``str.format``ed with the live LimitConfig
# fields plus ``limit`` and ``actual`` (the limit and the count that broke it).
MessageTable = Mapping[str, tuple[str, str]]

# Dataverse Web API (api-limits doc; reference dataverse-webapi.md 5.4).
DATAVERSE_MESSAGES: MessageTable = {
    REQUESTS: (
        "0x80072322",
        "Number of requests exceeded the limit of {max_requests} over time window of {window_seconds} seconds.",
    ),
    EXECUTION_TIME: (
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of {max_execution_ms:,} milliseconds "
        "over time window of {window_seconds} seconds. Decrease number of concurrent requests or reduce the "
        "duration of requests and try again later.",
    ),
    CONCURRENCY: ("0x80072326", "Number of concurrent requests exceeded the limit of {max_concurrent}."),
    QUEUE_TIMEOUT: ("0x80072326", "Number of concurrent requests exceeded the limit of {max_concurrent}."),
}

# Business Central (reference bc-api-v2.md 7; the code and the queue wording are from third-party
# captures, not from Microsoft's docs, which only promise a 429).
BC_MESSAGES: MessageTable = {
    REQUESTS: (
        "Application_TooManyRequests",
        "Number of requests exceeded the limit of {max_requests} over the time window of {window_seconds} seconds.",
    ),
    EXECUTION_TIME: (
        "Application_TooManyRequests",
        "Combined execution time exceeded the limit of {max_execution_ms} milliseconds over the time window "
        "of {window_seconds} seconds.",
    ),
    CONCURRENCY: ("Application_TooManyRequests", "Too many requests reached.  Actual ({actual}).  Maximum ({limit})."),
    QUEUE_TIMEOUT: (
        "Application_ServiceUnavailable",
        "The request waited longer than {queue_timeout_seconds:g} seconds in the queue.",
    ),
}

GENERIC_MESSAGES: MessageTable = {
    REQUESTS: ("TooManyRequests", "More than {max_requests} requests in {window_seconds} seconds."),
    EXECUTION_TIME: ("TooManyRequests", "More than {max_execution_ms} ms execution time in {window_seconds} seconds."),
    CONCURRENCY: ("TooManyRequests", "More than {max_concurrent} concurrent requests."),
    QUEUE_TIMEOUT: ("ServiceUnavailable", "Queued longer than {queue_timeout_seconds:g} seconds."),
}


class LimitConfigError(ValueError):
    """A limit setting that cannot be applied; the message says which field and why."""


class LimitsHeldOff(LimitConfigError):
    """Limits cannot be changed at all while the sandbox runs without them (the message says why)."""


@dataclass(frozen=True)
class LimitConfig:
    """Per-principal limits. ``None`` for ``max_execution_ms`` means "not measured" (BC has no such limit).

    ``max_queued`` > 0 makes requests beyond ``max_concurrent`` wait (up to ``queue_timeout_seconds``,
    then 503) instead of being rejected; only once the queue is full is the answer 429.
    """

    enabled: bool = True
    window_seconds: float = 300
    max_requests: int = 6000
    max_execution_ms: int | None = 1_200_000
    max_concurrent: int = 52
    max_queued: int = 0
    queue_timeout_seconds: float = 480

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, values: Mapping[str, Any]) -> LimitConfig:
        """A validated copy with ``values`` applied; unknown or ill-typed fields raise."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LimitConfigError(
                f"Unknown limit field(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(sorted(known))}."
            )
        kw: dict[str, Any] = {}
        for name, value in values.items():
            if name == "enabled":
                if not isinstance(value, bool):
                    raise LimitConfigError(f"enabled must be true or false; got {value!r}.")
                kw[name] = value
            elif name in ("window_seconds", "queue_timeout_seconds"):
                if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                    raise LimitConfigError(f"{name} must be a positive number of seconds; got {value!r}.")
                kw[name] = value
            elif name == "max_execution_ms" and value is None:
                kw[name] = None
            else:
                minimum = 0 if name == "max_queued" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise LimitConfigError(f"{name} must be an integer of at least {minimum}; got {value!r}.")
                kw[name] = value
        return replace(self, **kw)


DATAVERSE_LIMITS = LimitConfig()
BC_LIMITS = LimitConfig(max_execution_ms=None, max_concurrent=5, max_queued=95, queue_timeout_seconds=480)


@dataclass(frozen=True)
class Budget:
    """What is left of a principal's window, for informational headers (``None`` = unlimited)."""

    requests_remaining: int | None
    execution_ms_remaining: float | None
    concurrent_remaining: int | None
    window_seconds: float


@dataclass(frozen=True)
class Rejection:
    measure: str
    retry_after_seconds: int
    code: str
    message: str
    status: int = 429

    admitted = False


@dataclass
class _Usage:
    arrivals: deque[float] = field(default_factory=deque)
    executions: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, ms)
    execution_ms: float = 0.0
    in_flight: int = 0
    queued: int = 0

    def prune(self, now: float, window: float) -> None:
        horizon = now - window
        while self.arrivals and self.arrivals[0] <= horizon:
            self.arrivals.popleft()
        while self.executions and self.executions[0][0] <= horizon:
            self.execution_ms -= self.executions.popleft()[1]
        if not self.executions:
            self.execution_ms = 0.0  # drop float drift once the window is empty

    @property
    def idle(self) -> bool:
        return not (self.arrivals or self.executions or self.in_flight or self.queued)


class Ticket:
    """An admitted request. Call :meth:`release` exactly when it finishes (extra calls are ignored)."""

    admitted = True

    def __init__(self, owner: ServiceProtection | None, principal: str, started: float, budget: Budget,
                 usage: _Usage | None = None) -> None:
        self._owner = owner
        self._usage = usage
        self.principal = principal
        self.started = started
        self.began = time.perf_counter()  # execution time is real time, whatever the window's clock does
        self.budget = budget
        self._released = False

    def release(self, elapsed_ms: float | None = None) -> None:
        """Free the concurrency slot and add the execution time (measured in real time if omitted)."""
        if self._released:
            return
        self._released = True
        self._free(elapsed_ms)

    def _free(self, elapsed_ms: float | None) -> None:
        """Give the slot back to whatever admitted the request (once)."""
        if self._owner is not None:
            self._owner._release(self, elapsed_ms)


Admission = Ticket | Rejection


class ServiceProtection:
    """Thread-safe per-principal sliding-window limiter."""

    _SWEEP_EVERY = 1024

    def __init__(
        self,
        config: LimitConfig | None = None,
        *,
        messages: MessageTable | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._initial = config or LimitConfig()
        self._config = self._initial
        self._messages = dict(GENERIC_MESSAGES) | dict(messages or {})
        self.clock = clock
        self._cond = threading.Condition()
        self._held_off: str | None = None
        self._usage: dict[str, _Usage] = {}
        self._rejections: Counter[str] = Counter()
        self._admits = 0

    # -- configuration ---------------------------------------------------------------------------
    @property
    def config(self) -> LimitConfig:
        with self._cond:
            return self._config

    def hold_off(self, reason: str) -> None:
        """Switch the limits off for good (a reset keeps them off); changing them raises
        :class:`LimitsHeldOff` with ``reason``. For a sandbox whose windows would not be counted right."""
        with self._cond:
            self._initial = self._config = replace(self._initial, enabled=False)
            self._held_off = reason
            self._cond.notify_all()

    def configure(self, **kw: Any) -> LimitConfig:
        """Change some limits at runtime; they apply to the windows already collected."""
        with self._cond:
            if self._held_off is not None:
                raise LimitsHeldOff(self._held_off)
            self._config = self._config.with_changes(kw)
            self._cond.notify_all()  # a raised concurrency limit may free queued requests
            return self._config

    def reset(self) -> None:
        """Forget every principal's window (config unchanged)."""
        with self._cond:
            self._usage.clear()
            self._rejections.clear()
            self._cond.notify_all()

    def restore_defaults(self) -> None:
        """Back to the config given at construction, with empty windows."""
        with self._cond:
            self._config = self._initial
        self.reset()

    # -- admission -------------------------------------------------------------------------------
    def admit(self, principal: str) -> Admission:
        """Count one request for ``principal`` or say which limit it broke and when to retry."""
        with self._cond:
            config = self._config
            if not config.enabled:
                return Ticket(None, principal, self.clock(), Budget(None, None, None, config.window_seconds))
            self._maybe_sweep()
            usage = self._usage.setdefault(principal, _Usage())
            now = self.clock()
            usage.prune(now, config.window_seconds)
            if len(usage.arrivals) >= config.max_requests:
                return self._reject(REQUESTS, config, self._requests_retry_after(usage, config, now),
                                    limit=config.max_requests, actual=len(usage.arrivals) + 1)
            if config.max_execution_ms is not None and usage.execution_ms >= config.max_execution_ms:
                return self._reject(EXECUTION_TIME, config, self._execution_retry_after(usage, config, now),
                                    limit=config.max_execution_ms, actual=round(usage.execution_ms))
            if usage.in_flight >= config.max_concurrent:
                if usage.queued >= config.max_queued:
                    limit = config.max_concurrent + config.max_queued
                    return self._reject(CONCURRENCY, config, 1, limit=limit,
                                        actual=usage.in_flight + usage.queued + 1)
                waited = self._wait_in_queue(principal, usage, config)
                if waited is None:
                    return self._reject(QUEUE_TIMEOUT, config, 1, status=503, limit=config.max_concurrent,
                                        actual=usage.in_flight + 1)
                usage = waited
                now = self.clock()
                usage.prune(now, config.window_seconds)
            usage.arrivals.append(now)
            usage.in_flight += 1
            return Ticket(self, principal, now, self._budget(usage, self._config), usage)

    def _wait_in_queue(self, principal: str, usage: _Usage, config: LimitConfig) -> _Usage | None:
        """Wait (lock released) for a free slot; the usage to count against, or None on timeout."""
        deadline = time.monotonic() + config.queue_timeout_seconds
        usage.queued += 1
        try:
            while usage.in_flight >= self._config.max_concurrent and self._config.enabled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
                if self._usage.get(principal) is not usage:  # windows were reset meanwhile
                    break
        finally:
            usage.queued -= 1
        return self._usage.setdefault(principal, _Usage())

    def _release(self, ticket: Ticket, elapsed_ms: float | None) -> None:
        with self._cond:
            now = self.clock()
            if elapsed_ms is None:
                elapsed_ms = max(time.perf_counter() - ticket.began, 0.0) * 1000.0
            usage = ticket._usage  # after a reset this is an orphan, so the fresh window stays clean
            if usage is None:
                return
            usage.in_flight = max(usage.in_flight - 1, 0)
            usage.executions.append((now, float(elapsed_ms)))
            usage.execution_ms += float(elapsed_ms)
            self._cond.notify_all()

    def rejection_for(self, measure: str, retry_after_seconds: int, *, status: int = 429) -> Rejection:
        """A rejection worded like a real one for ``measure``, e.g. for an injected throttle fault."""
        with self._cond:
            config = self._config
        return self._rejection(measure, config, retry_after_seconds, status=status,
                               limit=getattr(config, _LIMIT_FIELD.get(measure, "max_requests")), actual=0)

    def _reject(self, measure: str, config: LimitConfig, retry_after: int, *, status: int = 429,
                limit: Any, actual: Any) -> Rejection:
        self._rejections[measure] += 1
        return self._rejection(measure, config, retry_after, status=status, limit=limit, actual=actual)

    def _rejection(self, measure: str, config: LimitConfig, retry_after: int, *, status: int,
                   limit: Any, actual: Any) -> Rejection:
        code, template = self._messages.get(measure, GENERIC_MESSAGES[REQUESTS])
        try:
            message = template.format(**config.to_dict(), limit=limit, actual=actual)
        except (KeyError, ValueError, TypeError):  # a custom template that does not fit: still answer
            message = template
        return Rejection(measure, max(int(retry_after), 1), code, message, status)

    # -- figures ---------------------------------------------------------------------------------
    @staticmethod
    def _requests_retry_after(usage: _Usage, config: LimitConfig, now: float) -> int:
        # The request count falls below the limit once the arrival at this index has left the window.
        index = len(usage.arrivals) - config.max_requests
        return _ceil_seconds(usage.arrivals[index] + config.window_seconds - now)

    @staticmethod
    def _execution_retry_after(usage: _Usage, config: LimitConfig, now: float) -> int:
        assert config.max_execution_ms is not None
        total = usage.execution_ms
        for finished, ms in usage.executions:
            total -= ms
            if total < config.max_execution_ms:
                return _ceil_seconds(finished + config.window_seconds - now)
        return _ceil_seconds(config.window_seconds)

    @staticmethod
    def _budget(usage: _Usage, config: LimitConfig) -> Budget:
        execution = None
        if config.max_execution_ms is not None:
            execution = max(config.max_execution_ms - usage.execution_ms, 0.0)
        return Budget(
            requests_remaining=max(config.max_requests - len(usage.arrivals), 0),
            execution_ms_remaining=execution,
            concurrent_remaining=max(config.max_concurrent - usage.in_flight, 0),
            window_seconds=config.window_seconds,
        )

    def budget(self, principal: str) -> Budget:
        """Remaining budget without counting a request."""
        with self._cond:
            config = self._config
            if not config.enabled:
                return Budget(None, None, None, config.window_seconds)
            usage = self._usage.get(principal) or _Usage()
            usage.prune(self.clock(), config.window_seconds)
            return self._budget(usage, config)

    def usage(self) -> dict[str, dict[str, Any]]:
        """Per-principal figures inside the current window, for the control API."""
        with self._cond:
            now = self.clock()
            result = {}
            for principal, usage in self._usage.items():
                usage.prune(now, self._config.window_seconds)
                result[principal] = {
                    "requests": len(usage.arrivals),
                    "execution_ms": round(usage.execution_ms, 3),
                    "in_flight": usage.in_flight,
                    "queued": usage.queued,
                }
            return result

    def counters(self) -> dict[str, int]:
        """Rejections by measure since the last reset."""
        with self._cond:
            return dict(self._rejections)

    def _maybe_sweep(self) -> None:
        # Bound memory across many principals: drop the ones whose window has emptied.
        self._admits += 1
        if self._admits % self._SWEEP_EVERY:
            return
        now = self.clock()
        for principal in list(self._usage):
            usage = self._usage[principal]
            usage.prune(now, self._config.window_seconds)
            if usage.idle:
                del self._usage[principal]


_LIMIT_FIELD = {
    REQUESTS: "max_requests",
    EXECUTION_TIME: "max_execution_ms",
    CONCURRENCY: "max_concurrent",
    QUEUE_TIMEOUT: "max_concurrent",
}


def _ceil_seconds(seconds: float) -> int:
    return max(math.ceil(seconds - 1e-9), 1)


def dataverse_budget_headers(budget: Budget) -> dict[str, str]:
    """Dataverse's informational headers: requests left and execution seconds left in the window."""
    headers: dict[str, str] = {}
    if budget.requests_remaining is not None:
        headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(budget.requests_remaining)
    if budget.execution_ms_remaining is not None:
        headers["x-ms-ratelimit-time-remaining-xrm-requests"] = f"{budget.execution_ms_remaining / 1000:,.2f}"
    return headers
