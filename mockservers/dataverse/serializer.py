"""Rows to Dataverse JSON: ETags, `$select` rules, expanded records and instance annotations."""

from __future__ import annotations

import fnmatch
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from ..odata.query import ExpandItem
from ..odata.schema import Edm, EntityType, Property, Schema
from ..odata.storage import Row
from ..odata.values import to_json
from .tables import table_info

FORMATTED = "OData.Community.Display.V1.FormattedValue"
NAV_ANNOTATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
LOGICAL_ANNOTATION = "Microsoft.Dynamics.CRM.lookuplogicalname"


class Annotations:
    """Which instance annotations a `Prefer: odata.include-annotations=…` asked for."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self.patterns = [p.strip().strip('"') for p in (spec or "").split(",") if p.strip().strip('"')]

    def wants(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)


def etag(entity: EntityType, row: Row) -> str | None:
    if entity.version_property and row.get(entity.version_property) is not None:
        return f'W/"{row[entity.version_property]}"'
    return None


def selected_properties(entity: EntityType, select: list[str] | None) -> list[Property]:
    """Columns to return: the selection (plus implied columns) or every public column."""
    public = entity.public_properties()
    if not select or "*" in select:
        return public
    wanted = set(select) | {entity.key}
    if any((p := entity.property(n)) is not None and p.kind == "Money" for n in select):
        wanted.add("_transactioncurrencyid_value")
    if any(n.startswith("address1_") for n in select):
        wanted.add("address1_composite")
    return [p for p in public if p.name in wanted]


def _format_value(prop: Property, value: Any, currency_symbol: str | None) -> str | None:
    if value is None:
        return None
    if prop.options is not None:
        return prop.options.label(value)
    if prop.type is Edm.Boolean:
        return "Yes" if value else "No"
    if prop.kind == "Money":
        return f"{currency_symbol or '$'}{Decimal(str(value)):,.2f}"
    if prop.type is Edm.DateTimeOffset and isinstance(value, datetime):
        hour = value.hour % 12 or 12
        return f"{value.month}/{value.day}/{value.year} {hour}:{value.minute:02d} {'AM' if value.hour < 12 else 'PM'}"
    if prop.type in (Edm.Int32, Edm.Int64):
        return f"{value:,}"
    if prop.type in (Edm.Decimal, Edm.Double):
        return f"{Decimal(str(value)):,.2f}"
    return None


class Lookups(Protocol):
    """What formatted values need from the backend: names of referenced records, currency symbols."""

    def primary_names(self, conn: Connection, entity: EntityType, keys: set[str]) -> dict[str, str]: ...

    def currency_symbols(self, conn: Connection, keys: set[str]) -> dict[str, str]: ...


class Serializer:
    def __init__(self, schema: Schema, lookups: Lookups, service_root: str = "") -> None:
        self.schema = schema
        self.lookups = lookups
        self.service_root = service_root

    def _lookup_names(self, conn: Connection, entity: EntityType, rows: list[Row]) -> dict[tuple[str, str], str]:
        """Primary names of every record the rows point to: one query per target table."""
        wanted: dict[str, set[str]] = {}
        for nav in entity.navigations:
            if nav.collection:
                continue
            for row in rows:
                if row.get(nav.via) and (not nav.discriminator or row.get(nav.discriminator) == nav.discriminator_value):
                    wanted.setdefault(nav.target, set()).add(row[nav.via])
        names: dict[tuple[str, str], str] = {}
        for target_name, ids in wanted.items():
            target = self.schema.entity(target_name)
            if target is None:
                continue
            for key, name in self.lookups.primary_names(conn, target, ids).items():
                names[(target_name, key)] = name
        return names

    def _lookup_target(self, entity: EntityType, prop: Property, row: Row) -> tuple[str | None, str | None]:
        """(navigation name, target logical name) for a lookup value in this row."""
        for nav in entity.navigations:
            if nav.collection or nav.via != prop.name:
                continue
            if nav.discriminator and row.get(nav.discriminator) != nav.discriminator_value:
                continue
            return nav.name, nav.target
        return None, None

    def records(
        self,
        conn: Connection,
        entity: EntityType,
        rows: list[Row],
        select: list[str] | None,
        expand: list[ExpandItem],
        annotations: Annotations,
        *,
        include_etag: bool = True,
    ) -> list[dict[str, Any]]:
        names = self._lookup_names(conn, entity, rows) if annotations else {}
        currency_symbols = self._currency_symbols(conn, rows) if annotations else {}
        props = selected_properties(entity, select)
        out = []
        for row in rows:
            record: dict[str, Any] = {}
            tag = etag(entity, row) if include_etag else None
            if tag:
                record["@odata.etag"] = tag
            for prop in props:
                value = row.get(prop.name)
                if annotations and value is not None:
                    self._annotate(record, entity, prop, row, value, names, currency_symbols, annotations)
                record[prop.name] = to_json(prop, value)
            for item in expand:
                nav = entity.navigation(item.name)
                assert nav is not None
                target = self.schema.entity(nav.target)
                assert target is not None
                related = row.get(item.name)
                if item.options.ref:  # $expand=lookup/$ref: only the related record's URI
                    record[item.name] = ({"@odata.id": f"{self.service_root}/{target.set_name}({related[target.key]})"}
                                         if related else None)
                elif nav.collection:
                    record[item.name] = self.records(
                        conn, target, related or [], item.options.select, item.options.expand, annotations
                    )
                elif related is None:
                    record[item.name] = None
                else:
                    record[item.name] = self.records(
                        conn, target, [related], item.options.select, item.options.expand, annotations
                    )[0]
            out.append(record)
        return out

    def _currency_symbols(self, conn: Connection, rows: list[Row]) -> dict[str, str]:
        ids = {r["_transactioncurrencyid_value"] for r in rows if r.get("_transactioncurrencyid_value")}
        return self.lookups.currency_symbols(conn, ids)

    def _annotate(self, record, entity, prop, row, value, names, symbols, annotations) -> None:
        if prop.lookup:
            nav_name, target = self._lookup_target(entity, prop, row)
            formatted = names.get((target, value)) if target else None
            if formatted is not None and annotations.wants(FORMATTED):
                record[f"{prop.name}@{FORMATTED}"] = formatted
            if nav_name and annotations.wants(NAV_ANNOTATION):
                nav_public = prop.lookup
                aliases = table_info(entity).bind_aliases.get(prop.lookup)
                record[f"{prop.name}@{NAV_ANNOTATION}"] = nav_public if aliases else nav_name
            if target and annotations.wants(LOGICAL_ANNOTATION):
                record[f"{prop.name}@{LOGICAL_ANNOTATION}"] = target
            return
        if annotations.wants(FORMATTED):
            formatted = _format_value(prop, value, symbols.get(row.get("_transactioncurrencyid_value")))
            if formatted is not None:
                record[f"{prop.name}@{FORMATTED}"] = formatted
