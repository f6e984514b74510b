"""The connector's traffic: bulk, not chatty, and correct when the services misbehave.

The request counts come from the services' own request journals (the control API), so they are
what the services saw, retries included.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import sqlalchemy as sa

from connector.clients.bc import ID_CHUNK as BC_ID_CHUNK
from connector.clients.dataverse import ID_CHUNK as DATAVERSE_ID_CHUNK
from connector.config import load as load_config
from connector.jobs import JobLog
from connector.runtime import Connector
from connector.store import Coupling, Direction, JobType
from connector.sync import Action, Item, Options, Pass
from tests.conftest import ConnectorEnv

pytestmark = pytest.mark.both_modes  # against a live sandbox, and in process

N = 500


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    return own_connector


def service_requests(env: ConnectorEnv, service: str) -> list[dict[str, Any]]:
    return [e for e in env.journal(service) if not e["path"].startswith("/_sandbox")]


def test_create_in_dataverse_and_synchronize_now_of_500_customers_are_bulk(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Bulk {tag} {i:03d}" for i in range(N)])
    numbers = [r["number"] for r in records]
    env.run("test-connection")  # tokens and the company row: the constant part, measured apart
    env.clear_journals()
    out = env.run("create-in-dataverse", "CUSTOMER", *numbers)
    assert out["jobs"][0]["inserted"] == N and out["jobs"][0]["failed"] == 0
    dataverse, business_central = service_requests(env, "dataverse"), service_requests(env, "bc")
    # BC: the named records, read ceil(N/chunk) at a time; Dataverse: one $batch per 500 writes,
    # plus a constant: this company's row and the local currency.
    assert len(business_central) <= math.ceil(N / BC_ID_CHUNK) + 1, [e["path"] for e in business_central]
    by_key = [parse_qs(e["query"]) for e in business_central if e["path"].endswith("/customers")]
    # each read names its records in one `in (…)`, which BC takes with schema version 2.1
    assert by_key and all(q["$schemaversion"] == ["2.1"] and re.fullmatch(r"number in \('[^)]*'\)", q["$filter"][0])
                          for q in by_key), by_key
    assert sum(q["$filter"][0].count(",") + 1 for q in by_key) == N
    assert len(dataverse) <= math.ceil(N / 500) + 3, [(e["method"], e["path"]) for e in dataverse]
    assert sum(1 for e in dataverse if e["path"].endswith("$batch")) == math.ceil(N / 500)
    assert env.account_names(f"Bulk {tag}") == Counter({r["displayName"]: 1 for r in records})

    env.bc_batch(bc, [{"method": "PATCH", "url": f"companies({env.company_id})/customers({r['id']})",
                       "headers": {"If-Match": "*", "Content-Type": "application/json"}, "body": {"city": "Tromsø"}}
                      for r in records])
    env.clear_journals()
    out = env.run("sync", "CUSTOMER", *numbers, "--direction", "to-dataverse")
    assert out["jobs"][0]["modified"] == N
    dataverse, business_central = service_requests(env, "dataverse"), service_requests(env, "bc")
    assert len(business_central) <= math.ceil(N / BC_ID_CHUNK) + 1
    reads = math.ceil(N / DATAVERSE_ID_CHUNK)  # the coupled rows, to write only what changed
    assert len(dataverse) <= reads + math.ceil(N / 500) + 3, [(e["method"], e["path"]) for e in dataverse]
    cities = Counter()
    for r in dv.get(f"{env.sandbox.api}/accounts?$select=address1_city&$filter=startswith(name,'Bulk {tag}')",
                    headers={"Prefer": "odata.maxpagesize=5000"}).json()["value"]:
        cities[r["address1_city"]] += 1
    assert cities == Counter({"Tromsø": N})


def test_faults_on_both_services_lose_and_duplicate_nothing(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Faulty {tag} {i:03d}" for i in range(200)])
    numbers = [r["number"] for r in records]
    env.set_sync(page_size=50, dataverse_batch_size=40, bc_batch_size=40, retries=20)
    faults = {"error_rate": 0.3, "throttle_rate": 0.15, "drop_rate": 0.1, "retry_after": 1, "seed": 20261201}
    for service in ("dataverse", "bc"):
        assert env.sandbox.control("PUT", "faults", service=service, json=faults).status_code == 200
    env.clear_journals()
    try:
        created = env.run("create-in-dataverse", "CUSTOMER", *numbers)
        env.bc_batch(bc, [{"method": "PATCH", "url": f"companies({env.company_id})/customers({r['id']})",
                           "headers": {"If-Match": "*", "Content-Type": "application/json"},
                           "body": {"city": "Faultville"}} for r in records])
        synced = env.run("sync", "CUSTOMER", *numbers, "--direction", "to-dataverse")
        statuses = [e["status"] for service in ("dataverse", "bc") for e in service_requests(env, service)]
    finally:
        for service in ("dataverse", "bc"):
            env.sandbox.control("DELETE", "faults", service=service)
        env.set_sync(page_size=500, dataverse_batch_size=500, bc_batch_size=100, retries=8)
    assert {k: created["jobs"][0][k] for k in ("inserted", "failed")} == {"inserted": 200, "failed": 0}, created["jobs"][0]["errors"][:2]
    assert {k: synced["jobs"][0][k] for k in ("modified", "failed", "skipped")} == {
        "modified": 200, "failed": 0, "skipped": 0}, synced["jobs"][0]["errors"][:2]
    # the faults happened: 503s, a burst of 429s, and dropped connections (journaled without a status)
    assert statuses.count(503) >= 5 and statuses.count(429) >= 3
    assert any(a == b == 429 for a, b in zip(statuses, statuses[1:], strict=False))
    assert env.account_names(f"Faulty {tag}") == Counter({r["displayName"]: 1 for r in records})
    couplings = [c for c in env.couplings("customers") if c.bc_id in {r["id"] for r in records}]
    assert len(couplings) == 200 and not any(c.pending for c in couplings)
    assert len({c.dataverse_id for c in couplings}) == 200
    rows = dv.get(f"{env.sandbox.api}/accounts?$select=address1_city&$filter=startswith(name,'Faulty {tag}')",
                  headers={"Prefer": "odata.maxpagesize=5000"}).json()["value"]
    assert Counter(r["address1_city"] for r in rows) == Counter({"Faultville": 200})


def test_incremental_runs_make_requests_in_proportion_to_the_changes(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Incremental {tag} {i:04d}" for i in range(2000)])
    env.set_sync(page_size=100)
    try:
        env.run("create-in-dataverse", "CUSTOMER", *[r["number"] for r in records])
        env.run("run", "--mapping", "CUSTOMER")  # the full run: watermarks move past everything
        couplings = {c.bc_id: c.dataverse_id for c in env.couplings("customers")}
        time.sleep(1.05 - time.time() % 1)  # Dataverse's modifiedon has whole seconds
        env.bc_batch(bc, [{"method": "PATCH", "url": f"companies({env.company_id})/customers({r['id']})",
                           "headers": {"If-Match": "*", "Content-Type": "application/json"}, "body": {"city": "Changed"}}
                          for r in records[:20]])
        for record in records[100:120]:  # changed in Dataverse by a person (on whose behalf the app acts)
            resp = dv.patch(f"{env.sandbox.api}/accounts({couplings[record['id']]})", json={"telephone1": "+1 555 0199"},
                            headers={"MSCRMCallerID": "5e000000-0000-4000-8000-000000000004"})
            assert resp.status_code == 204, resp.text
        env.clear_journals()
        out = env.run("run", "--mapping", "CUSTOMER")
        jobs = {j["direction"]: j for j in out["jobs"]}
        assert jobs["ToIntegrationTable"]["modified"] == 20 and jobs["FromIntegrationTable"]["modified"] == 20
        requests_made = len(service_requests(env, "dataverse")) + len(service_requests(env, "bc"))
        # reading 2,000 records would take 20 pages per side; 40 changes take a page or two each
        assert requests_made <= 14, [(e["method"], e["path"]) for s in ("dataverse", "bc")
                                     for e in service_requests(env, s)]
        env.clear_journals()
        again = env.run("run", "--mapping", "CUSTOMER")
        writes = [e for s in ("dataverse", "bc") for e in service_requests(env, s) if e["method"] != "GET"]
        assert writes == [] and all(j["modified"] == j["inserted"] == 0 for j in again["jobs"])
    finally:
        env.set_sync(page_size=500)
    assert customer_city(env, bc, records[0]["id"]) == "Changed"
    assert bc.get(f"{env.bc_company_api}/customers({records[100]['id']})").json()["phoneNumber"] == "+1 555 0199"


def customer_city(env: ConnectorEnv, bc: requests.Session, record_id: str) -> str:
    return str(bc.get(f"{env.bc_company_api}/customers({record_id})").json()["city"])


# -- the state reaches a chunk's couplings by key -----------------------------------------------------

KEYED = re.compile(r"\bcoupling\.(bc_id|dataverse_id|id) (?:IN \(|= )")


def test_every_coupling_lookup_by_record_reaches_the_rows_by_key(env: ConnectorEnv) -> None:
    """The connector looks couplings up a chunk at a time by BC id or Dataverse id. A plan that reaches
    them through the mapping's prefix alone reads every coupling of the mapping for each chunk: the
    initial coupling of 100k customers spent 20 s so. SQLite (no statistics) plans the same on 50
    couplings as on 100k, so the plans of the statements a sync makes here are the plans at scale."""
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Keyed {tag} {i:02d}" for i in range(50)])
    numbers = [r["number"] for r in records]
    state_file = sa.make_url(load_config(env.config_path).state_url).database
    seen: list[tuple[str, Any]] = []

    def collect(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if conn.engine.url.database == state_file and statement.lstrip().startswith("SELECT") and \
                KEYED.search(statement):
            seen.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", collect)
    try:
        env.run("create-in-dataverse", "CUSTOMER", *numbers)
        env.run("sync", "CUSTOMER", *numbers, "--direction", "to-dataverse")
        env.run("sync", "CUSTOMER", *numbers, "--direction", "from-dataverse")
        env.run("run", "--mapping", "CUSTOMER")
        env.run("uncouple", "CUSTOMER", *numbers[:10])
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", collect)
    keys = Counter(m.group(1) for statement, _ in seen for m in KEYED.finditer(statement))
    assert keys["bc_id"] and keys["dataverse_id"], keys  # both kinds of lookup were made
    with sqlite3.connect(state_file) as connection:
        for statement, parameters in seen:
            plan = " ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters))
            wanted = {m.group(1) for m in KEYED.finditer(statement)}
            reached = {column for column in wanted
                       if f"{column}=?" in plan or (column == "id" and "rowid=?" in plan)}
            assert reached, f"{plan!r} does not reach the rows by {wanted}: {statement}"


def test_a_chunk_of_creates_records_its_pending_couplings_in_one_statement(env: ConnectorEnv) -> None:
    """A chunk's creates are recorded as pending couplings before they are sent (a crash is healed by
    sending them again). That is one INSERT for the chunk, whose answer names each coupling's id by
    its BC record: one INSERT per record made 50,000 statements of an initial sync of 100k customers."""
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    page = 20
    records = env.create_customers(bc, [f"Pending {tag} {i:02d}" for i in range(2 * page + 5)])
    state_file = sa.make_url(load_config(env.config_path).state_url).database
    inserts: list[int] = []

    def collect(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if conn.engine.url.database == state_file and statement.lstrip().startswith("INSERT INTO coupling"):
            inserts.append(len(parameters) if executemany else 1)

    env.set_sync(page_size=page)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", collect)
    try:
        out = env.run("create-in-dataverse", "CUSTOMER", *[r["number"] for r in records])
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", collect)
        env.set_sync(page_size=500)
    assert out["jobs"][0]["inserted"] == len(records)
    assert len(inserts) == math.ceil(len(records) / page), inserts  # one statement per chunk
    couplings = {c.bc_id: c for c in env.couplings("customers") if c.bc_id in {r["id"].lower() for r in records}}
    assert len(couplings) == len(records) and not any(c.pending for c in couplings.values())
    rows = {r["accountid"]: r["name"] for r in env.accounts(f"Pending {tag}", select="accountid,name")}
    assert {couplings[r["id"].lower()].dataverse_id: r["displayName"] for r in records} == rows


def test_each_pending_coupling_carries_the_id_of_its_own_row(env: ConnectorEnv) -> None:
    """The chunk's INSERT answers ids in no promised order: each is matched to its record by BC id. A
    pass later settles or deletes each coupling by that id, so a mix-up would mark or remove another
    record's coupling."""
    cx = Connector.open(load_config(env.config_path))
    try:
        mapping = cx.mapping("CUSTOMER")
        job = JobLog(cx.state, mapping.name, JobType.SYNCHRONIZATION, Direction.TO_INTEGRATION)
        engine = Pass(cx, mapping, Direction.TO_INTEGRATION, job, Options(sync_only_coupled=False))
        items = [Item(source={"id": str(uuid.uuid4()).upper()}, action=Action.INSERT, destination_id=str(uuid.uuid4()))
                 for _ in range(30)]
        engine._pend(items)
        job.finish()
        with cx.state.session() as session:
            stored = {c.bc_id: c for c in session.scalars(sa.select(Coupling).where(
                Coupling.bc_id.in_([i.source["id"].lower() for i in items])))}
            session.execute(sa.delete(Coupling).where(Coupling.id.in_([c.id for c in stored.values()])))  # no leftovers
    finally:
        cx.close()
    for item in items:
        assert item.coupling is not None
        row = stored[item.source["id"].lower()]
        assert (item.coupling.id, item.coupling.dataverse_id, item.coupling.pending) == (row.id, row.dataverse_id, True)
