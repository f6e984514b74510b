"""JSON <-> stored value conversion by EDM type, with the checks both services apply on write."""

from __future__ import annotations

import base64
import reprlib
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from dateutil.parser import isoparse

from .errors import InvalidValue
from .schema import Edm, Property

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


# A value echoed in an error message is cut: a 5 MB string must not come back as a 5 MB error.
ECHO_LIMIT = 250
_echo = reprlib.Repr()
_echo.maxstring = _echo.maxother = _echo.maxlong = ECHO_LIMIT
_echo.maxlevel, _echo.maxdict, _echo.maxlist = 2, 4, 4


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut to a few hundred characters."""
    return _echo.repr(value)


def shown_text(value: Any) -> str:
    """``str(value)`` for an error message, cut after ``ECHO_LIMIT`` characters."""
    text = value if isinstance(value, str) else shown(value)
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "..."


def parse_guid(text: Any) -> str:
    """Canonical lower-case GUID string, or InvalidValue."""
    if not isinstance(text, str):
        raise InvalidValue(f"Invalid GUID value {shown(text)}.", reason="type")
    try:
        return str(uuid.UUID(text.strip("{}")))
    except ValueError as exc:
        raise InvalidValue(f"Invalid format of GUID string '{shown_text(text)}'.", reason="type") from exc


def to_stored(prop: Property, value: Any) -> Any:
    """Validate a JSON value for ``prop`` and convert it to what the store keeps."""
    if value is None:
        return None
    t = prop.type
    name = prop.name
    if t is Edm.String:
        if not isinstance(value, str):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to Edm.String for '{name}'.", property=name)
        if prop.max_length is not None and len(value) > prop.max_length:
            raise InvalidValue(
                f"The length of the '{name}' attribute exceeded the maximum allowed length of '{prop.max_length}'.",
                property=name,
                reason="length",
            )
        return value
    if t is Edm.Guid:
        try:
            return parse_guid(value)
        except InvalidValue as exc:
            raise InvalidValue(exc.message, property=name) from exc
    if t is Edm.Boolean:
        if not isinstance(value, bool):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to Edm.Boolean for '{name}'.", property=name)
        return value
    if t in (Edm.Int32, Edm.Int64):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to {t.value} for '{name}'.", property=name)
        lo, hi = _INT32 if t is Edm.Int32 else _INT64
        if not lo <= value <= hi:
            raise InvalidValue(f"The value {shown_text(value)} is out of range for '{name}'.", property=name, reason="range")
        if prop.options is not None and value not in prop.options.values():
            raise InvalidValue(
                f"{value} is not a valid value for the '{name}' attribute.", property=name, reason="option"
            )
        return value
    if t in (Edm.Decimal, Edm.Double):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to {t.value} for '{name}'.", property=name)
        try:
            number = Decimal(str(value))
        except InvalidOperation as exc:
            raise InvalidValue(f"Cannot convert the value {shown(value)} to {t.value} for '{name}'.", property=name) from exc
        if not number.is_finite() or abs(number) >= Decimal(10) ** 24:
            raise InvalidValue(f"The value {shown_text(value)} is out of range for '{name}'.", property=name, reason="range")
        return number if t is Edm.Decimal else float(number)
    if t is Edm.DateTimeOffset:
        if not isinstance(value, str):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to Edm.DateTimeOffset for '{name}'.", property=name)
        try:
            parsed = isoparse(value)
        except (ValueError, OverflowError) as exc:
            raise InvalidValue(f"Cannot convert the literal '{shown_text(value)}' to Edm.DateTimeOffset.", property=name) from exc
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    if t is Edm.Date:
        if not isinstance(value, str):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to Edm.Date for '{name}'.", property=name)
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise InvalidValue(f"Cannot convert the literal '{shown_text(value)}' to Edm.Date.", property=name) from exc
    if t is Edm.Binary:
        if not isinstance(value, str):
            raise InvalidValue(f"Cannot convert the value {shown(value)} to Edm.Binary for '{name}'.", property=name)
        try:
            return base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise InvalidValue(f"Invalid base64 value for '{name}'.", property=name) from exc
    raise InvalidValue(f"Unsupported type for '{name}'.", property=name)


def format_datetime(value: datetime, *, milliseconds: bool) -> str:
    """UTC with `Z`; Dataverse shows whole seconds, BC shows trimmed milliseconds."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not milliseconds:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    ms = value.microsecond // 1000
    if ms:
        text += f".{ms:03d}".rstrip("0")
    return text + "Z"


def to_json(prop: Property, value: Any, *, milliseconds: bool = False) -> Any:
    if value is None:
        return None
    t = prop.type
    if t is Edm.DateTimeOffset and isinstance(value, datetime):
        return format_datetime(value, milliseconds=milliseconds)
    if t is Edm.DateTimeOffset and isinstance(value, str):  # raw text from SQLite on some paths
        return format_datetime(isoparse(value), milliseconds=milliseconds)
    if t is Edm.Date and isinstance(value, date):
        return value.isoformat()
    if t is Edm.Decimal:
        number = Decimal(str(value))
        if prop.scale is not None:
            number = number.quantize(Decimal(1).scaleb(-prop.scale))
        return float(number) if number != number.to_integral_value() or prop.scale else int(number)
    if t is Edm.Double:
        return float(value)
    if t is Edm.Binary:
        return base64.b64encode(value).decode()
    if t is Edm.Boolean:
        return bool(value)
    return value
