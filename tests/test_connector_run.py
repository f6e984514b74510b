"""Scheduled synchronization (`connector run`): watermarks, the integration user's own writes, conflicts,
failed records retried first, dry runs. Each scenario asserts both services, the coupling and the
job counters."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from tests.conftest import ConnectorEnv

pytestmark = pytest.mark.both_modes  # against a live sandbox, and in process

COUNTERS = ("inserted", "modified", "deleted", "unchanged", "skipped", "failed", "coupled", "uncoupled")


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    connector = own_connector
    for name in ("CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD"):
        connector.run("run", "--mapping", name)
    return connector


def next_second() -> None:
    """Dataverse's modifiedon has whole seconds: changes must land in a later second to be seen."""
    time.sleep(1.05 - time.time() % 1)


def counts(job: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in job.items() if k in COUNTERS and v}


def by_direction(out: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {j["direction"]: counts(j) for j in out["jobs"]}


def run_customers(env: ConnectorEnv) -> dict[str, dict[str, int]]:
    return by_direction(env.run("run", "--mapping", "CUSTOMER"))


def coupled_pair(env: ConnectorEnv, bc: requests.Session, name: str) -> tuple[dict[str, Any], str]:
    record = env.create_customers(bc, [name])[0]
    env.run("create-in-dataverse", "CUSTOMER", record["number"])
    coupling = next(c for c in env.couplings("customers") if c.bc_id == record["id"])
    return record, coupling.dataverse_id


def bc_patch(env: ConnectorEnv, bc: requests.Session, record_id: str, **fields: Any) -> None:
    resp = bc.patch(f"{env.bc_company_api}/customers({record_id})", json=fields, headers={"If-Match": "*"})
    assert resp.status_code == 200, resp.text


SALES_USER = "5e000000-0000-4000-8000-000000000004"  # Jordan Pike, a licensed user of the org


def dv_patch(env: ConnectorEnv, dv: requests.Session, account_id: str, **fields: Any) -> None:
    """A change made in Dataverse by a person (the integration user's own changes are not synchronized
    back, so the test acts on behalf of a user, as Dataverse allows an administrator app to)."""
    resp = dv.patch(f"{env.sandbox.api}/accounts({account_id})", json=fields, headers={"MSCRMCallerID": SALES_USER})
    assert resp.status_code == 204, resp.text


def account(env: ConnectorEnv, dv: requests.Session, account_id: str) -> dict[str, Any]:
    return dv.get(f"{env.sandbox.api}/accounts({account_id})").json()


def customer(env: ConnectorEnv, bc: requests.Session, record_id: str) -> dict[str, Any]:
    return bc.get(f"{env.bc_company_api}/customers({record_id})").json()


def set_conflicts(env: ConnectorEnv, *, update: str = "none", deletion: str = "none") -> None:
    env.run("mappings", "set", "CUSTOMER", "--update-conflict", update, "--deletion-conflict", deletion)


def test_changes_travel_both_ways_and_a_run_without_changes_writes_nothing(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    first, account_first = coupled_pair(env, bc, f"Run A {uuid.uuid4().hex[:6]}")
    second, account_second = coupled_pair(env, bc, f"Run B {uuid.uuid4().hex[:6]}")
    run_customers(env)  # catch up with everything before this test
    next_second()
    bc_patch(env, bc, first["id"], city="Gdansk")
    dv_patch(env, dv, account_second, telephone1="+48 555 0102")
    raw = env.run("run", "--mapping", "CUSTOMER")
    jobs = by_direction(raw)
    assert jobs["ToIntegrationTable"] == {"modified": 1}, (raw, env.run("mappings", "show", "CUSTOMER")["bc_watermark"],
                                                          customer(env, bc, first["id"])["lastModifiedDateTime"])
    assert jobs["FromIntegrationTable"] == {"modified": 1}
    assert account(env, dv, account_first)["address1_city"] == "Gdansk"
    assert customer(env, bc, second["id"])["phoneNumber"] == "+48 555 0102"
    env.clear_journals()
    again = run_customers(env)  # the connector's own writes are not read back as changes
    for counters_ in again.values():  # re-read within the 999 ms overlap at most, and found unchanged
        assert not {"modified", "inserted", "failed"} & set(counters_), again
    writes = [e for service in ("dataverse", "bc") for e in env.journal(service)
              if e["method"] in ("POST", "PATCH", "PUT", "DELETE") and not e["path"].startswith("/_sandbox")]
    assert writes == []


@pytest.mark.parametrize("resolution, wins", [("send", "BC"), ("get", "DV"), ("none", None)])
def test_update_conflicts_follow_the_mapping_setting(env: ConnectorEnv, resolution: str, wins: str | None) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    record, account_id = coupled_pair(env, bc, f"Conflict {resolution} {uuid.uuid4().hex[:6]}")
    run_customers(env)
    next_second()
    bc_patch(env, bc, record["id"], city=f"BC {resolution}")
    dv_patch(env, dv, account_id, address1_city=f"DV {resolution}")
    set_conflicts(env, update=resolution)
    try:
        out = env.run("run", "--mapping", "CUSTOMER")
    finally:
        set_conflicts(env)
    jobs = by_direction(out)
    in_bc, in_dv = customer(env, bc, record["id"])["city"], account(env, dv, account_id)["address1_city"]
    coupling = next(c for c in env.couplings("customers") if c.bc_id == record["id"])
    # (the From pass may also re-read rows of earlier tests within its 999 ms overlap: unchanged)
    if wins == "BC":  # Send Update to Integration: the To pass writes; the row is then the integration
        assert jobs["ToIntegrationTable"] == {"modified": 1}  # user's, which the From pass does not read
        assert "modified" not in jobs["FromIntegrationTable"]
        assert in_bc == in_dv == "BC send"
    elif wins == "DV":  # Get Update from Integration: the To pass skips, the From pass writes
        assert jobs["ToIntegrationTable"] == {"skipped": 1} and jobs["FromIntegrationTable"].get("modified") == 1
        assert in_bc == in_dv == "DV get"
    else:  # no resolution: the record fails and both sides keep their values
        assert jobs["ToIntegrationTable"] == {"failed": 1}
        errors = [e for j in out["jobs"] for e in j["errors"]]
        assert any("The mapping between city field on the Customer table and the address1_city field on the account "
                   "table is bi-directional, and one or both values have changed" in e for e in errors), errors
        assert (in_bc, in_dv) == ("BC none", "DV none")
        assert coupling.last_result_to.value == "Failure"


def test_both_changed_without_a_bidirectional_difference_is_no_conflict(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    record, account_id = coupled_pair(env, bc, f"Same Change {uuid.uuid4().hex[:6]}")
    run_customers(env)
    next_second()
    bc_patch(env, bc, record["id"], city="Aarhus")
    dv_patch(env, dv, account_id, address1_city="Aarhus")  # the same value on both sides
    jobs = run_customers(env)
    assert "failed" not in jobs["ToIntegrationTable"] and "failed" not in jobs["FromIntegrationTable"]
    assert account(env, dv, account_id)["address1_city"] == customer(env, bc, record["id"])["city"] == "Aarhus"


@pytest.mark.parametrize("resolution", ["none", "restore", "remove-coupling"])
def test_deletion_conflicts_follow_the_mapping_setting(env: ConnectorEnv, resolution: str) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    record, account_id = coupled_pair(env, bc, f"Deleted {resolution} {uuid.uuid4().hex[:6]}")
    run_customers(env)
    assert dv.delete(f"{env.sandbox.api}/accounts({account_id})").status_code == 204
    bc_patch(env, bc, record["id"], city="Changed after the deletion")
    set_conflicts(env, deletion=resolution)
    try:
        out = env.run("run", "--mapping", "CUSTOMER")
    finally:
        set_conflicts(env)
    to_pass = by_direction(out)["ToIntegrationTable"]
    coupling = [c for c in env.couplings("customers") if c.bc_id == record["id"]]
    if resolution == "none":
        assert to_pass.get("failed") == 1 and coupling[0].dataverse_id == account_id
        errors = [e for j in out["jobs"] for e in j["errors"]]
        assert any("cannot be updated because it is coupled to a deleted record" in e for e in errors)
    elif resolution == "restore":
        assert to_pass.get("inserted") == 1 and coupling[0].dataverse_id != account_id
        assert account(env, dv, coupling[0].dataverse_id)["address1_city"] == "Changed after the deletion"
    else:
        assert to_pass.get("unchanged", 0) >= 1 and coupling == []


def test_a_failed_dependency_heals_on_the_next_run(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    record, account_id = coupled_pair(env, bc, f"Heal {uuid.uuid4().hex[:6]}")
    created = bc.post(f"{env.bc_company_api}/currencies", json={"code": f"X{uuid.uuid4().hex[:2].upper()}",
                                                                  "displayName": "Test Crown", "symbol": "kr"})
    assert created.status_code == 201, created.text
    currency = created.json()
    bc_patch(env, bc, record["id"], currencyId=currency["id"])
    out = env.run("run", "--mapping", "CUSTOMER")  # the new currency is not coupled yet
    assert by_direction(out)["ToIntegrationTable"].get("failed") == 1
    assert any(f"Currency Code {currency['code']} must be coupled to a Dataverse row" in e
               for j in out["jobs"] for e in j["errors"])
    # CURRENCY synchronizes only coupled records: a new currency is created (and coupled) on purpose
    env.run("create-in-dataverse", "CURRENCY", currency["code"])
    healed = env.run("run")  # the failed customer is retried first, although it did not change again
    order = [j["mapping"] for j in healed["jobs"]]
    assert order.index("CURRENCY") < order.index("CUSTOMER")
    assert next(counts(j) for j in healed["jobs"]
                if j["mapping"] == "CUSTOMER" and j["direction"] == "ToIntegrationTable") == {"modified": 1}
    row = account(env, dv, account_id)
    iso = dv.get(f"{env.sandbox.api}/transactioncurrencies({row['_transactioncurrencyid_value']})").json()
    assert iso["isocurrencycode"] == currency["code"]
    coupling = next(c for c in env.couplings("customers") if c.bc_id == record["id"])
    assert coupling.last_result_to.value == "Success"


def test_a_dry_run_changes_nothing_and_says_what_it_would_do(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    record, account_id = coupled_pair(env, bc, f"Dry {uuid.uuid4().hex[:6]}")
    run_customers(env)
    bc_patch(env, bc, record["id"], city="Would-be City")
    jobs_before = len(env.run("jobs", "--limit", "1000"))
    env.clear_journals()
    out = env.run("run", "--mapping", "CUSTOMER", "--dry-run")
    to_pass = next(j for j in out["jobs"] if j["direction"] == "ToIntegrationTable")
    assert to_pass["dry_run"] and to_pass["modified"] == 1
    assert any(line.startswith(f"modify Customer {record['number']} -> accounts({account_id})") and "address1_city"
               in line for line in to_pass["plan"])
    writes = [e for service in ("dataverse", "bc") for e in env.journal(service)
              if e["method"] != "GET" and not e["path"].startswith("/_sandbox")]
    assert writes == []
    assert account(env, dv, account_id)["address1_city"] != "Would-be City"
    assert len(env.run("jobs", "--limit", "1000")) == jobs_before
    assert run_customers(env)["ToIntegrationTable"] == {"modified": 1}  # the watermark did not move
