"""The Dataverse `$skiptoken`: a paging cookie, shaped like the real one, that carries the keyset.

Real skip tokens read ``<cookie pagenumber="2" pagingcookie="…" istracking="False" />`` where the
inner, twice URL-encoded cookie holds the last and first values of the sort columns
(``<cookie page="1"><accountid last="{GUID}" first="{GUID}" /></cookie>``). The sandbox writes the
same shape and reads the ``last`` values back to continue after that row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

from dateutil.parser import isoparse

from ..odata.query import QueryOptions, sort_columns
from ..odata.schema import Edm, EntityType
from ..odata.storage import Row


@dataclass
class PagingCookie:
    page: int
    last: dict[str, Any] | None  # sort values of the previous page's last row
    tracking: int | None  # change-tracking version the paged read started at


def _text(entity: EntityType, name: str, value: Any) -> str | None:
    if value is None:
        return None
    prop = entity.property(name)
    if prop is not None and prop.type is Edm.Guid:
        return "{" + str(value).upper() + "}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _bigint(text: str) -> int:
    """An integer a SQL bigint column can compare with (a token is client input)."""
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValueError("integer out of range")
    return number


def _value(entity: EntityType, name: str, text: str) -> Any:
    prop = entity.property(name)
    if prop is None:
        raise ValueError(f"unknown sort column {name}")
    kind = prop.type
    if kind is Edm.Guid:
        return text.strip("{}").lower()
    if kind is Edm.DateTimeOffset:
        parsed = isoparse(text)
        return parsed if parsed.tzinfo is None else parsed.astimezone(UTC).replace(tzinfo=None)
    if kind is Edm.Date:
        return date.fromisoformat(text)
    if kind in (Edm.Int32, Edm.Int64):
        return _bigint(text)
    if kind is Edm.Decimal:
        number = Decimal(text)
        if not number.is_finite():
            raise ValueError(f"{name}: not a finite number")
        return number
    if kind is Edm.Double:
        double = float(text)
        if not math.isfinite(double):
            raise ValueError(f"{name}: not a finite number")
        return double
    if kind is Edm.Boolean:
        return text in ("1", "true", "True")
    return text


def paging_cookie(entity: EntityType, opts: QueryOptions, rows: list[Row], page_number: int,
                  tracking: int | None) -> str:
    inner = ElementTree.Element("cookie", page=str(page_number - 1))
    for name in sort_columns(entity, opts.orderby):
        element = ElementTree.SubElement(inner, name)
        last, first = _text(entity, name, rows[-1].get(name)), _text(entity, name, rows[0].get(name))
        if last is not None:
            element.set("last", last)
        if first is not None:
            element.set("first", first)
    if tracking is not None:
        ElementTree.SubElement(inner, "tracking", version=str(tracking))
    encoded = quote(quote(ElementTree.tostring(inner, encoding="unicode"), safe=""), safe="")
    istracking = "True" if tracking is not None else "False"
    return f'<cookie pagenumber="{page_number}" pagingcookie="{encoded}" istracking="{istracking}" />'


def read_paging_cookie(entity: EntityType, opts: QueryOptions, token: str) -> PagingCookie:
    """Parse a token this module wrote; ValueError / ParseError when it is not one."""
    outer = ElementTree.fromstring(token)
    if outer.tag != "cookie" or "pagingcookie" not in outer.attrib:
        raise ValueError("not a paging cookie")
    page = _bigint(outer.attrib.get("pagenumber", "1"))
    inner = ElementTree.fromstring(unquote(unquote(outer.attrib["pagingcookie"])))
    columns = sort_columns(entity, opts.orderby)
    elements = [e for e in inner if e.tag != "tracking"]
    if [e.tag for e in elements] != columns:
        raise ValueError("the paging cookie does not match the query's order")
    last = {e.tag: (_value(entity, e.tag, e.attrib["last"]) if "last" in e.attrib else None) for e in elements}
    tracking_element = inner.find("tracking")
    tracking = _bigint(tracking_element.attrib["version"]) if tracking_element is not None else None
    return PagingCookie(page=page, last=last, tracking=tracking)
