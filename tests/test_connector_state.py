"""The connector's state store: Alembic migrations, and models that agree with them."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from connector.store import Coupling, State
from connector.store.models import Base


def test_a_new_state_file_is_created_at_the_newest_revision(tmp_path: Path) -> None:
    state = State(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        assert state.revision() == State.head() and State.head() is not None
        with state.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        state.close()


def test_a_newer_connector_opens_an_older_state_file_without_losing_couplings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = State(url, upgrade=False)
    old.upgrade("0001")  # the state file as the first release wrote it
    with old.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO coupling (bc_entity, bc_id, dataverse_table, dataverse_id, skipped, pending) "
            "VALUES ('customers', 'c5010000-0000-4000-8000-000000000001', 'account', "
            "'a0000000-0000-4000-8000-000000000001', 1, 0)"))
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
