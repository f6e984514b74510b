"""What the request hooks and the control API of one service share (no Flask wiring here)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .faults import FaultInjector
from .journal import Journal
from .limits import ServiceProtection

CONTROL_PREFIX = "/_sandbox"


def is_control_path(path: str) -> bool:
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


def new_admin_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class SandboxServices:
    """The per-service sandbox machinery the hooks and the control API share."""

    admin_token: str = field(default_factory=new_admin_token)
    journal: Journal = field(default_factory=Journal)
    faults: FaultInjector = field(default_factory=FaultInjector)
    limits: ServiceProtection = field(default_factory=ServiceProtection)
