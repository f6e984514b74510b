"""The apps' database layer: Flask-SQLAlchemy supplies the engine and the request session, the backend
builds its tables from the declarations on it, and each database gets the sandbox's setup."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.pool import StaticPool

from mockservers.bc.app import create_app as create_bc_app
from mockservers.dataverse.app import create_app as create_dataverse_app


def dataverse_app(url: str, **config):
    return create_dataverse_app(database_url=url, config=config, public_url="http://127.0.0.1:1",
                                validator=None, identity_url="http://127.0.0.1:2", tenant_id="tenant")


def test_the_engine_and_session_come_from_flask_sqlalchemy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dataverse.db'}"
    app = dataverse_app(url)
    backend = app.extensions["dataverse"]["backend"]
    db = app.extensions["sqlalchemy"]
    assert isinstance(db, SQLAlchemy) and app.config["SQLALCHEMY_DATABASE_URI"] == url
    with app.app_context():
        assert db.engine is backend.store.engine
    # Serving a request, the store works in that request's session (removed at teardown).
    with app.test_request_context("/api/data/v9.2/accounts"), backend.store.write() as conn:
        assert conn is db.session.connection()
    # Outside a request (seeding, tools) it opens its own connection on the same engine.
    with backend.store.read() as conn:
        assert conn.engine is backend.store.engine
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    table_names = set(sa.inspect(backend.store.engine).get_table_names())
    assert {e.table_name for e in backend.schema} <= table_names


def test_engine_options_come_from_the_app_config(tmp_path: Path) -> None:
    app = dataverse_app(f"sqlite:///{tmp_path / 'dataverse.db'}",
                        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 5}, "pool_size": 3})
    assert app.extensions["dataverse"]["backend"].store.engine.pool.size() == 3


def test_in_memory_databases_share_one_connection() -> None:
    app = create_bc_app(database_url="sqlite://", validator=None)
    store = app.extensions["bc"]["backend"].store
    assert isinstance(store.engine.pool, StaticPool)
    with store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.table(store.schema.entity("company")))
                            ).scalar_one() >= 1


def test_each_app_has_its_own_database(tmp_path: Path) -> None:
    dataverse = dataverse_app(f"sqlite:///{tmp_path / 'dataverse.db'}")
    bc = create_bc_app(database_url=f"sqlite:///{tmp_path / 'bc.db'}", validator=None)
    engines = {app.extensions[name]["backend"].store.engine.url.database
               for app, name in ((dataverse, "dataverse"), (bc, "bc"))}
    assert engines == {str(tmp_path / "dataverse.db"), str(tmp_path / "bc.db")}


def test_writers_of_one_process_take_turns_before_they_ask_the_database(tmp_path: Path) -> None:
    """SQLite admits one writer at a time, and a writer that finds the database taken polls it with
    sleeps that grow to 100 ms: the database often stood free while the next batch slept. Threads of
    one process queue in the store instead, so the second asks the database only once the first has
    committed, and starts then."""
    app = dataverse_app(f"sqlite:///{tmp_path / 'dataverse.db'}")
    store = app.extensions["dataverse"]["backend"].store
    events: list[tuple[str, str]] = []

    def began(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            events.append((threading.current_thread().name, "begin"))

    def committed(conn) -> None:
        events.append((threading.current_thread().name, "commit"))

    holding, release = threading.Event(), threading.Event()

    def write(hold: bool) -> None:
        with store.write() as conn:
            conn.exec_driver_sql("SELECT 1")
            if hold:
                holding.set()
                release.wait(10)

    sa.event.listen(store.engine, "before_cursor_execute", began)
    sa.event.listen(store.engine, "commit", committed)
    try:
        first = threading.Thread(target=write, args=(True,), name="first")
        second = threading.Thread(target=write, args=(False,), name="second")
        first.start()
        assert holding.wait(10)
        second.start()
        for _ in range(50):  # give the second writer time to reach the database, if it would
            if ("second", "begin") in events:
                break
            time.sleep(0.01)
        release.set()
        first.join(10)
        second.join(10)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", began)
        sa.event.remove(store.engine, "commit", committed)
    assert events == [("first", "begin"), ("first", "commit"), ("second", "begin"), ("second", "commit")]
