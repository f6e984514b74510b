"""Service protection for a service answered by several worker processes: one set of windows.

The limits count per user across everything a service answers (Dataverse:
https://learn.microsoft.com/power-apps/developer/data-platform/api-limits; BC:
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-rate-limits),
so workers of one service must not each keep windows of their own: a user would get N times the
limit. The windows stay in one :class:`~mockservers.sandbox.limits.ServiceProtection` in the
sandbox's own process (:class:`HostedLimits`, served by a :class:`mockservers.rpc.Host`); each
worker holds a :class:`RemoteProtection`, which has the same methods and asks the host. BC's queue
waits in the host, so a queued request waits for a slot freed by any worker.

While the limits are off (a benchmark, ``--no-limits``) a worker asks nothing: it keeps the host's
configuration, read again when a counter in shared memory says it changed.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from ..counters import Counters
from ..rpc import Host, Remote
from .limits import Admission, Budget, LimitConfig, Rejection, ServiceProtection, Ticket

HOSTED_CALLS = ("admit", "release", "config", "configure", "reset", "restore_defaults", "usage", "counters",
                "budget", "rejection_for")


class HostedLimits:
    """One service's windows in the sandbox's process, with what a worker needs to hold a ticket."""

    def __init__(self, protection: ServiceProtection) -> None:
        self.protection = protection
        self.changes = Counters(["config"])  # a configuration changed: workers read it again
        self.changes.share()
        self._tickets: dict[int, Ticket] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def serve_on(self, host: Host, name: str) -> None:
        host.serve(name, self, HOSTED_CALLS)

    def admit(self, principal: str) -> Rejection | tuple[int, float, Budget]:
        admission = self.protection.admit(principal)
        if isinstance(admission, Rejection):
            return admission
        with self._lock:
            ticket_id = next(self._ids)
            self._tickets[ticket_id] = admission
        return ticket_id, admission.started, admission.budget

    def release(self, ticket_id: int, elapsed_ms: float) -> None:
        with self._lock:
            ticket = self._tickets.pop(ticket_id, None)
        if ticket is not None:
            ticket.release(elapsed_ms)

    def config(self) -> LimitConfig:
        return self.protection.config

    def configure(self, **kw: Any) -> LimitConfig:
        try:
            return self.protection.configure(**kw)
        finally:
            self.changes.add(("config",))

    def restore_defaults(self) -> None:
        try:
            self.protection.restore_defaults()
        finally:
            self.changes.add(("config",))

    def __getattr__(self, name: str) -> Any:
        # reset, usage, counters, budget, rejection_for: the windows' own answers, unchanged
        return getattr(self.protection, name)


class _RemoteTicket(Ticket):
    def __init__(self, remote: Remote, ticket_id: int, principal: str, started: float, budget: Budget) -> None:
        super().__init__(None, principal, started, budget)
        self._remote = remote
        self._id = ticket_id

    def _free(self, elapsed_ms: float | None) -> None:
        if elapsed_ms is None:  # measured here: the time the worker spent, not the call's
            elapsed_ms = max(time.perf_counter() - self.began, 0.0) * 1000.0
        self._remote.send("release", self._id, float(elapsed_ms))


class RemoteProtection:
    """A worker's view of one service's windows (the methods of
    :class:`~mockservers.sandbox.limits.ServiceProtection` that the hooks and the control API use)."""

    def __init__(self, host: Host, name: str, hosted: HostedLimits) -> None:
        self._remote = Remote(host, name)
        self._changes = hosted.changes
        self._config: tuple[int, LimitConfig] | None = None

    @property
    def config(self) -> LimitConfig:
        seen = self._changes.get("config")
        cached = self._config
        if cached is None or cached[0] != seen:
            cached = (seen, self._remote.call("config"))
            self._config = cached
        return cached[1]

    def admit(self, principal: str) -> Admission:
        config = self.config
        if not config.enabled:  # nothing is counted: no need to ask
            return Ticket(None, principal, time.monotonic(), Budget(None, None, None, config.window_seconds))
        answer = self._remote.call("admit", principal)
        if isinstance(answer, Rejection):
            return answer
        ticket_id, started, budget = answer
        return _RemoteTicket(self._remote, ticket_id, principal, started, budget)

    def rejection_for(self, measure: str, retry_after_seconds: int, *, status: int = 429) -> Rejection:
        return self._remote.call("rejection_for", measure, retry_after_seconds, status=status)

    def configure(self, **kw: Any) -> LimitConfig:
        return self._remote.call("configure", **kw)

    def reset(self) -> None:
        self._remote.call("reset")

    def restore_defaults(self) -> None:
        self._remote.call("restore_defaults")

    def budget(self, principal: str) -> Budget:
        return self._remote.call("budget", principal)

    def usage(self) -> dict[str, dict[str, Any]]:
        return self._remote.call("usage")

    def counters(self) -> dict[str, int]:
        return self._remote.call("counters")
