"""Flask app factory for the BC API v2.0: authentication, sandbox hooks, routing to the service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ..clock import Clock
from ..identity import BUSINESS_CENTRAL_RESOURCE, InvalidToken, TokenValidator
from ..odata import database
from ..odata.protocol import to_response
from ..sandbox.fixtures import DEFAULT_LIBRARY, FixtureLibrary
from ..sandbox.hooks import note_batch_operations, sandbox_admit
from ..sandbox.install import install_sandbox
from ..sandbox.limits import BC_LIMITS, BC_MESSAGES
from ..sandbox.services import SandboxServices, UrlLimit
from .exceptions import BCError
from .models import BCBackend
from .responses import BCService, Request
from .webhooks import WebhookConfig, Webhooks

MAX_BODY_BYTES = 350 * 1024 * 1024


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return to_response(BCError(status, code, message, headers).result())


def new_sandbox_services(clock: Clock | None = None) -> SandboxServices:
    # BC documents no URL limit of its own; it gets the Dataverse one, refused in its own envelope.
    return SandboxServices.for_service(limits=BC_LIMITS, messages=BC_MESSAGES, clock=clock,
                                       url_limit=UrlLimit(code="BadRequest"))


def create_app(
    *,
    database_url: str = "sqlite://",
    fixture: str = "default",
    fixtures: FixtureLibrary = DEFAULT_LIBRARY,
    config: Mapping[str, Any] | None = None,
    validator: TokenValidator | None,
    tenant_aliases: set[str] | None = None,
    sandbox: SandboxServices | None = None,
    webhook_config: WebhookConfig | None = None,
    max_page_size: int | None = None,
) -> Flask:
    """``validator`` None disables authentication (tests of the protocol alone).

    The environment's state lives at ``database_url`` (any SQLAlchemy URL; ``config`` may override the
    Flask-SQLAlchemy settings derived from it); the backend and the webhook sender (None without
    ``webhook_config``) are ``app.extensions["bc"]["backend"]`` and ``["webhooks"]``."""
    app = Flask("mockservers.bc")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.update(database.app_config(database_url))
    app.config.update(config or {})
    engine, session = database.init_app(app)
    sandbox = sandbox or new_sandbox_services()
    backend = BCBackend(engine, fixture=fixture, session=session, fixtures=fixtures, clock=sandbox.clock)
    webhooks = None
    if webhook_config is not None:
        webhooks = Webhooks(engine, webhook_config, clock=sandbox.clock.now, supported_resource=backend.supports_webhooks)
    kwargs = {"max_page_size": max_page_size} if max_page_size else {}
    service = BCService(backend, tenant_aliases=tenant_aliases, webhooks=webhooks, **kwargs)
    app.extensions["bc"] = {"backend": backend, "service": service, "sandbox": sandbox, "webhooks": webhooks}
    install_sandbox(app, sandbox, backend, service="bc", render_error=_error_response)

    audiences = {BUSINESS_CENTRAL_RESOURCE}

    def rejected_credentials() -> Response:
        return _error_response(401, "Authentication_InvalidCredentials", "The server has rejected the client credentials.",
                               {"WWW-Authenticate": f'Bearer realm="", error="invalid_token", '
                                                   f'resource_id="{BUSINESS_CENTRAL_RESOURCE}"'})

    @app.route("/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    def api(path: str) -> Response:
        claims: dict = {}
        if validator is not None:
            try:
                claims = validator.validate_authorization(request.headers.get("Authorization"), audiences)
            except InvalidToken:
                return rejected_credentials()
            # A valid token of an app that is not registered (and enabled) in BC is refused the same way.
            if backend.application(claims.get("appid")) is None:
                return rejected_credentials()
        g.principal = claims.get("oid") or claims.get("appid")
        sandbox_admit(g.principal)
        req = Request(
            method=request.method,
            path=request.path,
            args=request.args,
            headers=request.headers,
            body=request.get_data(cache=True),
            base_url=request.host_url.rstrip("/"),
            principal=claims,
        )
        result = service.handle(req)
        if result.batch_operations is not None:
            note_batch_operations(result.batch_operations)
        return to_response(result)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return _error_response(404, "BadRequest_NotFound",
                                   f"No HTTP resource was found that matches the request URI '{request.url}'.")
        if error.code == 405:
            return _error_response(405, "BadRequest_MethodNotAllowed", f"'{request.method}' requests are not allowed.")
        if error.code == 413:
            return _error_response(413, "RequestEntityTooLarge", "The request body is too large.")
        return _error_response(error.code or 400, "BadRequest", error.description or "Bad request.")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unexpected error")
        return _error_response(500, "Internal_ServerError", "An unexpected error occurred.")

    return app

