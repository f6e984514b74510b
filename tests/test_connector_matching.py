"""Match-based coupling: one row per outcome of BC's algorithm, with the job counters."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.conftest import ConnectorEnv

pytestmark = pytest.mark.both_modes  # against a live sandbox, and in process

COUNTERS = ("inserted", "modified", "unchanged", "skipped", "failed", "coupled")


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    connector = own_connector
    connector.run("mappings", "field", "CUSTOMER", "displayName", "--match", "--priority", "1")
    connector.run("mappings", "field", "CUSTOMER", "city", "--match", "--priority", "2")
    return connector


def counts(job: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in job.items() if k in COUNTERS and v}


def new_accounts(env: ConnectorEnv, dv: requests.Session, rows: list[dict[str, Any]]) -> list[str]:
    ids = []
    for row in rows:
        resp = dv.post(f"{env.sandbox.api}/accounts", json={"customertypecode": 3, **row},
                       headers={"Prefer": "return=representation"})
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["accountid"])
    return ids


CASES = [
    # (name, BC record, Dataverse rows, options, expected counters of the coupling job, index of the row coupled)
    ("unique match, any case", {"displayName": "Unique {t}"}, [{"name": "UNIQUE {t}"}], [], {"coupled": 1}, 0),
    ("no match", {"displayName": "Nobody {t}"}, [{"name": "Somebody {t}"}], [], {"failed": 1}, None),
    ("several matches", {"displayName": "Twice {t}"}, [{"name": "Twice {t}"}, {"name": "twice {t}"}], [],
     {"failed": 1}, None),
    ("second group rescues the first", {"displayName": "Twins {t}", "city": "Bergen"},
     [{"name": "Twins {t}", "address1_city": "Oslo"}, {"name": "Twins {t}", "address1_city": "bergen"}], [],
     {"coupled": 1}, 1),
    ("groups narrow, they do not replace", {"displayName": "Lonely {t}", "city": "Bergen"},
     [{"name": "Other {t}", "address1_city": "Bergen"}], [], {"failed": 1}, None),
    ("candidate already coupled", {"displayName": "Taken {t}"}, [{"name": "Taken {t}"}], ["taken"], {"failed": 1},
     None),
    ("create new on no match", {"displayName": "Fresh {t}"}, [], ["--create-new"], {}, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_match_based_coupling_outcomes(env: ConnectorEnv, case: tuple[Any, ...]) -> None:
    _, record_spec, row_specs, options, expected, coupled_index = case
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:8]
    fill = lambda spec: {k: v.format(t=tag) if isinstance(v, str) else v for k, v in spec.items()}  # noqa: E731
    rows = new_accounts(env, dv, [fill(r) for r in row_specs])
    record = env.create_customers(bc, [fill(record_spec)["displayName"]],
                                  **{k: v for k, v in fill(record_spec).items() if k != "displayName"})[0]
    flags = [o for o in options if o.startswith("--")]
    if "taken" in options:  # another BC record holds the only candidate
        holder = env.create_customers(bc, [f"Holder {tag}"])[0]
        env.run("couple", "CUSTOMER", holder["number"], "--dataverse-id", rows[0], "--sync", "none")
    out = env.run("match-couple", "CUSTOMER", record["number"], *flags)
    assert counts(out["jobs"][0]) == expected, out["jobs"][0]
    coupling = next((c for c in env.couplings("customers") if c.bc_id == record["id"]), None)
    if coupled_index is not None:
        assert coupling is not None and coupling.dataverse_id == rows[coupled_index]
    elif "--create-new" in flags:
        assert [counts(j) for j in out["jobs"][1:]] == [{"inserted": 1}]
        row = dv.get(f"{env.sandbox.api}/accounts({coupling.dataverse_id})").json()
        assert row["name"] == record["displayName"] and row["customertypecode"] == 3
    else:
        assert coupling is None
        assert out["jobs"][0]["errors"] == [
            f"CUSTOMER: Failed to couple 1 record(s), because no unique uncoupled matching entity was found in "
            f"{env.sandbox.info['dataverse']['url']} with the specified matching criteria."]


def test_case_sensitive_matching_compares_exactly(env: ConnectorEnv) -> None:
    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:8]
    env.run("mappings", "field", "CUSTOMER", "displayName", "--case-sensitive")
    try:
        new_accounts(env, dv, [{"name": f"exact {tag}"}])
        wrong_case = env.create_customers(bc, [f"Exact {tag}"])[0]
        assert counts(env.run("match-couple", "CUSTOMER", wrong_case["number"])["jobs"][0]) == {"failed": 1}
        same_case = env.create_customers(bc, [f"exact {tag}"])[0]
        assert counts(env.run("match-couple", "CUSTOMER", same_case["number"])["jobs"][0]) == {"coupled": 1}
    finally:
        env.run("mappings", "field", "CUSTOMER", "displayName", "--no-case-sensitive")


def test_without_criteria_match_based_coupling_is_refused(env: ConnectorEnv) -> None:
    message = env.fail("match-couple", "VENDOR", "10000")
    assert "You must specify which fields on the table mapping 'VENDOR' should be used for match-based coupling." in message


def test_match_based_coupling_reads_each_side_page_by_page_and_matches_in_memory(env: ConnectorEnv) -> None:
    import math

    bc, dv = env.sandbox.bc_session(), env.sandbox.session()
    tag = uuid.uuid4().hex[:6]
    n = 300
    records = env.create_customers(bc, [f"Scale {tag} {i:03d}" for i in range(n)])
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"scale {tag} {i:03d}", "customertypecode": 3}
               for i in range(0, n, 2)]  # half of them match, in another case
    resp = dv.post(f"{env.sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert resp.status_code == 200, resp.text
    env.set_sync(page_size=100)
    env.clear_journals()
    try:
        out = env.run("match-couple", "CUSTOMER", "--no-create-new")
    finally:
        env.set_sync(page_size=500)
    job = out["jobs"][0]
    assert job["coupled"] >= n // 2  # the fixture's own customers whose names match are coupled too
    ours = {r["id"] for r in records}
    assert sum(1 for c in env.couplings("customers") if c.bc_id in ours) == n // 2
    bc_requests = [e for e in env.journal("bc") if not e["path"].startswith("/_sandbox")]
    dataverse_requests = [e for e in env.journal("dataverse") if not e["path"].startswith("/_sandbox")]
    customers_in_bc = bc.get(f"{env.bc_company_api}/customers?$count=true&$top=0").json()["@odata.count"]
    candidates = dv.get(f"{env.sandbox.api}/accounts?$count=true&$top=1&$filter=customertypecode eq 3").json()[
        "@odata.count"]
    # one read per page on each side (plus this company's row), however many records there are
    assert len(bc_requests) <= math.ceil(customers_in_bc / 100) + 1
    assert len(dataverse_requests) <= math.ceil(candidates / 100) + 2
