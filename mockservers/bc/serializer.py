"""Rows to BC JSON: `@odata.etag` first, zero GUIDs and empty strings instead of null, LCY codes."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..odata.query import ExpandItem
from ..odata.schema import Edm, EntityType, Schema
from ..odata.storage import Row
from ..odata.values import to_json
from .models import ZERO_GUID

_EMPTY: dict[Edm, Any] = {
    Edm.Guid: ZERO_GUID,
    Edm.String: "",
    Edm.Decimal: 0,
    Edm.Double: 0,
    Edm.Int32: 0,
    Edm.Int64: 0,
    Edm.Boolean: False,
    Edm.Date: "0001-01-01",
    Edm.DateTimeOffset: "0001-01-01T00:00:00Z",
}


def bc_etag(version: int) -> str:
    """BC's weak ETag: base64 of `'<digits>;<version>1;00;'` (opaque to clients)."""
    text = str(version)
    raw = f"'{len(text)};{text}1;00;'".encode()
    return f'W/"{base64.b64encode(raw).decode()}"'


def parse_bc_etag(value: str) -> int | None:
    m = re.fullmatch(r'\s*(?:W/)?"([A-Za-z0-9+/=]+)"\s*', value)
    if not m:
        return None
    try:
        raw = base64.b64decode(m.group(1), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    m = re.fullmatch(r"'(\d+);(\d+)1;00;'", raw)
    if not m or len(m.group(2)) != int(m.group(1)):
        return None
    return int(m.group(2))


class BCSerializer:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def records(self, entity: EntityType, rows: list[Row], select: list[str] | None, expand: list[ExpandItem],
                lcy: str) -> list[dict[str, Any]]:
        props = entity.public_properties()
        if select and "*" not in select:
            wanted = set(select)
            props = [p for p in props if p.name in wanted]
        out = []
        for row in rows:
            record: dict[str, Any] = {}
            if entity.version_property and row.get(entity.version_property) is not None:
                record["@odata.etag"] = bc_etag(row[entity.version_property])
            for prop in props:
                value = to_json(prop, row.get(prop.name), milliseconds=True)
                if prop.name == "currencyCode" and not value:
                    value = lcy
                if value is None or (value == "" and prop.type is not Edm.String):
                    value = _EMPTY.get(prop.type)
                record[prop.name] = value
            for item in expand:
                nav = entity.navigation(item.name)
                assert nav is not None
                target = self.schema.entity(nav.target)
                assert target is not None
                related = row.get(item.name)
                if nav.collection:
                    record[item.name] = self.records(target, related or [], item.options.select,
                                                     item.options.expand, lcy)
                else:
                    record[item.name] = (self.records(target, [related], item.options.select, item.options.expand,
                                                      lcy)[0] if related else None)
            out.append(record)
        return out
