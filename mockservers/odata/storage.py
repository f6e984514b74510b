"""SQL storage derived from the entity declarations.

One ``Store`` per service instance: an engine, a table and an (imperatively mapped) ORM class per
entity type, a global row-version sequence and a tombstone table for change tracking. Writes use
conditional UPDATEs so optimistic concurrency holds under concurrent requests; SQLite write
transactions start with ``BEGIN IMMEDIATE`` so a read-then-write changeset cannot deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import foreign, registry, relationship, remote
from sqlalchemy.pool import StaticPool

from .errors import AlreadyExists, KeyViolation, NotFound, VersionMismatch
from .schema import Edm, EntityType, Schema

Row = dict[str, Any]


def utcnow() -> datetime:
    """Server clock, naive UTC at millisecond precision (what both services keep)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _column_type(prop_type: Edm, max_length: int | None, nocase: bool) -> sa.types.TypeEngine:
    if prop_type is Edm.String:
        return sa.String(max_length, collation="NOCASE" if nocase else None)
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
    """Tables for one schema in one database."""

    def __init__(self, schema: Schema, url: str = "sqlite://") -> None:
        self.schema = schema
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._make_engine(url)
        self.metadata = sa.MetaData()
        self.registry = registry(metadata=self.metadata)
        self.tables: dict[str, sa.Table] = {}
        self.models: dict[str, type] = {}
        self._build()
        self.metadata.create_all(self.engine)
        self._ensure_sequence()

    # -- engine -------------------------------------------------------------------------------
    def _make_engine(self, url: str) -> Engine:
        if not url.startswith("sqlite"):
            return sa.create_engine(url, pool_pre_ping=True)
        memory = url in ("sqlite://", "sqlite:///:memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, **kwargs)
        if memory:
            # One shared connection: serialise access ourselves.
            self._memory_lock: threading.RLock | None = threading.RLock()
        else:
            self._memory_lock = None

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - driver hook
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover - driver hook
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = getattr(self, "_memory_lock", None)
        if lock is None:
            yield
        else:
            with lock:
                yield

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; commits on success, rolls back on any exception."""
        with self._locked(), self.engine.connect() as conn:
            conn.info["write"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info["write"] = False

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._locked(), self.engine.connect() as conn:
            conn.info["write"] = False
            with conn.begin():
                yield conn

    # -- schema -> tables ---------------------------------------------------------------------
    def _build(self) -> None:
        for entity in self.schema:
            columns = []
            for prop in entity.properties:
                col = sa.Column(
                    prop.name,
                    _column_type(prop.type, prop.max_length, self.is_sqlite and prop.type is Edm.String),
                    primary_key=prop.name == entity.key,
                    nullable=prop.name != entity.key,
                )
                columns.append(col)
            table = sa.Table(entity.table_name, self.metadata, *columns)
            if entity.scope_property:
                sa.Index(f"ix_{entity.table_name}_scope", table.c[entity.scope_property])
            scope_cols = [table.c[entity.scope_property]] if entity.scope_property else []
            for key in entity.alternate_keys:
                sa.Index(
                    f"ux_{entity.table_name}_{key.name}",
                    *scope_cols,
                    *[table.c[p] for p in key.properties],
                    unique=True,
                )
            for prop in entity.properties:
                if prop.lookup or prop.name == entity.modified_on:
                    sa.Index(f"ix_{entity.table_name}_{prop.name}", *scope_cols, table.c[prop.name])
            if entity.version_property:
                sa.Index(f"ix_{entity.table_name}_{entity.version_property}", table.c[entity.version_property])
            self.tables[entity.name] = table

        self._sequence = sa.Table(
            "_sequence", self.metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("value", sa.BigInteger)
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
                if nav.discriminator:
                    cond = sa.and_(cond, src.c[nav.discriminator] == nav.discriminator_value)
                props[nav.name] = relationship(
                    self.models[nav.target], primaryjoin=cond, viewonly=True, uselist=False, lazy="noload"
                )
        return props

    def _ensure_sequence(self) -> None:
        with self.write() as conn:
            if conn.execute(sa.select(self._sequence.c.value).where(self._sequence.c.id == 1)).first() is None:
                conn.execute(self._sequence.insert().values(id=1, value=1000))

    def reset(self) -> None:
        """Drop every row (tables stay)."""
        with self.write() as conn:
            for table in reversed(self.metadata.sorted_tables):
                conn.execute(table.delete())
            conn.execute(self._sequence.insert().values(id=1, value=1000))

    # -- primitives ---------------------------------------------------------------------------
    def next_version(self, conn: Connection) -> int:
        seq = self._sequence
        stmt = sa.update(seq).where(seq.c.id == 1).values(value=seq.c.value + 1).returning(seq.c.value)
        return int(conn.execute(stmt).scalar_one())

    def current_version(self, conn: Connection) -> int:
        return int(conn.execute(sa.select(self._sequence.c.value).where(self._sequence.c.id == 1)).scalar_one())

    def table(self, entity: EntityType) -> sa.Table:
        return self.tables[entity.name]

    def model(self, entity: EntityType) -> type:
        return self.models[entity.name]

    def _scoped(self, entity: EntityType, stmt: Any, scope: str | None) -> Any:
        if entity.scope_property and scope is not None:
            stmt = stmt.where(self.table(entity).c[entity.scope_property] == scope)
        return stmt

    def get(self, conn: Connection, entity: EntityType, key: str, scope: str | None = None) -> Row | None:
        table = self.table(entity)
        stmt = self._scoped(entity, sa.select(table).where(table.c[entity.key] == key), scope)
        row = conn.execute(stmt).mappings().first()
        return dict(row) if row is not None else None

    def find(self, conn: Connection, entity: EntityType, values: dict[str, Any], scope: str | None = None) -> Row | None:
        """Find one row by equality on the given columns (alternate keys)."""
        table = self.table(entity)
        stmt = sa.select(table)
        for name, value in values.items():
            stmt = stmt.where(table.c[name].is_(None) if value is None else table.c[name] == value)
        row = conn.execute(self._scoped(entity, stmt, scope).limit(2)).mappings().all()
        return dict(row[0]) if len(row) == 1 else None

    def _stamp(self, entity: EntityType, values: dict[str, Any], conn: Connection, *, creating: bool) -> int:
        version = self.next_version(conn)
        now = utcnow()
        if entity.version_property:
            values[entity.version_property] = version
        if entity.modified_on:
            values[entity.modified_on] = now
        if creating and entity.created_on:
            values[entity.created_on] = now
        return version

    def _check_alternate_keys(
        self, conn: Connection, entity: EntityType, row: Row, exclude_key: str | None, scope: str | None
    ) -> None:
        for key in entity.alternate_keys:
            probe = {p: row.get(p) for p in key.properties}
            if any(v is None for v in probe.values()):
                continue  # NULLs never collide (as on SQL Server filtered unique indexes)
            existing = self.find(conn, entity, probe, scope)
            if existing is not None and existing[entity.key] != exclude_key:
                raise KeyViolation(entity.name, key.name, key.properties)

    def insert(self, conn: Connection, entity: EntityType, values: dict[str, Any], scope: str | None = None) -> Row:
        table = self.table(entity)
        values = dict(values)
        if entity.scope_property and scope is not None:
            values[entity.scope_property] = scope
        if self.get(conn, entity, values[entity.key]) is not None:
            raise AlreadyExists("A record with matching key values already exists.")
        self._check_alternate_keys(conn, entity, values, None, scope)
        self._stamp(entity, values, conn, creating=True)
        try:
            conn.execute(table.insert().values(**values))
        except IntegrityError as exc:  # a concurrent writer on a server database
            raise AlreadyExists("A record with matching key values already exists.") from exc
        row = self.get(conn, entity, values[entity.key])
        assert row is not None
        return row

    def insert_many(self, conn: Connection, entity: EntityType, rows: list[dict[str, Any]]) -> None:
        """Insert new rows (all with the same columns) in one statement, their versions taken as one block:
        for a service's own rows written at start, where per-row checks would only cost time."""
        if not rows:
            return
        seq = self._sequence
        bump = sa.update(seq).where(seq.c.id == 1).values(value=seq.c.value + len(rows)).returning(seq.c.value)
        first = int(conn.execute(bump).scalar_one()) - len(rows) + 1
        now = utcnow()
        stamped = []
        for offset, values in enumerate(rows):
            values = dict(values)
            if entity.version_property:
                values[entity.version_property] = first + offset
            if entity.modified_on:
                values[entity.modified_on] = now
            if entity.created_on:
                values[entity.created_on] = now
            stamped.append(values)
        conn.execute(self.table(entity).insert(), stamped)

    def update(
        self,
        conn: Connection,
        entity: EntityType,
        key: str,
        values: dict[str, Any],
        *,
        if_version: int | None = None,
        scope: str | None = None,
    ) -> Row:
        """Conditional update: the WHERE clause carries the expected version, so exactly one of
        several concurrent writers holding the same ETag wins."""
        table = self.table(entity)
        current = self.get(conn, entity, key, scope)
        if current is None:
            raise NotFound(entity.name, key)
        merged = {**current, **values}
        self._check_alternate_keys(conn, entity, merged, key, scope)
        values = dict(values)
        self._stamp(entity, values, conn, creating=False)
        stmt = sa.update(table).where(table.c[entity.key] == key).values(**values)
        stmt = self._scoped(entity, stmt, scope)
        if if_version is not None and entity.version_property:
            stmt = stmt.where(table.c[entity.version_property] == if_version)
        result = conn.execute(stmt)
        if result.rowcount != 1:
            if self.get(conn, entity, key, scope) is None:
                raise NotFound(entity.name, key)
            raise VersionMismatch("The version of the existing record doesn't match the RowVersion property provided.")
        row = self.get(conn, entity, key, scope)
        assert row is not None
        return row

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
                deleted_on=utcnow(),
            )
        )
        return current

    def count(self, conn: Connection, entity: EntityType, scope: str | None = None) -> int:
        stmt = self._scoped(entity, sa.select(sa.func.count()).select_from(self.table(entity)), scope)
        return int(conn.execute(stmt).scalar_one())
