"""The connector's state store: SQLAlchemy 2.x ORM over any database URL, schema managed by Alembic.

Opening a store upgrades its schema to the newest revision shipped with the package, so a newer
connector opens an older state file without losing couplings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from .models import (
    Base,
    Coupling,
    DeletionConflict,
    Direction,
    FieldMapping,
    FieldStatus,
    JobError,
    JobType,
    MappingKind,
    OptionCoupling,
    SyncJob,
    SyncResult,
    TableMapping,
    UpdateConflict,
    couplings_of_bc_records,
)

MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = [
    "Base", "Coupling", "DeletionConflict", "Direction", "FieldMapping", "FieldStatus", "JobError", "JobType",
    "MappingKind", "OptionCoupling", "State", "SyncJob", "SyncResult", "TableMapping", "UpdateConflict",
    "alembic_config", "couplings_of_bc_records",
]


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_pragmas(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - driver hook
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class State:
    """One connector's integration state (one BC company ⇄ one Dataverse org)."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        if url.startswith("sqlite"):
            _sqlite_pragmas(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    def upgrade(self, revision: str = "head") -> None:
        config = alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head() -> str | None:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on an exception."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
