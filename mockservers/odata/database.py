"""The database layer both services share: engines from Flask-SQLAlchemy, and what each database
needs so that the sandbox behaves the same on SQLite and PostgreSQL.

Each service app configures Flask-SQLAlchemy from its own config (``SQLALCHEMY_DATABASE_URI``,
``SQLALCHEMY_ENGINE_OPTIONS``); the backend builds its tables from the declarations on that engine
(moto-style: the backend owns the state, Flask-SQLAlchemy supplies the engine and the request-scoped
session). ``prepare_engine`` adds what the store's guarantees rest on:

- **One writer at a time.** SQLite write transactions start with ``BEGIN IMMEDIATE``; PostgreSQL write
  transactions take a transaction-scoped advisory lock first. A read-then-write changeset can then
  never deadlock, and row versions are committed in the order they were drawn, which is what makes a
  change-tracking watermark safe (every version at or below it is committed).
- **Case-insensitive text, as the real services compare it** (both keep their rows in SQL databases
  with case-insensitive, accent-sensitive collations): on PostgreSQL text columns are ``citext`` (``=``, ordering, unique keys and ``LIKE`` all fold case with
  the database's Unicode rules); on SQLite the ``NOCASE`` collation and ``LIKE`` are redefined on each
  connection to fold all Unicode letters the same way (SQLite's built-in ones fold ASCII only).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.functions import GenericFunction

from mockservers.odata import checkpoints

WRITE = "sandbox_write"  # execution option: this connection's transaction will write
WRITER_LOCK = 0x5A4E_DB0C  # PostgreSQL advisory lock key that serialises writers (per database)

SessionProvider = Callable[[], Session | None]


def is_memory(url: sa.URL | str) -> bool:
    url = sa.make_url(url)
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


# Connections kept open for the requests a service runs at once, so that no request pays for opening one
# (on SQLite that also means registering the collation and functions); more are opened for a burst and
# closed after it.
POOL_SIZE = 24
POOL_OVERFLOW = 24


def engine_options(url: str) -> dict[str, Any]:
    """``SQLALCHEMY_ENGINE_OPTIONS`` for a database URL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if is_memory(parsed):
            options["poolclass"] = StaticPool  # one shared in-memory database (the store serialises access)
        else:
            options.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
        return options
    return {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}


def app_config(url: str) -> dict[str, Any]:
    """The Flask-SQLAlchemy settings of one service app whose store lives at ``url``."""
    return {"SQLALCHEMY_DATABASE_URI": url, "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url)}


def init_app(app: Flask) -> tuple[Engine, SessionProvider]:
    """Flask-SQLAlchemy on ``app`` (configured from ``app.config``): the engine, prepared for the store,
    and the request-scoped session provider the store uses while serving that app."""
    db = SQLAlchemy(session_options={"autoflush": False, "expire_on_commit": False})
    db.init_app(app)
    with app.app_context():
        engine = db.engine
    prepare_engine(engine)

    def request_session() -> Session | None:
        """The app context's session while this app serves a request, else None (seeding, tests)."""
        if has_app_context() and current_app.extensions.get("sqlalchemy") is db:
            return db.session()
        return None

    return engine, request_session


def create_engine(url: str) -> Engine:
    """A prepared engine outside any Flask app (tools and tests that use a backend directly)."""
    engine = sa.create_engine(url, **engine_options(url))
    prepare_engine(engine)
    return engine


def prepare_engine(engine: Engine) -> None:
    """Install the per-connection setup and the transaction start for the engine's database (once)."""
    if event.contains(engine, "begin", _begin):
        return
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        if not is_memory(engine.url):
            checkpoints.attach(engine, str(engine.url.database))
    event.listen(engine, "begin", _begin)


def _begin(conn: Connection) -> None:  # pragma: no cover - driver hook
    write = bool(conn.get_execution_options().get(WRITE))
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    elif conn.dialect.name == "postgresql" and write:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK})")


def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:  # pragma: no cover - driver hook
    dbapi_conn.isolation_level = None  # the begin hook emits BEGIN itself
    dbapi_conn.create_collation("NOCASE", _fold_compare)
    dbapi_conn.create_function("like", 2, _like, deterministic=True)
    dbapi_conn.create_function("like", 3, _like, deterministic=True)
    dbapi_conn.create_function("sandbox_lower", 1, _lower, deterministic=True)
    cur = dbapi_conn.cursor()
    if cur.execute("PRAGMA database_list").fetchone()[2]:  # a file, not an in-memory database
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA wal_autocheckpoint={checkpoints.FALLBACK_PAGES}")  # checkpoints.py runs them
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _fold_compare(left: str, right: str) -> int:
    """NOCASE for every letter: order and equality of the lower-cased text (what citext compares)."""
    a, b = left.lower(), right.lower()
    return (a > b) - (a < b)


@lru_cache(maxsize=256)
def _like_pattern(pattern: str, escape: str | None) -> re.Pattern[str]:
    parts: list[str] = []
    chars = iter(pattern.lower())
    for ch in chars:
        if escape is not None and ch == escape.lower():
            parts.append(re.escape(next(chars, "")))
        elif ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _like(pattern: str | None, value: Any, escape: str | None = None) -> bool | None:
    """SQL ``LIKE`` that folds every letter (SQLite's built-in one folds ASCII only)."""
    if pattern is None or value is None:
        return None
    if escape is not None and len(escape) != 1:
        raise ValueError("ESCAPE expression must be a single character")
    return _like_pattern(pattern, escape).fullmatch(str(value).lower()) is not None


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class text_position(GenericFunction[int]):
    """1-based position of the second text in the first, ignoring case like every comparison here
    (0 when absent): `indexof` in `$filter`."""

    type = sa.Integer()
    inherit_cache = True


@compiles(text_position)
def _text_position(element: text_position, compiler: Any, **kw: Any) -> str:
    text, part = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"strpos(lower({text}), lower({part}))"


@compiles(text_position, "sqlite")
def _text_position_sqlite(element: text_position, compiler: Any, **kw: Any) -> str:
    text, part = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"instr(sandbox_lower({text}), sandbox_lower({part}))"


class common_case(GenericFunction[bool]):
    """A condition most rows meet, marked for SQLite's planner (``likely``: its statistics hold one
    average per index, not how many rows are NULL); elsewhere the condition itself."""

    type = sa.Boolean()
    inherit_cache = True


@compiles(common_case)
def _common_case(element: common_case, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(common_case, "sqlite")
def _common_case_sqlite(element: common_case, compiler: Any, **kw: Any) -> str:
    return f"likely({compiler.process(element.clauses, **kw)})"
