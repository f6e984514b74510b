"""One scenario per action of the seed documents ("Couple and synchronize records"), end to end.

Each drives the real ``connector`` CLI against live mock services and asserts the records on both
services, the couplings, the company id on the Dataverse rows, and the job counters.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from tests.conftest import ConnectorEnv, RunningSandbox

pytestmark = [pytest.mark.storage, pytest.mark.both_modes]  # on PostgreSQL too, and in process

COUNTERS = ("inserted", "modified", "deleted", "unchanged", "skipped", "failed", "coupled", "uncoupled")


def next_second() -> None:
    """Dataverse's modifiedon has whole seconds: a change in the same second as our write is invisible."""
    time.sleep(1.05 - time.time() % 1)


def counters(job: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in job.items() if k in COUNTERS and v}


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def account(dv: requests.Session, sandbox: RunningSandbox, account_id: str) -> dict[str, Any]:
    resp = dv.get(f"{sandbox.api}/accounts({account_id})")
    assert resp.status_code == 200, resp.text
    return resp.json()


def company_row(env: ConnectorEnv) -> str:
    return env.run("test-connection")["bcbi_company"]


def new_account(dv: requests.Session, sandbox: RunningSandbox, name: str, **fields: Any) -> str:
    resp = dv.post(f"{sandbox.api}/accounts", json={"name": name, "customertypecode": 3, **fields},
                   headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    return resp.json()["accountid"]


def coupling_of(env: ConnectorEnv, bc_id: str) -> Any:
    found = [c for c in env.couplings("customers") if c.bc_id == bc_id]
    return found[0] if found else None


def test_couple_existing_record_and_synchronize_after_coupling(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    customer = connector_env.create_customers(bc, [unique("Couple Existing")], city="Seattle")[0]
    account_id = new_account(dv, sandbox, unique("Someone Else"), address1_city="Portland")
    out = connector_env.run("couple", "CUSTOMER", customer["number"], "--dataverse-id", account_id,
                            "--sync", "to-dataverse")
    coupling_job, sync_job = out["jobs"]
    assert counters(coupling_job) == {"coupled": 1}
    assert counters(sync_job) == {"modified": 1}
    row = account(dv, sandbox, account_id)
    assert row["name"] == customer["displayName"] and row["address1_city"] == "Seattle"
    assert row["_bcbi_companyid_value"] == company_row(connector_env)
    coupling = coupling_of(connector_env, customer["id"])
    assert coupling.dataverse_id == account_id and coupling.last_result_to.value == "Success"
    assert coupling.last_synced_dataverse_modified is not None


def test_couple_by_name_honours_the_integration_table_filter_and_refuses_a_taken_row(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    first, second = connector_env.create_customers(bc, [unique("By Name A"), unique("By Name B")])
    name = unique("Match Me")
    account_id = new_account(dv, sandbox, name)
    vendor_account = new_account(dv, sandbox, unique("A Vendor Account"), customertypecode=11)
    out = connector_env.run("couple", "CUSTOMER", first["number"], "--dataverse-name", name[:12], "--sync", "none")
    assert [counters(j) for j in out["jobs"]] == [{"coupled": 1}]
    assert coupling_of(connector_env, first["id"]).dataverse_id == account_id
    # a vendor account is not a customer: the CUSTOMER filter hides it
    message = connector_env.fail("couple", "CUSTOMER", second["number"], "--dataverse-id", vendor_account)
    assert "The filters applied to table mapping CUSTOMER are preventing account record" in message
    message = connector_env.fail("couple", "CUSTOMER", second["number"], "--dataverse-id", account_id)
    assert "because the account record is already coupled to" in message
    assert coupling_of(connector_env, second["id"]) is None


def test_create_new_creates_a_row_with_the_company_id_and_the_type_code(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    customer = connector_env.create_customers(bc, [unique("Create New")], email="new@example.com",
                                              creditLimit=1234.5)[0]
    out = connector_env.run("couple", "CUSTOMER", customer["id"], "--create-new")
    assert [counters(j) for j in out["jobs"]] == [{"inserted": 1}]
    coupling = coupling_of(connector_env, customer["id"])
    row = account(dv, sandbox, coupling.dataverse_id)
    assert (row["name"], row["emailaddress1"], row["creditlimit"]) == (customer["displayName"], "new@example.com",
                                                                        1234.5)
    assert row["customertypecode"] == 3 and row["statecode"] == 0
    assert row["_bcbi_companyid_value"] == company_row(connector_env)
    assert not coupling.pending and coupling.last_result_to.value == "Success"


def test_synchronize_one_record_in_each_direction(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    customer = connector_env.create_customers(bc, [unique("Both Ways")])[0]
    connector_env.run("couple", "CUSTOMER", customer["number"], "--create-new")
    account_id = coupling_of(connector_env, customer["id"]).dataverse_id
    patched = bc.patch(f"{connector_env.bc_company_api}/customers({customer['id']})", json={"city": "Oslo"},
                       headers={"If-Match": bc.get(f"{connector_env.bc_company_api}/customers({customer['id']})")
                       .json()["@odata.etag"]})
    assert patched.status_code == 200, patched.text
    out = connector_env.run("sync", "CUSTOMER", customer["number"], "--direction", "to-dataverse")
    assert [counters(j) for j in out["jobs"]] == [{"modified": 1}]
    assert account(dv, sandbox, account_id)["address1_city"] == "Oslo"

    assert dv.patch(f"{sandbox.api}/accounts({account_id})", json={"telephone1": "+47 555 0100"}).status_code == 204
    out = connector_env.run("sync", "CUSTOMER", customer["number"], "--direction", "from-dataverse")
    assert [counters(j) for j in out["jobs"]] == [{"modified": 1}]
    record = bc.get(f"{connector_env.bc_company_api}/customers({customer['id']})").json()
    assert record["phoneNumber"] == "+47 555 0100" and record["city"] == "Oslo"
    message = connector_env.fail("sync", "CUSTOMER", customer["number"])
    assert "bidirectional" in message and "--direction" in message


def test_synchronize_many_skips_uncoupled_and_destination_changed_records(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    names = [unique("Many") for _ in range(4)]
    records = connector_env.create_customers(bc, names)
    coupled = records[:3]
    connector_env.run("create-in-dataverse", "CUSTOMER", *[r["number"] for r in coupled])
    for record in coupled:
        url = f"{connector_env.bc_company_api}/customers({record['id']})"
        etag = bc.get(url).json()["@odata.etag"]
        assert bc.patch(url, json={"city": "Bergen"}, headers={"If-Match": etag}).status_code == 200
    changed_in_dataverse = coupling_of(connector_env, coupled[2]["id"]).dataverse_id
    next_second()
    assert dv.patch(f"{sandbox.api}/accounts({changed_in_dataverse})", json={"address1_city": "Kept"}).status_code == 204
    out = connector_env.run("sync", "CUSTOMER", *[r["number"] for r in records], "--direction", "to-dataverse")
    assert [counters(j) for j in out["jobs"]] == [{"modified": 2, "skipped": 1}]
    assert out["notes"] == [f"1 not coupled, not synchronized: {records[3]['number']}"]
    cities = [account(dv, sandbox, coupling_of(connector_env, r["id"]).dataverse_id)["address1_city"] for r in coupled]
    assert cities == ["Bergen", "Bergen", "Kept"]


def test_synchronize_from_the_sales_side_is_refused_then_creates_and_couples(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    name = unique("From Sales")
    account_id = new_account(dv, sandbox, name, address1_city="Lisbon")
    message = connector_env.fail("sync-from-dataverse", "CUSTOMER", account_id)
    assert "Sync. Only Coupled Records is off" in message
    connector_env.run("mappings", "set", "CUSTOMER", "--no-sync-only-coupled")
    try:
        out = connector_env.run("sync-from-dataverse", "CUSTOMER", account_id)
    finally:
        connector_env.run("mappings", "set", "CUSTOMER", "--sync-only-coupled")
    assert [counters(j) for j in out["jobs"]] == [{"inserted": 1}]
    coupling = [c for c in connector_env.couplings("customers") if c.dataverse_id == account_id][0]
    record = bc.get(f"{connector_env.bc_company_api}/customers({coupling.bc_id})").json()
    assert (record["displayName"], record["city"]) == (name, "Lisbon")
    assert account(dv, sandbox, account_id)["_bcbi_companyid_value"] == company_row(connector_env)
    assert coupling.last_result_from.value == "Success" and not coupling.pending


def test_synchronize_from_the_sales_side_refuses_a_to_only_mapping(connector_env: ConnectorEnv, dv: requests.Session,
                                                                  sandbox: RunningSandbox) -> None:
    currency = dv.get(f"{sandbox.api}/transactioncurrencies?$top=1").json()["value"][0]
    message = connector_env.fail("sync-from-dataverse", "CURRENCY", currency["transactioncurrencyid"])
    assert "direction = ToIntegrationTable" in message


def test_uncouple_selected_records_resets_the_company_id(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    first, second = connector_env.create_customers(bc, [unique("Uncouple A"), unique("Uncouple B")])
    connector_env.run("create-in-dataverse", "CUSTOMER", first["number"], second["number"])
    first_row = coupling_of(connector_env, first["id"]).dataverse_id
    out = connector_env.run("uncouple", "CUSTOMER", first["number"])
    assert [counters(j) for j in out["jobs"]] == [{"modified": 1, "uncoupled": 1}]
    assert out["jobs"][0]["id"] and coupling_of(connector_env, first["id"]) is None
    assert account(dv, sandbox, first_row)["_bcbi_companyid_value"] is None
    second_row = coupling_of(connector_env, second["id"]).dataverse_id
    assert account(dv, sandbox, second_row)["_bcbi_companyid_value"] == company_row(connector_env)


def test_remove_all_couplings_of_a_mapping(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    records = connector_env.create_customers(bc, [unique("All Gone") for _ in range(3)])
    connector_env.run("create-in-dataverse", "CUSTOMER", *[r["number"] for r in records])
    rows = [coupling_of(connector_env, r["id"]).dataverse_id for r in records]
    stuck = new_account(dv, sandbox, unique("Stuck"), **{
        "bcbi_companyid@odata.bind": f"/bcbi_companies({company_row(connector_env)})"})
    before = len(connector_env.couplings("customers"))
    out = connector_env.run("uncouple", "CUSTOMER", "--all")
    job = counters(out["jobs"][0])
    assert job["uncoupled"] == before and job["modified"] >= len(rows) + 1 and "failed" not in job
    assert connector_env.couplings("customers") == []
    for row in [*rows, stuck]:
        assert account(dv, sandbox, row)["_bcbi_companyid_value"] is None
    jobs = connector_env.run("jobs", "--mapping", "CUSTOMER")
    assert jobs[0]["type"] == "Uncoupling" and jobs[0]["uncoupled"] == before


@pytest.mark.parametrize("args, fragment", [
    (("sync", "NOPE", "10000"), "unknown mapping 'NOPE'"),
    (("sync", "CUSTOMER", "NO-SUCH-NUMBER", "--direction", "to-dataverse"), "no Customer with number or id NO-SUCH-NUMBER"),
    (("couple", "CUSTOMER", "10000"), "give exactly one of --dataverse-id, --dataverse-name, --create-new"),
    (("sync-from-dataverse", "CUSTOMER", "not-a-guid"), "Error"),
    (("uncouple", "CUSTOMER"), "give BC keys or --all"),
    (("mappings", "set", "CURRENCY", "--direction", "from-dataverse"),
     "You must set the direction of at least one enabled integration field mapping to 'FromIntegrationTable'."),
    (("mappings", "set", "PAYMENT TERMS", "--direction", "bidirectional"), "cannot be Bidirectional"),
])
def test_bad_input_gets_one_line_and_a_nonzero_exit(connector_env: ConnectorEnv, args: tuple[str, ...],
                                                   fragment: str) -> None:
    message = connector_env.fail(*args)
    assert fragment in message and len(message.splitlines()) <= 3


def test_an_uncoupled_currency_fails_the_customer_until_the_currency_mapping_is_synchronized(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    gbp = bc.get(f"{connector_env.bc_company_api}/currencies?$filter=code eq 'GBP'").json()["value"][0]
    customer = connector_env.create_customers(bc, [unique("Pound Customer")], currencyId=gbp["id"])[0]
    out = connector_env.run("create-in-dataverse", "CUSTOMER", customer["number"])
    assert counters(out["jobs"][0]) == {"failed": 1}
    assert out["jobs"][0]["errors"] == [
        f"Customer {customer['number']}: The data could not be updated because of the following error: "
        "Currency Code GBP must be coupled to a Dataverse row."]
    assert coupling_of(connector_env, customer["id"]) is None  # a refused create leaves no trace

    currencies = connector_env.run("create-in-dataverse", "CURRENCY", "--all")
    job = counters(currencies["jobs"][0])
    assert job.get("failed", 0) == 0 and job.get("inserted", 0) + job.get("modified", 0) == 3
    # EUR and GBP already existed in Dataverse: coupled by ISO code, not created twice
    isos = [r["isocurrencycode"] for r in dv.get(f"{sandbox.api}/transactioncurrencies").json()["value"]]
    assert sorted(isos) == sorted(set(isos)) and {"EUR", "GBP", "CAD"} <= set(isos)

    out = connector_env.run("create-in-dataverse", "CUSTOMER", customer["number"])
    assert counters(out["jobs"][0]) == {"inserted": 1}
    row = account(dv, sandbox, coupling_of(connector_env, customer["id"]).dataverse_id)
    pound = dv.get(f"{sandbox.api}/transactioncurrencies?$filter=isocurrencycode eq 'GBP'").json()["value"][0]
    assert row["_transactioncurrencyid_value"] == pound["transactioncurrencyid"]
    errors = connector_env.run("errors")
    assert all(e["bc_id"] != customer["id"] for e in errors)


def test_the_same_failure_twice_skips_the_record_until_it_is_retried_from_the_errors_page(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    customer = connector_env.create_customers(bc, [unique("Too Long")])[0]
    connector_env.run("couple", "CUSTOMER", customer["number"], "--create-new")
    url = f"{connector_env.bc_company_api}/customers({customer['id']})"
    too_long = "https://example.com/" + "x" * 200  # BC allows 255 characters, Dataverse's websiteurl 200
    assert bc.patch(url, json={"website": too_long}, headers={"If-Match": "*"}).status_code == 200
    first = connector_env.run("sync", "CUSTOMER", customer["number"], "--direction", "to-dataverse")["jobs"][0]
    assert counters(first) == {"failed": 1}
    assert first["errors"][0].startswith(f"Customer {customer['number']}: Modifying account failed because of the "
                                         "following error:") and "websiteurl" in first["errors"][0]
    coupling = coupling_of(connector_env, customer["id"])
    assert coupling.last_result_to.value == "Failure" and not coupling.skipped
    second = connector_env.run("sync", "CUSTOMER", customer["number"], "--direction", "to-dataverse")["jobs"][0]
    assert counters(second) == {"failed": 1} and coupling_of(connector_env, customer["id"]).skipped
    third = connector_env.run("sync", "CUSTOMER", customer["number"], "--direction", "to-dataverse")["jobs"][0]
    assert counters(third) == {"skipped": 1}

    listed = [e for e in connector_env.run("errors", "--mapping", "CUSTOMER") if e["bc_id"] == customer["id"]]
    assert len(listed) == 1 and listed[0]["skipped"] and "websiteurl" in listed[0]["message"]
    assert connector_env.run("errors", "retry", str(listed[0]["id"])) == {"retried": 1}
    assert not coupling_of(connector_env, customer["id"]).skipped
    assert bc.patch(url, json={"website": "https://example.com"}, headers={"If-Match": "*"}).status_code == 200
    fixed = connector_env.run("errors", "sync", str(listed[0]["id"]), "--direction", "to-dataverse")
    assert counters(fixed["jobs"][0]) == {"modified": 1}
    assert account(dv, sandbox, coupling.dataverse_id)["websiteurl"] == "https://example.com"
    assert all(e["bc_id"] != customer["id"] for e in connector_env.run("errors"))
    assert "no failed or skipped coupling with id" in connector_env.fail("errors", "skip", str(listed[0]["id"]))


def test_salespeople_come_from_dataverse_users_and_decide_the_owner_of_new_accounts(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    users = {u["fullname"]: u for u in dv.get(f"{sandbox.api}/systemusers?$select=fullname,internalemailaddress")
             .json()["value"]}
    jordan, maren = users["Jordan Pike"], users["Maren Lindqvist"]
    out = connector_env.run("couple", "SALESPEOPLE", "JP", "--dataverse-name", "Jordan Pike",
                            "--sync", "from-dataverse")
    assert [counters(j) for j in out["jobs"]] == [{"coupled": 1}, {"modified": 1}]
    jp = bc.get(f"{connector_env.bc_company_api}/salespeoplePurchasers?$filter=code eq 'JP'").json()["value"][0]
    assert (jp["displayName"], jp["email"]) == ("Jordan Pike", jordan["internalemailaddress"])

    connector_env.run("mappings", "set", "SALESPEOPLE", "--no-sync-only-coupled")
    try:
        created = connector_env.run("sync-from-dataverse", "SALESPEOPLE", maren["systemuserid"])
    finally:
        connector_env.run("mappings", "set", "SALESPEOPLE", "--sync-only-coupled")
    assert [counters(j) for j in created["jobs"]] == [{"inserted": 1}]
    new = bc.get(f"{connector_env.bc_company_api}/salespeoplePurchasers?$filter=code eq 'SP NO. 00001'").json()
    assert [s["displayName"] for s in new["value"]] == ["Maren Lindqvist"]  # BC numbers new salespeople

    owned, unowned = connector_env.create_customers(bc, [unique("Owned"), unique("Team Owned")])
    for record, code in ((owned, "JP"), (unowned, "AH")):
        url = f"{connector_env.bc_company_api}/customers({record['id']})"
        assert bc.patch(url, json={"salespersonCode": code}, headers={"If-Match": "*"}).status_code == 200
    connector_env.run("create-in-dataverse", "CUSTOMER", owned["number"], unowned["number"])
    owner = account(dv, sandbox, coupling_of(connector_env, owned["id"]).dataverse_id)["_ownerid_value"]
    assert owner == jordan["systemuserid"]
    team = account(dv, sandbox, coupling_of(connector_env, unowned["id"]).dataverse_id)["_ownerid_value"]
    company = dv.get(f"{sandbox.api}/bcbi_companies({company_row(connector_env)})").json()
    assert team == company["_bcbi_defaultowningteam_value"]  # AH is not coupled: the company's team owns it


def test_payment_terms_and_shipment_methods_become_option_values_and_then_customers_carry_them(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    terms = connector_env.run("create-in-dataverse", "PAYMENT TERMS", "--all")["jobs"][0]
    # 'NET 30' and 'NET 60' are the options 'Net 30' and 'Net 60'; the other five are added
    assert counters(terms) == {"coupled": 2, "inserted": 5}
    coupled = {o["bc_code"]: o for o in connector_env.run("couplings", "PAYMENT TERMS")}
    assert (coupled["NET 30"]["option_value"], coupled["NET 60"]["option_value"]) == (1, 4)
    assert coupled["30 DAYS"]["option_label"] == "30 DAYS" and coupled["30 DAYS"]["option_value"] >= 100_000_000
    again = connector_env.run("create-in-dataverse", "PAYMENT TERMS", "--all")["jobs"][0]
    assert counters(again) == {"skipped": 7}  # coupled already: no second option for anyone
    methods = connector_env.run("create-in-dataverse", "SHIPMENT METHOD", "--all")["jobs"][0]
    assert counters(methods) == {"coupled": 1, "inserted": 3}
    connector_env.run("create-in-dataverse", "CURRENCY", "--all")

    created = connector_env.run("create-in-dataverse", "CUSTOMER", "10000")["jobs"][0]  # from the fixture
    assert counters(created) == {"inserted": 1}, created["errors"]
    customer = bc.get(f"{connector_env.bc_company_api}/customers?$filter=number eq '10000'").json()["value"][0]
    row = account(dv, sandbox, coupling_of(connector_env, customer["id"]).dataverse_id)
    assert row["paymenttermscode"] == coupled["1M(8D)"]["option_value"]
    assert row["address1_freighttermscode"] == 1  # FOB
    assert (row["name"], row["creditlimit"]) == ("Adatum Corporation", 50000)


def test_units_of_measure_items_and_resources_become_unit_groups_and_products(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    units = connector_env.run("create-in-dataverse", "UNIT OF MEASURE", "--all")["jobs"][0]
    assert counters(units) == {"inserted": 3}, units["errors"]
    groups = {g["name"]: g for g in dv.get(
        f"{sandbox.api}/uomschedules?$filter=startswith(name,'NAV ')&$expand=unit_of_measure_schedule_conversions"
        "($select=name,quantity,isschedulebaseuom)").json()["value"]}
    assert set(groups) == {"NAV PCS", "NAV BOX", "NAV HOUR"}
    pieces = groups["NAV PCS"]
    assert pieces["baseuomname"] == "PCS"
    assert [(u["name"], u["quantity"], u["isschedulebaseuom"]) for u in
            pieces["unit_of_measure_schedule_conversions"]] == [("PCS", 1, True)]  # the group's one unit

    item = bc.get(f"{connector_env.bc_company_api}/items?$filter=number eq '1896-S'").json()["value"][0]
    created = connector_env.run("create-in-dataverse", "ITEM-PRODUCT", "1896-S")["jobs"][0]
    assert counters(created) == {"inserted": 1}, created["errors"]
    coupling = [c for c in connector_env.couplings("items") if c.bc_id == item["id"]][0]
    product = dv.get(f"{sandbox.api}/products({coupling.dataverse_id})").json()
    assert (product["productnumber"], product["name"], product["price"]) == ("1896-S", item["displayName"],
                                                                               item["unitPrice"])
    assert product["standardcost"] == product["currentcost"] == item["unitCost"]
    assert (product["producttypecode"], product["statecode"]) == (1, 0)  # Sales Inventory, active
    assert product["_defaultuomscheduleid_value"] == pieces["uomscheduleid"]
    assert product["_defaultuomid_value"] == pieces["unit_of_measure_schedule_conversions"][0]["uomid"]
    assert product["_bcbi_companyid_value"] == company_row(connector_env)
    usd = dv.get(f"{sandbox.api}/transactioncurrencies?$filter=isocurrencycode eq 'USD'").json()["value"][0]
    assert product["_transactioncurrencyid_value"] == usd["transactioncurrencyid"]

    service = connector_env.run("create-in-dataverse", "RESOURCE-PRODUCT", "SVC-INSTALL")["jobs"][0]
    assert counters(service) == {"inserted": 1}, service["errors"]
    resource_id = connector_env.couplings("resources")[0].dataverse_id
    resource = dv.get(f"{sandbox.api}/products({resource_id})").json()
    assert (resource["productnumber"], resource["producttypecode"]) == ("SVC-INSTALL", 3)  # Services


def test_contacts_travel_with_their_names_split_and_their_company_as_parent_account(
        connector_env: ConnectorEnv, sandbox: RunningSandbox, bc: requests.Session, dv: requests.Session) -> None:
    for setup in ("CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD"):
        connector_env.run("create-in-dataverse", setup, "--all")
    # CT00180 Robert Townes works for the company contact CT00010, which stands for customer 10000
    connector_env.run("create-in-dataverse", "CUSTOMER", "10000")  # (skipped if an earlier test coupled it)
    first = connector_env.run("create-in-dataverse", "CONTACT", "CT00180")["jobs"][0]
    assert counters(first) == {"inserted": 1}, first["errors"]
    person = bc.get(f"{connector_env.bc_company_api}/contacts?$filter=number eq 'CT00180'").json()["value"][0]
    contact_id = next(c for c in connector_env.couplings("contacts") if c.bc_id == person["id"]).dataverse_id
    row = dv.get(f"{sandbox.api}/contacts({contact_id})").json()
    adatum = bc.get(f"{connector_env.bc_company_api}/customers?$filter=number eq '10000'").json()["value"][0]
    assert (row["firstname"], row["lastname"], row["fullname"]) == ("Robert", "Townes", "Robert Townes")
    assert row["_parentcustomerid_value"] == coupling_of(connector_env, adatum["id"]).dataverse_id
    assert row["_bcbi_companyid_value"] == company_row(connector_env)

    # a company contact is no person, and a vendor's person waits for its vendor to be coupled
    company_contact = connector_env.run("create-in-dataverse", "CONTACT", "CT00010")["jobs"][0]
    assert counters(company_contact) == {}
    vendor_person = connector_env.run("create-in-dataverse", "CONTACT", "CT00340")["jobs"][0]
    assert counters(vendor_person) == {"failed": 1}
    assert vendor_person["errors"] == ["Contact CT00340: The data could not be updated because of the following error: "
                                       "Vendor 10000 must be coupled to a Dataverse row."]

    changed = dv.patch(f"{sandbox.api}/contacts({contact_id})", json={"lastname": "Townes-Hill"},
                       headers={"MSCRMCallerID": "5e000000-0000-4000-8000-000000000004"})
    assert changed.status_code == 204
    back = connector_env.run("sync", "CONTACT", "CT00180", "--direction", "from-dataverse")["jobs"][0]
    assert counters(back) == {"modified": 1}, back["errors"]
    record = bc.get(f"{connector_env.bc_company_api}/contacts({person['id']})").json()
    assert (record["displayName"], record["companyNumber"]) == ("Robert Townes-Hill", "CT00010")
