"""The job log: one Integration Synch. Job per action with BC's counters, and its per-record errors.

The job row is written when the job starts and its counters after every chunk, so a job that was
interrupted (a crash, Ctrl+C) still shows what it did (https://learn.microsoft.com/dynamics365/business-central/admin-how-to-view-synchronization-status).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .store import Direction, JobError, JobType, State, SyncJob

COUNTERS = ("inserted", "modified", "deleted", "unchanged", "skipped", "failed", "coupled", "uncoupled")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class RecordRef:
    """Which records an error is about (either side may be unknown)."""

    bc_entity: str | None = None
    bc_id: str | None = None
    dataverse_table: str | None = None
    dataverse_id: str | None = None


class JobLog:
    """A job's counters and errors; with ``persist=False`` (a dry run) nothing reaches the state."""

    def __init__(self, state: State, mapping_name: str, job_type: JobType, direction: Direction, *,
                 persist: bool = True) -> None:
        self.state = state
        self.id = str(uuid.uuid4())
        self.mapping_name = mapping_name
        self.direction = direction
        self.persist = persist
        self.counts: Counter[str] = Counter()
        self._errors: list[JobError] = []
        self.messages: list[str] = []  # every error message of this job, for callers that show them
        self.plan: list[str] = []  # what a dry run would do, one line per record
        self.message: str | None = None
        if persist:
            with state.session() as session:
                session.add(SyncJob(id=self.id, mapping_name=mapping_name, type=job_type, direction=direction,
                                    started_at=utcnow()))

    def count(self, counter: str, n: int = 1) -> None:
        assert counter in COUNTERS, counter
        self.counts[counter] += n

    def error(self, ref: RecordRef, source: str, destination: str | None, message: str) -> None:
        self.messages.append(f"{source}: {message}")
        self._errors.append(JobError(job_id=self.id, mapping_name=self.mapping_name, bc_entity=ref.bc_entity,
                                     bc_id=ref.bc_id, dataverse_table=ref.dataverse_table,
                                     dataverse_id=ref.dataverse_id, source=source[:250],
                                     destination=destination[:250] if destination else None,
                                     message=message[:2048], created_at=utcnow()))

    def flush(self, *, finished: bool = False) -> None:
        if not self.persist:
            self._errors = []
            return
        with self.state.session() as session:
            self.write(session, finished=finished)

    def write(self, session: Session, *, finished: bool = False) -> None:
        """Write the counters and new errors in ``session``: in the transaction that records what the
        counters count (the couplings), so a crash cannot leave one without the other."""
        if not self.persist:
            return
        job = session.get(SyncJob, self.id)
        assert job is not None
        for name in COUNTERS:
            setattr(job, name, self.counts[name])
        job.message = self.message[:250] if self.message else None
        if finished:
            job.finished_at = utcnow()
        session.add_all(self._errors)
        self._errors = []

    def finish(self, message: str | None = None) -> None:
        if message:
            self.message = message
        self.flush(finished=True)

    def snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {"id": self.id, "direction": self.direction.value,
                                    **{name: self.counts[name] for name in COUNTERS}}
        if not self.persist:
            snapshot["dry_run"] = True
            snapshot["plan"] = list(self.plan)
        return snapshot


def previous_error(state: State, job_id: str | None, ref: RecordRef) -> str | None:
    """The message logged for this record by job ``job_id`` (BC's "same failure twice" test)."""
    if not job_id:
        return None
    with state.session() as session:
        query = select(JobError.message).where(JobError.job_id == job_id)
        if ref.bc_id:
            query = query.where(JobError.bc_id == ref.bc_id)
        if ref.dataverse_id:
            query = query.where(JobError.dataverse_id == ref.dataverse_id)
        return session.scalars(query.order_by(JobError.id.desc())).first()


@dataclass
class Outcome:
    """What an action did: its jobs (newest last) and anything worth telling the user."""

    jobs: list[JobLog]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"jobs": [dict(j.snapshot(), mapping=j.mapping_name) for j in self.jobs], "notes": self.notes}
