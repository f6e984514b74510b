"""The SQL indexes of the store's tables, derived from the entity declarations.

Every entity table gets (each led by the scope column on a scoped entity, BC: the company):
- ``ix_<table>_scope``: the scope alone;
- ``ux_<table>_<key name>``: one unique index per alternate key;
- ``ix_<table>_<column>`` for the columns `$filter` and `$orderby` commonly compare: the primary
  name, the state (a property of kind ``State``: Dataverse ``statecode``), the lookups (the column a
  single-valued navigation goes through) and the modified-on stamp. An ``eq`` reads only the
  matching rows. A text index has the column's case-insensitive collation (``NOCASE`` / ``citext``,
  see ``storage``), which is what ``eq`` compares with, so ``name eq 'x'`` is an index search. A
  column that an alternate key indexes on its own has its unique index already.

  The primary name, state and modified-on indexes end with the key, (scope, column, key): pages are
  read in order through them (``$orderby=name``, the few inactive rows of ``statecode eq 1``, a
  watermark's ``modifiedon gt``). The lookup indexes are (scope, column) alone. Most rows share one
  of a few lookup values (the one owner, the creating user, no parent), so a key after the value
  would put each new row at a random place in the index: with 100k accounts a block of 500 inserts
  dirtied thousands of index pages (CreateMultiple: 158 ms a block with the key after each lookup,
  75 ms without). An ``eq`` on a lookup matches few rows, which are sorted after they are read;
- ``ix_<table>_<version>``: the row version (change tracking).

Indexes never change a result: every query orders by its `$orderby` columns and then the key.

``metadata.create_all`` creates a new table with its indexes but leaves an existing one as it is, so
``install`` brings the indexes of the tables a data dir already had to what the declarations say now.

SQLite's planner has no statistics unless someone runs ``ANALYZE``; without them every index
equality looks equally selective, and ``name eq 'x' and statecode eq 0`` could walk every active row
by the state index. Each query index therefore carries a hint of how many rows share a value of its
columns (a state or a scope: many; a primary name or an alternate key: about one), written to
``sqlite_stat1`` where no statistics exist yet. Hints only steer the choice between indexes; real
``ANALYZE`` results win. Without a hint, SQLite takes an equality on an index's first column for a
handful of rows: a BC alternate key (company, number) looked like the cheapest way to read a company's
rows in number order, so ``id eq a or id eq b …`` walked every customer instead of seeking 100 ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .schema import EntityType

log = logging.getLogger(__name__)

ASSUMED_ROWS = 1 << 20  # the table size SQLite assumes without statistics
# Rows that typically share one value of a column, by the column's role.
ROWS_PER_SCOPE = ASSUMED_ROWS // 2  # a handful of companies
ROWS_PER_STATE = ASSUMED_ROWS // 4  # active / inactive
ROWS_PER_NAME = 2  # names are nearly unique
ROWS_PER_VALUE = 10  # SQLite's own guess for an indexed column: lookups, modified-on
_STAT = "sqlite_stat"  # Index.info key: the sqlite_stat1 hint


def query_columns(entity: EntityType) -> dict[str, int]:
    """The columns that get a query index (``ix_<table>_<column>``), with the rows typically sharing a value."""
    props = entity.properties
    candidates: list[tuple[str | None, int]] = [
        (entity.primary_name, ROWS_PER_NAME),
        *((p.name, ROWS_PER_STATE) for p in props if p.kind == "State"),
        *((name, ROWS_PER_VALUE) for name in entity.lookup_columns()),
        (entity.modified_on, ROWS_PER_VALUE),
    ]
    unique_alone = {key.properties[0] for key in entity.alternate_keys if len(key.properties) == 1}
    columns: dict[str, int] = {}
    for name, rows in candidates:
        if (name is None or name in columns or entity.property(name) is None or name in unique_alone
                or name in (entity.key, entity.scope_property)):
            continue
        columns[name] = rows
    return columns


def ordered_columns(entity: EntityType) -> set[str]:
    """The query columns whose index ends with the key: those pages are commonly ordered by."""
    states = (p.name for p in entity.properties if p.kind == "State")
    return {name for name in (entity.primary_name, *states, entity.modified_on) if name is not None}


def _hint(rows_per_value: Iterable[int]) -> str:
    """A ``sqlite_stat1`` stat: the row count, then the rows sharing each leading run of columns."""
    stat, share = [ASSUMED_ROWS], 1.0
    for rows in rows_per_value:
        share *= rows / ASSUMED_ROWS
        stat.append(max(1, round(ASSUMED_ROWS * share)))
    return " ".join(str(n) for n in stat)


def declare(entity: EntityType, table: sa.Table) -> None:
    """Attach the indexes of ``entity`` to its table (``create_all`` creates them with it)."""
    name = entity.table_name
    scope = [table.c[entity.scope_property]] if entity.scope_property else []
    scope_rows = [ROWS_PER_SCOPE] if scope else []
    if scope:
        sa.Index(f"ix_{name}_scope", *scope, info={_STAT: _hint(scope_rows)})
    for key in entity.alternate_keys:
        leading = [ROWS_PER_VALUE] * (len(key.properties) - 1)
        sa.Index(f"ux_{name}_{key.name}", *scope, *[table.c[p] for p in key.properties], unique=True,
                 info={_STAT: _hint([*scope_rows, *leading, 1])})
    ordered = ordered_columns(entity)
    for column, rows in query_columns(entity).items():
        tiebreak = [table.c[entity.key]] if column in ordered else []
        sa.Index(f"ix_{name}_{column}", *scope, table.c[column], *tiebreak,
                 info={_STAT: _hint([*scope_rows, rows, *([1] if tiebreak else [])])})
    if entity.version_property:
        sa.Index(f"ix_{name}_{entity.version_property}", table.c[entity.version_property])


def install(metadata: sa.MetaData) -> None:
    """Keep the indexes of existing tables in step with the declarations whenever ``create_all`` runs."""
    sa.event.listen(metadata, "after_create", _sync)


def _sync(metadata: sa.MetaData, conn: Connection, tables: Iterable[sa.Table] = (), **_: Any) -> None:
    """After ``create_all``: on the tables it did not create, create the missing indexes, rebuild the
    changed ones and drop this store's own indexes that no declaration names any more; then the hints."""
    created = set(tables)
    kept = [table for table in metadata.sorted_tables if table not in created]
    reflected = sa.inspect(conn).get_multi_indexes(filter_names=[t.name for t in kept]) if kept else {}
    for table in kept:
        existing = {ix["name"]: ix for ix in reflected.get((None, table.name), [])}
        declared = {index.name for index in table.indexes}
        for stale in existing:
            if stale and stale not in declared and stale.startswith((f"ix_{table.name}_", f"ux_{table.name}_")):
                conn.exec_driver_sql(f"DROP INDEX {conn.dialect.identifier_preparer.quote(stale)}")
        for index in table.indexes:
            have = existing.get(str(index.name))
            if have is not None and (list(have["column_names"]), bool(have["unique"])) == (
                    [c.name for c in index.columns], bool(index.unique)):
                continue
            if have is not None:
                index.drop(conn)
            try:
                with conn.begin_nested():
                    index.create(conn)
            except IntegrityError:  # an alternate key declared after rows that break it were written
                log.warning("%s: unique index %s not created: existing rows hold duplicate values",
                            table.name, index.name)
    if conn.dialect.name == "sqlite":
        _write_hints(metadata, conn)


def _write_hints(metadata: sa.MetaData, conn: Connection) -> None:
    conn.exec_driver_sql("ANALYZE sqlite_schema")  # creates sqlite_stat1 if missing (scans no table of ours)
    stat = sa.table("sqlite_stat1", sa.column("tbl"), sa.column("idx"), sa.column("stat"))
    present = {(t, i) for t, i in conn.execute(sa.select(stat.c.tbl, stat.c.idx))}
    rows = [{"tbl": table.name, "idx": index.name, "stat": index.info[_STAT]}
            for table in metadata.sorted_tables for index in table.indexes
            if _STAT in index.info and (table.name, index.name) not in present]
    if rows:
        conn.execute(stat.insert(), rows)
        conn.exec_driver_sql("ANALYZE sqlite_schema")  # this connection reloads the statistics
