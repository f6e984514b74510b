"""BC error envelopes: ``{"error": {"code": "…", "message": "…  CorrelationId:  <guid>."}}``."""

from __future__ import annotations

import uuid

from ..odata import errors as engine
from ..odata.protocol import Result, ServiceError
from ..odata.schema import EntityType


class BCError(ServiceError):
    def result(self, correlation_id: str | None = None) -> Result:
        """The envelope names a correlation id, which is also the response's `request-id` header."""
        correlation_id = correlation_id or str(uuid.uuid4())
        body = {"error": {"code": self.code, "message": f"{self.message}  CorrelationId:  {correlation_id}."}}
        headers = [*self.headers.items(), ("request-id", correlation_id)]
        return Result.json(self.status, body, headers, content_type="application/json")


def resource_not_found(segment: str) -> BCError:
    return BCError(404, "BadRequest_ResourceNotFound", f"Resource not found for the segment '{segment}'.")


def no_resource(uri: str) -> BCError:
    return BCError(404, "BadRequest_NotFound", f"No HTTP resource was found that matches the request URI '{uri}'.")


def bad_request(message: str, code: str = "BadRequest") -> BCError:
    return BCError(400, code, message)


def method_not_allowed(method: str, set_name: str) -> BCError:
    return BCError(
        405,
        "BadRequest_MethodNotAllowed",
        f"'{method}' requests for '{set_name}' of EdmType 'Entity' are not allowed within Microsoft Dynamics 365 "
        "Business Central OData web services.",
    )


def invalid_token() -> BCError:
    return BCError(
        400,
        "BadRequest_InvalidToken",
        "Could not validate the client concurrency token required by the service. Please provide a valid token in "
        "the client request.",
    )


def entity_changed() -> BCError:
    return BCError(409, "Request_EntityChanged", "Another user has already changed the record.")


def from_engine(exc: engine.ODataError, entity: EntityType | None = None, caption: str | None = None,
                values: dict | None = None) -> BCError:
    """Translate a shared-engine failure into BC's status and code (``values``: the row written, for key texts)."""
    if isinstance(exc, engine.NotFound):
        return resource_not_found(entity.set_name if entity else str(exc.entity))
    if isinstance(exc, engine.VersionMismatch):
        return entity_changed()
    if isinstance(exc, engine.AlreadyExists | engine.KeyViolation):
        fields = ""
        if isinstance(exc, engine.KeyViolation):
            fields = " Identification fields and values: " + ",".join(
                f"{p}='{values[p]}'" if values and p in values else p for p in exc.properties)
        return BCError(409, "Internal_EntityWithSameKeyExists", f"The {caption or 'record'} already exists.{fields}")
    if isinstance(exc, engine.UnknownProperty):
        return BCError(400, "BadRequest", exc.message.replace("Microsoft.Dynamics.CRM", "Microsoft.NAV"))
    if isinstance(exc, engine.InvalidValue):
        if exc.reason == "length":
            return BCError(400, "Application_StringExceededLength", exc.message)
        return BCError(400, "BadRequest", exc.message)
    if isinstance(exc, engine.QuerySyntaxError):
        return BCError(400, "BadRequest", exc.message)
    return BCError(400, "BadRequest", exc.message)
