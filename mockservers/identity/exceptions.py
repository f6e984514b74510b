"""Errors of the mock Entra ID.

Two families: `EntraError` is what the token and discovery endpoints answer (the OAuth error JSON
with an AADSTS code that MSAL, azure-identity and humans read), and `InvalidToken` is what a
resource service gets back when it validates a bearer token, so it can build its own 401.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

TokenFailure = Literal["missing", "malformed", "signature", "expired", "audience", "tenant", "issuer"]


class InvalidToken(Exception):
    """A bearer token a resource service must refuse; `reason` says which check failed."""

    def __init__(self, reason: TokenFailure, message: str) -> None:
        super().__init__(message)
        self.reason: TokenFailure = reason
        self.message = message


class EntraError(Exception):
    """An OAuth error answered in Entra's shape (`error`, `error_description` with AADSTS code...)."""

    status: int = 400
    error: str = "invalid_request"
    code: int | None = None

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def body(self, trace_id: str, correlation_id: str, when: datetime | None = None,
             error_uri_base: str | None = None) -> dict[str, Any]:
        """The JSON body; the description carries the trace lines the way Entra appends them."""
        when = when or datetime.now(UTC)
        stamp = when.strftime("%Y-%m-%d %H:%M:%SZ")
        prefix = f"AADSTS{self.code}: " if self.code is not None else ""
        body: dict[str, Any] = {
            "error": self.error,
            "error_description": (
                f"{prefix}{self.description}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
            ),
            "error_codes": [self.code] if self.code is not None else [],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        }
        if self.code is not None and error_uri_base:
            body["error_uri"] = f"{error_uri_base.rstrip('/')}/error?code={self.code}"
        return body


class TenantNotFound(EntraError):
    code = 90002

    def __init__(self, tenant: str) -> None:
        super().__init__(
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud. This sandbox directory knows one tenant only."
        )


class MissingParameter(EntraError):
    code = 900144

    def __init__(self, name: str) -> None:
        super().__init__(f"The request body must contain the following parameter: '{name}'.")


class UnsupportedGrantType(EntraError):
    error = "unsupported_grant_type"
    code = 70003

    def __init__(self, grant_type: str) -> None:
        super().__init__(
            f"The app requested an unsupported grant type '{grant_type}'. "
            "The sandbox token endpoint supports client_credentials only."
        )


class ApplicationNotFound(EntraError):
    error = "unauthorized_client"
    code = 700016

    def __init__(self, client_id: str, tenant_id: str) -> None:
        super().__init__(
            f"Application with identifier '{client_id}' was not found in the directory '{tenant_id}'. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You may have sent your authentication "
            "request to the wrong tenant."
        )


class MissingClientCredential(EntraError):
    status = 401
    error = "invalid_client"
    code = 7000218

    def __init__(self) -> None:
        super().__init__(
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."
        )


class InvalidClientSecret(EntraError):
    status = 401
    error = "invalid_client"
    code = 7000215

    def __init__(self, client_id: str) -> None:
        super().__init__(
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value, not the client secret ID, for a secret added to app '{client_id}'."
        )


class ClientAssertionNotSupported(EntraError):
    status = 401
    error = "invalid_client"
    code = None

    def __init__(self) -> None:
        super().__init__(
            "Certificate credentials (client_assertion) are not supported by the sandbox identity "
            "service; use client_secret."
        )


class ScopeNotDefault(EntraError):
    error = "invalid_scope"
    code = 1002012

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"The provided value for scope {scope} is not valid. Client credential flows must have a "
            "scope value with /.default suffixed to the resource identifier (application ID URI)."
        )


class InvalidScope(EntraError):
    error = "invalid_scope"
    code = 70011

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
        )


class ResourceNotFound(EntraError):
    """Entra names this error `invalid_resource` on both the v1 and v2 endpoints."""

    error = "invalid_resource"
    code = 500011

    def __init__(self, resource: str, tenant_id: str) -> None:
        super().__init__(
            f"The resource principal named {resource} was not found in the tenant named {tenant_id}. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You might have sent your authentication "
            "request to the wrong tenant."
        )


class PostOnly(EntraError):
    code = 900561

    def __init__(self, method: str) -> None:
        super().__init__(f"The endpoint only accepts POST requests. Received a {method} request.")


class InteractiveSignInUnavailable(EntraError):
    code = None

    def __init__(self) -> None:
        super().__init__(
            "Interactive sign-in is not available in the sandbox identity service; "
            "use the client_credentials grant at the token endpoint."
        )


class EndpointNotFound(EntraError):
    status = 404
    code = None

    def __init__(self, path: str) -> None:
        super().__init__(f"The sandbox identity service has no endpoint at '{path}'.")


class ServerError(EntraError):
    status = 500
    error = "server_error"
    code = None

    def __init__(self) -> None:
        super().__init__("The sandbox identity service failed to process the request.")
