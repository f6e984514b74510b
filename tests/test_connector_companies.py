"""Two BC companies synchronizing with one Dataverse org through two connector configurations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Databases, start_connector, start_sandbox

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Any:
    sandbox = start_sandbox(tmp_path_factory.mktemp("sandbox"), databases=databases)
    try:
        first = start_connector(sandbox, tmp_path_factory.mktemp("cronus"), company_index=0)
        second = start_connector(sandbox, tmp_path_factory.mktemp("mycompany"), company_index=1)
        for env in (first, second):
            env.run("mappings", "field", "CUSTOMER", "displayName", "--match")
            env.run("create-in-dataverse", "CURRENCY", "--all")
            env.run("run", "--mapping", "PAYMENT TERMS", "--mapping", "SHIPMENT METHOD")
        yield sandbox, first, second
    finally:
        sandbox.stop()


def test_rows_stamped_by_one_company_are_invisible_to_the_other(pair: Any) -> None:
    sandbox, cronus, mine = pair
    bc, dv = sandbox.bc_session(), sandbox.session()
    name = f"Shared Name {uuid.uuid4().hex[:6]}"
    ours = cronus.create_customers(bc, [name])[0]
    theirs = mine.create_customers(bc, [name])[0]  # the same name in the other company
    cronus.run("create-in-dataverse", "CUSTOMER", ours["number"])
    row_id = next(c for c in cronus.couplings("customers") if c.bc_id == ours["id"]).dataverse_id
    row = dv.get(f"{sandbox.api}/accounts({row_id})").json()
    assert row["_bcbi_companyid_value"] == cronus.run("test-connection")["bcbi_company"]

    # My Company's match-based coupling does not see CRONUS's row, however well the names match
    out = mine.run("match-couple", "CUSTOMER", theirs["number"])
    assert out["jobs"][0]["coupled"] == 0 and out["jobs"][0]["failed"] == 1
    assert mine.couplings("customers") == []
    # nor does its scheduled From pass, even when it may create BC records from Dataverse rows
    mine.run("mappings", "set", "CUSTOMER", "--no-sync-only-coupled")
    try:
        run = mine.run("run", "--mapping", "CUSTOMER")
    finally:
        mine.run("mappings", "set", "CUSTOMER", "--sync-only-coupled")
    assert [c for c in mine.couplings("customers") if c.dataverse_id == row_id] == []
    from_pass = next(j for j in run["jobs"] if j["direction"] == "FromIntegrationTable")
    assert not any(row_id in e for e in from_pass["errors"])  # fixture rows may fail; CRONUS's row is not read
    # ... and the rows its own To pass created carry its own company id, so CRONUS does not see them
    my_rows = [c.dataverse_id for c in mine.couplings("customers")]
    assert my_rows and not set(my_rows) & {c.dataverse_id for c in cronus.couplings("customers")}
    mine_id = mine.run("test-connection")["bcbi_company"]
    assert dv.get(f"{sandbox.api}/accounts({my_rows[0]})").json()["_bcbi_companyid_value"] == mine_id

    # a row without a company belongs to whichever company first creates a record from it
    free = dv.post(f"{sandbox.api}/accounts", json={"name": f"Unowned {uuid.uuid4().hex[:6]}", "customertypecode": 3},
                   headers={"Prefer": "return=representation"}).json()
    mine.run("mappings", "set", "CUSTOMER", "--no-sync-only-coupled")
    try:
        mine.run("sync-from-dataverse", "CUSTOMER", free["accountid"])
    finally:
        mine.run("mappings", "set", "CUSTOMER", "--sync-only-coupled")
    stamped = dv.get(f"{sandbox.api}/accounts({free['accountid']})").json()
    assert stamped["_bcbi_companyid_value"] == mine.run("test-connection")["bcbi_company"]
    cronus.run("mappings", "set", "CUSTOMER", "--no-sync-only-coupled")
    try:
        message = cronus.fail("sync-from-dataverse", "CUSTOMER", free["accountid"])
    finally:
        cronus.run("mappings", "set", "CUSTOMER", "--sync-only-coupled")
    assert f"belongs to another BC company (company id {stamped['_bcbi_companyid_value']})" in message
