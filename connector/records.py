"""Finding the records a user names: BC records by number or id, Dataverse rows by id or name."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from .clients._chunks import quote
from .mappings.tables import bc_entity, dataverse_table
from .runtime import Connector, ConnectorError
from .store import TableMapping


def is_guid(text: str) -> bool:
    try:
        uuid.UUID(text.strip("{}"))
    except ValueError:
        return False
    return True


def bc_records(cx: Connector, mapping: TableMapping, keys: Iterable[str], select: list[str]) -> list[dict[str, Any]]:
    """The BC records named by ``keys`` (numbers/codes or ids), in the order given; unknown → error."""
    keys = list(dict.fromkeys(keys))
    entity = bc_entity(mapping.bc_entity)
    ids = [k.strip("{}").lower() for k in keys if is_guid(k)]
    numbers = [k for k in keys if not is_guid(k)]
    found: dict[str, dict[str, Any]] = {}
    for row in cx.bc.rows_where_in(mapping.bc_entity, "id", ids, guid=True, select=select):
        found[str(row["id"]).lower()] = row
    for row in cx.bc.rows_where_in(mapping.bc_entity, entity.number_field, numbers, select=select):
        found[str(row[entity.number_field]).upper()] = row
    missing = [k for k in keys if (k.strip("{}").lower() if is_guid(k) else k.upper()) not in found]
    if missing:
        raise ConnectorError(f"no {entity.caption} with number or id {', '.join(missing)}")
    records = [found[k.strip("{}").lower() if is_guid(k) else k.upper()] for k in keys]
    return list({r["id"]: r for r in records}.values())


def combine(*filters: str | None) -> str | None:
    parts = [f"({f})" for f in filters if f]
    return " and ".join(parts) if parts else None


def dataverse_row(cx: Connector, mapping: TableMapping, *, row_id: str | None = None, name: str | None = None,
                  select: list[str]) -> dict[str, Any]:
    """The Dataverse row a user picks for Set Up Coupling: by id, or by name (exact first, then prefix),
    and only if the mapping's integration table filter lets it through."""
    table = dataverse_table(mapping.dataverse_table)
    if row_id is not None:
        if not is_guid(row_id):
            raise ConnectorError(f"{row_id!r} is not a GUID")
        key = row_id.strip("{}").lower()
        conditions = [f"{table.key} eq {key}"]
        shown = row_id
    else:
        assert name is not None
        conditions = [f"{table.name_field} eq {quote(name)}", f"startswith({table.name_field},{quote(name)})"]
        shown = name
    for condition in conditions:
        rows = list(cx.dataverse.rows(table.set_name, filter=combine(condition, mapping.integration_table_filter),
                                      select=select, page_size=2))
        if rows:
            return rows[0]
    if mapping.integration_table_filter and any(
            list(cx.dataverse.rows(table.set_name, filter=c, select=[table.key], page_size=1)) for c in conditions):
        raise ConnectorError(f"The filters applied to table mapping {mapping.name} are preventing {table.logical_name} "
                             f"record {shown} from displaying.")
    raise ConnectorError(f"no {table.logical_name} row with {'id' if row_id else 'name'} {shown}")
