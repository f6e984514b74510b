"""A client for one service's control API (``/_sandbox``), over HTTP.

The same calls steer a live sandbox and an in-process one (whose router answers the control URLs
like any other), so tests, the ``mockservers journal`` command and benchmarks share one client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests

from ..clock import iso
from ..sandbox.journal import JournalQuery


class ControlError(RuntimeError):
    """The control API refused a call; ``status`` and the service's message say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ControlClient:
    """``/_sandbox`` of one service: reset, seed, journal, faults, limits, clock, counters."""

    def __init__(self, service_url: str, admin_token: str, *, verify: bool | str = True,
                 session: requests.Session | None = None, timeout: float = 60.0) -> None:
        self.base = f"{service_url.rstrip('/')}/_sandbox"
        self.verify = verify
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {admin_token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One control call; the parsed JSON answer (None for 204), or ControlError."""
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, f"{self.base}/{path.lstrip('/')}", **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:500] or response.reason
            raise ControlError(response.status_code, str(message))
        return response.json() if response.content else None

    # -- data -------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.call("POST", "reset")

    def seed(self, fixture: str | None = None, *, data: dict[str, Any] | None = None) -> dict[str, int]:
        """Load a fixture set by name, or ``data`` (the service's fixture document) inline."""
        body: dict[str, Any] = {"data": data} if data is not None else {"fixture": fixture or "default"}
        return dict(self.call("POST", "seed", json=body)["seeded"])

    # -- journal ----------------------------------------------------------------------------------
    def journal(self, query: JournalQuery | None = None) -> list[dict[str, Any]]:
        return list(self.call("GET", "journal", params=(query or JournalQuery()).to_args())["value"])

    def clear_journal(self) -> None:
        self.call("DELETE", "journal")

    # -- faults and limits --------------------------------------------------------------------------
    def set_faults(self, **config: Any) -> dict[str, Any]:
        return dict(self.call("PUT", "faults", json=config))

    def clear_faults(self) -> None:
        self.call("DELETE", "faults")

    def set_limits(self, **config: Any) -> dict[str, Any]:
        return dict(self.call("PUT", "limits", json=config))

    def limits(self) -> dict[str, Any]:
        return dict(self.call("GET", "limits"))

    def reset_limits(self) -> dict[str, Any]:
        return dict(self.call("POST", "limits/reset"))

    def counters(self) -> dict[str, Any]:
        return dict(self.call("GET", "counters"))

    # -- clock ------------------------------------------------------------------------------------
    def clock(self) -> dict[str, Any]:
        return dict(self.call("GET", "clock"))

    def set_clock(self, *, now: datetime | str | None = None, advance_seconds: float | None = None,
                  frozen: bool | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if now is not None:
            body["now"] = iso(now) if isinstance(now, datetime) else now
        if advance_seconds is not None:
            body["advance_seconds"] = advance_seconds
        if frozen is not None:
            body["frozen"] = frozen
        return dict(self.call("PUT", "clock", json=body))
