"""Set Up Coupling, Create in Dataverse, and Delete Coupling (uncoupling).

Semantics from BC's page "Dataverse Coupling Record" and codeunits "CRM Coupling Management",
"CDS Int. Table Uncouple" and "Int. Rec. Uncouple Invoke"
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-couple-and-synchronize-records-manually#uncoupling-records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import delete, select

from .clients._chunks import chunks
from .company import company_of, failure, set_company
from .jobs import JobLog, Outcome, RecordRef
from .mappings.tables import DATAVERSE_COMPANY, bc_entity, dataverse_table, lookup_value_name
from .options import OptionPass, code_field
from .records import bc_records, combine, dataverse_row
from .runtime import Connector, ConnectorError
from .store import (
    Coupling,
    Direction,
    JobType,
    MappingKind,
    OptionCoupling,
    TableMapping,
    couplings_of_bc_records,
)
from .sync import Options, Pass, bc_select, dataverse_select


def _coupling_of_bc(cx: Connector, mapping: TableMapping, bc_id: str) -> Coupling | None:
    with cx.state.session() as session:
        return session.scalars(select(Coupling).where(Coupling.bc_entity == mapping.bc_entity,
                                                      Coupling.bc_id == bc_id)).first()


def _label(mapping: TableMapping, record: dict[str, Any]) -> str:
    entity = bc_entity(mapping.bc_entity)
    return f"{entity.caption} {record.get(entity.number_field) or record['id']}"


def create_in_dataverse(cx: Connector, mapping: TableMapping, records: Iterable[dict[str, Any]],
                        progress: Callable[[int], None] | None = None) -> Outcome:
    """Create Dataverse rows for the uncoupled records and couple them; coupled ones are skipped."""
    if mapping.direction is Direction.FROM_INTEGRATION:
        raise ConnectorError(f"The {mapping.name} mapping synchronizes only from Dataverse; records cannot be created "
                             "in Dataverse.")
    job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, Direction.TO_INTEGRATION)
    if mapping.kind is MappingKind.OPTION:  # option mappings couple to option values (§4.2 step 2)
        OptionPass(cx, mapping, job, progress).run(records, insert_only=True)
    else:
        engine = Pass(cx, mapping, Direction.TO_INTEGRATION, job, Options(sync_only_coupled=False, insert_only=True),
                      progress=progress)
        engine.run(records)
    job.finish()
    return Outcome([job], [])


def couple(cx: Connector, mapping: TableMapping, bc_key: str, *, dataverse_id: str | None = None,
           dataverse_name: str | None = None, create_new: bool = False,
           sync: Direction | None = None) -> Outcome:
    """Set Up Coupling for one BC record: couple it to a chosen row (or create one), then optionally sync."""
    if mapping.direction is Direction.FROM_INTEGRATION and create_new:
        raise ConnectorError(f"Create New is not available: {mapping.name} synchronizes only from Dataverse.")
    record = bc_records(cx, mapping, [bc_key], bc_select(mapping))[0]
    if create_new:
        existing = _coupling_of_bc(cx, mapping, record["id"])
        if existing is not None and not existing.pending:
            _delete_coupling(cx, existing)
        return create_in_dataverse(cx, mapping, [record])
    row = dataverse_row(cx, mapping, row_id=dataverse_id, name=dataverse_name,
                        select=dataverse_select(mapping))
    table = dataverse_table(mapping.dataverse_table)
    row_id = str(row[table.key]).lower()
    job = JobLog(cx.state, mapping.name, JobType.COUPLING, Direction.TO_INTEGRATION)
    with cx.state.session() as session:
        holder = session.scalars(select(Coupling).where(
            Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table,
            Coupling.dataverse_id == row_id)).first()
        if holder is not None and holder.bc_id != record["id"].lower():
            job.finish("refused")
            raise ConnectorError(f"Cannot couple {_label(mapping, record)} to this {table.logical_name} record, because "
                                 f"the {table.logical_name} record is already coupled to "
                                 f"{bc_entity(mapping.bc_entity).caption} {holder.bc_id}.")
        session.execute(delete(Coupling).where(Coupling.bc_entity == mapping.bc_entity,
                                               Coupling.bc_id == record["id"].lower()))
        if holder is None:
            session.add(Coupling(bc_entity=mapping.bc_entity, bc_id=record["id"].lower(),
                                 dataverse_table=mapping.dataverse_table, dataverse_id=row_id))
    job.count("coupled")
    job.finish()
    jobs = [job]
    if sync is not None:
        jobs += synchronize_pair(cx, mapping, record, row, sync)
    return Outcome(jobs, [])


def synchronize_pair(cx: Connector, mapping: TableMapping, record: dict[str, Any], row: dict[str, Any],
                     direction: Direction) -> list[JobLog]:
    """The one-off sync after coupling: all fields, in the chosen direction (§6.1)."""
    job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, direction)
    engine = Pass(cx, mapping, direction, job, Options(force_modify=True, sync_only_coupled=False))
    engine.run([record] if direction is Direction.TO_INTEGRATION else [row])
    job.finish()
    return [job]


def _delete_coupling(cx: Connector, coupling: Coupling) -> None:
    with cx.state.session() as session:
        session.execute(delete(Coupling).where(Coupling.id == coupling.id))


# -- uncoupling -----------------------------------------------------------------------------------


def _resets_company(mapping: TableMapping) -> bool:
    """Only mappings that write to Dataverse own the company id of its rows (§6.2)."""
    return dataverse_table(mapping.dataverse_table).has_company and mapping.direction is not Direction.FROM_INTEGRATION


def _clear_company(cx: Connector, mapping: TableMapping, rows: list[dict[str, Any]], job: JobLog) -> set[str]:
    """Free the rows that carry this company's id; returns the ids that could not be freed."""
    table = dataverse_table(mapping.dataverse_table)
    ours = cx.company().dataverse_id
    failed: set[str] = set()
    for row, answer in set_company(cx, table, [r for r in rows if company_of(r) == ours], None):
        message = failure(answer)
        if message is None:
            job.count("modified")
            continue
        failed.add(str(row[table.key]).lower())
        job.count("failed")
        job.error(RecordRef(dataverse_table=table.logical_name, dataverse_id=row[table.key]),
                  f"{table.set_name}({row[table.key]})", None,
                  f"Uncoupling {table.logical_name} failed because of the following error: {message}.")
    return failed


def _couplings(cx: Connector, mapping: TableMapping, bc_ids: list[str] | None) -> Iterator[list[Coupling]]:
    with cx.state.session() as session:
        if bc_ids is None:
            rows = list(session.scalars(select(Coupling).where(
                Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table)
                .order_by(Coupling.id)))
        else:
            rows = sorted(couplings_of_bc_records(session, mapping.bc_entity, mapping.dataverse_table, bc_ids),
                          key=lambda c: c.id)
    yield from chunks(rows, cx.config.page_size)


def uncouple(cx: Connector, mapping: TableMapping, bc_keys: list[str] | None,
             progress: Callable[[int], None] | None = None) -> Outcome:
    """Delete Coupling for the named BC records, or (``None``) every coupling of the mapping."""
    if mapping.kind is MappingKind.OPTION:
        return _uncouple_options(cx, mapping, bc_keys)
    table = dataverse_table(mapping.dataverse_table)
    job = JobLog(cx.state, mapping.name, JobType.UNCOUPLING, mapping.direction)
    notes: list[str] = []
    bc_ids: list[str] | None = None
    if bc_keys is not None:
        records = bc_records(cx, mapping, bc_keys, ["id", bc_entity(mapping.bc_entity).number_field])
        bc_ids = [r["id"].lower() for r in records]
    select_columns = [table.key] + ([lookup_value_name(DATAVERSE_COMPANY)] if table.has_company else [])
    for chunk in _couplings(cx, mapping, bc_ids):
        failed: set[str] = set()
        if _resets_company(mapping):
            rows = list(cx.dataverse.rows_by_ids(table.set_name, table.key, [c.dataverse_id for c in chunk],
                                                 select=select_columns))
            failed = _clear_company(cx, mapping, rows, job)
        done = [c.id for c in chunk if c.dataverse_id not in failed]
        with cx.state.session() as session:
            session.execute(delete(Coupling).where(Coupling.id.in_(done)))
        job.count("uncoupled", len(done))
        job.flush()
        if progress:
            progress(len(chunk))
    if bc_keys is not None and bc_ids is not None and job.counts["uncoupled"] < len(bc_ids):
        notes.append(f"{len(bc_ids) - job.counts['uncoupled']} of the records were not coupled")
    if bc_keys is None and _resets_company(mapping):
        # "ResetStuckCompanyId": rows still stamped with this company although nothing couples them.
        stuck = combine(mapping.integration_table_filter,
                        f"{lookup_value_name(DATAVERSE_COMPANY)} eq {cx.company().dataverse_id}")
        for page in chunks(cx.dataverse.rows(table.set_name, filter=stuck, select=select_columns),
                           cx.config.dataverse_batch_size):
            _clear_company(cx, mapping, page, job)
    job.finish()
    return Outcome([job], notes)


def _uncouple_options(cx: Connector, mapping: TableMapping, bc_keys: list[str] | None) -> Outcome:
    """Option couplings are only rows of the state: deleting them writes nothing to Dataverse."""
    job = JobLog(cx.state, mapping.name, JobType.UNCOUPLING, mapping.direction)
    with cx.state.session() as session:
        query = delete(OptionCoupling).where(OptionCoupling.mapping_name == mapping.name)
        if bc_keys is not None:
            ids = [r["id"].lower() for r in bc_records(cx, mapping, bc_keys, ["id", code_field(mapping)])]
            query = query.where(OptionCoupling.bc_id.in_(ids))
        job.count("uncoupled", session.execute(query).rowcount or 0)  # type: ignore[attr-defined]
    job.finish()
    return Outcome([job], [])
