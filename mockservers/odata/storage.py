"""SQL storage derived from the entity declarations.

One ``Store`` per service instance: a table and an (imperatively mapped) ORM class per entity type on
the engine Flask-SQLAlchemy configured for the app (``database.py``), a global row-version counter and
a tombstone table for change tracking. Writes use conditional UPDATEs so optimistic concurrency holds
under concurrent requests; write transactions start as the only writer (``database.prepare_engine``)
so a read-then-write changeset cannot deadlock.

Row versions (ETags, change-tracking tokens) only ever grow: a PostgreSQL sequence, or a counter row
on SQLite. ``reset()`` empties the tables but keeps the counter and raises the change-tracking floor,
so nothing handed out before a reset is ever valid again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import foreign, registry, relationship, remote
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import BinaryExpression

from ..clock import Clock
from ..counters import Counters
from . import database, indexes
from .database import WRITE, WRITER_LOCK, SessionProvider
from .errors import AlreadyExists, KeyViolation, NotFound, VersionMismatch
from .schema import AlternateKey, Edm, EntityType, Schema

Row = dict[str, Any]
FIRST_VERSION = 1001
_TOUCHED = "sandbox_touched_entities"  # connection info: the entities this transaction wrote
_VERSIONS = "sandbox_version_block"  # connection info: [next, last, size] of the versions this transaction holds
# connection info: rows this transaction read by key, per entity, until it writes that entity (see ``get``)
_ROWS_READ = "sandbox_rows_read"
_MAX_VERSION_BLOCK = 1024
_MAX_STATEMENTS = 4096  # statements kept built, by shape
_IN_CHUNK = 500  # values per IN list (SQLite's limit on bound parameters is far above)


class DrawnKey(str):
    """A primary key the service drew itself, a new random GUID. No stored row can hold it, so an insert
    does not look it up: a query less for every create that leaves the id to the service."""


def drawn_key() -> DrawnKey:
    return DrawnKey(uuid.uuid4())


def _as_citext(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return type(value)(_as_citext(v) for v in value)
    if (isinstance(value, sa.ColumnElement) and isinstance(value.type, sa.String)
            and not isinstance(value.type, postgresql.CITEXT)):
        return sa.cast(value, postgresql.CITEXT)
    return value


class CaseInsensitiveText(postgresql.CITEXT):
    """PostgreSQL ``citext`` whose comparands are citext too: compared with a ``text`` or ``varchar``
    value (a bound parameter, a ``$filter`` literal), citext would fall back to text's case-sensitive
    operators."""

    class comparator_factory(postgresql.CITEXT.Comparator):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            return super().operate(op, *(_as_citext(o) for o in other), **kwargs)

        def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> Any:
            return super().reverse_operate(op, _as_citext(other), **kwargs)

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.cast(bindvalue, postgresql.CITEXT)


@compiles(BinaryExpression, "postgresql")
def _citext_on_both_sides(element: BinaryExpression, compiler: Any, **kw: Any) -> str:
    """``'x' eq name`` (the literal first): the comparator above only sees the column on the left."""
    if isinstance(element.right.type, CaseInsensitiveText) and _as_citext(element.left) is not element.left:
        element = BinaryExpression(_as_citext(element.left), element.right, element.operator,
                                   type_=element.type, negate=element.negate, modifiers=element.modifiers)
    return compiler.visit_binary(element, **kw)


def _text_type(max_length: int | None, dialect: str) -> sa.types.TypeEngine:
    """Case-insensitive text (see ``database``): citext on PostgreSQL, NOCASE elsewhere.

    citext has no length; the declared maximum is enforced on write (``values.to_stored``)."""
    if dialect == "postgresql":
        return CaseInsensitiveText()
    return sa.String(max_length, collation="NOCASE")


def _transaction_over(conn: Connection) -> set[str] | None:
    """Forget what the connection held for the transaction that ends; returns the entities it wrote."""
    conn.info.pop(_VERSIONS, None)
    conn.info.pop(_ROWS_READ, None)
    return conn.info.pop(_TOUCHED, None)


def _changed(current: Row, values: dict[str, Any]) -> dict[str, Any]:
    """The values an update writes: those that differ from the row's. A column set to what it holds is
    left out of the statement, as the database would otherwise rewrite each index on it for nothing."""
    return {name: value for name, value in values.items() if name not in current or current[name] != value}


def _forget_rows_read(conn: Connection) -> None:
    conn.info.pop(_ROWS_READ, None)


def _folded(column: sa.Column, value: Any) -> Any:
    """A value as a unique index compares it: text case-insensitively (see ``_text_type``)."""
    return value.lower() if isinstance(value, str) and isinstance(column.type, sa.String) and not isinstance(
        column.type, sa.Enum) else value


def _fold_all(table: sa.Table, names: Iterable[str], values: tuple) -> tuple:
    return tuple(_folded(table.c[name], value) for name, value in zip(names, values, strict=True))


def _column_type(prop_type: Edm, max_length: int | None, dialect: str) -> sa.types.TypeEngine:
    if prop_type is Edm.String:
        return _text_type(max_length, dialect)
    if prop_type is Edm.Guid:
        return sa.String(36)
    if prop_type is Edm.Int32:
        return sa.Integer()
    if prop_type is Edm.Int64:
        return sa.BigInteger()
    if prop_type is Edm.Decimal:
        return sa.Numeric(38, 10, asdecimal=True)
    if prop_type is Edm.Double:
        return sa.Float()
    if prop_type is Edm.Boolean:
        return sa.Boolean()
    if prop_type is Edm.DateTimeOffset:
        return sa.DateTime()
    if prop_type is Edm.Date:
        return sa.Date()
    if prop_type is Edm.Binary:
        return sa.LargeBinary()
    raise ValueError(f"unsupported EDM type {prop_type}")


class Store:
    """Tables for one schema in one database.

    ``db`` is the engine (from Flask-SQLAlchemy, see ``database.init_app``) or a URL for a
    standalone engine; ``session`` supplies the request-scoped session while the app serves a request.
    """

    def __init__(self, schema: Schema, db: Engine | str = "sqlite://", *,
                 session: SessionProvider | None = None, clock: Clock | None = None) -> None:
        self.schema = schema
        self.clock = clock or Clock()
        self.engine = db if isinstance(db, Engine) else database.create_engine(db)
        database.prepare_engine(self.engine)
        if not sa.event.contains(self.engine, "begin", _forget_rows_read):  # however the last one ended
            sa.event.listen(self.engine, "begin", _forget_rows_read)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self.dialect = self.engine.dialect.name
        self.is_sqlite = self.dialect == "sqlite"
        self.is_postgresql = self.dialect == "postgresql"
        self._session = session
        self._generations = Counters(entity.name for entity in schema)
        self._statements: dict[tuple[Any, ...], Any] = {}
        # One shared in-memory connection: serialise access ourselves.
        self._memory_lock = threading.RLock() if isinstance(self.engine.pool, StaticPool) else None
        # The database admits one writer at a time. Threads of this process wait for it here, and
        # start as soon as the last one commits; left to SQLite, a waiting writer polls with sleeps
        # that grow to 100 ms, so the lock often sat free while the next batch slept.
        self._writer_lock = threading.RLock()
        self.metadata = sa.MetaData()
        self.registry = registry(metadata=self.metadata)
        self.tables: dict[str, sa.Table] = {}
        self.models: dict[str, type] = {}
        self._build()
        if self.is_postgresql:
            with self.engine.begin() as conn:  # trusted extension: the database owner may create it
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS citext")
        self.metadata.create_all(self.engine)
        self._ensure_counters()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def _locked(self, write: bool) -> Iterator[None]:
        lock = self._memory_lock or (self._writer_lock if write else None)
        if lock is None:
            yield
        else:
            with lock:
                yield

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        session = self._session() if self._session is not None else None
        if session is not None and not write and not session.in_transaction():
            session = None  # a read on its own needs no request session (and is cheaper without one)
        with self._locked(write):
            if session is None:
                with self.engine.connect() as conn:
                    conn.execution_options(**{WRITE: write})
                    try:
                        with conn.begin():
                            yield conn
                    finally:
                        self._ended(_transaction_over(conn))
                return
            if session.in_transaction():  # nested in this request's open transaction: join it
                yield session.connection()
                return
            conn = session.connection(execution_options={WRITE: write})
            try:
                yield conn
            except BaseException:
                touched = _transaction_over(conn)
                try:
                    session.rollback()
                finally:
                    self._ended(touched)
                raise
            touched = _transaction_over(conn)
            try:
                session.commit()
            finally:
                self._ended(touched)

    # -- write generations: what in-memory caches of rows check ---------------------------------
    def share(self) -> None:
        """Keep the write generations in memory that processes forked from now on share, so a worker's
        cache of rows learns of another worker's writes (see :mod:`mockservers.counters`)."""
        self._generations.share()

    def generation(self, entity_name: str) -> int:
        """A number that changes whenever a transaction writing ``entity_name`` starts writing it and
        again when it ends: a value read from the table while it stays the same is still current
        (a cache taken during a write is invalidated by the end of that write)."""
        return self._generations.get(entity_name)

    def _touch(self, conn: Connection, entity_name: str) -> None:
        conn.info.setdefault(_TOUCHED, set()).add(entity_name)
        rows_read = conn.info.get(_ROWS_READ)
        if rows_read:
            rows_read.pop(entity_name, None)
        self._generations.add((entity_name,))

    def _ended(self, touched: set[str] | None) -> None:
        """A transaction ended (committed or rolled back): what it wrote changes generation again."""
        if touched:
            self._generations.add(touched)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (the only writer while it lasts); commits on success, rolls back on
        any exception. While the app serves a request it runs in the request's session."""
        with self._transaction(True) as conn:
            yield conn

    @contextmanager
    def savepoint(self, conn: Connection) -> Iterator[None]:
        """Writes inside a write transaction that roll back on their own when the block raises."""
        nested = conn.begin_nested()
        try:
            yield
        except BaseException:
            nested.rollback()
            conn.info.pop(_VERSIONS, None)  # a block of versions drawn inside is given back
            conn.info.pop(_ROWS_READ, None)  # rows read inside may have been written inside
            raise
        nested.commit()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._transaction(False) as conn:
            yield conn

    # -- schema -> tables ---------------------------------------------------------------------
    def _build(self) -> None:
        for entity in self.schema:
            columns = []
            for prop in entity.properties:
                # A scoped entity (BC: one table per company) is keyed by (scope, key): the same id
                # may exist in two companies.
                in_key = prop.name == entity.key or prop.name == entity.scope_property
                col = sa.Column(
                    prop.name,
                    _column_type(prop.type, prop.max_length, self.dialect),
                    primary_key=in_key,
                    nullable=not in_key,
                )
                columns.append(col)
            table = sa.Table(entity.table_name, self.metadata, *columns)
            indexes.declare(entity, table)
            self.tables[entity.name] = table

        # Row versions: a sequence where the database has them, else a counter row. ``floor`` is the
        # lowest version a change-tracking token may carry: it rises on every reset.
        self._row_version = sa.Sequence("_row_version", start=FIRST_VERSION, metadata=self.metadata)
        self._sequence = sa.Table(
            "_sequence", self.metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("value", sa.BigInteger),
            sa.Column("floor", sa.BigInteger, nullable=False, server_default="0"),
        )
        self.tombstones = sa.Table(
            "_tombstone",
            self.metadata,
            sa.Column("entity", sa.String(128), nullable=False),
            sa.Column("key", sa.String(36), nullable=False),
            sa.Column("scope", sa.String(36)),
            sa.Column("version", sa.BigInteger, nullable=False),
            sa.Column("deleted_on", sa.DateTime, nullable=False),
            sa.Index("ix_tombstone_entity_version", "entity", "version"),
        )

        indexes.install(self.metadata)

        for entity in self.schema:
            self.models[entity.name] = type(entity.name, (), {"__entity__": entity})
        for entity in self.schema:
            self.registry.map_imperatively(
                self.models[entity.name], self.tables[entity.name], properties=self._relationships(entity)
            )
        self.registry.configure()

    def _relationships(self, entity: EntityType) -> dict[str, Any]:
        props: dict[str, Any] = {}
        src = self.tables[entity.name]
        for nav in entity.navigations:
            target_entity = self.schema.entity(nav.target)
            assert target_entity is not None
            tgt = self.tables[nav.target]
            self_ref = tgt is src
            if nav.collection:
                tgt_col = tgt.c[nav.via]
                cond = src.c[entity.key] == (remote(foreign(tgt_col)) if self_ref else foreign(tgt_col))
                if nav.discriminator:
                    disc = remote(tgt.c[nav.discriminator]) if self_ref else tgt.c[nav.discriminator]
                    cond = sa.and_(cond, disc == nav.discriminator_value)
                props[nav.name] = relationship(
                    self.models[nav.target], primaryjoin=cond, viewonly=True, uselist=True, lazy="noload"
                )
            else:
                tgt_key = tgt.c[target_entity.key]
                cond = foreign(src.c[nav.via]) == (remote(tgt_key) if self_ref else tgt_key)
                if entity.scope_property and target_entity.scope_property and not self_ref:
                    cond = sa.and_(cond, foreign(src.c[entity.scope_property]) == tgt.c[target_entity.scope_property])
                if nav.discriminator:
                    cond = sa.and_(cond, src.c[nav.discriminator] == nav.discriminator_value)
                props[nav.name] = relationship(
                    self.models[nav.target], primaryjoin=cond, viewonly=True, uselist=False, lazy="noload"
                )
        return props

    def _ensure_counters(self) -> None:
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("_sequence")}
        with self.write() as conn:
            if "floor" not in columns:  # a data dir written before resets kept versions growing
                conn.exec_driver_sql("ALTER TABLE _sequence ADD COLUMN floor BIGINT NOT NULL DEFAULT 0")
            if conn.execute(sa.select(self._sequence.c.id).where(self._sequence.c.id == 1)).first() is None:
                conn.execute(self._sequence.insert().values(id=1, value=FIRST_VERSION - 1, floor=0))

    def reset(self) -> None:
        """Drop every row (tables stay). Versions go on from where they were, and every change-tracking
        token handed out so far falls below the new floor."""
        with self.write() as conn:
            for table in reversed(self.metadata.sorted_tables):
                if table is not self._sequence:
                    conn.execute(table.delete())
            for entity in self.schema.entities:
                self._touch(conn, entity.name)
            floor = self.next_version(conn)
            conn.execute(sa.update(self._sequence).where(self._sequence.c.id == 1).values(floor=floor))

    # -- primitives ---------------------------------------------------------------------------
    def next_version(self, conn: Connection) -> int:
        """Draw the next row version (in a write transaction, so versions commit in order)."""
        return self.next_versions(conn, 1)

    def next_versions(self, conn: Connection, count: int) -> int:
        """Draw ``count`` consecutive row versions; returns the first. Consecutive because the write
        transaction is the only writer (``database.prepare_engine``).

        A transaction that writes again and again takes its versions from blocks that double in size,
        so most writes draw without a statement; the versions a block leaves unused are never handed
        out (versions only need to grow)."""
        block = conn.info.get(_VERSIONS)
        if block is not None and block[1] - block[0] + 1 >= count:
            first = block[0]
            block[0] += count
            return first
        size = count if block is None else max(count, min(2 * block[2], _MAX_VERSION_BLOCK))
        first = self._reserve_versions(conn, size)
        conn.info[_VERSIONS] = [first + count, first + size - 1, size]
        return first

    def _reserve_versions(self, conn: Connection, count: int) -> int:
        if self.is_postgresql:
            first = int(conn.execute(sa.select(self._row_version.next_value())).scalar_one())
            if count > 1:
                conn.execute(sa.select(sa.func.setval("_row_version", first + count - 1)))
            return first
        seq = self._sequence
        stmt = self._statement(("versions",), lambda: sa.update(seq).where(seq.c.id == 1).values(
            value=seq.c.value + sa.bindparam("_count", type_=sa.BigInteger)).returning(seq.c.value))
        return int(conn.execute(stmt, {"_count": count}).scalar_one()) - count + 1

    def current_version(self, conn: Connection) -> int:
        """The highest committed row version: every change at or below it is visible to ``conn``."""
        if self.is_postgresql:
            # Wait for the writer in flight (if any), and keep the next one out until this read ends.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({WRITER_LOCK})")
            row = conn.exec_driver_sql("SELECT last_value, is_called FROM _row_version").one()
            return int(row[0]) if row[1] else int(row[0]) - 1
        return int(conn.execute(sa.select(self._sequence.c.value).where(self._sequence.c.id == 1)).scalar_one())

    def tracking_floor(self, conn: Connection) -> int:
        """The lowest version a change-tracking token may carry (it rises at every ``reset``)."""
        return int(conn.execute(sa.select(self._sequence.c.floor).where(self._sequence.c.id == 1)).scalar_one())

    def table(self, entity: EntityType) -> sa.Table:
        return self.tables[entity.name]

    def model(self, entity: EntityType) -> type:
        return self.models[entity.name]

    def _scoped(self, entity: EntityType, stmt: Any, scope: str | None) -> Any:
        if entity.scope_property and scope is not None:
            stmt = stmt.where(self.table(entity).c[entity.scope_property] == scope)
        return stmt

    def get(self, conn: Connection, entity: EntityType, key: str, scope: str | None = None) -> Row | None:
        """The stored row with ``key``, or None.

        A row found is remembered until this transaction writes the entity or ends: a write of a batch
        binds hundreds of rows to the same company and prices them in the same currency, and the only
        writer (or a read snapshot) sees the same row each time. A row not found is asked again."""
        rows_read = conn.info.get(_ROWS_READ)
        remembered = rows_read.get(entity.name, {}).get((key, scope)) if rows_read else None
        if remembered is not None:
            return dict(remembered)
        stmt = self._statement(("get", entity.name, scope is not None), lambda: self._get_statement(entity, scope))
        params = {"_key": key} if scope is None or not entity.scope_property else {"_key": key, "_scope": scope}
        found = conn.execute(stmt, params).mappings().first()
        if found is None:
            return None
        row = dict(found)
        conn.info.setdefault(_ROWS_READ, {}).setdefault(entity.name, {})[(key, scope)] = row
        return dict(row)

    def get_many(self, conn: Connection, entity: EntityType, keys: Iterable[str], scope: str | None = None) -> dict[str, Row]:
        """The stored rows among ``keys``, by key (one query per few hundred keys)."""
        wanted = sorted(set(keys))
        scoped = bool(entity.scope_property and scope is not None)

        def build() -> Any:
            table = self.table(entity)
            stmt = sa.select(table).where(table.c[entity.key].in_(sa.bindparam("_keys", expanding=True)))
            if scoped:
                assert entity.scope_property is not None
                stmt = stmt.where(table.c[entity.scope_property] == sa.bindparam("_scope"))
            return stmt

        stmt = self._statement(("get_many", entity.name, scoped), build)
        found: dict[str, Row] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            params: dict[str, Any] = {"_keys": wanted[start:start + _IN_CHUNK]}
            if scoped:
                params["_scope"] = scope
            found.update((row[entity.key], dict(row)) for row in conn.execute(stmt, params).mappings())
        return found

    def _get_statement(self, entity: EntityType, scope: str | None) -> Any:
        table = self.table(entity)
        stmt = sa.select(table).where(table.c[entity.key] == sa.bindparam("_key"))
        if entity.scope_property and scope is not None:
            stmt = stmt.where(table.c[entity.scope_property] == sa.bindparam("_scope"))
        return stmt

    def _statement(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """A statement built once per shape and executed with parameters: building one costs more
        than running it."""
        stmt = self._statements.get(key)
        if stmt is None:
            if len(self._statements) >= _MAX_STATEMENTS:  # updates take a shape per set of changed columns
                self._statements.clear()
            stmt = self._statements[key] = build()
        return stmt

    def find(self, conn: Connection, entity: EntityType, values: dict[str, Any], scope: str | None = None) -> Row | None:
        """Find one row by equality on the given columns (alternate keys)."""
        shape = tuple((name, value is None) for name, value in sorted(values.items()))
        scoped = bool(entity.scope_property and scope is not None)

        def build() -> Any:
            table = self.table(entity)
            stmt = sa.select(table)
            for name, is_null in shape:
                stmt = stmt.where(table.c[name].is_(None) if is_null else table.c[name] == sa.bindparam(f"_v_{name}"))
            if scoped:
                assert entity.scope_property is not None
                stmt = stmt.where(table.c[entity.scope_property] == sa.bindparam("_scope"))
            return stmt.limit(2)

        params: dict[str, Any] = {f"_v_{name}": value for name, value in values.items() if value is not None}
        if scoped:
            params["_scope"] = scope
        row = conn.execute(self._statement(("find", entity.name, shape, scoped), build), params).mappings().all()
        return dict(row[0]) if len(row) == 1 else None

    def _update_statement(self, entity: EntityType, columns: tuple[str, ...], scoped: bool, conditional: bool,
                          returning: bool = True) -> Any:
        table = self.table(entity)
        stmt = sa.update(table).where(table.c[entity.key] == sa.bindparam("_key"))
        if scoped:
            assert entity.scope_property is not None
            stmt = stmt.where(table.c[entity.scope_property] == sa.bindparam("_scope"))
        if conditional:
            assert entity.version_property is not None
            stmt = stmt.where(table.c[entity.version_property] == sa.bindparam("_version"))
        stmt = stmt.values({name: sa.bindparam(f"_v_{name}") for name in columns})
        return stmt.returning(*table.c) if returning else stmt

    def _stamp(self, entity: EntityType, rows: Sequence[dict[str, Any]], conn: Connection, *, creating: bool) -> None:
        """The server columns of rows about to be written: consecutive versions, the time of the write."""
        self._touch(conn, entity.name)
        first = self.next_versions(conn, len(rows))
        now = self.clock.utcnow()
        for offset, values in enumerate(rows):
            if entity.version_property:
                values[entity.version_property] = first + offset
            if entity.modified_on:
                values[entity.modified_on] = now
            if creating and entity.created_on:
                values[entity.created_on] = now

    def _check_alternate_keys(
        self, conn: Connection, entity: EntityType, row: Row, exclude_key: str | None, scope: str | None,
        changed: Iterable[str] | None = None, keys: Iterable[AlternateKey] | None = None,
    ) -> None:
        """No other row may hold the same values of an alternate key (of ``keys``, by default all); with
        ``changed`` (an update), only the keys whose columns it changes are checked (the others held before)."""
        touched = set(changed) if changed is not None else None
        for key in entity.alternate_keys if keys is None else keys:
            if touched is not None and touched.isdisjoint(key.properties):
                continue
            probe = {p: row.get(p) for p in key.properties}
            if any(v is None for v in probe.values()):
                continue  # NULLs never collide (as on SQL Server filtered unique indexes)
            existing = self.find(conn, entity, probe, scope)
            if existing is not None and existing[entity.key] != exclude_key:
                raise KeyViolation(entity.name, key.name, key.properties)

    def insert(self, conn: Connection, entity: EntityType, values: dict[str, Any], scope: str | None = None) -> Row:
        return self.insert_rows(conn, entity, [values], scope)[0]

    def insert_rows(self, conn: Connection, entity: EntityType, rows: Sequence[dict[str, Any]],
                    scope: str | None = None) -> list[Row]:
        """Insert new rows with the checks of inserting them one by one, in a few statements: one query
        for the keys already taken, one per single-column alternate key, one block of versions and one
        multi-row INSERT. The first row (in order) that one-by-one inserts would refuse decides the
        error."""
        if not rows:
            return []
        table = self.table(entity)
        stamped = [dict(values) for values in rows]
        scope_name = entity.scope_property
        if scope_name and scope is not None:
            for values in stamped:
                values[scope_name] = scope
        self._check_new_rows(conn, entity, stamped)
        self._stamp(entity, stamped, conn, creating=True)
        columns = sorted({name for values in stamped for name in values})
        params = [{f"_v_{name}": values.get(name) for name in columns} for values in stamped]
        stmt = self._statement(("insert", entity.name, tuple(columns)), lambda: table.insert().values(
            {name: sa.bindparam(f"_v_{name}") for name in columns}).returning(*table.c))
        try:
            result = conn.execute(stmt, params[0] if len(params) == 1 else params).mappings().all()
        except IntegrityError as exc:  # a concurrent writer on a server database
            raise AlreadyExists("A record with matching key values already exists.") from exc
        if len(result) == 1:
            return [dict(result[0])]
        # A multi-row RETURNING need not follow the parameters' order: put the rows back in it.
        identity = (scope_name, entity.key) if scope_name else (entity.key,)
        by_identity = {tuple(row[name] for name in identity): dict(row) for row in result}
        return [by_identity[tuple(values[name] for name in identity)] for values in stamped]

    def _check_new_rows(self, conn: Connection, entity: EntityType, rows: list[dict[str, Any]]) -> None:
        """Refuse the first row whose primary key or a unique alternate key is taken, by a stored row
        or by an earlier row of the same insert."""
        table = self.table(entity)
        scope_name = entity.scope_property
        taken_keys = self._taken(conn, entity, entity.key,
                                 [values for values in rows if not isinstance(values.get(entity.key), DrawnKey)])
        # Single-column keys: what stored rows hold, read at once; others are probed row by row.
        stored = {key.name: self._taken(conn, entity, key.properties[0], rows)
                  for key in entity.alternate_keys if len(key.properties) == 1}
        taken = {key.name: stored.get(key.name, set()) for key in entity.alternate_keys}
        for values in rows:
            primary = self._probe(table, (entity.key,), values, scope_name)
            if primary in taken_keys:
                raise AlreadyExists("A record with matching key values already exists.")
            taken_keys.add(primary)
            for key in entity.alternate_keys:
                if any(values.get(p) is None for p in key.properties):
                    continue  # NULLs never collide (as on SQL Server filtered unique indexes)
                probe = self._probe(table, key.properties, values, scope_name)
                if probe in taken[key.name]:
                    raise KeyViolation(entity.name, key.name, key.properties)
                if key.name not in stored:
                    self._check_alternate_keys(conn, entity, values, None,
                                               values.get(scope_name) if scope_name else None, keys=[key])
                taken[key.name].add(probe)

    @staticmethod
    def _probe(table: sa.Table, columns: tuple[str, ...], values: dict[str, Any], scope_name: str | None) -> tuple:
        """A row's values of ``columns`` (after its scope) as the database compares them."""
        names = (scope_name, *columns) if scope_name else columns
        return _fold_all(table, names, tuple(values.get(name) for name in names))

    def _taken(self, conn: Connection, entity: EntityType, column: str, rows: list[dict[str, Any]]) -> set[tuple]:
        """The probes of ``column`` (a key) that stored rows already hold, among the rows' values (looked up
        within each scope the rows name, so a scoped index serves the query)."""
        table = self.table(entity)
        scope_name = entity.scope_property
        by_scope: dict[Any, set[Any]] = {}
        for values in rows:
            if values.get(column) is not None:
                by_scope.setdefault(values.get(scope_name) if scope_name else None, set()).add(values[column])

        def build(one: bool) -> Any:
            col = table.c[column]
            stmt = sa.select(col).where(col == sa.bindparam("_value") if one else  # one row: a plain seek
                                        col.in_(sa.bindparam("_values", expanding=True)))
            if scope_name:
                stmt = stmt.where(table.c[scope_name] == sa.bindparam("_scope"))
            return stmt

        found: set[tuple] = set()
        names = (scope_name, column) if scope_name else (column,)
        for scope, scope_values in by_scope.items():
            wanted = sorted(scope_values, key=str)
            prefix = (scope,) if scope_name else ()
            for start in range(0, len(wanted), _IN_CHUNK):
                part = wanted[start:start + _IN_CHUNK]
                one = len(part) == 1
                stmt = self._statement(("taken", entity.name, column, one), lambda: build(one))  # noqa: B023
                params = {"_value": part[0], "_scope": scope} if one else {"_values": part, "_scope": scope}
                found.update(_fold_all(table, names, (*prefix, value)) for (value,) in conn.execute(stmt, params))
        return found

    def update(
        self,
        conn: Connection,
        entity: EntityType,
        key: str,
        values: dict[str, Any],
        *,
        if_version: int | None = None,
        scope: str | None = None,
        current: Row | None = None,
    ) -> Row:
        """Conditional update: the WHERE clause carries the expected version, so exactly one of
        several concurrent writers holding the same ETag wins. ``current`` is the row as this write
        transaction read it already (it cannot change under the only writer), saving a read."""
        if current is None:
            current = self.get(conn, entity, key, scope)
        if current is None:
            raise NotFound(entity.name, key)
        merged = {**current, **values}
        self._check_alternate_keys(conn, entity, merged, key, scope, changed=[
            name for name, value in values.items() if current.get(name) != value])
        values = _changed(current, values)
        self._stamp(entity, [values], conn, creating=False)
        scoped = bool(entity.scope_property and scope is not None)
        conditional = bool(if_version is not None and entity.version_property)
        columns = tuple(sorted(values))
        stmt = self._statement(("update", entity.name, columns, scoped, conditional),
                               lambda: self._update_statement(entity, columns, scoped, conditional))
        params = {f"_v_{name}": value for name, value in values.items()}
        params["_key"] = key
        if scoped:
            params["_scope"] = scope
        if conditional:
            params["_version"] = if_version
        row = conn.execute(stmt, params).mappings().first()
        if row is None:
            if self.get(conn, entity, key, scope) is None:
                raise NotFound(entity.name, key)
            raise VersionMismatch("The version of the existing record doesn't match the RowVersion property provided.")
        return dict(row)

    @staticmethod
    def changes_alternate_key(entity: EntityType, current: Row, values: dict[str, Any]) -> bool:
        """Whether writing ``values`` over ``current`` changes a column of one of the entity's alternate keys."""
        return any(current.get(name) != values[name] for key in entity.alternate_keys for name in key.properties
                   if name in values)

    def update_rows(self, conn: Connection, entity: EntityType, updates: Sequence[tuple[str, dict[str, Any], Row]],
                    scope: str | None = None) -> list[Row]:
        """Updates of distinct rows, each ``(key, values, current)`` with ``current`` the row as this write
        transaction read it: what ``update`` does for each in turn, written with one statement per set of
        columns. None may change an alternate key (those go through ``update``, which checks them)."""
        keys = [key for key, _, _ in updates]
        if len(set(keys)) != len(keys):
            raise ValueError("update_rows writes distinct rows")
        if any(self.changes_alternate_key(entity, current, values) for _, values, current in updates):
            raise ValueError("update_rows does not change alternate keys")
        staged = [_changed(current, values) for _, values, current in updates]
        self._stamp(entity, staged, conn, creating=False)
        scoped = bool(entity.scope_property and scope is not None)
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for key, values in zip(keys, staged, strict=True):
            params = {f"_v_{name}": value for name, value in values.items()}
            params["_key"] = key
            if scoped:
                params["_scope"] = scope
            shapes.setdefault(tuple(sorted(values)), []).append(params)
        for columns, params_list in shapes.items():
            stmt = self._statement(("update_rows", entity.name, columns, scoped),
                                   partial(self._update_statement, entity, columns, scoped, False, returning=False))
            conn.execute(stmt, params_list)
        stored = {str(key).lower(): row for key, row in self.get_many(conn, entity, keys, scope).items()}
        rows = []
        for key, values in zip(keys, staged, strict=True):
            row = stored.get(str(key).lower())
            if row is None or (entity.version_property and row[entity.version_property]
                               != values[entity.version_property]):
                raise NotFound(entity.name, key)  # not the row the caller read: it must not happen
            rows.append(row)
        return rows

    def delete(
        self,
        conn: Connection,
        entity: EntityType,
        key: str,
        *,
        if_version: int | None = None,
        scope: str | None = None,
    ) -> Row:
        table = self.table(entity)
        current = self.get(conn, entity, key, scope)
        if current is None:
            raise NotFound(entity.name, key)
        self._touch(conn, entity.name)
        stmt = sa.delete(table).where(table.c[entity.key] == key)
        stmt = self._scoped(entity, stmt, scope)
        if if_version is not None and entity.version_property:
            stmt = stmt.where(table.c[entity.version_property] == if_version)
        if conn.execute(stmt).rowcount != 1:
            raise VersionMismatch("The version of the existing record doesn't match the RowVersion property provided.")
        conn.execute(
            self.tombstones.insert().values(
                entity=entity.name,
                key=key,
                scope=current.get(entity.scope_property) if entity.scope_property else None,
                version=self.next_version(conn),
                deleted_on=self.clock.utcnow(),
            )
        )
        return current

    def count(self, conn: Connection, entity: EntityType, scope: str | None = None) -> int:
        stmt = self._scoped(entity, sa.select(sa.func.count()).select_from(self.table(entity)), scope)
        return int(conn.execute(stmt).scalar_one())
