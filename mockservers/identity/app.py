"""Flask app of the mock Entra ID: OIDC discovery, JWKS, and the client-credentials token endpoint.

URLs in discovery documents are built from the request's own scheme and host, so the same app
works on any port, over http (curl) or https (MSAL and azure-identity insist on https).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import unquote_plus

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from mockservers.identity.exceptions import (
    ApplicationNotFound,
    ClientAssertionNotSupported,
    EndpointNotFound,
    EntraError,
    InteractiveSignInUnavailable,
    InvalidClientSecret,
    InvalidScope,
    MissingClientCredential,
    MissingParameter,
    PostOnly,
    ResourceNotFound,
    ScopeNotDefault,
    ServerError,
    TenantNotFound,
    UnsupportedGrantType,
)
from mockservers.identity.registrations import MULTI_TENANT_ALIASES, AppRegistration, Directory
from mockservers.identity.tokens import TokenIssuer

log = logging.getLogger(__name__)

DEFAULT_SCOPE_SUFFIX = "/.default"
# OIDC scopes MSAL may add to any request; they never name a resource.
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
MAX_REQUEST_BYTES = 64 * 1024


def _base_url() -> str:
    return request.host_url.rstrip("/")


def _correlation_id() -> str:
    """Entra echoes the caller's `client-request-id` as the correlation id."""
    given = request.headers.get("client-request-id", "").strip()
    return given if 0 < len(given) <= 64 else str(uuid.uuid4())


def _no_cache(response: Response, correlation_id: str, trace_id: str) -> Response:
    response.headers["Cache-Control"] = "no-store, no-cache"
    response.headers["Pragma"] = "no-cache"
    response.headers["client-request-id"] = correlation_id
    response.headers["x-ms-request-id"] = trace_id
    return response


def _error_response(error: EntraError) -> Response:
    trace_id, correlation_id = str(uuid.uuid4()), _correlation_id()
    response = jsonify(error.body(trace_id, correlation_id, error_uri_base=_base_url()))
    response.status_code = error.status
    return _no_cache(response, correlation_id, trace_id)


def _client_credentials() -> tuple[str | None, str | None]:
    """Client id and secret from the form, falling back to HTTP Basic (url-encoded per RFC 6749)."""
    client_id = request.form.get("client_id") or None
    secret = request.form.get("client_secret") or None
    basic = request.authorization
    if basic is not None and basic.type == "basic":
        client_id = client_id or (unquote_plus(basic.username) if basic.username else None)
        secret = secret or (unquote_plus(basic.password) if basic.password else None)
    return client_id, secret


def _authenticate(directory: Directory, tenant_id: str) -> AppRegistration:
    grant_type = request.form.get("grant_type", "").strip()
    if not grant_type:
        raise MissingParameter("grant_type")
    if grant_type != "client_credentials":
        raise UnsupportedGrantType(grant_type)
    client_id, secret = _client_credentials()
    if not client_id:
        raise MissingParameter("client_id")
    app = directory.find_app(client_id)
    if app is None:
        raise ApplicationNotFound(client_id, tenant_id)
    if secret is None:
        if request.form.get("client_assertion"):
            raise ClientAssertionNotSupported()
        raise MissingClientCredential()
    if not app.secret_matches(secret):
        raise InvalidClientSecret(app.client_id)
    return app


def _resource_from_scope(directory: Directory, tenant_id: str) -> str:
    raw = request.form.get("scope", "")
    if not raw.strip():
        raise MissingParameter("scope")
    scopes = [s for s in raw.split() if s.lower() not in RESERVED_SCOPES]
    if len(scopes) != 1:
        raise InvalidScope(raw)
    scope = scopes[0]
    if not scope.lower().endswith(DEFAULT_SCOPE_SUFFIX):
        raise ScopeNotDefault(scope)
    resource = scope[: -len(DEFAULT_SCOPE_SUFFIX)].rstrip("/")
    if not resource:
        raise InvalidScope(raw)
    return _known_resource(directory, resource, tenant_id)


def _known_resource(directory: Directory, resource: str, tenant_id: str) -> str:
    registered = directory.find_resource(resource)
    if registered is None:
        raise ResourceNotFound(resource, tenant_id)
    return registered


def create_app(directory: Directory, issuer: TokenIssuer) -> Flask:
    """Build the identity service for one directory; tokens are signed by `issuer`."""
    app = Flask("mockservers.identity")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["mock_identity"] = {"directory": directory, "issuer": issuer}

    def tenant_or_fail(segment: str) -> str:
        tenant_id = directory.resolve_tenant(segment)
        if tenant_id is None:
            raise TenantNotFound(segment)
        return tenant_id

    def endpoint_tenant(segment: str, tenant_id: str) -> str:
        """Multi-tenant aliases stay in endpoint URLs; a domain is replaced by the tenant id."""
        return segment if segment.lower() in MULTI_TENANT_ALIASES else tenant_id

    def openid_configuration(segment: str, v2: bool) -> dict[str, Any]:
        tenant_id = tenant_or_fail(segment)
        root = f"{_base_url()}/{endpoint_tenant(segment, tenant_id)}"
        oauth = f"{root}/oauth2/v2.0" if v2 else f"{root}/oauth2"
        return {
            "token_endpoint": f"{oauth}/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "jwks_uri": f"{root}/discovery/v2.0/keys" if v2 else f"{root}/discovery/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "grant_types_supported": ["client_credentials"],
            "issuer": issuer.issuer_for(tenant_id),
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{oauth}/authorize",
            "http_logout_supported": False,
            "frontchannel_logout_supported": False,
            "claims_supported": ["aud", "iss", "iat", "nbf", "exp", "tid", "appid", "azp", "oid", "sub",
                                 "idtyp", "ver", "roles"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": request.host,
            "tenant_display_name": directory.display_name,
        }

    @app.get("/<tenant>/v2.0/.well-known/openid-configuration")
    def openid_configuration_v2(tenant: str) -> Response:
        return jsonify(openid_configuration(tenant, v2=True))

    @app.get("/<tenant>/.well-known/openid-configuration")
    def openid_configuration_v1(tenant: str) -> Response:
        return jsonify(openid_configuration(tenant, v2=False))

    @app.get("/<tenant>/discovery/v2.0/keys")
    @app.get("/<tenant>/discovery/keys")
    def keys(tenant: str) -> Response:
        tenant_or_fail(tenant)
        return jsonify(issuer.signing_key.jwks())

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token_v2(tenant: str) -> Response:
        tenant_id = tenant_or_fail(tenant)
        client = _authenticate(directory, tenant_id)
        resource = _resource_from_scope(directory, tenant_id)
        access_token, expires_in = issuer.issue(client, resource, tenant_id)
        body = {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in,
                "access_token": access_token}
        trace_id = str(uuid.uuid4())
        return _no_cache(jsonify(body), _correlation_id(), trace_id)

    @app.post("/<tenant>/oauth2/token")
    def token_v1(tenant: str) -> Response:
        """The v1 endpoint (`resource=` instead of `scope=`), still used by older clients."""
        tenant_id = tenant_or_fail(tenant)
        client = _authenticate(directory, tenant_id)
        raw = request.form.get("resource", "").strip()
        if not raw:
            raise MissingParameter("resource")
        resource = _known_resource(directory, raw, tenant_id)
        now = int(issuer.clock.time())
        access_token, expires_in = issuer.issue(client, resource, tenant_id, now=now)
        # v1 answers every number as a string.
        body = {"token_type": "Bearer", "expires_in": str(expires_in), "ext_expires_in": str(expires_in),
                "expires_on": str(now + expires_in), "not_before": str(now), "resource": resource,
                "access_token": access_token}
        return _no_cache(jsonify(body), _correlation_id(), str(uuid.uuid4()))

    @app.get("/<tenant>/oauth2/v2.0/token")
    @app.get("/<tenant>/oauth2/token")
    def token_get(tenant: str) -> Response:
        tenant_or_fail(tenant)
        raise PostOnly("GET")

    @app.get("/<tenant>/oauth2/v2.0/authorize")
    @app.get("/<tenant>/oauth2/authorize")
    def authorize(tenant: str) -> Response:
        tenant_or_fail(tenant)
        raise InteractiveSignInUnavailable()

    @app.errorhandler(EntraError)
    def entra_error(error: EntraError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return _error_response(EndpointNotFound(request.path))
        wrapped = EntraError(error.description or error.name)
        wrapped.status = error.code or 400
        return _error_response(wrapped)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("identity service failed on %s %s", request.method, request.path)
        return _error_response(ServerError())

    return app
