"""The Coupled Data Synchronization Errors page: couplings whose last sync failed or that are skipped.

Its actions are BC's (https://learn.microsoft.com/dynamics365/business-central/admin-how-to-view-synchronization-status):
Retry (clear Skipped, so the next synchronization takes the record again), Skip, Synchronize (a
one-off sync that copies all fields), and Delete Coupling.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import or_, select

from .coupling import uncouple
from .jobs import JobLog, Outcome
from .mappings.tables import dataverse_table
from .runtime import Connector, ConnectorError
from .store import Coupling, Direction, JobError, JobType, SyncResult, TableMapping
from .sync import Options, Pass, bc_select, choose_direction, dataverse_select


class ErrorsPage:
    def __init__(self, cx: Connector, mapping: TableMapping | None = None) -> None:
        self.cx = cx
        self.mappings = [mapping] if mapping else [m for m in cx.mappings().values()]

    def _mapping_of(self, coupling: Coupling) -> TableMapping | None:
        return next((m for m in self.mappings if (m.bc_entity, m.dataverse_table) ==
                     (coupling.bc_entity, coupling.dataverse_table)), None)

    def couplings(self, ids: list[int] | None = None) -> list[Coupling]:
        pairs = {(m.bc_entity, m.dataverse_table) for m in self.mappings}
        query = select(Coupling).where(or_(Coupling.skipped.is_(True), Coupling.last_result_to == SyncResult.FAILURE,
                                           Coupling.last_result_from == SyncResult.FAILURE))
        if ids is not None:
            query = query.where(Coupling.id.in_(ids))
        with self.cx.state.session() as session:
            found = [c for c in session.scalars(query.order_by(Coupling.id))
                     if (c.bc_entity, c.dataverse_table) in pairs]
        if ids is not None:
            missing = sorted(set(ids) - {c.id for c in found})
            if missing:
                raise ConnectorError(f"no failed or skipped coupling with id {', '.join(map(str, missing))}")
        return found

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        with self.cx.state.session() as session:
            for c in self.couplings():
                mapping = self._mapping_of(c)
                message = session.scalars(select(JobError.message).where(
                    or_(JobError.bc_id == c.bc_id, JobError.dataverse_id == c.dataverse_id),
                    JobError.job_id.in_([j for j in (c.last_job_to, c.last_job_from) if j]))
                    .order_by(JobError.id.desc())).first()
                rows.append({"id": c.id, "mapping": mapping.name if mapping else "", "bc_id": c.bc_id,
                             "dataverse_id": c.dataverse_id, "skipped": c.skipped,
                             "last_result_to": c.last_result_to.value if c.last_result_to else None,
                             "last_result_from": c.last_result_from.value if c.last_result_from else None,
                             "message": message})
        return rows

    def _set_skipped(self, ids: list[int] | None, value: bool) -> int:
        chosen = [c.id for c in self.couplings(ids)]
        with self.cx.state.session() as session:
            for coupling in session.scalars(select(Coupling).where(Coupling.id.in_(chosen))):
                coupling.skipped = value
        return len(chosen)

    def retry(self, ids: list[int] | None) -> int:
        return self._set_skipped(ids, False)

    def skip(self, ids: list[int] | None) -> int:
        return self._set_skipped(ids, True)

    def _by_mapping(self, ids: list[int] | None) -> dict[str, list[Coupling]]:
        groups: dict[str, list[Coupling]] = defaultdict(list)
        for coupling in self.couplings(ids):
            mapping = self._mapping_of(coupling)
            if mapping is not None:
                groups[mapping.name].append(coupling)
        return groups

    def uncouple(self, ids: list[int] | None) -> Outcome:
        jobs, notes = [], []
        for name, couplings in self._by_mapping(ids).items():
            outcome = uncouple(self.cx, self.cx.mapping(name), [c.bc_id for c in couplings])
            jobs += outcome.jobs
            notes += outcome.notes
        return Outcome(jobs, notes)

    def synchronize(self, ids: list[int] | None, direction: Direction | None) -> Outcome:
        jobs = []
        for name, couplings in self._by_mapping(ids).items():
            mapping = self.cx.mapping(name)
            chosen = choose_direction(mapping, direction)
            with self.cx.state.session() as session:  # Synchronize takes the record even when skipped
                for coupling in session.scalars(select(Coupling).where(Coupling.id.in_([c.id for c in couplings]))):
                    coupling.skipped = False
            job = JobLog(self.cx.state, mapping.name, JobType.SYNCHRONIZATION, chosen)
            engine = Pass(self.cx, mapping, chosen, job, Options(force_modify=True, sync_only_coupled=False))
            if chosen is Direction.TO_INTEGRATION:
                engine.run(self.cx.bc.rows_where_in(mapping.bc_entity, "id", [c.bc_id for c in couplings], guid=True,
                                                    select=bc_select(mapping)))
            else:
                table = dataverse_table(mapping.dataverse_table)
                engine.run(self.cx.dataverse.rows_by_ids(table.set_name, table.key,
                                                         [c.dataverse_id for c in couplings],
                                                         select=dataverse_select(mapping)))
            job.finish()
            jobs.append(job)
        return Outcome(jobs, [])
