"""Scheduled synchronization: every mapping in dependency order, the To pass then the From pass.

What BC's job queue does every 30 minutes with codeunit "CRM Integration Table Synch."
(https://learn.microsoft.com/dynamics365/business-central/admin-scheduled-synchronization-using-the-synchronization-job-queue-entries):
per direction, first the records whose last synchronization failed, then the records modified since
the mapping's watermark; the watermark then moves to the latest modified-on the pass saw, capped at
the pass's start (on the connector's clock, or the source's where its ``Date`` header shows it
ahead). Dataverse rows are read back with a 999 ms overlap, and, for bidirectional mappings, without
the rows the integration user wrote itself, so the connector's own writes are not synchronized back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from .jobs import JobLog, Outcome, utcnow
from .mappings.tables import (
    BC_MODIFIED_ON,
    DATAVERSE_MODIFIED_BY,
    DATAVERSE_MODIFIED_ON,
    dataverse_table,
)
from .options import OptionPass, code_field
from .records import combine
from .runtime import Connector, ConnectorError
from .store import Coupling, Direction, FieldStatus, JobType, MappingKind, SyncResult, TableMapping
from .sync import Options, Pass, bc_select, dataverse_select, direction_passes

# BC's GetPrioritizedMappingList: users, currencies, units, customers, vendors, contacts, items,
# resources; then the rest. It breaks ties between mappings the dependency filters leave unordered.
PRIORITY = ("SALESPEOPLE", "CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "SHIPPING AGENT", "UNIT OF MEASURE",
            "CUSTOMER", "VENDOR", "CONTACT", "ITEM-PRODUCT", "RESOURCE-PRODUCT")
OVERLAP = timedelta(milliseconds=999)


def dependencies(mapping: TableMapping) -> list[str]:
    return [name.strip() for name in (mapping.dependency_filter or "").split("|") if name.strip()]


def run_order(mappings: dict[str, TableMapping]) -> list[TableMapping]:
    """Mappings after the ones their Dependency Filter names (unknown names are ignored)."""
    def rank(name: str) -> tuple[int, str]:
        return (PRIORITY.index(name) if name in PRIORITY else len(PRIORITY), name)

    pending = {name: {d for d in dependencies(m) if d in mappings and d != name} for name, m in mappings.items()}
    order: list[TableMapping] = []
    while pending:
        ready = sorted((n for n, deps in pending.items() if not deps), key=rank)
        if not ready:
            raise ConnectorError("the dependency filters form a cycle: " + ", ".join(sorted(pending)))
        name = ready[0]
        order.append(mappings[name])
        del pending[name]
        for deps in pending.values():
            deps.discard(name)
    return order


def _odata_time(value: datetime, *, milliseconds: bool) -> str:
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{value.microsecond // 1000:03d}Z" if milliseconds else "Z")


def needs_modified_by_filter(mapping: TableMapping) -> bool:
    """BC's IsModifiedByFilterNeeded: bidirectional, and no From-only field mapping writes a BC field."""
    if mapping.direction is not Direction.BIDIRECTIONAL:
        return False
    return not any(f.status is FieldStatus.ENABLED and f.direction is Direction.FROM_INTEGRATION and f.dataverse_field
                   for f in mapping.fields)


class ScheduledRun:
    """One run of one mapping (both passes), with its watermarks."""

    def __init__(self, cx: Connector, mapping: TableMapping, *, dry_run: bool = False,
                 progress: Callable[[int], None] | None = None) -> None:
        self.cx, self.mapping, self.dry_run, self.progress = cx, mapping, dry_run, progress

    def run(self) -> list[JobLog]:
        if self.mapping.kind is MappingKind.OPTION:
            return [self._options()]
        jobs, watermarks = [], {}
        for direction in direction_passes(self.mapping.direction):
            source = self.cx.bc.core if direction is Direction.TO_INTEGRATION else self.cx.dataverse.core
            server_started, client_started = source.server_now(), utcnow()
            job = JobLog(self.cx.state, self.mapping.name, JobType.SYNCHRONIZATION, direction,
                         persist=not self.dry_run)
            engine = Pass(self.cx, self.mapping, direction, job, Options(sync_only_coupled=self.mapping.sync_only_coupled),
                          progress=self.progress, dry_run=self.dry_run)
            engine.run(self._sources(direction))
            job.finish()
            jobs.append(job)
            if server_started is None:  # the source's first answer came during the pass: its clock at the start
                now = source.server_now()
                server_started = now - (utcnow() - client_started) if now else None
            # The source's time at the start, as well as we know it: our clock, unless the source's Date says
            # its clock was certainly later (a lower bound: never a cap later than the source's true time).
            started = max(client_started, server_started) if server_started else client_started
            if engine.latest_source_modified is not None:
                watermarks[direction] = min(engine.latest_source_modified, started)
        if not self.dry_run:
            self._save(watermarks)
        return jobs

    def _options(self) -> JobLog:
        job = JobLog(self.cx.state, self.mapping.name, JobType.SYNCHRONIZATION, Direction.TO_INTEGRATION,
                     persist=not self.dry_run)
        if self.dry_run:
            job.plan.append("option mappings are not planned in a dry run")
        else:
            records = self.cx.bc.rows(self.mapping.bc_entity, select=["id", code_field(self.mapping)],
                                      filter=self.mapping.table_filter)
            OptionPass(self.cx, self.mapping, job, self.progress).run(records)
        job.finish()
        return job

    def _failed(self, direction: Direction) -> list[Coupling]:
        result = Coupling.last_result_to if direction is Direction.TO_INTEGRATION else Coupling.last_result_from
        with self.cx.state.session() as session:
            return list(session.scalars(select(Coupling).where(
                Coupling.bc_entity == self.mapping.bc_entity, Coupling.dataverse_table == self.mapping.dataverse_table,
                result == SyncResult.FAILURE, Coupling.skipped.is_(False), Coupling.pending.is_(False))))

    def _sources(self, direction: Direction) -> Iterator[dict[str, Any]]:
        """Failed records first, then the modified ones; each record once."""
        seen: set[str] = set()
        mapping = self.mapping
        if direction is Direction.TO_INTEGRATION:
            key = "id"
            failed = self.cx.bc.rows_where_in(mapping.bc_entity, "id", [c.bc_id for c in self._failed(direction)],
                                              guid=True, select=bc_select(mapping))
            since = mapping.bc_watermark
            condition = f"{BC_MODIFIED_ON} gt {_odata_time(since, milliseconds=True)}" if since else None
            modified: Iterable[dict[str, Any]] = self.cx.bc.rows(
                mapping.bc_entity, select=bc_select(mapping), filter=combine(mapping.table_filter, condition))
        else:
            table = dataverse_table(mapping.dataverse_table)
            key = table.key
            failed = self.cx.dataverse.rows_by_ids(table.set_name, table.key,
                                                   [c.dataverse_id for c in self._failed(direction)],
                                                   select=dataverse_select(mapping))
            since = mapping.dataverse_watermark
            conditions = [mapping.integration_table_filter]
            if since:
                conditions.append(f"{DATAVERSE_MODIFIED_ON} gt {_odata_time(since - OVERLAP, milliseconds=False)}")
            if needs_modified_by_filter(mapping):
                conditions.append(f"{DATAVERSE_MODIFIED_BY} ne {self.cx.integration_user_id()}")
            modified = self.cx.dataverse.rows(table.set_name, select=dataverse_select(mapping),
                                              filter=combine(*conditions))
        for stream in (failed, modified):
            for record in stream:
                record_key = str(record[key]).lower()
                if record_key not in seen:
                    seen.add(record_key)
                    yield record

    def _save(self, watermarks: dict[Direction, datetime]) -> None:
        with self.cx.state.session() as session:
            mapping = session.get(TableMapping, self.mapping.name)
            assert mapping is not None
            bc_mark = watermarks.get(Direction.TO_INTEGRATION)
            dataverse_mark = watermarks.get(Direction.FROM_INTEGRATION)
            if bc_mark is not None:
                mapping.bc_watermark = max(filter(None, (mapping.bc_watermark, bc_mark)))
            if dataverse_mark is not None:
                mapping.dataverse_watermark = max(filter(None, (mapping.dataverse_watermark, dataverse_mark)))


def run(cx: Connector, mapping_names: list[str] | None = None, *, dry_run: bool = False,
        progress: Callable[[int], None] | None = None) -> Outcome:
    """Run the scheduled synchronization of the named mappings (all when None), in dependency order."""
    mappings = cx.mappings()
    chosen = mappings if mapping_names is None else {n.upper(): cx.mapping(n) for n in mapping_names}
    jobs: list[JobLog] = []
    for mapping in run_order(chosen):
        jobs += ScheduledRun(cx, mapping, dry_run=dry_run, progress=progress).run()
    return Outcome(jobs, [])
