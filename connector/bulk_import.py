"""Bulk-insert and couple: export BC records to a file, import the file into Dataverse, then match.

The seed documents' path for a first setup with many records
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-couple-and-synchronize-records-manually#bulk-insert-and-couple-records):
"Open in Excel" on the BC list (``export``), import the rows into Dataverse with this company's id
and the type code (``import``, in bulk, with ``UpsertMultiple``), then couple them with match-based
coupling. Every row is validated before anything is written, against the mapping (lookups must be
coupled) and the Dataverse column metadata (types and lengths); one bad row and nothing is imported.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import openpyxl

from .clients._chunks import chunks
from .jobs import JobLog, Outcome
from .mappings.resolve import Resolver
from .mappings.tables import DATAVERSE_COMPANY, bc_entity, dataverse_table
from .mappings.transfer import FieldTransfer, TransferContext, TransferError
from .matching import criteria, match_couple
from .records import bc_records
from .runtime import Connector, ConnectorError
from .store import Direction, JobType, MappingKind, TableMapping
from .sync import bc_select

MAX_UPSERT = 1000  # targets per UpsertMultiple request
NUMERIC = {"Money", "Decimal", "Double"}
WHOLE = {"Integer", "BigInt", "Picklist", "State", "Status"}


class ImportError_(ConnectorError):
    """The file cannot be imported; the message lists every bad row by its line number."""


def export_columns(mapping: TableMapping) -> list[str]:
    entity = bc_entity(mapping.bc_entity)
    columns = ["id", entity.number_field]
    for name in bc_select(mapping):
        if name not in columns and name != "lastModifiedDateTime":
            columns.append(name)
    return columns


def export(cx: Connector, mapping: TableMapping, path: Path) -> int:
    """Write the mapping's BC records (all of them, as the list page shows) to CSV or XLSX."""
    columns = export_columns(mapping)
    rows = cx.bc.rows(mapping.bc_entity, select=columns)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            count = 0
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
                count += 1
        return count
    if suffix == ".xlsx":
        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet(bc_entity(mapping.bc_entity).caption)
        sheet.append(columns)
        count = 0
        for row in rows:
            sheet.append([row.get(k) for k in columns])
            count += 1
        book.save(path)
        return count
    raise ConnectorError(f"{path}: write a .csv or .xlsx file")


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; line 1 is the header."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ConnectorError(f"{path}: no such file")
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for index, row in enumerate(reader, start=2):
                yield index, {k: v for k, v in row.items() if k is not None}
        return
    if suffix == ".xlsx":
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            sheet = book.worksheets[0]
            lines = sheet.iter_rows(values_only=True)
            header = [str(h) if h is not None else "" for h in next(lines, ())]
            for index, values in enumerate(lines, start=2):
                yield index, dict(zip(header, values, strict=False))
        finally:
            book.close()
        return
    raise ConnectorError(f"{path}: read a .csv or .xlsx file")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # Dataverse AttributeType
    max_length: int | None


def dataverse_columns(cx: Connector, table: str) -> dict[str, Column]:
    """Types and lengths of the table's columns, from EntityDefinitions."""
    base = f"EntityDefinitions(LogicalName='{table}')/Attributes"
    kinds = cx.dataverse.core.send("GET", base, params={"$select": "LogicalName,AttributeType"}).json()["value"]
    strings = cx.dataverse.core.send("GET", f"{base}/Microsoft.Dynamics.CRM.StringAttributeMetadata",
                                     params={"$select": "LogicalName,MaxLength"}).json()["value"]
    lengths = {s["LogicalName"]: s.get("MaxLength") for s in strings}
    return {k["LogicalName"]: Column(k["LogicalName"], str(k.get("AttributeType")), lengths.get(k["LogicalName"]))
            for k in kinds}


def _typed(text: Any, kind: str) -> Any:
    """A cell as the JSON value its Dataverse column takes (CSV cells are all text)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if kind in NUMERIC:
        try:
            return float(Decimal(str(text).strip()))
        except InvalidOperation:
            raise ValueError(f"{text!r} is not a number") from None
    if kind in WHOLE:
        try:
            return int(str(text).strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind == "Boolean":
        if str(text).strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{text!r} is not true or false")
        return str(text).strip().lower() in ("true", "1", "yes")
    return str(text) if not isinstance(text, str) else text


def import_file(cx: Connector, mapping: TableMapping, path: Path, *, dry_run: bool = False) -> Outcome:
    """Validate every row, insert them all into Dataverse, then couple them by match-based coupling."""
    if mapping.kind is MappingKind.OPTION or mapping.direction is Direction.FROM_INTEGRATION:
        raise ConnectorError(f"{mapping.name} cannot be imported into Dataverse")
    criteria(mapping)  # refuse before writing anything if the rows could not be coupled afterwards
    table = dataverse_table(mapping.dataverse_table)
    entity = bc_entity(mapping.bc_entity)
    transfer = FieldTransfer(mapping, Direction.TO_INTEGRATION,
                             TransferContext(Resolver(cx.state, cx.bc, cx.mappings()), cx.lcy_currency_id()))
    columns = dataverse_columns(cx, mapping.dataverse_table)
    company = cx.company().dataverse_id if table.has_company else None
    targets: list[dict[str, Any]] = []
    keys: list[str] = []
    problems: list[str] = []
    for line, row in read_rows(path):
        try:
            key = str(row.get("id") or row.get(entity.number_field) or "")
            if not key:
                raise ValueError(f"the row names no BC record (an id or {entity.number_field} column)")
            targets.append(_target(mapping, transfer, columns, row, company, key))
            keys.append(key)
        except (TransferError, ValueError) as error:
            problems.append(f"line {line}: {getattr(error, 'message', None) or error}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ImportError_(f"{path.name}: nothing imported, {len(problems)} bad row(s): {shown}")
    if not targets:
        raise ImportError_(f"{path.name}: no rows to import")
    job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, Direction.TO_INTEGRATION, persist=not dry_run)
    if dry_run:
        job.plan += [f"insert {table.logical_name} {t.get(table.name_field) or ''}".rstrip() for t in targets]
        job.count("inserted", len(targets))
    else:
        for chunk in chunks(targets, MAX_UPSERT):
            cx.dataverse.upsert_multiple(table.set_name, table.logical_name, chunk)
            job.count("inserted", len(chunk))
            job.flush()
    job.finish()
    records = bc_records(cx, mapping, keys, bc_select(mapping))
    matched = match_couple(cx, mapping, records, create_new=False, sync_after=False, dry_run=dry_run)
    return Outcome([job, *matched.jobs], matched.notes)


def _target(mapping: TableMapping, transfer: FieldTransfer, columns: dict[str, Column], row: dict[str, Any],
            company: str | None, key: str) -> dict[str, Any]:
    table = dataverse_table(mapping.dataverse_table)
    source: dict[str, Any] = {}
    for f in mapping.fields:  # cells typed by the Dataverse column they go to
        if f.bc_field and f.bc_field in row:
            column = columns.get(f.dataverse_field or "")
            source[f.bc_field] = _typed(row[f.bc_field], column.kind) if column and not f.via_mapping \
                else (row[f.bc_field] or None)
    for name, value in row.items():
        source.setdefault(name, value if value != "" else None)
    values = transfer.to_dataverse(source, None).values
    for name, value in values.items():
        column = columns.get(name)
        if column and column.max_length and isinstance(value, str) and len(value) > column.max_length:
            raise ValueError(f"{name} is {len(value)} characters long; Dataverse allows {column.max_length}")
    values.update(mapping.dataverse_template or {})
    if company:
        values[f"{DATAVERSE_COMPANY}@odata.bind"] = f"/bcbi_companies({company})"
    # The row's id derives from the BC record it came from: importing the file again (after a crash,
    # say) updates the same rows instead of adding a second set.
    values[table.key] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bc-import/{company}/{mapping.bc_entity}/{key.lower()}"))
    return values

