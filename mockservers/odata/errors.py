"""Engine-level failures. Each service maps them to its own status codes and error envelope."""

from __future__ import annotations


class ODataError(Exception):
    """Base class: something the client sent or asked for cannot be served."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QuerySyntaxError(ODataError):
    """A query option ($filter, $select, ...) is malformed."""


class UnknownProperty(ODataError):
    """A property or navigation name that the entity type does not declare."""

    def __init__(self, name: str, type_name: str) -> None:
        super().__init__(f"Could not find a property named '{name}' on type '{type_name}'.")
        self.name = name
        self.type_name = type_name


class UnsupportedQuery(ODataError):
    """A well-formed query the service does not support (e.g. Dataverse `$skip`)."""


class NotFound(ODataError):
    def __init__(self, entity: str, key: object) -> None:
        super().__init__(f"{entity} With Id = {key} Does Not Exist")
        self.entity = entity
        self.key = key


class VersionMismatch(ODataError):
    """The If-Match version no longer matches the stored row version."""


class AlreadyExists(ODataError):
    """A row with the same primary key exists (create, or If-None-Match: *)."""


class KeyViolation(ODataError):
    """A unique alternate key would be duplicated."""

    def __init__(self, entity: str, key_name: str, properties: tuple[str, ...]) -> None:
        super().__init__(f"{entity}: duplicate value for alternate key {key_name}")
        self.entity = entity
        self.key_name = key_name
        self.properties = properties


class InvalidValue(ODataError):
    """A property value has the wrong type, length or option value."""

    def __init__(self, message: str, *, property: str | None = None, reason: str = "type") -> None:
        super().__init__(message)
        self.property = property
        self.reason = reason  # "type" | "length" | "option" | "required" | "readonly"
