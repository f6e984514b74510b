"""Match-based coupling: couple uncoupled BC records to Dataverse rows with the same field values.

The criteria are the field mappings marked Use For Match-Based Coupling, grouped by Match Priority
(lowest first); Case-Sensitive Matching compares text exactly, otherwise case is ignored
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-set-up-a-dynamics-crm-connection#customize-the-match-based-coupling).
As in BC's code, a later priority group narrows the earlier ones rather than replacing them: group 2
is tried with the fields of groups 1 and 2, so it decides between several rows group 1 found. A text
field that is empty on the BC record adds no condition.

The candidate rows are read once (the mapping's Integration Table Filter, page by page) and matched in
memory through one hash index per set of conditions: O(N + M), not one query per BC record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select

from .coupling import create_in_dataverse
from .jobs import JobLog, Outcome, RecordRef
from .mappings.tables import bc_entity, dataverse_table
from .options import OptionPass
from .read_ahead import read_ahead
from .runtime import Connector, ConnectorError
from .spool import RecordSpool
from .store import (
    Coupling,
    Direction,
    FieldMapping,
    FieldStatus,
    JobType,
    MappingKind,
    TableMapping,
    UpdateConflict,
)
from .sync import Options, Pass, dataverse_select

Criterion = FieldMapping


def criteria(mapping: TableMapping) -> list[list[Criterion]]:
    """The match criteria in priority groups, lowest priority number first."""
    table = dataverse_table(mapping.dataverse_table)
    fields = [f for f in mapping.fields
              if f.use_for_match and f.status is FieldStatus.ENABLED and f.bc_field and f.dataverse_field
              and not f.constant_value and f.dataverse_field not in table.lookups]
    if not fields:
        raise ConnectorError(f"You must specify which fields on the table mapping '{mapping.name}' should be used "
                             "for match-based coupling.")
    groups: dict[int, list[Criterion]] = defaultdict(list)
    for f in fields:
        groups[f.match_priority or 0].append(f)
    return [groups[p] for p in sorted(groups)]


def _value(value: Any, case_sensitive: bool) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value if case_sensitive else value.casefold()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value)).normalize()
    return value


class Matcher:
    """Hash indexes over the candidate rows, one per combination of conditions actually used."""

    def __init__(self, rows: list[dict[str, Any]], key: str) -> None:
        self.rows = rows
        self.key = key
        self._indexes: dict[tuple[tuple[str, bool], ...], dict[tuple[Any, ...], list[str]]] = {}

    def matches(self, conditions: list[tuple[Criterion, Any]]) -> list[str]:
        signature = tuple((c.dataverse_field or "", c.case_sensitive) for c, _ in conditions)
        index = self._indexes.get(signature)
        if index is None:
            index = defaultdict(list)
            for row in self.rows:
                index[tuple(_value(row.get(column), case) for column, case in signature)].append(str(row[self.key]))
            self._indexes[signature] = index
        return index.get(tuple(_value(value, c.case_sensitive) for c, value in conditions), [])


def match_couple(cx: Connector, mapping: TableMapping, records: Iterable[dict[str, Any]], *,
                 create_new: bool | None = None, sync_after: bool | None = None, dry_run: bool = False,
                 progress: Callable[[int], None] | None = None) -> Outcome:
    """Couple the uncoupled ``records``; then create the unmatched ones and synchronize, if asked."""
    if mapping.direction is Direction.FROM_INTEGRATION and create_new:
        raise ConnectorError(f"{mapping.name} synchronizes only from Dataverse: no records are created there.")
    create_new = mapping.create_new_if_no_match if create_new is None else create_new
    if mapping.kind is MappingKind.OPTION:  # option values match by label (options.py)
        option_job = JobLog(cx.state, mapping.name, JobType.COUPLING, mapping.direction, persist=not dry_run)
        if dry_run:
            option_job.plan.append("option mappings are not planned in a dry run")
        else:
            OptionPass(cx, mapping, option_job, progress).run(records, insert_only=True, insert_missing=create_new)
        option_job.finish()
        return Outcome([option_job], [])
    groups = criteria(mapping)
    if mapping.name == "SALESPEOPLE":
        create_new = False  # BC never creates users from salespeople
    sync_after = mapping.sync_after_match_coupling if sync_after is None else sync_after
    table = dataverse_table(mapping.dataverse_table)
    columns = sorted({table.key, *(f.dataverse_field or "" for g in groups for f in g)})
    candidates = list(cx.dataverse.rows(table.set_name, select=columns, filter=mapping.integration_table_filter))
    matcher = Matcher(candidates, table.key)
    with cx.state.session() as session:
        coupled_rows = set(session.scalars(select(Coupling.dataverse_id).where(
            Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table)))
        coupled_records = set(session.scalars(select(Coupling.bc_id).where(
            Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table)))
    job = JobLog(cx.state, mapping.name, JobType.COUPLING, mapping.direction, persist=not dry_run)
    entity = bc_entity(mapping.bc_entity)
    # Held in memory for the whole table: ids. Whole records, where a later step needs them (the
    # unmatched ones to create, the pairs to synchronize to Dataverse), wait on disk.
    keep_pairs = bool(sync_after) and Direction.TO_INTEGRATION in _sync_directions(mapping)
    pairs: list[tuple[str, str]] = []
    unmatched_count = 0
    with RecordSpool() as pair_records, RecordSpool() as unmatched:
        for record in read_ahead(records, cx.config.page_size):
            bc_id = str(record["id"]).lower()
            if bc_id in coupled_records:
                continue  # match-based coupling skips records that are already coupled
            row_id = _match(matcher, groups, record, coupled_rows)
            if progress:
                progress(1)
            if row_id is None:
                unmatched_count += 1
                if create_new:
                    unmatched.append(record)
                job.plan.append(f"no unique match for {entity.caption} {record.get(entity.number_field)}")
                continue
            coupled_rows.add(row_id)
            coupled_records.add(bc_id)
            pairs.append((bc_id, row_id))
            if keep_pairs:
                pair_records.append(record)
            job.count("coupled")
            job.plan.append(f"couple {entity.caption} {record.get(entity.number_field)} -> {table.set_name}({row_id})")
        del matcher, candidates  # the candidate rows are done with: free them before creating and synchronizing
        if not dry_run and pairs:
            with cx.state.session() as session:  # rows, not ORM objects: one statement, little memory
                session.execute(insert(Coupling), [
                    {"bc_entity": mapping.bc_entity, "bc_id": bc_id, "dataverse_table": mapping.dataverse_table,
                     "dataverse_id": row_id} for bc_id, row_id in pairs])
        if unmatched_count and not create_new:
            job.count("failed", unmatched_count)
            job.error(RecordRef(mapping.bc_entity, None, mapping.dataverse_table, None), mapping.name, None,
                      f"Failed to couple {unmatched_count} record(s), because no unique uncoupled matching entity was "
                      f"found in {cx.config.dataverse_url} with the specified matching criteria.")
        job.finish()
        jobs = [job]
        if unmatched and create_new:
            if dry_run:
                job.plan += [f"create {entity.caption} {r.get(entity.number_field)} in Dataverse" for r in unmatched]
            else:
                jobs += create_in_dataverse(cx, mapping, unmatched).jobs
        if sync_after and pairs:
            jobs += _synchronize_pairs(cx, mapping, pair_records, [row_id for _, row_id in pairs], dry_run)
        return Outcome(jobs, [])


def _match(matcher: Matcher, groups: list[list[Criterion]], record: dict[str, Any], taken: set[str]) -> str | None:
    conditions: list[tuple[Criterion, Any]] = []
    for group in groups:
        for criterion in group:
            value = record.get(criterion.bc_field or "")
            if isinstance(value, str) and not value.strip():
                continue  # an empty text adds no condition
            conditions.append((criterion, value))
        if not conditions:
            continue
        found = matcher.matches(conditions)
        if len(found) == 1 and found[0].lower() not in taken:
            return found[0].lower()
    return None


def _sync_directions(mapping: TableMapping) -> list[Direction]:
    """Synch. After Match-Based Coupling: the mapping's direction; for bidirectional ones the update
    conflict setting picks the winner (Get → from Dataverse, Send → to Dataverse, None → both)."""
    if mapping.direction is Direction.BIDIRECTIONAL:
        return {UpdateConflict.GET_UPDATE: [Direction.FROM_INTEGRATION],
                UpdateConflict.SEND_UPDATE: [Direction.TO_INTEGRATION]}.get(
            mapping.update_conflict, [Direction.TO_INTEGRATION, Direction.FROM_INTEGRATION])
    return [mapping.direction]


def _synchronize_pairs(cx: Connector, mapping: TableMapping, records: Iterable[dict[str, Any]], row_ids: list[str],
                       dry_run: bool) -> list[JobLog]:
    """Synchronize the pairs just coupled: ``records`` (the BC side, kept when a direction needs it) and
    ``row_ids`` (the Dataverse side)."""
    directions = _sync_directions(mapping)
    table = dataverse_table(mapping.dataverse_table)
    jobs = []
    for direction in directions:
        job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, direction, persist=not dry_run)
        engine = Pass(cx, mapping, direction, job, Options(force_modify=True, sync_only_coupled=True),
                      dry_run=dry_run)
        if direction is Direction.TO_INTEGRATION:
            engine.run(iter(records))
        else:
            engine.run(read_ahead(cx.dataverse.rows_by_ids(table.set_name, table.key, row_ids,
                                                           select=dataverse_select(mapping)), cx.config.page_size))
        job.finish()
        jobs.append(job)
    return jobs

