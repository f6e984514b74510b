"""A pass keeps chunks' batches on the wire while it reads and decides the next chunk
(``connector.sync.Pass.run``): what it may overlap, and what must wait."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from connector import config as config_module
from connector.jobs import JobLog
from connector.mappings.defaults import DEFAULT_MAPPINGS
from connector.runtime import Connector
from connector.store import Direction, JobType
from connector.sync import IN_FLIGHT, Options, Pass, bc_select
from tests.conftest import ConnectorEnv

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    return own_connector


@pytest.mark.parametrize("gap", range(IN_FLIGHT + 1))
def test_a_record_that_comes_again_waits_for_its_first_write_to_land(env: ConnectorEnv, gap: int) -> None:
    """A paged source can deliver a record twice (it changed while the pages were read). The second
    time must see the coupling the first write left, and modify the row it created: a record decided
    while its own insert is still on the wire would be inserted again. ``gap``: how many chunks lie
    between the two (up to the number of chunks on the wire)."""
    page = 3
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(env.sandbox.bc_session(), [f"Again {tag} {i:02d}" for i in range(page * (gap + 1))])
    env.set_sync(page_size=page)
    cx = Connector.open(config_module.load(env.config_path))
    try:
        mapping = cx.mapping("CUSTOMER")
        by_id = {r["id"]: r for r in cx.bc.rows_where_in("customers", "id", [r["id"] for r in records], guid=True,
                                                         select=bc_select(mapping))}
        sources = [by_id[r["id"]] for r in records]
        again = {**sources[0], "city": "Second Time"}
        job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, Direction.TO_INTEGRATION)
        Pass(cx, mapping, Direction.TO_INTEGRATION, job, Options(force_modify=True, sync_only_coupled=False)).run(
            [*sources, again])
        job.finish()
    finally:
        cx.close()
        env.set_sync(page_size=500)
    counts = job.snapshot()
    assert (counts["inserted"], counts["modified"], counts["failed"]) == (len(records), 1, 0), job.snapshot()
    rows = env.accounts(f"Again {tag}", select="name,address1_city")
    assert Counter(r["name"] for r in rows) == Counter(r["displayName"] for r in records)  # one row each
    first = next(r for r in rows if r["name"] == records[0]["displayName"])
    assert first["address1_city"] == "Second Time"
    couplings = [c for c in env.couplings("customers") if c.bc_id in by_id]
    assert len(couplings) == len(records) and not any(c.pending for c in couplings)


def test_no_default_mapping_resolves_a_lookup_through_itself() -> None:
    """A pass decides a chunk before the chunk on the wire is recorded, so a lookup resolves through
    couplings recorded before the pass began or by other mappings. A mapping whose field resolved
    through the mapping itself (a parent record in an earlier chunk) would need each chunk to land
    first: the pass does not do that, so no mapping may be declared so."""
    for mapping in DEFAULT_MAPPINGS:
        assert all(f.via != mapping.name for f in mapping.fields), mapping.name
