"""Dataverse error envelopes: ``{"error": {"code": "0x…", "message": "…"}}`` with the real statuses."""

from __future__ import annotations

from ..odata import errors as engine
from ..odata.protocol import Result, ServiceError
from ..odata.schema import EntityType


class DataverseError(ServiceError):
    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def result(self) -> Result:
        return Result.json(self.status, self.body(), list(self.headers.items()))


# Codes from the Dataverse error list
# (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/reference/web-service-error-codes).
OBJECT_DOES_NOT_EXIST = "0x80040217"
RESOURCE_NOT_FOUND = "0x8006088a"
DUPLICATE_RECORD = "0x80040237"
CONCURRENCY_VERSION_MISMATCH = "0x80060882"
DUPLICATE_ENTITY_KEY = "0x80060892"
PROPERTY_NOT_FOUND = "0x0"
PAYLOAD_ERROR = "0x80048d19"
STRING_TOO_LONG = "0x80044331"
INVALID_ARGUMENT = "0x80040203"
NOT_SUPPORTED = "0x80040315"
QUERY_PROPERTY_ERROR = "0x80060888"
REQUIRED_FIELD_MISSING = "0x80040200"  # RequiredFieldMissing
SDK_ENTITY_DOES_NOT_SUPPORT_MESSAGE = "0x80040800"
EXPIRED_VERSION_STAMP = "0x80044352"


def not_found(entity: str, key: object) -> DataverseError:
    return DataverseError(404, OBJECT_DOES_NOT_EXIST, f"Entity '{entity}' With Id = {key} Does Not Exist")


def segment_not_found(segment: str) -> DataverseError:
    return DataverseError(404, RESOURCE_NOT_FOUND, f"Resource not found for the segment '{segment}'.")


def message_not_supported(message: str, table: str) -> DataverseError:
    """A message (Create, CreateMultiple, …) the table does not answer."""
    return DataverseError(
        400, SDK_ENTITY_DOES_NOT_SUPPORT_MESSAGE,
        f"The '{message}' method does not support entities of type '{table}'. "
        "MessageProcessorCache returned MessageProcessor.Empty.",
    )


def bad_request(message: str, code: str = PAYLOAD_ERROR) -> DataverseError:
    return DataverseError(400, code, message)


def from_engine(exc: engine.ODataError, entity: EntityType | None = None) -> DataverseError:
    """Translate a shared-engine failure into the status and code Dataverse uses."""
    if isinstance(exc, engine.NotFound):
        return not_found(exc.entity, exc.key)
    if isinstance(exc, engine.VersionMismatch):
        return DataverseError(412, CONCURRENCY_VERSION_MISMATCH, exc.message)
    if isinstance(exc, engine.AlreadyExists):
        return DataverseError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")
    if isinstance(exc, engine.KeyViolation):
        columns = ", ".join(exc.properties)
        return DataverseError(
            412,
            DUPLICATE_ENTITY_KEY,
            f"Entity Key {exc.key_name} violated. A record with the same value for {columns} already exists. "
            "A duplicate record cannot be created. Try another value.",
        )
    if isinstance(exc, engine.UnknownProperty):
        return DataverseError(400, PROPERTY_NOT_FOUND, exc.message)
    if isinstance(exc, engine.InvalidValue):
        prop = entity.property(exc.property) if entity is not None and exc.property else None
        if exc.reason == "length" and prop is not None and entity is not None:
            return DataverseError(
                400,
                STRING_TOO_LONG,
                f"A validation error occurred.  The length of the '{prop.name}' attribute of the '{entity.name}' "
                f"entity exceeded the maximum allowed length of '{prop.max_length}'.",
            )
        code = STRING_TOO_LONG if exc.reason == "length" else INVALID_ARGUMENT if exc.reason == "option" else PAYLOAD_ERROR
        return DataverseError(400, code, exc.message)
    if isinstance(exc, engine.UnsupportedQuery):
        return DataverseError(400, NOT_SUPPORTED, exc.message)
    if isinstance(exc, engine.QuerySyntaxError):  # what ODL's URI parser and binder refuse
        return DataverseError(400, QUERY_PROPERTY_ERROR, exc.message)
    return DataverseError(400, PROPERTY_NOT_FOUND, exc.message)
