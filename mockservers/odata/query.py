"""System query options other than `$filter`, and running a collection query against the store.

odata-query covers `$filter` only; `$select`, `$orderby`, `$top`, `$skip`, `$count` and `$expand`
are parsed here (their grammar is a comma list with nested parentheses) and validated against the
declarations. Paging is keyset-based: a page continues after the last row of the previous one, in the
query's order, so pages neither skip nor repeat rows when data changes between requests. Each service
encodes the last row's sort values in a token of its own shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import QuerySyntaxError, UnknownProperty
from .filter import FilterExpression, compile_filter
from .schema import EntityType, Schema
from .storage import Row, Store


@dataclass
class ExpandItem:
    name: str
    options: QueryOptions


@dataclass
class QueryOptions:
    select: list[str] | None = None
    filter: str | FilterExpression | None = None  # text until a service's FilterDialect prepares it
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (property, descending)
    top: int | None = None
    skip: int | None = None
    count: bool = False
    expand: list[ExpandItem] = field(default_factory=list)
    ref: bool = False  # $expand=nav/$ref


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and quoted strings."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            if quoted and i + 1 < len(text) and text[i + 1] == "'":
                current.append("''")
                i += 2
                continue
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise QuerySyntaxError(f"Unbalanced parentheses in '{text}'.")
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if depth != 0 or quoted:
        raise QuerySyntaxError(f"Unbalanced parentheses or quotes in '{text}'.")
    parts.append("".join(current))
    return parts


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_select(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if not names or any(not n for n in names):
        raise QuerySyntaxError(f"The $select expression '{text}' is not valid.")
    for name in names:
        if name != "*" and not _NAME.match(name):
            raise QuerySyntaxError(f"The $select expression '{text}' is not valid.")
    return names


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    items = []
    for part in split_top_level(text, ","):
        words = part.split()
        if not words or len(words) > 2 or not _NAME.match(words[0].replace("/", "_")):
            raise QuerySyntaxError(f"The $orderby expression '{text}' is not valid.")
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise QuerySyntaxError(f"The $orderby direction '{words[1]}' is not valid; use asc or desc.")
        items.append((words[0], direction == "desc"))
    return items


def parse_nonnegative(name: str, text: str) -> int:
    # ASCII digits only (str.isdigit admits '²', which int() refuses) and within SQL's BIGINT range.
    if not (text.isascii() and text.isdigit()) or int(text) > 2**63 - 1:
        raise QuerySyntaxError(f"Invalid value '{text}' for {name}; a non-negative integer is expected.")
    return int(text)


def parse_bool(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise QuerySyntaxError(f"Invalid value '{text}' for {name}; true or false is expected.")
    return text.lower() == "true"


def parse_expand(text: str) -> list[ExpandItem]:
    items = []
    for part in split_top_level(text, ","):
        part = part.strip()
        if not part:
            raise QuerySyntaxError(f"The $expand expression '{text}' is not valid.")
        name, _, rest = part.partition("(")
        name = name.strip()
        ref = False
        if name.endswith("/$ref"):
            name, ref = name[: -len("/$ref")], True
        if not _NAME.match(name):
            raise QuerySyntaxError(f"The $expand expression '{text}' is not valid.")
        options = QueryOptions()
        if rest:
            if not rest.endswith(")"):
                raise QuerySyntaxError(f"The $expand expression '{text}' is not valid.")
            inner = rest[:-1]
            options = parse_options(
                {k: v for k, v in (_option_pair(o, text) for o in split_top_level(inner, ";") if o.strip())}
            )
        options.ref = ref
        items.append(ExpandItem(name, options))
    return items


def _option_pair(text: str, whole: str) -> tuple[str, str]:
    key, eq, value = text.strip().partition("=")
    if not eq:
        raise QuerySyntaxError(f"The $expand expression '{whole}' is not valid.")
    return key.strip(), value


def parse_options(args: dict[str, str]) -> QueryOptions:
    """Parse the system query options present in ``args`` (names with their `$`)."""
    opts = QueryOptions()
    if "$select" in args:
        opts.select = parse_select(args["$select"])
    if "$filter" in args:
        opts.filter = args["$filter"]
    if "$orderby" in args:
        opts.orderby = parse_orderby(args["$orderby"])
    if "$top" in args:
        opts.top = parse_nonnegative("$top", args["$top"])
    if "$skip" in args:
        opts.skip = parse_nonnegative("$skip", args["$skip"])
    if "$count" in args:
        opts.count = parse_bool("$count", args["$count"])
    if "$expand" in args:
        opts.expand = parse_expand(args["$expand"])
    return opts


def sort_columns(entity: EntityType, orderby: list[tuple[str, bool]]) -> list[str]:
    """The columns that order a page (order-by columns, then the key): what a keyset token carries."""
    return [name for name, _ in orderby] + [entity.key]


@dataclass
class Page:
    rows: list[Row]
    has_more: bool
    count: int | None = None


class QueryRunner:
    """Runs validated query options for one service's schema and store."""

    def __init__(self, schema: Schema, store: Store) -> None:
        self.schema = schema
        self.store = store
        self._bases: dict[str, Any] = {}  # entity name -> SELECT of every column (statements are immutable)

    def type_name(self, entity: EntityType) -> str:
        return f"{self.schema.namespace}.{entity.name}"

    def check_select(self, entity: EntityType, select: list[str] | None) -> None:
        for name in select or []:
            if name == "*":
                continue
            prop = entity.property(name)
            if (prop is None or prop.hidden) and entity.navigation(name) is None:
                raise UnknownProperty(name, self.type_name(entity))

    def check_expand(self, entity: EntityType, expand: list[ExpandItem]) -> None:
        for item in expand:
            nav = entity.navigation(item.name)
            if nav is None:
                raise UnknownProperty(item.name, self.type_name(entity))
            target = self.schema.entity(nav.target)
            assert target is not None
            self.check_select(target, item.options.select)
            self.check_expand(target, item.options.expand)

    def base_select(self, entity: EntityType, opts: QueryOptions, conditions: list[Any]) -> Any:
        stmt = self._bases.get(entity.name)
        if stmt is None:  # selecting dozens of columns costs more to build than to run
            stmt = self._bases[entity.name] = sa.select(*self.store.table(entity).c).select_from(
                self.store.model(entity))
        for cond in conditions:
            stmt = stmt.where(cond)
        if opts.filter:
            clause, joins = compile_filter(self.schema, entity, self.store.models, opts.filter)
            for alias, rel in joins:
                stmt = stmt.outerjoin(alias, rel)
            stmt = stmt.where(clause)
        return stmt

    def order(self, entity: EntityType, stmt: Any, orderby: list[tuple[str, bool]]) -> Any:
        table = self.store.table(entity)
        for name, desc in orderby:
            prop = entity.property(name)
            if prop is None or prop.hidden:
                raise UnknownProperty(name, self.type_name(entity))
            col = table.c[name]
            # explicit NULL placement (SQLite's default) keeps keyset paging right on any database
            stmt = stmt.order_by(col.desc().nulls_last() if desc else col.asc().nulls_first())
        return stmt.order_by(table.c[entity.key].asc())  # stable pages

    def after_condition(self, entity: EntityType, orderby: list[tuple[str, bool]], last: Row) -> Any:
        """Rows that sort after ``last`` in ``orderby`` + key order (NULLs first ascending, as SQLite)."""
        table = self.store.table(entity)
        keys = [(name, desc) for name, desc in orderby] + [(entity.key, False)]
        condition: sa.ColumnElement[bool] | None = None
        beyond: sa.ColumnElement[bool]
        same: sa.ColumnElement[bool]
        for name, desc in reversed(keys):
            col, value = table.c[name], last.get(name)
            if value is None:
                beyond = col.is_not(None) if not desc else sa.false()
                same = col.is_(None)
            else:
                beyond = (col > value) if not desc else sa.or_(col < value, col.is_(None))
                same = col == value
            condition = beyond if condition is None else sa.or_(beyond, sa.and_(same, condition))
        assert condition is not None  # the key is always among the keys
        first, desc = keys[0]
        value = last.get(first)
        if value is not None and not desc and len(keys) > 1:
            # The same rows, with a range on the first column that an index can seek to and read in
            # order: without it, the OR above makes SQLite read every later row and sort them all.
            condition = sa.and_(table.c[first] >= value, condition)
        return condition

    def run(
        self,
        conn: Connection,
        entity: EntityType,
        opts: QueryOptions,
        *,
        conditions: list[Any] | None = None,
        page_size: int | None = None,
        after: Row | None = None,
        count_cap: int | None = None,
    ) -> Page:
        """One page of an entity-set query, after the row whose sort values are ``after`` (if given)."""
        self.check_select(entity, opts.select)
        self.check_expand(entity, opts.expand)
        stmt = self.base_select(entity, opts, conditions or [])
        count = None
        if opts.count:
            counted = stmt.order_by(None)
            if count_cap is not None:
                counted = counted.limit(count_cap)
            count = int(conn.execute(sa.select(sa.func.count()).select_from(counted.subquery())).scalar_one())
        if after is not None:
            stmt = stmt.where(self.after_condition(entity, opts.orderby, after))
        stmt = self.order(entity, stmt, opts.orderby)
        start = (opts.skip or 0) if after is None else 0
        limit = opts.top
        has_more = False
        fetch = limit
        if page_size is not None and (limit is None or limit > page_size):
            fetch = page_size + 1
        if fetch is not None:
            stmt = stmt.limit(fetch)
        if start:
            stmt = stmt.offset(start)
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
        if page_size is not None and len(rows) > page_size:
            rows = rows[:page_size]
            has_more = True
        self.expand(conn, entity, rows, opts.expand)
        return Page(rows, has_more, count)

    def expand(self, conn: Connection, entity: EntityType, rows: list[Row], expand: list[ExpandItem]) -> None:
        """Attach expanded navigations under ``row[nav name]``: one query per navigation, not per row."""
        for item in expand:
            nav = entity.navigation(item.name)
            assert nav is not None
            target = self.schema.entity(nav.target)
            assert target is not None
            table = self.store.table(target)
            if not rows:
                continue
            if nav.collection:
                keys = [r[entity.key] for r in rows]
                conds: list[sa.ColumnElement[bool]] = [table.c[nav.via].in_(keys)]
                if nav.discriminator:
                    conds.append(table.c[nav.discriminator] == nav.discriminator_value)
                stmt = self.order(target, self.base_select(target, item.options, conds), item.options.orderby)
                children = [dict(r) for r in conn.execute(stmt).mappings()]
                self.expand(conn, target, children, item.options.expand)
                grouped: dict[Any, list[Row]] = {}
                for child in children:
                    grouped.setdefault(child[nav.via], []).append(child)
                for row in rows:
                    found = grouped.get(row[entity.key], [])
                    if item.options.top is not None:
                        found = found[: item.options.top]
                    row[item.name] = found
            else:
                wanted = {
                    r[nav.via]
                    for r in rows
                    if r.get(nav.via) and (not nav.discriminator or r.get(nav.discriminator) == nav.discriminator_value)
                }
                # Scoped on both sides (BC companies): a reference resolves within the row's own scope.
                # ``scope`` is (the row's scope property, the target's scope property) then.
                scope = ((entity.scope_property, target.scope_property)
                         if entity.scope_property and target.scope_property else None)
                targets: dict[Any, Row] = {}
                if wanted:
                    conds = [table.c[target.key].in_(wanted)]
                    if scope is not None:
                        conds.append(table.c[scope[1]].in_({r[scope[0]] for r in rows}))
                    stmt = self.base_select(target, item.options, conds)
                    children = [dict(r) for r in conn.execute(stmt).mappings()]
                    self.expand(conn, target, children, item.options.expand)
                    targets = {((c[scope[1]], c[target.key]) if scope is not None else c[target.key]): c
                               for c in children}
                for row in rows:
                    matches = not nav.discriminator or row.get(nav.discriminator) == nav.discriminator_value
                    wanted_key = (row[scope[0]], row.get(nav.via)) if scope is not None else row.get(nav.via)
                    row[item.name] = targets.get(wanted_key) if matches else None
