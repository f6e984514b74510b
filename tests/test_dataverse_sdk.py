"""Microsoft's own Python SDK, unchanged, against the running sandbox (issue 2, first acceptance item).

The client is ``PowerPlatform.Dataverse.DataverseClient`` with azure-identity's ``ClientSecretCredential``
pointed at the mock Entra ID (instance discovery off) and ``REQUESTS_CA_BUNDLE`` = the sandbox CA, exactly
as a user would configure it (https://pypi.org/project/PowerPlatform-Dataverse-Client/). Every test then reads the state the
server kept through a plain ``requests`` session (``dv``) or the request journal, so a test passes only
when the server really did what the SDK asked, not merely when the SDK returned without error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse import DataverseClient, col
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from tests.conftest import RunningSandbox

pytestmark = pytest.mark.both_modes  # unchanged against a live sandbox and one in process

NOT_FOUND_CODE = "0x80040217"
INVALID_BODY_CODE = "0x0"  # an unknown property in a POST/PATCH body


@pytest.fixture(scope="module")
def _client(sandbox: RunningSandbox) -> Iterator[DataverseClient]:
    info = sandbox.info
    credential = ClientSecretCredential(
        info["tenant_id"],
        info["app"]["client_id"],
        info["app"]["client_secret"],
        authority=info["identity"]["url"],
        disable_instance_discovery=True,
    )
    client = DataverseClient(info["dataverse"]["url"], credential)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sdk(_client: DataverseClient, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> DataverseClient:
    """The SDK client; both azure-identity and the SDK find the sandbox CA the documented way (in process
    there is no TLS to verify)."""
    if sandbox.ca_bundle:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", sandbox.ca_bundle)
    return _client


@pytest.fixture
def journal(sandbox: RunningSandbox) -> Iterator[None]:
    """Start each journal-reading test with an empty journal."""
    assert sandbox.control("DELETE", "journal").status_code == 204
    yield


def tag() -> str:
    return uuid.uuid4().hex[:10]


def read_account(dv: requests.Session, sandbox: RunningSandbox, account_id: str) -> dict[str, Any]:
    resp = dv.get(f"{sandbox.api}/accounts({account_id})")
    assert resp.status_code == 200, resp.text
    return resp.json()


def accounts_where(dv: requests.Session, sandbox: RunningSandbox, odata_filter: str) -> list[dict[str, Any]]:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$filter": odata_filter, "$orderby": "name"})
    assert resp.status_code == 200, resp.text
    assert "@odata.nextLink" not in resp.json()
    return resp.json()["value"]


def create_plain(dv: requests.Session, sandbox: RunningSandbox, body: dict[str, Any]) -> str:
    resp = dv.post(f"{sandbox.api}/accounts", json=body, headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    return resp.json()["accountid"]


def web_api_calls(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    """Journal entries of the emulated surface (the control API is not journaled)."""
    resp = sandbox.control("GET", "journal", params={"path": "/api/data/v9.2/"})
    assert resp.status_code == 200
    return resp.json()["value"]


def caller_id(dv: requests.Session, sandbox: RunningSandbox) -> str:
    resp = dv.get(f"{sandbox.api}/WhoAmI")
    assert resp.status_code == 200
    return resp.json()["UserId"]


def test_create(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    name = f"SDK create {tag()}"
    # "Competitor" is a label: the SDK converts it to its option value through PicklistAttributeMetadata.
    new_id = sdk.records.create("account", {
        "name": name, "telephone1": "555-0100", "numberofemployees": 42, "customertypecode": "Competitor",
    })

    uuid.UUID(new_id)
    row = read_account(dv, sandbox, new_id)
    assert row["accountid"] == new_id
    assert row["name"] == name
    assert row["telephone1"] == "555-0100"
    assert row["numberofemployees"] == 42
    assert row["customertypecode"] == 1
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    assert row["createdon"] and row["modifiedon"]
    assert row["_createdby_value"] == caller_id(dv, sandbox)
    assert [r["accountid"] for r in accounts_where(dv, sandbox, f"name eq '{name}'")] == [new_id]


def test_retrieve(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    name = f"SDK retrieve {tag()}"
    account_id = create_plain(dv, sandbox, {"name": name, "websiteurl": "https://example.test"})
    before = read_account(dv, sandbox, account_id)

    record = sdk.records.retrieve("account", account_id, select=["name", "websiteurl"])
    missing = sdk.records.retrieve("account", str(uuid.uuid4()))

    assert record is not None
    assert record["name"] == name
    assert record["websiteurl"] == "https://example.test"
    assert record.etag == before["@odata.etag"]
    assert missing is None
    after = read_account(dv, sandbox, account_id)
    assert after["versionnumber"] == before["versionnumber"]  # a read changes nothing
    assert after["name"] == name


def test_update(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    name = f"SDK update {tag()}"
    account_id = create_plain(dv, sandbox, {"name": name, "telephone1": "555-0001"})
    before = read_account(dv, sandbox, account_id)

    sdk.records.update("account", account_id, {"telephone1": "555-0002", "description": "updated by the SDK"})

    after = read_account(dv, sandbox, account_id)
    assert after["telephone1"] == "555-0002"
    assert after["description"] == "updated by the SDK"
    assert after["name"] == name  # untouched columns keep their value
    assert after["versionnumber"] > before["versionnumber"]
    assert after["@odata.etag"] != before["@odata.etag"]
    assert datetime.fromisoformat(after["modifiedon"]) >= datetime.fromisoformat(before["modifiedon"])
    assert after["_modifiedby_value"] == caller_id(dv, sandbox)


def test_upsert_by_alternate_key(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    number = f"SDK-UP-{tag()}"

    sdk.records.upsert("account", [UpsertItem(alternate_key={"accountnumber": number},
                                              record={"name": "Upserted first"})])
    created = accounts_where(dv, sandbox, f"accountnumber eq '{number}'")
    sdk.records.upsert("account", [{"alternate_key": {"accountnumber": number},
                                    "record": {"name": "Upserted second", "telephone1": "555-0303"}}])
    updated = accounts_where(dv, sandbox, f"accountnumber eq '{number}'")

    assert [r["name"] for r in created] == ["Upserted first"]
    assert len(updated) == 1, "the second upsert must update the row, not insert another"
    assert updated[0]["accountid"] == created[0]["accountid"]
    assert (updated[0]["name"], updated[0]["telephone1"]) == ("Upserted second", "555-0303")
    by_key = dv.get(f"{sandbox.api}/accounts(accountnumber='{number}')")
    assert by_key.status_code == 200
    assert by_key.json()["accountid"] == created[0]["accountid"]


def test_upsert_multiple(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox, journal: None) -> None:
    prefix = f"SDK-UM-{tag()}"
    existing = create_plain(dv, sandbox, {"name": "Before", "accountnumber": f"{prefix}-1"})
    sandbox.control("DELETE", "journal")

    sdk.records.upsert("account", [
        UpsertItem(alternate_key={"accountnumber": f"{prefix}-1"}, record={"name": "After"}),
        UpsertItem(alternate_key={"accountnumber": f"{prefix}-2"}, record={"name": "New"}),
    ])

    rows = accounts_where(dv, sandbox, f"startswith(accountnumber, '{prefix}')")
    assert sorted((r["accountnumber"], r["name"]) for r in rows) == [(f"{prefix}-1", "After"), (f"{prefix}-2", "New")]
    assert next(r["accountid"] for r in rows if r["accountnumber"] == f"{prefix}-1") == existing
    writes = [e for e in web_api_calls(sandbox) if e["method"] != "GET"]
    assert [(e["method"], e["path"].rsplit("/", 1)[-1]) for e in writes] == [
        ("POST", "Microsoft.Dynamics.CRM.UpsertMultiple")]


def test_delete(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    name = f"SDK delete {tag()}"
    account_id = create_plain(dv, sandbox, {"name": name})

    sdk.records.delete("account", account_id)

    resp = dv.get(f"{sandbox.api}/accounts({account_id})")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == NOT_FOUND_CODE
    assert accounts_where(dv, sandbox, f"name eq '{name}'") == []
    assert sdk.records.retrieve("account", account_id) is None


def test_list_with_in_filter(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox,
                             journal: None) -> None:
    prefix = f"SDK-IN-{tag()}"
    for suffix in "ABCD":
        create_plain(dv, sandbox, {"name": f"{prefix} {suffix}", "accountnumber": f"{prefix}-{suffix}"})
    wanted = [f"{prefix}-A", f"{prefix}-C", f"{prefix}-ZZ"]  # one value matches nothing

    result = sdk.records.list("account", filter=col("accountnumber").in_(wanted),
                              select=["name", "accountnumber"], orderby=["name asc"])

    assert [r["accountnumber"] for r in result] == [f"{prefix}-A", f"{prefix}-C"]
    # The server evaluated Microsoft.Dynamics.CRM.In itself: the SDK sent it, and the answer agrees
    # with the same question asked the plain way.
    queries = [e["query"] for e in web_api_calls(sandbox) if e["path"].endswith("/accounts")]
    assert any("Microsoft.Dynamics.CRM.In(PropertyName='accountnumber'" in q for q in queries), queries
    plain = accounts_where(dv, sandbox, f"accountnumber eq '{prefix}-A' or accountnumber eq '{prefix}-C'")
    assert sorted(r["accountid"] for r in result) == sorted(r["accountid"] for r in plain)


def test_paging_across_three_pages(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox,
                                   journal: None) -> None:
    prefix = f"SDK page {tag()}"
    names = [f"{prefix} {i:02d}" for i in range(13)]
    ids = {create_plain(dv, sandbox, {"name": n}) for n in names}
    sandbox.control("DELETE", "journal")

    pages = list(sdk.records.list_pages("account", filter=f"startswith(name, '{prefix}')",
                                        select=["name"], orderby=["name asc"], page_size=5))

    assert [len(p) for p in pages] == [5, 5, 3]
    seen = [r["name"] for p in pages for r in p]
    assert seen == names  # in order, no gaps, no duplicates across page boundaries
    assert {r["accountid"] for p in pages for r in p} == ids  # the key comes back even with $select
    gets = [e for e in web_api_calls(sandbox) if e["method"] == "GET" and e["path"].endswith("/accounts")]
    assert len(gets) == 3 and all(e["status"] == 200 for e in gets)
    assert all("$skiptoken" in e["query"] for e in gets[1:]), "pages 2 and 3 follow @odata.nextLink"
    assert sorted(r["name"] for r in accounts_where(dv, sandbox, f"startswith(name, '{prefix}')")) == names


def test_create_multiple(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox, journal: None) -> None:
    prefix = f"SDK multi {tag()}"
    bodies = [{"name": f"{prefix} {i}", "telephone1": f"555-01{i:02d}"} for i in range(3)]

    ids = sdk.records.create("account", bodies)

    assert len(ids) == 3 and len(set(ids)) == 3
    for account_id, body in zip(ids, bodies, strict=True):
        row = read_account(dv, sandbox, account_id)
        assert (row["name"], row["telephone1"]) == (body["name"], body["telephone1"])
    assert sorted(r["accountid"] for r in accounts_where(dv, sandbox, f"startswith(name, '{prefix}')")) == sorted(ids)
    writes = [e for e in web_api_calls(sandbox) if e["method"] == "POST"]
    assert [e["path"].rsplit("/", 1)[-1] for e in writes] == ["Microsoft.Dynamics.CRM.CreateMultiple"], \
        "three records must travel in one CreateMultiple request"


def test_batch_with_changeset(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox,
                              journal: None) -> None:
    name = f"SDK batch {tag()}"
    batch = sdk.batch.new()
    with batch.changeset() as cs:
        account_ref = cs.records.create("account", {"name": name})
        cs.records.create("contact", {"lastname": f"Batch {name}",
                                      "parentcustomerid_account@odata.bind": account_ref})
        cs.records.update("account", account_ref, {"telephone1": "555-0909"})

    result = batch.execute()

    assert [r.status_code for r in result.responses] == [204, 204, 204]
    account_id = result.responses[0].entity_id
    contact_id = result.responses[1].entity_id
    account = read_account(dv, sandbox, account_id)
    assert (account["name"], account["telephone1"]) == (name, "555-0909")  # $1 resolved to the new row
    contact = dv.get(f"{sandbox.api}/contacts({contact_id})")
    assert contact.status_code == 200
    assert contact.json()["_parentcustomerid_value"] == account_id
    batches = [e for e in web_api_calls(sandbox) if e["method"] != "GET"]
    assert [(e["path"].rsplit("/", 1)[-1], e["batch_operations"]) for e in batches] == [("$batch", 3)]


def test_batch_changeset_is_atomic(sdk: DataverseClient, dv: requests.Session, sandbox: RunningSandbox) -> None:
    name = f"SDK rollback {tag()}"
    batch = sdk.batch.new()
    with batch.changeset() as cs:
        ref = cs.records.create("account", {"name": name})
        cs.records.update("account", ref, {"nosuchcolumn": "x"})  # 400: unknown property

    result = batch.execute()

    failed = [r for r in result.responses if r.status_code >= 400]
    assert [r.status_code for r in failed] == [400]
    assert failed[0].error_code == INVALID_BODY_CODE
    assert "nosuchcolumn" in (failed[0].error_message or "")
    assert accounts_where(dv, sandbox, f"name eq '{name}'") == [], "the create must roll back with the changeset"
