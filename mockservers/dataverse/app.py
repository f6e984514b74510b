"""Flask app factory for the Dataverse Web API: authentication, sandbox hooks, routing to the service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ..clock import Clock
from ..identity import InvalidToken, TokenValidator, bearer_challenge
from ..odata import database
from ..odata.protocol import to_response
from ..sandbox.fixtures import DEFAULT_LIBRARY, FixtureLibrary
from ..sandbox.hooks import note_batch_operations, sandbox_admit
from ..sandbox.install import install_sandbox
from ..sandbox.limits import DATAVERSE_LIMITS, DATAVERSE_MESSAGES, dataverse_budget_headers
from ..sandbox.services import SandboxServices
from .exceptions import DataverseError
from .models import Caller, DataverseBackend
from .responses import API_PATH, DataverseService, Request

MAX_BODY_BYTES = 128 * 1024 * 1024
UNAUTHORIZED_CODE = "0x80072560"
REQUEST_TOO_LARGE = "0x8004418a"  # RequestLengthTooLarge in the Dataverse error list


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return to_response(DataverseError(status, code, message, headers).result())


def new_sandbox_services(clock: Clock | None = None) -> SandboxServices:
    return SandboxServices.for_service(limits=DATAVERSE_LIMITS, messages=DATAVERSE_MESSAGES, clock=clock)


def create_app(
    *,
    database_url: str = "sqlite://",
    fixture: str = "default",
    fixtures: FixtureLibrary = DEFAULT_LIBRARY,
    config: Mapping[str, Any] | None = None,
    public_url: str,
    validator: TokenValidator | None,
    identity_url: str,
    tenant_id: str,
    audiences: set[str] | None = None,
    sandbox: SandboxServices | None = None,
) -> Flask:
    """``public_url`` is the org URL (also the token audience); ``validator`` None disables auth.

    The org's state lives at ``database_url`` (any SQLAlchemy URL; ``config`` may override the
    Flask-SQLAlchemy settings derived from it); the backend is reached as
    ``app.extensions["dataverse"]["backend"]``."""
    app = Flask("mockservers.dataverse")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.update(database.app_config(database_url))
    app.config.update(config or {})
    engine, session = database.init_app(app)
    sandbox = sandbox or new_sandbox_services()
    backend = DataverseBackend(engine, fixture=fixture, session=session, fixtures=fixtures, clock=sandbox.clock)
    public_url = public_url.rstrip("/")
    service = DataverseService(backend, public_url + API_PATH, tenant_id=tenant_id)
    allowed_audiences = set(audiences or ()) | {public_url}
    app.extensions["dataverse"] = {"backend": backend, "service": service, "sandbox": sandbox}

    install_sandbox(app, sandbox, backend, service="dataverse", render_error=_error_response,
                    budget_headers=dataverse_budget_headers)

    def challenge(message: str) -> Response:
        return _error_response(401, "", message, {
            "WWW-Authenticate": bearer_challenge(identity_url, tenant_id, public_url + "/"),
        })

    @app.route(API_PATH, defaults={"path": ""}, methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    @app.route(API_PATH + "/", defaults={"path": ""}, methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    @app.route(API_PATH + "/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    def web_api(path: str) -> Response:
        claims: dict = {}
        if validator is not None:
            try:
                claims = validator.validate_authorization(request.headers.get("Authorization"), allowed_audiences)
            except InvalidToken as error:
                return challenge(error.message)
        g.principal = claims.get("oid") or claims.get("appid")
        sandbox_admit(g.principal)
        backend.refresh_settings()
        caller: Caller | None
        if validator is None:
            with backend.store.read() as conn:
                caller = backend.system_caller(conn)
        else:
            caller = backend.caller_for_token(claims.get("appid"), claims.get("oid"))
        if caller is None:
            return _error_response(
                403, UNAUTHORIZED_CODE,
                f"The user with application id {claims.get('appid')} is not a member of the organization.")
        if request.headers.get("MSCRMCallerID") or request.headers.get("CallerObjectId"):
            with backend.store.read() as conn:
                caller = backend.impersonate(conn, caller, request.headers)
        raw_path = request.path[len(API_PATH):].lstrip("/")
        req = Request(
            method=request.method,
            path=raw_path,
            args=request.args,
            headers=request.headers,
            body=request.get_data(cache=True),
            caller=caller,
        )
        result = service.handle(req)
        if result.batch_operations is not None:
            note_batch_operations(result.batch_operations)
        return to_response(result)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 404:
            segment = request.path.strip("/").split("/")[0] or "/"
            return _error_response(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
        if error.code == 413:
            return _error_response(413, REQUEST_TOO_LARGE, "Request message length is too large.")
        return _error_response(error.code or 400, "", error.description or "Bad request.")

    @app.errorhandler(DataverseError)
    def dataverse_error(error: DataverseError) -> Response:
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unexpected error")
        return _error_response(500, "0x80040216", "An unexpected error occurred.")

    return app

