"""What the request hooks and the control API of one service share (no Flask wiring here)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..clock import Clock
from .faults import FaultInjector
from .journal import Journal
from .limits import LimitConfig, MessageTable, ServiceProtection

CONTROL_PREFIX = "/_sandbox"


def is_control_path(path: str) -> bool:
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


def new_admin_token() -> str:
    return secrets.token_urlsafe(32)


# Dataverse documents 32,768 characters for a URL (and 65,536 for a GET inside $batch):
# https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/overview
MAX_URL_LENGTH = 32_768


@dataclass(frozen=True)
class UrlLimit:
    """The longest request URL a service accepts, and the error code it refuses a longer one with."""

    max_length: int = MAX_URL_LENGTH
    code: str = ""

    def message(self, length: int) -> str:
        return (f"The request URL is {length:,} characters long; the maximum is {self.max_length:,}. "
                "Send long queries inside a $batch request instead.")


@dataclass
class SandboxServices:
    """The per-service sandbox machinery the hooks and the control API share.

    ``clock`` is the sandbox's clock (shared with the other services of one sandbox); the journal and
    the service-protection windows read it, and the app hands it to its store.
    """

    admin_token: str = field(default_factory=new_admin_token)
    journal: Journal = field(default_factory=Journal)
    faults: FaultInjector = field(default_factory=FaultInjector)
    limits: ServiceProtection = field(default_factory=ServiceProtection)
    url_limit: UrlLimit = field(default_factory=UrlLimit)
    clock: Clock = field(default_factory=Clock)

    @classmethod
    def for_service(cls, *, limits: LimitConfig, messages: MessageTable, clock: Clock | None = None,
                    url_limit: UrlLimit | None = None) -> SandboxServices:
        """A service's machinery with its own limits and wording, every part on one clock."""
        clock = clock or Clock()
        return cls(journal=Journal(clock=clock), limits=ServiceProtection(limits, messages=messages, clock=clock.monotonic),
                   url_limit=url_limit or UrlLimit(), clock=clock)
