"""The synchronization engine: BC's per-record algorithm, run a chunk of records at a time.

For every source record, as codeunit 5345 "Integration Rec. Synch. Invoke" does: find the coupled
record, resolve deletion conflicts, decide insert / modify / unchanged / skip, transfer the fields,
resolve update conflicts, write, and record the coupling's timestamps
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-couple-and-synchronize-records-manually).
What this engine adds is the shape of the traffic: a chunk's sources, couplings and destinations are
read with one request per side, and its writes go out as one ``$batch`` per side, so the number of
requests grows with the number of chunks, not of records. Inserts choose the destination's id and
record it as a *pending* coupling before writing, so a crash between the write and the coupling is
healed by repeating the write (an upsert with the same id), never by a second row.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from dateutil.parser import isoparse
from sqlalchemy import Table, bindparam, delete, insert, select, update

from .clients import BatchOp, BatchResult, ClientError
from .clients._chunks import chunks, quote
from .company import company_of, failure, set_company
from .jobs import JobLog, Outcome, RecordRef, previous_error
from .mappings.resolve import Resolver, as_uuid_text
from .mappings.rules import PairRules, extra_reads
from .mappings.tables import (
    BC_MODIFIED_ON,
    DATAVERSE_COMPANY,
    DATAVERSE_MODIFIED_ON,
    NATURAL_KEYS,
    bc_entity,
    dataverse_table,
    lookup_value_name,
    next_code,
)
from .mappings.transfer import (
    FieldTransfer,
    Transfer,
    TransferContext,
    TransferError,
    bc_fields,
    dataverse_columns,
)
from .options import OptionPass, code_field
from .records import bc_records
from .runtime import Connector, ConnectorError
from .store import (
    Coupling,
    DeletionConflict,
    Direction,
    JobType,
    MappingKind,
    SyncResult,
    TableMapping,
    UpdateConflict,
    couplings_of_bc_records,
)

TOLERANCE = timedelta(milliseconds=10)
IN_FLIGHT = 2  # chunks whose batch may be on the wire at once


def dataverse_select(mapping: TableMapping) -> list[str]:
    """What the engine reads of a mapping's Dataverse rows."""
    table = dataverse_table(mapping.dataverse_table)
    columns = {table.key, DATAVERSE_MODIFIED_ON, "_modifiedby_value", *dataverse_columns(mapping),
               *extra_reads(mapping.bc_entity, mapping.dataverse_table)[1]}
    if table.has_company:
        columns.add(lookup_value_name(DATAVERSE_COMPANY))
    if "ownerid" in table.lookups:
        columns.add("_ownerid_value")
    return sorted(columns)


def bc_select(mapping: TableMapping) -> list[str]:
    """What the engine reads of a mapping's BC records."""
    entity = bc_entity(mapping.bc_entity)
    return sorted({"id", BC_MODIFIED_ON, entity.number_field, entity.name_field, *bc_fields(mapping),
                   *extra_reads(mapping.bc_entity, mapping.dataverse_table)[0]})


class Action(enum.StrEnum):
    INSERT = "Insert"
    MODIFY = "Modify"
    FORCE_MODIFY = "ForceModify"
    UNCHANGED = "IgnoreUnchanged"
    SKIP = "Skip"
    FAIL = "Fail"
    IGNORE = "Ignore"  # filtered out before the algorithm: not counted


def parse_time(value: Any) -> datetime | None:
    """A service timestamp as naive UTC (how the state keeps them)."""
    if not value:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:  # the services' forms (Z, offsets, 0-7 fraction digits); C-fast, a pass reads two per record
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            parsed = isoparse(str(value))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def compare_times(a: datetime | None, b: datetime | None) -> int:
    """BC's CompareDateTime: equal within 10 ms; an unset value is older than any other."""
    if a == b:
        return 0
    if a is None:
        return -1
    if b is None:
        return 1
    if abs(a - b) < TOLERANCE:
        return 0
    return 1 if a > b else -1


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass
class Options:
    """How a job runs: one-off jobs (Synchronize Now, coupling) force the modify (§4.9)."""

    force_modify: bool = False
    sync_only_coupled: bool = True
    skip_changed_destination: bool = False  # Synchronize Now on several records
    insert_only: bool = False  # Create New / Create in Dataverse: coupled records are skipped


@dataclass
class Item:
    source: dict[str, Any]
    coupling: Coupling | None = None
    destination: dict[str, Any] | None = None
    action: Action | None = None
    destination_id: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    both_modified: bool = False
    message: str | None = None
    written: dict[str, Any] | None = None  # the destination as it was after the write
    clear_company: bool = False  # Remove Coupling in a From pass: the surviving row loses our company id
    retried: bool = False
    keep_pending: bool = False
    decoupled: bool = False  # coupled just now to an existing row with the same natural key


@dataclass
class _Flight:
    """A chunk whose writes were sent; ``answers`` is None when there was nothing to send."""

    items: list[Item]
    writes: list[Item]
    keys: set[str]  # the chunk's source keys
    last_attempt: bool = False
    answers: Future[list[BatchResult]] | None = None


class Pass:
    """One direction of one mapping over a stream of source records."""

    def __init__(self, cx: Connector, mapping: TableMapping, direction: Direction, job: JobLog, options: Options,
                 *, resolver: Resolver | None = None, progress: Callable[[int], None] | None = None,
                 dry_run: bool = False) -> None:
        if direction is Direction.BIDIRECTIONAL:
            raise ValueError("a pass runs in one direction")
        self.cx = cx
        self.mapping = mapping
        self.direction = direction
        self.job = job
        self.options = options
        self.progress = progress
        self.to_dataverse = direction is Direction.TO_INTEGRATION
        self.resolver = resolver or Resolver(cx.state, cx.bc, cx.mappings())
        self.transfer = FieldTransfer(mapping, direction, TransferContext(self.resolver, cx.lcy_currency_id()))
        self.table = dataverse_table(mapping.dataverse_table)
        self.entity = bc_entity(mapping.bc_entity)
        self.latest_source_modified: datetime | None = None
        self._last_code: str | None = None
        self.rules = PairRules(cx, mapping.bc_entity, mapping.dataverse_table, self.resolver)
        self.dry_run = dry_run

    # -- reading ------------------------------------------------------------------------------
    def dataverse_select(self) -> list[str]:
        return dataverse_select(self.mapping)

    def bc_select(self) -> list[str]:
        return bc_select(self.mapping)

    def _source_key(self, record: dict[str, Any]) -> str:
        return str(record["id" if self.to_dataverse else self.table.key]).lower()

    def _source_modified(self, record: dict[str, Any]) -> datetime | None:
        return parse_time(record.get(BC_MODIFIED_ON if self.to_dataverse else DATAVERSE_MODIFIED_ON))

    def _destination_modified(self, record: dict[str, Any] | None) -> datetime | None:
        if record is None:
            return None
        return parse_time(record.get(DATAVERSE_MODIFIED_ON if self.to_dataverse else BC_MODIFIED_ON))

    def _read_destinations(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        if self.to_dataverse:
            rows = self.cx.dataverse.rows_by_ids(self.table.set_name, self.table.key, ids,
                                                 select=self.dataverse_select())
            return {str(r[self.table.key]).lower(): r for r in rows}
        rows = self.cx.bc.rows_where_in(self.mapping.bc_entity, "id", ids, guid=True, select=self.bc_select())
        return {str(r["id"]).lower(): r for r in rows}

    def _couplings(self, keys: list[str]) -> dict[str, Coupling]:
        with self.cx.state.session() as session:
            if self.to_dataverse:
                return {c.bc_id: c for c in couplings_of_bc_records(session, self.mapping.bc_entity,
                                                                    self.mapping.dataverse_table, keys)}
            rows = session.scalars(select(Coupling).where(Coupling.bc_entity == self.mapping.bc_entity,
                                                          Coupling.dataverse_table == self.mapping.dataverse_table,
                                                          Coupling.dataverse_id.in_(keys)))
            return {c.dataverse_id: c for c in rows}

    @staticmethod
    def _destination_key(coupling: Coupling, to_dataverse: bool) -> str:
        return coupling.dataverse_id if to_dataverse else coupling.bc_id

    # -- the algorithm --------------------------------------------------------------------------
    def run(self, sources: Iterable[dict[str, Any]]) -> None:
        """Chunk by chunk, with up to ``IN_FLIGHT`` chunks' batches on the wire while the next chunk is
        read and decided, and the last one landed is recorded.

        The services answer about half of a large run's time and the connector spends the other half
        reading, deciding and recording; overlapping them keeps both busy. Only the batch requests run
        beside the main thread: the state, the job log, the caches and the retries stay on it, in
        chunk order. A chunk that shares a record with one on the wire waits for it to land. Lookups
        resolve through other mappings' couplings (the defaults have no mapping that refers to its
        own records), so a chunk decided before the previous one is recorded resolves them alike.
        """
        flights: deque[_Flight] = deque()  # on the wire, oldest first
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="sync-batch") as wire, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-read") as reader:
            for chunk in chunks(sources, self.cx.config.page_size):
                keys = {self._source_key(s) for s in chunk}
                if any(not f.keys.isdisjoint(keys) for f in flights):
                    while flights:
                        self._land(flights.popleft())
                items, destinations = self._couple(chunk, reader)
                landed = flights.popleft() if len(flights) == IN_FLIGHT else None
                if landed is not None:  # its answers come back while this chunk's destinations are read
                    self._receive_all(landed)
                self._prepare(items, destinations.result())
                flights.append(self._send(items, wire))
                if landed is not None:
                    self._record_all(landed)
            while flights:
                self._land(flights.popleft())

    def _couple(self, sources: list[dict[str, Any]],
                reader: ThreadPoolExecutor) -> tuple[list[Item], Future[dict[str, dict[str, Any]]]]:
        """A chunk's items with their couplings, and the read of their destinations, under way."""
        items = [Item(source=s) for s in sources]
        couplings = self._couplings([self._source_key(s) for s in sources])
        for item in items:
            item.coupling = couplings.get(self._source_key(item.source))
            self.latest_source_modified = _later(self.latest_source_modified, self._source_modified(item.source))
        return items, reader.submit(self._read_destinations,
                                    [self._destination_key(i.coupling, self.to_dataverse) for i in items if i.coupling])

    def _prepare(self, items: list[Item], destinations: dict[str, dict[str, Any]]) -> None:
        """What else a chunk needs (natural keys, lookups), then each record decided."""
        for item in items:
            if item.coupling:
                item.destination = destinations.get(self._destination_key(item.coupling, self.to_dataverse))
        self._couple_natural_keys(items)
        self._prefetch_lookups(items)
        self.rules.prepare([i.source for i in items], self.to_dataverse)
        for item in items:
            self._decide(item)

    def _land(self, flight: _Flight) -> None:
        """A chunk's answers: apply them, retry the records whose destination changed under us, record."""
        self._receive_all(flight)
        self._record_all(flight)

    def _receive_all(self, flight: _Flight) -> None:
        self._receive(flight)
        items = flight.items
        retry = [i for i in items if i.action is Action.FAIL and i.retried and i.message is None]
        if retry:  # the destination changed between our read and our write: read again, decide again
            fresh = self._read_destinations([i.destination_id for i in retry if i.destination_id])
            self.rules.prepare([i.source for i in retry], self.to_dataverse)  # prepared for the next chunk since
            for item in retry:
                item.destination = fresh.get(item.destination_id or "")
                item.action, item.values, item.message = None, {}, None
                self._decide(item)
            self._receive(self._send(retry, None, last_attempt=True))

    def _record_all(self, flight: _Flight) -> None:
        self._record(flight.items)  # its counters are written with its couplings
        if self.progress:
            self.progress(len(flight.items))

    def _couple_natural_keys(self, items: list[Item]) -> None:
        """Couple uncoupled records to existing rows with the same natural key (an ISO currency code)."""
        natural = NATURAL_KEYS.get((self.mapping.bc_entity, self.mapping.dataverse_table))
        candidates = [i for i in items if i.coupling is None and self.to_dataverse]
        if natural is None or not candidates or self.options.sync_only_coupled:
            return
        bc_field, column = natural
        values = sorted({str(i.source.get(bc_field)) for i in candidates if i.source.get(bc_field)})
        if not values:
            return
        rows = list(self.cx.dataverse.rows(self.table.set_name, select=self.dataverse_select(), filter=(
            f"Microsoft.Dynamics.CRM.In(PropertyName='{column}',PropertyValues={json.dumps(values)})")))
        with self.cx.state.session() as session:
            taken = set(session.scalars(select(Coupling.dataverse_id).where(
                Coupling.bc_entity == self.mapping.bc_entity, Coupling.dataverse_table == self.mapping.dataverse_table,
                Coupling.dataverse_id.in_([str(r[self.table.key]).lower() for r in rows]))))
            by_value = {str(r.get(column)).upper(): r for r in rows if str(r[self.table.key]).lower() not in taken}
            for item in candidates:
                row = by_value.pop(str(item.source.get(bc_field)).upper(), None)
                if row is None:
                    continue
                item.coupling = Coupling(bc_entity=self.mapping.bc_entity, bc_id=self._source_key(item.source),
                                         dataverse_table=self.mapping.dataverse_table,
                                         dataverse_id=str(row[self.table.key]).lower())
                if not self.dry_run:
                    session.add(item.coupling)
                item.destination, item.decoupled = row, True

    def _prefetch_lookups(self, items: list[Item]) -> None:
        for f in self.transfer.fields:
            if not f.via_mapping or f.via_mapping not in self.resolver.mappings:
                continue
            via = self.resolver.via(f.via_mapping)
            if self.to_dataverse and f.bc_field and f.bc_field in self.entity.references:
                self.resolver.prefetch_bc(via, [as_uuid_text(i.source.get(f.bc_field)) or "" for i in items])
            elif not self.to_dataverse and f.dataverse_field and f.dataverse_field in self.table.lookups:
                column = lookup_value_name(f.dataverse_field)
                self.resolver.prefetch_dataverse(via, [as_uuid_text(i.source.get(column)) or "" for i in items])

    def _source_changed(self, coupling: Coupling, source: dict[str, Any]) -> bool:
        if self.to_dataverse:
            if coupling.last_result_to is SyncResult.FAILURE and not coupling.skipped:
                return True
            return compare_times(self._source_modified(source), coupling.last_synced_bc_modified) > 0
        if coupling.last_result_from is SyncResult.FAILURE and not coupling.skipped:
            return True
        return compare_times(self._source_modified(source), coupling.last_synced_dataverse_modified) > 0

    def _destination_changed(self, coupling: Coupling, destination: dict[str, Any] | None) -> bool:
        last = coupling.last_synced_dataverse_modified if self.to_dataverse else coupling.last_synced_bc_modified
        return compare_times(self._destination_modified(destination), last) > 0

    def _decide(self, item: Item) -> None:
        coupling, options = item.coupling, self.options
        if self.rules.ignores(item.source, self.to_dataverse):
            item.action = Action.IGNORE
            return
        already_coupled = coupling is not None and not coupling.pending and not item.decoupled
        if coupling is not None and (coupling.skipped or (options.insert_only and already_coupled)):
            item.action = Action.SKIP
            return
        if coupling is not None and not coupling.pending and item.destination is None:
            if options.force_modify:
                item.action = Action.SKIP
                return
            resolution = self.mapping.deletion_conflict
            if resolution is DeletionConflict.NONE:
                self._fail(item, f"The {self._source_caption()} record cannot be updated because it is coupled to "
                                 "a deleted record.")
                return
            self._uncouple_deleted(coupling)
            if resolution is DeletionConflict.REMOVE_COUPLING:  # uncoupled, as Delete Coupling does (§6.2)
                item.coupling, item.action = None, Action.UNCHANGED
                item.clear_company = not self.to_dataverse and self.table.has_company
                return
            item.coupling, restoring = None, True  # Restore Records: a new destination, coupled afresh
        else:
            restoring = False
        if item.coupling is None or item.coupling.pending:
            if item.coupling is None and options.sync_only_coupled and not restoring:
                item.action = Action.IGNORE
                return
            item.action = Action.INSERT
            item.destination_id = (self._destination_key(item.coupling, self.to_dataverse) if item.coupling
                                   else str(uuid.uuid4()))
        else:
            item.destination_id = self._destination_key(item.coupling, self.to_dataverse)
            if options.force_modify or item.decoupled:
                item.action = Action.FORCE_MODIFY
            elif not self._source_changed(item.coupling, item.source):
                item.action = Action.UNCHANGED
                return
            else:
                item.action = Action.MODIFY
                item.both_modified = (self.mapping.direction is Direction.BIDIRECTIONAL
                                      and self._destination_changed(item.coupling, item.destination))
            if options.skip_changed_destination and self._destination_changed(item.coupling, item.destination):
                item.action = Action.SKIP
                return
        inserting = item.action is Action.INSERT
        destination = None if inserting else item.destination
        try:
            transfer = (self.transfer.to_dataverse(item.source, destination) if self.to_dataverse
                        else self.transfer.to_bc(item.source, destination))
            self.rules.apply(item.source, transfer.values, inserting, destination, to_dataverse=self.to_dataverse)
        except TransferError as error:
            self._fail(item, "The data could not be updated because of the following error: "
                             f"{error.message.rstrip('.')}.")
            return
        conflict = item.action is Action.MODIFY and item.both_modified and bool(transfer.bidirectional_changes)
        if conflict and not self._resolve_update_conflict(item, transfer):
            return
        item.values = self._with_additional_values(item, transfer)
        if item.action is Action.MODIFY and not item.values:
            item.action = Action.UNCHANGED

    def _resolve_update_conflict(self, item: Item, transfer: Transfer) -> bool:
        resolution = self.mapping.update_conflict
        if resolution is UpdateConflict.NONE:
            changed = transfer.bidirectional_changes[0]
            self._fail(item, f"Cannot update a record in the {self._destination_caption()} table. The mapping between "
                             f"{self.entity.field_caption(changed.bc_field or '')} field on the {self.entity.caption} "
                             f"table and the {changed.dataverse_field} field on the {self.table.logical_name} table "
                             "is bi-directional, and one or both values have changed since the last synchronization.")
            return False
        wins = (resolution is UpdateConflict.SEND_UPDATE) == self.to_dataverse
        item.action = Action.FORCE_MODIFY if wins else Action.SKIP
        return wins

    def _with_additional_values(self, item: Item, transfer: Transfer) -> dict[str, Any]:
        """Template values on insert; company id and default owner on the Dataverse side (§7.3)."""
        values = dict(transfer.values)
        inserting = item.action is Action.INSERT
        if self.to_dataverse:
            if inserting:
                values.update(self.mapping.dataverse_template or {})
            if self.table.has_company:
                company = self.cx.company()
                current = as_uuid_text((item.destination or {}).get(lookup_value_name(DATAVERSE_COMPANY)))
                if inserting or current != company.dataverse_id:
                    values[f"{DATAVERSE_COMPANY}@odata.bind"] = f"/bcbi_companies({company.dataverse_id})"
            if inserting and "ownerid" in self.table.lookups and "ownerid@odata.bind" not in values:
                team = self.cx.company().default_owning_team
                if team:
                    values["ownerid@odata.bind"] = f"/teams({team})"
        elif inserting:
            values.update(self.mapping.bc_template or {})
            if self.entity.new_code and self.entity.number_field not in values:
                values[self.entity.number_field] = self._new_code()
        return values

    def _new_code(self) -> str:
        """The code of a BC record created from Dataverse: after the highest one in use (BC's IncStr)."""
        assert self.entity.new_code is not None
        if self._last_code is None:
            field, stem = self.entity.number_field, self.entity.new_code.rstrip("0123456789")
            rows = list(self.cx.bc.rows(self.mapping.bc_entity, select=[field], orderby=f"{field} desc",
                                        filter=f"startswith({field},{quote(stem)})", page_size=1))
            self._last_code = str(rows[0][field]) if rows else None
            code = next_code(self._last_code) if self._last_code else self.entity.new_code
        else:
            code = next_code(self._last_code)
        self._last_code = code
        return code

    def _fail(self, item: Item, message: str) -> None:
        item.action, item.message = Action.FAIL, message

    def _source_caption(self) -> str:
        return self.entity.caption if self.to_dataverse else self.table.logical_name

    def _destination_caption(self) -> str:
        return self.table.logical_name if self.to_dataverse else self.entity.caption

    def _uncouple_deleted(self, coupling: Coupling) -> None:
        if self.dry_run:
            return
        with self.cx.state.session() as session:
            session.execute(delete(Coupling).where(Coupling.id == coupling.id))

    # -- writing --------------------------------------------------------------------------------
    def _select_query(self) -> str:
        """What a write's answer carries back: the row's new modifiedon, which the coupling records (the
        rest of the row is what was just sent)."""
        return f"?$select={self.table.key},{DATAVERSE_MODIFIED_ON}"

    def _op(self, item: Item) -> BatchOp:
        assert item.destination_id is not None
        if self.to_dataverse:
            headers = {"Prefer": "return=representation"}
            if item.action is not Action.INSERT and item.destination:
                headers["If-Match"] = item.destination.get("@odata.etag", "*")
            return BatchOp("PATCH", f"{self.table.set_name}({item.destination_id}){self._select_query()}",
                           item.values, headers)
        path = self.cx.bc.path(self.mapping.bc_entity)
        if item.action is Action.INSERT and item.destination is None:
            return BatchOp("POST", path, {"id": item.destination_id, **item.values})
        etag = (item.destination or {}).get("@odata.etag", "*")
        return BatchOp("PATCH", self.cx.bc.path(self.mapping.bc_entity, item.destination_id), item.values,
                       {"If-Match": etag})

    def _pend(self, items: list[Item]) -> None:
        """Record the chosen ids of records about to be created, before creating them: one statement for
        the chunk (a multi-row INSERT), the new couplings' ids read back with their BC ids."""
        new = [i for i in items if i.action is Action.INSERT and i.coupling is None]
        if not new or self.dry_run:
            return
        rows: list[dict[str, Any]] = []
        for item in new:
            source_key = self._source_key(item.source)
            assert item.destination_id is not None
            rows.append({"bc_entity": self.mapping.bc_entity, "dataverse_table": self.mapping.dataverse_table,
                         "bc_id": source_key if self.to_dataverse else item.destination_id,
                         "dataverse_id": item.destination_id if self.to_dataverse else source_key,
                         "pending": True, "skipped": False})
        with self.cx.state.session() as session:  # (bc_entity, bc_id) is unique: the BC id names the row
            ids = {bc_id: coupling_id for bc_id, coupling_id
                   in session.execute(insert(Coupling).returning(Coupling.bc_id, Coupling.id), rows)}
        for item, row in zip(new, rows, strict=True):
            item.coupling = Coupling(id=ids[row["bc_id"]], **row)

    def _send(self, items: list[Item], wire: ThreadPoolExecutor | None, *, last_attempt: bool = False) -> _Flight:
        """Put a chunk's writes on the wire (``wire``: beside this thread; None: now), their ids recorded first."""
        ours = self.cx.company().dataverse_id if any(i.clear_company for i in items) else None
        self._set_source_company([i for i in items if i.clear_company and company_of(i.source) == ours], None,
                                 "reset")  # Remove Coupling: the surviving row is no longer this company's
        writes = [i for i in items if i.action in (Action.INSERT, Action.MODIFY, Action.FORCE_MODIFY)]
        flight = _Flight(items, writes, {self._source_key(i.source) for i in items}, last_attempt)
        if not writes:
            return flight
        if self.dry_run:  # decided, not sent: the plan is what a real run would write
            for item in writes:
                item.written = {}
            return flight
        self._pend(writes)
        ops = [self._op(i) for i in writes]
        call = (partial(self.cx.dataverse.batch, ops) if self.to_dataverse
                else partial(self.cx.bc.batch, self.mapping.bc_entity, ops))
        if wire is not None:
            flight.answers = wire.submit(call)
        else:
            flight.answers = Future()
            try:
                flight.answers.set_result(call())
            except ClientError as error:
                flight.answers.set_exception(error)
        return flight

    def _receive(self, flight: _Flight) -> None:
        if flight.answers is None:
            return
        writes = flight.writes
        try:
            results = flight.answers.result()
        except ClientError as error:  # the service stayed unreachable: pending creates stay pending
            for item in writes:
                item.keep_pending = True
                self._fail(item, str(error))
            return
        for item, result in zip(writes, results, strict=True):
            self._apply_result(item, result, flight.last_attempt)
        if not self.to_dataverse and self.table.has_company:  # the row that created a BC record becomes ours
            self._set_source_company([i for i in writes if i.action is Action.INSERT and i.written
                                      and not company_of(i.source)], self.cx.company().dataverse_id, "set")

    def _apply_result(self, item: Item, result: BatchResult, last_attempt: bool) -> None:
        if result.ok:
            item.written = result.body if isinstance(result.body, dict) else {}
            return
        error = result.error
        assert error is not None
        if error.is_concurrency_conflict and not last_attempt and not item.retried:
            item.action, item.retried = Action.FAIL, True
            return
        if item.action is Action.INSERT and self.to_dataverse is False and error.status == 409 and not item.retried:
            item.action, item.retried = Action.FAIL, True  # created by an interrupted run: read it, then modify
            return
        if item.action is Action.INSERT:
            self._fail(item, error.message)
        else:
            self._fail(item, f"Modifying {self._destination_caption()} failed because of the following error: "
                             f"{error.message.rstrip('.')}.")

    def _set_source_company(self, items: list[Item], company: str | None, what: str) -> None:
        """Stamp (or free) the Dataverse rows that were the source of ``items``; their new modifiedon
        becomes the one recorded, so the stamp is not read back as a change."""
        if not items or self.dry_run:
            return
        rows = [{self.table.key: self._source_key(i.source)} for i in items]
        for item, (_, answer) in zip(items, set_company(self.cx, self.table, rows, company), strict=True):
            message = failure(answer)
            if message is not None:
                item.message = f"The company id of the Dataverse row was not {what}: {message}"
            elif isinstance(answer, BatchResult) and isinstance(answer.body, dict):
                item.source = {**item.source, DATAVERSE_MODIFIED_ON: answer.body.get(DATAVERSE_MODIFIED_ON)}

    # -- recording ------------------------------------------------------------------------------
    def _record(self, items: list[Item]) -> None:
        if self.dry_run:
            self._record_plan(items)
            return
        with self.cx.state.session() as session:
            # a failure may delete or flag its coupling: those are loaded, in one query, to change them
            ids = [i.coupling.id for i in items
                   if i.action is Action.FAIL and i.coupling is not None and i.coupling.id is not None]
            loaded: dict[int, Coupling] = {}
            for start in range(0, len(ids), 500):
                loaded.update((c.id, c) for c in session.scalars(
                    select(Coupling).where(Coupling.id.in_(ids[start:start + 500]))))
            succeeded: list[dict[str, Any]] = []
            for item in items:
                action = item.action
                if action is Action.IGNORE or action is None:
                    continue
                if action is Action.SKIP:
                    self.job.count("skipped")
                    continue
                if action is Action.FAIL:
                    self.job.count("failed")
                    with session.no_autoflush:  # one flush for the chunk, at commit
                        coupling = self._attached(session, item.coupling, loaded)
                    self._record_failure(session, item, coupling)
                    continue
                self.job.count({Action.INSERT: "inserted", Action.UNCHANGED: "unchanged"}.get(action, "modified"))
                if item.coupling is not None:
                    succeeded.append(self._record_success(item, item.coupling))
                if item.message:  # a follow-up step failed after the record itself was written
                    self.job.error(self._ref(item), self._label_source(item), self._label_destination(item),
                                   item.message)
            if succeeded:  # by primary key, one statement run for the chunk (no ORM object is involved)
                session.execute(self._settle_statement(), succeeded)
            self.job.write(session)

    @staticmethod
    def _attached(session: Any, coupling: Coupling | None, loaded: dict[int, Coupling]) -> Coupling | None:
        """The coupling in this session: the row loaded for the chunk, else a merged copy."""
        if coupling is None:
            return None
        found = loaded.get(coupling.id) if coupling.id is not None else None
        return found if found is not None else session.merge(coupling)

    def _record_plan(self, items: list[Item]) -> None:
        """A dry run counts and describes; the state stays as it was."""
        words = {Action.INSERT: "insert", Action.MODIFY: "modify", Action.FORCE_MODIFY: "modify",
                 Action.UNCHANGED: "unchanged", Action.SKIP: "skip", Action.FAIL: "fail"}
        for item in items:
            if item.action is None or item.action is Action.IGNORE:
                continue
            counter = {Action.INSERT: "inserted", Action.UNCHANGED: "unchanged", Action.SKIP: "skipped",
                       Action.FAIL: "failed"}.get(item.action, "modified")
            self.job.count(counter)
            line = f"{words[item.action]} {self._label_source(item)}"
            destination = self._label_destination(item)
            if destination and item.action is not Action.INSERT:
                line += f" -> {destination}"
            elif item.action is Action.INSERT:
                line += " -> new " + (self.table.logical_name if self.to_dataverse else self.entity.caption)
            if item.message:
                line += f": {item.message}"
                self.job.messages.append(f"{self._label_source(item)}: {item.message}")
            if item.values and item.action in (Action.MODIFY, Action.FORCE_MODIFY):
                line += " (" + ", ".join(sorted(k.removesuffix("@odata.bind") for k in item.values)) + ")"
            self.job.plan.append(line)

    def _record_success(self, item: Item, coupling: Coupling) -> dict[str, Any]:
        """The coupling after a successful synchronization, as the row's new values (``coupling`` is the
        chunk's copy, read or written by this pass: it carries them too)."""
        coupling.pending = False
        destination = item.written if item.written is not None else item.destination
        source_time, destination_time = self._source_modified(item.source), self._destination_modified(destination)
        bc_time, dataverse_time = ((source_time, destination_time) if self.to_dataverse
                                   else (destination_time, source_time))
        coupling.last_synced_bc_modified = _later(coupling.last_synced_bc_modified, bc_time)
        coupling.last_synced_dataverse_modified = _later(coupling.last_synced_dataverse_modified, dataverse_time)
        if item.both_modified:  # let the other direction pick the destination's change up again
            if self.to_dataverse and coupling.last_synced_dataverse_modified:
                coupling.last_synced_dataverse_modified -= timedelta(milliseconds=999)
            elif not self.to_dataverse and coupling.last_synced_bc_modified:
                coupling.last_synced_bc_modified -= timedelta(milliseconds=10)
        if self.to_dataverse:
            coupling.last_result_to, coupling.last_job_to = SyncResult.SUCCESS, self.job.id
        else:
            coupling.last_result_from, coupling.last_job_from = SyncResult.SUCCESS, self.job.id
        coupling.skipped = False
        return {f"new_{name}": getattr(coupling, name) for name in self._settled_columns()}

    def _settled_columns(self) -> tuple[str, ...]:
        """What a success changes on its coupling (the row's id first)."""
        result, job = ("last_result_to", "last_job_to") if self.to_dataverse else ("last_result_from", "last_job_from")
        return ("id", "pending", "skipped", "last_synced_bc_modified", "last_synced_dataverse_modified", result, job)

    def _settle_statement(self) -> Any:
        """UPDATE coupling SET … WHERE id = :new_id, run once per success of a chunk."""
        table = cast(Table, Coupling.__table__)
        _id, *columns = self._settled_columns()
        return (update(table).where(table.c.id == bindparam("new_id"))
                .values({name: bindparam(f"new_{name}") for name in columns}))

    def _record_failure(self, session: Any, item: Item, coupling: Coupling | None) -> None:
        message = item.message or "The record could not be synchronized."
        ref = self._ref(item)
        if coupling is not None and coupling.pending and not item.keep_pending:
            session.delete(coupling)  # the create was refused: nothing exists, leave no trace
            coupling = None
        if coupling is not None and not coupling.pending:
            last_result = coupling.last_result_to if self.to_dataverse else coupling.last_result_from
            last_job = coupling.last_job_to if self.to_dataverse else coupling.last_job_from
            if last_result is SyncResult.FAILURE and previous_error(self.cx.state, last_job, ref) == message[:2048]:
                coupling.skipped = True  # the same failure twice in a row
            if self.to_dataverse:
                coupling.last_result_to, coupling.last_job_to = SyncResult.FAILURE, self.job.id
            else:
                coupling.last_result_from, coupling.last_job_from = SyncResult.FAILURE, self.job.id
        self.job.error(ref, self._label_source(item), self._label_destination(item), message)

    def _ref(self, item: Item) -> RecordRef:
        source_key = self._source_key(item.source)
        destination = item.destination_id
        bc_id, dataverse_id = (source_key, destination) if self.to_dataverse else (destination, source_key)
        return RecordRef(self.mapping.bc_entity, bc_id, self.mapping.dataverse_table, dataverse_id)

    def _label_bc(self, bc_id: str | None, record: dict[str, Any] | None) -> str:
        number = (record or {}).get(self.entity.number_field)
        return f"{self.entity.caption} {number}" if number else f"{self.mapping.bc_entity}({bc_id})"

    def _label_source(self, item: Item) -> str:
        if self.to_dataverse:
            return self._label_bc(self._source_key(item.source), item.source)
        return f"{self.table.set_name}({self._source_key(item.source)})"

    def _label_destination(self, item: Item) -> str | None:
        if not item.destination_id:
            return None
        if self.to_dataverse:
            return f"{self.table.set_name}({item.destination_id})"
        return self._label_bc(item.destination_id, item.destination)


def direction_passes(direction: Direction) -> list[Direction]:
    """Bidirectional = To pass then From pass (§4.2)."""
    if direction is Direction.BIDIRECTIONAL:
        return [Direction.TO_INTEGRATION, Direction.FROM_INTEGRATION]
    return [direction]


# -- Synchronize Now ----------------------------------------------------------------------------


def choose_direction(mapping: TableMapping, requested: Direction | None) -> Direction:
    """The direction a one-off sync runs in: the user's choice for bidirectional mappings, else the mapping's."""
    if mapping.direction is Direction.BIDIRECTIONAL:
        if requested is None or requested is Direction.BIDIRECTIONAL:
            raise ConnectorError(f"The {mapping.name} mapping is bidirectional: choose a direction "
                                 "(--direction to-dataverse or from-dataverse).")
        return requested
    if requested is not None and requested is not mapping.direction:
        raise ConnectorError(f"The {mapping.name} mapping synchronizes only {_DIRECTION_WORDS[mapping.direction]}.")
    return mapping.direction


_DIRECTION_WORDS = {Direction.TO_INTEGRATION: "to Dataverse", Direction.FROM_INTEGRATION: "from Dataverse"}


def synchronize_now(cx: Connector, mapping: TableMapping, bc_keys: list[str], direction: Direction | None = None,
                    progress: Callable[[int], None] | None = None) -> Outcome:
    """Synchronize Now on one or several BC records (§4.9).

    Several records: the uncoupled ones are left out, and records flagged Skipped or whose
    destination changed since the last synchronization are skipped, so nothing is overwritten.
    One uncoupled record is refused (BC opens Set Up Coupling instead).
    """
    chosen = choose_direction(mapping, direction)
    if mapping.kind is MappingKind.OPTION:
        job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, chosen)
        OptionPass(cx, mapping, job, progress).run(bc_records(cx, mapping, bc_keys, ["id", code_field(mapping)]))
        job.finish()
        return Outcome([job], [])
    records = bc_records(cx, mapping, bc_keys, bc_select(mapping))
    with cx.state.session() as session:
        coupled = {c.bc_id: c for c in couplings_of_bc_records(session, mapping.bc_entity, mapping.dataverse_table,
                                                                [r["id"].lower() for r in records])
                   if not c.pending}
    uncoupled = [r for r in records if r["id"].lower() not in coupled]
    entity = bc_entity(mapping.bc_entity)
    if len(records) == 1 and uncoupled:
        raise ConnectorError(f"{entity.caption} {records[0].get(entity.number_field)} is not coupled; couple it first "
                             f"(connector couple {mapping.name} {records[0].get(entity.number_field)} ...).")
    notes = [f"{len(uncoupled)} not coupled, not synchronized: "
             + ", ".join(str(r.get(entity.number_field)) for r in uncoupled)] if uncoupled else []
    wanted = [r for r in records if r["id"].lower() in coupled]
    job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, chosen)
    options = Options(force_modify=True, sync_only_coupled=mapping.sync_only_coupled,
                      skip_changed_destination=len(records) > 1)
    engine = Pass(cx, mapping, chosen, job, options, progress=progress)
    if chosen is Direction.TO_INTEGRATION:
        engine.run(wanted)
    else:
        table = dataverse_table(mapping.dataverse_table)
        engine.run(cx.dataverse.rows_by_ids(table.set_name, table.key, [coupled[r["id"].lower()].dataverse_id
                                                                          for r in wanted],
                                            select=dataverse_select(mapping)))
    job.finish()
    return Outcome([job], notes)


def synchronize_from_dataverse(cx: Connector, mapping: TableMapping, dataverse_id: str) -> Outcome:
    """The Sales-side action: synchronize one row, creating and coupling the BC record when allowed."""
    table = dataverse_table(mapping.dataverse_table)
    row = cx.dataverse.get(table.set_name, dataverse_id.strip("{}").lower(), select=dataverse_select(mapping))
    if row is None:
        raise ConnectorError(f"no {table.logical_name} row with id {dataverse_id}")
    owner = str(row.get(lookup_value_name(DATAVERSE_COMPANY)) or "").lower() if table.has_company else ""
    if owner and owner != cx.company().dataverse_id:  # §7.4: another company's rows are not ours to read
        raise ConnectorError(f"{table.logical_name} {dataverse_id} belongs to another BC company (company id {owner}); "
                             f"{cx.company().name} does not synchronize it.")
    with cx.state.session() as session:
        coupled = session.scalars(select(Coupling).where(
            Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table,
            Coupling.dataverse_id == str(row[table.key]).lower(),
            Coupling.pending.is_(False))).first()
    if coupled is None:
        if mapping.sync_only_coupled or mapping.direction is Direction.TO_INTEGRATION:
            raise ConnectorError(
                f"{table.logical_name} {dataverse_id} is not coupled, and {mapping.name} creates Business Central "
                "records from Dataverse only when Sync. Only Coupled Records is off and the direction is "
                f"Bidirectional or FromIntegrationTable (now: sync only coupled = {mapping.sync_only_coupled}, "
                f"direction = {mapping.direction.value}).")
    elif mapping.direction is Direction.TO_INTEGRATION:
        raise ConnectorError(f"The {mapping.name} mapping synchronizes only to Dataverse.")
    job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, Direction.FROM_INTEGRATION)
    engine = Pass(cx, mapping, Direction.FROM_INTEGRATION, job, Options(force_modify=True, sync_only_coupled=False))
    engine.run([row])
    job.finish()
    return Outcome([job], [])
