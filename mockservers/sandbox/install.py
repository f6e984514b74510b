"""Wire a service app to the sandbox: request hooks (journal, faults, limits) plus the control API."""

from __future__ import annotations

from typing import Any, Protocol

from flask import Flask, g

from ..odata.errors import ODataError
from ..odata.protocol import ServiceError
from .control import control_blueprint
from .hooks import BudgetHeaders, RenderError, SandboxHooks, install_sandbox_hooks
from .services import SandboxServices


class SeededBackend(Protocol):
    def reset(self) -> None: ...
    def seed(self, fixture: str = ..., *, document: dict[str, Any] | None = None) -> dict[str, int]: ...


def install_sandbox(
    app: Flask,
    sandbox: SandboxServices,
    backend: SeededBackend,
    *,
    service: str,
    render_error: RenderError,
    budget_headers: BudgetHeaders | None = None,
) -> SandboxHooks:
    """Everything a service app needs from the sandbox: the request hooks and the control API.

    The caller's principal is read from ``flask.g.principal`` (set by the app once it authenticated).
    """
    # `//` in a path is the client's to send and the service's to answer, not a redirect to an HTML page;
    # set before any rule is added, as each rule takes the map's setting when it is bound.
    app.url_map.merge_slashes = False
    hooks = install_sandbox_hooks(app, sandbox, service=service, principal=lambda: g.get("principal"),
                                  render_error=render_error, budget_headers=budget_headers)

    def seed(fixture: str, document: dict[str, Any] | None) -> dict[str, Any]:
        """A named fixture set, or ``document``: a fixture's content sent inline."""
        try:
            return {"seeded": backend.seed(document=document) if document is not None else backend.seed(fixture)}
        except FileNotFoundError as error:
            raise LookupError(str(error)) from error
        except (ServiceError, ODataError) as error:  # a record the service's own write rules refuse
            raise ValueError(f"a record was refused: {error.message}") from error

    app.register_blueprint(control_blueprint(sandbox, reset=backend.reset, seed=seed))
    return hooks
