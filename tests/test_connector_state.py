"""The connector's state store: Alembic migrations, and models that agree with them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from connector.store import Coupling, State
from connector.store.models import Base
from tests.conftest import POSTGRES_ENV, empty_database

DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])


@pytest.fixture(params=DATABASES)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for a connector state: a SQLite file, or a PostgreSQL database."""
    with empty_database(request.param, tmp_path, "connector") as url:
        yield url


def test_a_new_state_file_is_created_at_the_newest_revision(state_url: str) -> None:
    state = State(state_url)
    try:
        assert state.revision() == State.head() and State.head() is not None
        with state.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        state.close()


def test_a_newer_connector_opens_an_older_state_file_without_losing_couplings(state_url: str) -> None:
    url = state_url
    old = State(url, upgrade=False)
    old.upgrade("0001")  # the state file as the first release wrote it
    with old.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO coupling (bc_entity, bc_id, dataverse_table, dataverse_id, skipped, pending) "
            "VALUES ('customers', 'c5010000-0000-4000-8000-000000000001', 'account', "
            "'a0000000-0000-4000-8000-000000000001', true, false)"))
        indexes = {i["name"] for i in sa.inspect(connection).get_indexes("job_error")}
    old.close()
    assert "ix_job_error_job_bc_record" not in indexes
    new = State(url)
    try:
        assert new.revision() == State.head()
        with new.session() as session:
            coupling = session.scalars(select(Coupling)).one()
        assert (coupling.bc_id, coupling.dataverse_id, coupling.skipped) == (
            "c5010000-0000-4000-8000-000000000001", "a0000000-0000-4000-8000-000000000001", True)
        with new.engine.connect() as connection:
            assert "ix_job_error_job_bc_record" in {i["name"] for i in sa.inspect(connection).get_indexes("job_error")}
    finally:
        new.close()
