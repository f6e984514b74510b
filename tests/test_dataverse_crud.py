"""Dataverse Web API writes and documents, one scenario per documented behaviour
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/overview).

Each scenario asserts the status, the headers, the body and the state the server keeps afterwards
(read back through the API, and where it matters straight from the SQL store).
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

pytestmark = pytest.mark.storage

GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
INTEGRATION_USER = "5e000000-0000-4000-8000-000000000002"
ROOT_BUSINESS_UNIT = "b0000000-0000-4000-8000-000000000001"
TEAM = "7e000000-0000-4000-8000-000000000002"
SEEDED_ACCOUNT = "a0000000-0000-4000-8000-000000000001"
USD = "cc000000-0000-4000-8000-000000000001"
EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"



# -- helpers ---------------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:10]}"


def entity_id(resp: requests.Response) -> str:
    match = re.search(rf"\(({GUID})\)$", resp.headers["OData-EntityId"])
    assert match, resp.headers["OData-EntityId"]
    return match.group(1)


def create(dv: requests.Session, api: str, set_name: str, body: dict) -> str:
    resp = dv.post(f"{api}/{set_name}", json=body)
    assert resp.status_code == 204, resp.text
    return entity_id(resp)


def get(dv: requests.Session, api: str, path: str, **params: str) -> dict:
    resp = dv.get(f"{api}/{path}", params=params or None)
    assert resp.status_code == 200, resp.text
    return resp.json()


def store_row(sandbox, table: str, key: str) -> dict | None:
    backend = sandbox.sandbox.backends["dataverse"]
    with backend.store.read() as conn:
        return backend.store.get(conn, backend.entity(table), key)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def batch_body(parts: list[str], boundary: str, newline: str = "\r\n") -> bytes:
    text = "".join(f"--{boundary}\n{p}" for p in parts) + f"--{boundary}--\n"
    return text.replace("\n", newline).encode()


def http_part(request_line: str, body: Any = None, content_id: str | None = None,
              headers: dict[str, str] | None = None) -> str:
    head = "Content-Type: application/http\nContent-Transfer-Encoding: binary\n"
    if content_id:
        head += f"Content-ID: {content_id}\n"
    inner = f"{request_line} HTTP/1.1\n"
    for name, value in (headers or {}).items():
        inner += f"{name}: {value}\n"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\n"
    return f"{head}\n{inner}\n{json.dumps(body) if body is not None else ''}\n"


def changeset(parts: list[str], boundary: str) -> str:
    inner = "".join(f"--{boundary}\n{p}" for p in parts) + f"--{boundary}--\n"
    return f"Content-Type: multipart/mixed; boundary={boundary}\n\n{inner}"


def batch_responses(resp: requests.Response) -> list[dict[str, Any]]:
    """Every HTTP response inside a multipart $batch reply, in order, with its part's Content-ID."""
    raw = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode() + resp.content
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    out = []
    for part in message.walk():
        if part.get_content_type() != "application/http":
            continue
        payload = part.get_payload(decode=True).replace(b"\r\n", b"\n")
        head, _, body = payload.partition(b"\n\n")
        status_line, *lines = head.decode().split("\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        out.append({"status": int(status_line.split()[1]), "headers": headers, "body": body.strip(),
                    "content_id": part.get("Content-ID")})
    return out


def post_batch(dv: requests.Session, api: str, parts: list[str], *, newline: str = "\r\n",
               prefer: str | None = None) -> requests.Response:
    boundary = f"batch_{uuid.uuid4()}"
    headers = {"Content-Type": f'multipart/mixed; boundary="{boundary}"'}
    if prefer:
        headers["Prefer"] = prefer
    return dv.post(f"{api}/$batch", data=batch_body(parts, boundary, newline), headers=headers)


# -- create ----------------------------------------------------------------------------------------
def test_create_returns_204_with_odata_entityid(sandbox, dv: requests.Session) -> None:
    name = unique("Create")
    resp = dv.post(f"{sandbox.api}/accounts",
                   json={"name": name, "creditonhold": False, "revenue": 5000000, "customertypecode": 3})
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert resp.headers["OData-Version"] == "4.0"
    assert re.fullmatch(rf"{re.escape(sandbox.api)}/accounts\({GUID}\)", resp.headers["OData-EntityId"])
    key = entity_id(resp)
    row = store_row(sandbox, "account", key)
    assert row is not None and row["name"] == name and row["customertypecode"] == 3
    assert row["creditonhold"] is False and float(row["revenue"]) == 5000000
    assert row["_transactioncurrencyid_value"] == USD, "money without a currency gets the org's base currency"


def test_create_with_return_representation(sandbox, dv: requests.Session) -> None:
    name = unique("Represented")
    resp = dv.post(f"{sandbox.api}/accounts", params={"$select": "name,revenue,createdon"},
                   json={"name": name, "revenue": 20000}, headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["Preference-Applied"] == "return=representation"
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "OData-EntityId" not in resp.headers
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#accounts(name,revenue,createdon)/$entity"
    assert body["name"] == name and body["revenue"] == 20000
    assert body["_transactioncurrencyid_value"] == USD, "money columns imply the currency lookup"
    assert re.fullmatch(GUID, body["accountid"])
    assert body["@odata.etag"] == resp.headers["ETag"]
    assert set(body) == {"@odata.context", "@odata.etag", "accountid", "name", "revenue", "createdon",
                         "_transactioncurrencyid_value"}
    assert store_row(sandbox, "account", body["accountid"])["name"] == name


def test_create_with_client_supplied_id(sandbox, dv: requests.Session) -> None:
    key = str(uuid.uuid4())
    resp = dv.post(f"{sandbox.api}/accounts", json={"accountid": key.upper(), "name": "Chosen id"})
    assert resp.status_code == 204
    assert resp.headers["OData-EntityId"] == f"{sandbox.api}/accounts({key})"
    assert get(dv, sandbox.api, f"accounts({key})", **{"$select": "name"})["name"] == "Chosen id"
    again = dv.post(f"{sandbox.api}/accounts", json={"accountid": key, "name": "Second"})
    assert again.status_code == 412
    assert again.json()["error"]["code"] == "0x80040237"
    assert store_row(sandbox, "account", key)["name"] == "Chosen id"


def test_deep_insert_creates_related_records_in_one_request(sandbox, dv: requests.Session) -> None:
    name = unique("Deep")
    resp = dv.post(f"{sandbox.api}/accounts", json={
        "name": name,
        "primarycontactid": {"firstname": "Prime", "lastname": "Contact"},
        "contact_customer_accounts": [{"firstname": "Child", "lastname": "One"},
                                      {"firstname": "Child", "lastname": "Two"}],
    })
    assert resp.status_code == 204, resp.text
    key = entity_id(resp)
    account = get(dv, sandbox.api, f"accounts({key})",
                  **{"$select": "name", "$expand": "primarycontactid($select=fullname),"
                                                   "contact_customer_accounts($select=fullname;$orderby=lastname)"})
    assert account["primarycontactid"]["fullname"] == "Prime Contact"
    assert [c["fullname"] for c in account["contact_customer_accounts"]] == ["Child One", "Child Two"]
    children = get(dv, sandbox.api, "contacts", **{
        "$select": "fullname,_parentcustomerid_value", "$filter": f"_parentcustomerid_value eq {key}"})["value"]
    assert {c["fullname"] for c in children} == {"Child One", "Child Two"}


def test_bind_single_valued_lookups(sandbox, dv: requests.Session) -> None:
    contact = create(dv, sandbox.api, "contacts", {"lastname": unique("Bound")})
    key = create(dv, sandbox.api, "accounts", {
        "name": unique("Binds"),
        "primarycontactid@odata.bind": f"/contacts({contact})",
        "transactioncurrencyid@odata.bind": f"{sandbox.api}/transactioncurrencies({USD})",
        "parentaccountid@odata.bind": f"accounts({SEEDED_ACCOUNT})",
    })
    row = get(dv, sandbox.api, f"accounts({key})")
    assert row["_primarycontactid_value"] == contact
    assert row["_transactioncurrencyid_value"] == USD
    assert row["_parentaccountid_value"] == SEEDED_ACCOUNT
    refs = get(dv, sandbox.api, f"accounts({SEEDED_ACCOUNT})/account_parent_account/$ref")["value"]
    assert {"@odata.id": f"{sandbox.api}/accounts({key})"} in refs


@pytest.mark.parametrize("target", ["account", "contact"])
def test_bind_polymorphic_customer_lookup(sandbox, dv: requests.Session, target: str) -> None:
    parent = create(dv, sandbox.api, f"{target}s",
                    {"name": unique("Parent")} if target == "account" else {"lastname": unique("Parent")})
    child = create(dv, sandbox.api, "contacts", {
        "lastname": unique("Child"), f"parentcustomerid_{target}@odata.bind": f"/{target}s({parent})"})
    resp = dv.get(f"{sandbox.api}/contacts({child})", params={"$select": "_parentcustomerid_value"},
                  headers={"Prefer": 'odata.include-annotations="*"'})
    body = resp.json()
    assert body["_parentcustomerid_value"] == parent
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == target
    assert body["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == \
        f"parentcustomerid_{target}"
    other = "contact" if target == "account" else "account"
    assert dv.get(f"{sandbox.api}/contacts({child})/parentcustomerid_{other}").status_code == 204
    nav = get(dv, sandbox.api, f"contacts({child})/parentcustomerid_{target}")
    assert nav[f"{target}id"] == parent


def test_bind_owner_to_a_team(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Team owned"), "ownerid@odata.bind": f"/teams({TEAM})"})
    resp = dv.get(f"{sandbox.api}/accounts({key})", params={"$select": "name,_ownerid_value,_owningteam_value,"
                                                                       "_owninguser_value"},
                  headers={"Prefer": 'odata.include-annotations="*"'})
    body = resp.json()
    assert body["_ownerid_value"] == TEAM
    assert body["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    assert body["_ownerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "ownerid"
    assert body["_owningteam_value"] == TEAM and body["_owninguser_value"] is None
    # …and back to a user
    assert dv.patch(f"{sandbox.api}/accounts({key})",
                    json={"ownerid@odata.bind": f"/systemusers({INTEGRATION_USER})"}).status_code == 204
    row = store_row(sandbox, "account", key)
    assert row["_ownerid_value"] == INTEGRATION_USER and row["_owninguser_value"] == INTEGRATION_USER
    assert row["_owningteam_value"] is None


def test_default_owner_is_the_calling_user(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Owned")})
    row = store_row(sandbox, "account", key)
    assert row["_ownerid_value"] == INTEGRATION_USER
    assert row["_owningbusinessunit_value"] == ROOT_BUSINESS_UNIT


@pytest.mark.parametrize("clear", [{"primarycontactid@odata.bind": None}, {"primarycontactid": None}],
                         ids=["null bind", "null navigation"])
def test_clear_a_lookup(sandbox, dv: requests.Session, clear: dict) -> None:
    contact = create(dv, sandbox.api, "contacts", {"lastname": unique("Cleared")})
    key = create(dv, sandbox.api, "accounts",
                 {"name": unique("Clear"), "primarycontactid@odata.bind": f"/contacts({contact})"})
    assert store_row(sandbox, "account", key)["_primarycontactid_value"] == contact
    resp = dv.patch(f"{sandbox.api}/accounts({key})", json=clear)
    assert resp.status_code == 204
    assert store_row(sandbox, "account", key)["_primarycontactid_value"] is None
    assert dv.get(f"{sandbox.api}/accounts({key})/primarycontactid").status_code == 204
    assert store_row(sandbox, "contact", contact) is not None, "clearing a lookup does not delete the record"


def test_clear_a_polymorphic_lookup_by_its_column_name(sandbox, dv: requests.Session) -> None:
    parent = create(dv, sandbox.api, "accounts", {"name": unique("Parent")})
    child = create(dv, sandbox.api, "contacts", {"lastname": unique("Child"),
                                                 "parentcustomerid_account@odata.bind": f"/accounts({parent})"})
    resp = dv.patch(f"{sandbox.api}/contacts({child})", json={"parentcustomerid_account@odata.bind": None})
    assert resp.status_code == 204
    assert store_row(sandbox, "contact", child)["_parentcustomerid_value"] is None


# -- retrieve --------------------------------------------------------------------------------------
def test_retrieve_by_id_and_by_alternate_key(sandbox, dv: requests.Session) -> None:
    number = f"AK-{uuid.uuid4().hex[:8]}"
    key = create(dv, sandbox.api, "accounts", {"name": unique("Keyed"), "accountnumber": number})
    by_id = dv.get(f"{sandbox.api}/accounts({key})", params={"$select": "name,accountnumber"})
    by_key = dv.get(f"{sandbox.api}/accounts(accountnumber='{number}')", params={"$select": "name,accountnumber"})
    assert by_id.status_code == by_key.status_code == 200
    assert by_id.json() == by_key.json()
    body = by_id.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#accounts(name,accountnumber)/$entity"
    assert body["accountid"] == key and body["accountnumber"] == number
    assert by_id.headers["ETag"] == body["@odata.etag"] == f'W/"{store_row(sandbox, "account", key)["versionnumber"]}"'
    upper = dv.get(f"{sandbox.api}/accounts({key.upper()})", params={"$select": "name"})
    assert upper.status_code == 200 and upper.json()["accountid"] == key
    missing = dv.get(f"{sandbox.api}/accounts(accountnumber='NO-SUCH-{number}')")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "0x80040217"


def test_alternate_key_with_a_quote(sandbox, dv: requests.Session) -> None:
    number = f"O'B-{uuid.uuid4().hex[:6]}"
    key = create(dv, sandbox.api, "accounts", {"name": unique("Quote"), "accountnumber": number})
    escaped = number.replace("'", "''")
    body = get(dv, sandbox.api, f"accounts(accountnumber='{escaped}')", **{"$select": "accountnumber"})
    assert body["accountid"] == key and body["accountnumber"] == number


# -- property paths and navigation -----------------------------------------------------------------
def test_property_path_get_put_delete(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Props"), "telephone1": "555-0100"})
    resp = dv.get(f"{sandbox.api}/accounts({key})/telephone1")
    assert resp.status_code == 200
    assert resp.json() == {"@odata.context": f"{sandbox.api}/$metadata#accounts({key})/telephone1",
                           "value": "555-0100"}
    version = store_row(sandbox, "account", key)["versionnumber"]

    put = dv.put(f"{sandbox.api}/accounts({key})/telephone1", json={"value": "555-0199"})
    assert put.status_code == 204 and put.content == b""
    row = store_row(sandbox, "account", key)
    assert row["telephone1"] == "555-0199" and row["versionnumber"] > version

    delete = dv.delete(f"{sandbox.api}/accounts({key})/telephone1")
    assert delete.status_code == 204
    assert store_row(sandbox, "account", key)["telephone1"] is None
    assert dv.get(f"{sandbox.api}/accounts({key})/telephone1").status_code == 204
    assert store_row(sandbox, "account", key)["name"].startswith("Props"), "other columns untouched"


def test_navigation_single_valued(sandbox, dv: requests.Session) -> None:
    contact = create(dv, sandbox.api, "contacts", {"firstname": "Nav", "lastname": unique("Single")})
    key = create(dv, sandbox.api, "accounts",
                 {"name": unique("Nav"), "primarycontactid@odata.bind": f"/contacts({contact})"})
    resp = dv.get(f"{sandbox.api}/accounts({key})/primarycontactid", params={"$select": "fullname"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#contacts(fullname)/$entity"
    assert body["contactid"] == contact and body["fullname"].startswith("Nav Single")
    ref = get(dv, sandbox.api, f"accounts({key})/primarycontactid/$ref")
    assert ref["@odata.id"] == f"{sandbox.api}/contacts({contact})"


def test_navigation_collection_ref_and_count(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Parent")})
    children = sorted(create(dv, sandbox.api, "contacts", {
        "lastname": f"Kid {i}", "parentcustomerid_account@odata.bind": f"/accounts({key})"}) for i in range(3))
    listed = get(dv, sandbox.api, f"accounts({key})/contact_customer_accounts", **{"$select": "lastname"})
    assert listed["@odata.context"] == f"{sandbox.api}/$metadata#contacts(lastname)"
    assert sorted(c["contactid"] for c in listed["value"]) == children
    refs = get(dv, sandbox.api, f"accounts({key})/contact_customer_accounts/$ref")
    assert refs["@odata.context"] == f"{sandbox.api}/$metadata#Collection($ref)"
    assert sorted(r["@odata.id"] for r in refs["value"]) == [f"{sandbox.api}/contacts({c})" for c in children]
    count = dv.get(f"{sandbox.api}/accounts({key})/contact_customer_accounts/$count")
    assert count.status_code == 200 and count.headers["Content-Type"].startswith("text/plain")
    assert count.content.decode("utf-8-sig") == "3"

    prefer = {"Prefer": "odata.maxpagesize=2"}
    page = dv.get(f"{sandbox.api}/accounts({key})/contact_customer_accounts",
                  params={"$select": "lastname", "$count": "true"}, headers=prefer)
    assert page.headers["Preference-Applied"] == "odata.maxpagesize=2"
    first = page.json()
    assert first["@odata.count"] == 3 and len(first["value"]) == 2
    rest = dv.get(first["@odata.nextLink"], headers=prefer).json()
    assert "@odata.nextLink" not in rest
    assert sorted(c["contactid"] for c in first["value"] + rest["value"]) == children


def test_associate_and_disassociate_through_ref(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Assoc")})
    contact = create(dv, sandbox.api, "contacts", {"lastname": unique("Assoc")})
    put = dv.put(f"{sandbox.api}/accounts({key})/primarycontactid/$ref",
                 json={"@odata.id": f"{sandbox.api}/contacts({contact})"})
    assert put.status_code == 204
    assert store_row(sandbox, "account", key)["_primarycontactid_value"] == contact
    delete = dv.delete(f"{sandbox.api}/accounts({key})/primarycontactid/$ref")
    assert delete.status_code == 204
    assert store_row(sandbox, "account", key)["_primarycontactid_value"] is None


# -- update, upsert, delete ------------------------------------------------------------------------
def test_patch_update(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Update"), "telephone1": "1"})
    before = store_row(sandbox, "account", key)
    resp = dv.patch(f"{sandbox.api}/accounts({key})", json={"telephone1": "2"}, headers={"If-Match": "*"})
    assert resp.status_code == 204 and resp.content == b""
    after = store_row(sandbox, "account", key)
    assert after["telephone1"] == "2" and after["name"] == before["name"]
    assert after["versionnumber"] > before["versionnumber"]


def test_patch_update_with_matching_etag_and_representation(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Etag")})
    tag = dv.get(f"{sandbox.api}/accounts({key})").headers["ETag"]
    resp = dv.patch(f"{sandbox.api}/accounts({key})", params={"$select": "name"}, json={"name": "Renamed"},
                    headers={"If-Match": tag, "Prefer": "return=representation"})
    assert resp.status_code == 200
    assert resp.headers["Preference-Applied"] == "return=representation"
    body = resp.json()
    assert body["name"] == "Renamed" and body["@odata.etag"] != tag == f'W/"{int(tag[3:-1])}"'
    assert resp.headers["ETag"] == body["@odata.etag"]
    stale = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Lost"}, headers={"If-Match": tag})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "0x80060882"
    assert store_row(sandbox, "account", key)["name"] == "Renamed"


def test_upsert_creates_with_the_guid_in_the_url(sandbox, dv: requests.Session) -> None:
    key = str(uuid.uuid4())
    resp = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Upserted by id"})
    assert resp.status_code == 204
    assert resp.headers["OData-EntityId"] == f"{sandbox.api}/accounts({key})"
    assert store_row(sandbox, "account", key)["name"] == "Upserted by id"


def test_upsert_creates_with_alternate_key_values_copied(sandbox, dv: requests.Session) -> None:
    number = f"UPS-{uuid.uuid4().hex[:8]}"
    resp = dv.patch(f"{sandbox.api}/accounts(accountnumber='{number}')", json={"name": "Upserted by key"},
                    headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["Preference-Applied"] == "return=representation"
    body = resp.json()
    assert body["accountnumber"] == number and body["name"] == "Upserted by key"
    assert resp.headers["ETag"] == body["@odata.etag"]
    assert store_row(sandbox, "account", body["accountid"])["accountnumber"] == number

    plain_number = f"UPS-{uuid.uuid4().hex[:8]}"
    plain = dv.patch(f"{sandbox.api}/accounts(accountnumber='{plain_number}')", json={"name": "Plain"})
    assert plain.status_code == 204
    assert plain.headers["OData-EntityId"] == f"{sandbox.api}/accounts(accountnumber='{plain_number}')"
    found = get(dv, sandbox.api, "accounts", **{"$filter": f"accountnumber eq '{plain_number}'"})["value"]
    assert [r["name"] for r in found] == ["Plain"]


def test_upsert_updates_an_existing_record_and_ignores_key_columns(sandbox, dv: requests.Session) -> None:
    number = f"UPU-{uuid.uuid4().hex[:8]}"
    key = create(dv, sandbox.api, "accounts", {"name": "Before", "accountnumber": number})
    resp = dv.patch(f"{sandbox.api}/accounts(accountnumber='{number}')",
                    json={"name": "After", "accountnumber": "IGNORED"}, headers={"Prefer": "return=representation"})
    assert resp.status_code == 200
    row = store_row(sandbox, "account", key)
    assert row["name"] == "After" and row["accountnumber"] == number
    by_id = dv.patch(f"{sandbox.api}/accounts({key})", json={"telephone1": "42"})
    assert by_id.status_code == 204
    assert store_row(sandbox, "account", key)["telephone1"] == "42"
    total = get(dv, sandbox.api, "accounts", **{"$filter": f"accountnumber eq '{number}'", "$count": "true"})
    assert total["@odata.count"] == 1


def test_if_match_star_on_a_missing_record_is_404_and_creates_nothing(sandbox, dv: requests.Session) -> None:
    key = str(uuid.uuid4())
    resp = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Ghost"}, headers={"If-Match": "*"})
    assert resp.status_code == 404
    assert resp.json()["error"] == {"code": "0x80040217",
                                    "message": f"Entity 'account' With Id = {key} Does Not Exist"}
    assert store_row(sandbox, "account", key) is None


def test_if_none_match_star_creates_only(sandbox, dv: requests.Session) -> None:
    key = str(uuid.uuid4())
    first = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Create only"}, headers={"If-None-Match": "*"})
    assert first.status_code == 204
    second = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Overwrite"}, headers={"If-None-Match": "*"})
    assert second.status_code == 412 and second.json()["error"]["code"] == "0x80040237"
    assert store_row(sandbox, "account", key)["name"] == "Create only"


def test_delete_then_404(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Delete")})
    resp = dv.delete(f"{sandbox.api}/accounts({key})", headers={"If-Match": "*"})
    assert resp.status_code == 204 and resp.content == b""
    assert store_row(sandbox, "account", key) is None
    assert dv.get(f"{sandbox.api}/accounts({key})").status_code == 404
    again = dv.delete(f"{sandbox.api}/accounts({key})")
    assert again.status_code == 404 and again.json()["error"]["code"] == "0x80040217"


def test_delete_with_current_etag(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Delete etag")})
    tag = dv.get(f"{sandbox.api}/accounts({key})").headers["ETag"]
    assert dv.delete(f"{sandbox.api}/accounts({key})", headers={"If-Match": tag}).status_code == 204
    assert store_row(sandbox, "account", key) is None


def test_if_none_match_null_is_no_condition(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Null")})
    got = dv.get(f"{sandbox.api}/accounts({key})", headers={"If-None-Match": "null"})
    assert got.status_code == 200 and got.json()["accountid"] == key
    listed = dv.get(f"{sandbox.api}/accounts", params={"$filter": f"accountid eq {key}"},
                    headers={"If-None-Match": "null"})
    assert listed.status_code == 200 and len(listed.json()["value"]) == 1
    patched = dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Null patched"},
                       headers={"If-None-Match": "null"})
    assert patched.status_code == 204
    assert store_row(sandbox, "account", key)["name"] == "Null patched"
    created = str(uuid.uuid4())
    upsert = dv.patch(f"{sandbox.api}/accounts({created})", json={"name": "Null upsert"},
                      headers={"If-None-Match": "null"})
    assert upsert.status_code == 204 and store_row(sandbox, "account", created) is not None


def test_conditional_get(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Conditional")})
    tag = dv.get(f"{sandbox.api}/accounts({key})").headers["ETag"]
    not_modified = dv.get(f"{sandbox.api}/accounts({key})", headers={"If-None-Match": tag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    expanded = dv.get(f"{sandbox.api}/accounts({key})", params={"$expand": "primarycontactid"},
                      headers={"If-None-Match": tag})
    assert expanded.status_code == 200, "never 304 with $expand"
    annotated = dv.get(f"{sandbox.api}/accounts({key})",
                       headers={"If-None-Match": tag, "Prefer": 'odata.include-annotations="*"'})
    assert annotated.status_code == 200, "never 304 with include-annotations"
    dv.patch(f"{sandbox.api}/accounts({key})", json={"name": "Changed"})
    changed = dv.get(f"{sandbox.api}/accounts({key})", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["name"] == "Changed"
    assert changed.headers["ETag"] != tag


# -- server-maintained columns ---------------------------------------------------------------------
def test_server_maintained_columns(sandbox, dv: requests.Session) -> None:
    started = datetime.now(UTC) - timedelta(seconds=2)
    resp = dv.post(f"{sandbox.api}/contacts", headers={"Prefer": "return=representation"}, json={
        "firstname": "Ada", "lastname": "Lovelace", "address1_line1": "1 Analytical Way",
        "address1_city": "London", "address1_postalcode": "N1", "address1_country": "UK",
        "createdon": "2000-01-01T00:00:00Z", "versionnumber": 7, "fullname": "Ignored Name",
    })
    assert resp.status_code == 201, resp.text
    created = resp.json()
    key = created["contactid"]
    assert created["fullname"] == "Ada Lovelace"
    assert created["address1_composite"] == "1 Analytical Way\r\nLondon N1\r\nUK"
    assert created["statecode"] == 0 and created["statuscode"] == 1
    assert created["_createdby_value"] == created["_modifiedby_value"] == INTEGRATION_USER
    assert created["createdon"] == created["modifiedon"]
    assert started <= parse_time(created["createdon"]) <= datetime.now(UTC) + timedelta(seconds=2)
    assert created["versionnumber"] > 7 and created["@odata.etag"] == f'W/"{created["versionnumber"]}"'

    updated = dv.patch(f"{sandbox.api}/contacts({key})", json={"lastname": "King", "statecode": 1},
                       headers={"Prefer": "return=representation"}).json()
    assert updated["fullname"] == "Ada King"
    assert updated["statecode"] == 1 and updated["statuscode"] == 2, "statuscode follows statecode"
    assert updated["createdon"] == created["createdon"]
    assert parse_time(updated["modifiedon"]) >= parse_time(created["modifiedon"])
    assert updated["versionnumber"] > created["versionnumber"]
    row = store_row(sandbox, "contact", key)
    assert row["fullname"] == "Ada King" and row["versionnumber"] == updated["versionnumber"]

    reactivated = dv.patch(f"{sandbox.api}/contacts({key})", json={"statuscode": 1},
                           headers={"Prefer": "return=representation"}).json()
    assert reactivated["statecode"] == 0, "statecode follows an explicit statuscode"


def test_lookup_value_properties_are_read_only(sandbox, dv: requests.Session) -> None:
    key = create(dv, sandbox.api, "accounts", {"name": unique("Readonly"),
                                               "_primarycontactid_value": str(uuid.uuid4())})
    assert store_row(sandbox, "account", key)["_primarycontactid_value"] is None


# -- $batch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["CRLF", "LF"])
def test_batch_with_changeset_and_content_id_references(sandbox, dv: requests.Session, newline: str) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [
        http_part(f"GET {sandbox.api}/accounts({SEEDED_ACCOUNT})?$select=name"),
        changeset([
            http_part(f"POST {sandbox.api}/contacts", {"firstname": "Batch", "lastname": f"Contact {tag}"},
                      content_id="1"),
            http_part("POST /api/data/v9.2/accounts", {"name": f"Batch account {tag}",
                                                       "primarycontactid@odata.bind": "$1"}, content_id="2"),
            http_part("PATCH $1", {"jobtitle": "Referenced"}, content_id="3", headers={"If-Match": "*"}),
            http_part("PUT $2/telephone1", {"value": "555-0123"}, content_id="4"),
        ], f"changeset_{tag}"),
        http_part("GET accounts?$select=name&$filter=" + quote(f"name eq 'Batch account {tag}'")),
    ]
    resp = post_batch(dv, sandbox.api, parts, newline=newline)
    assert resp.status_code == 200, resp.text
    assert re.fullmatch(r"multipart/mixed; boundary=batchresponse_" + GUID, resp.headers["Content-Type"])
    answers = batch_responses(resp)
    assert [a["status"] for a in answers] == [200, 204, 204, 204, 204, 200]
    assert [a["content_id"] for a in answers] == [None, "1", "2", "3", "4", None]
    assert json.loads(answers[0]["body"])["name"] == "Adatum Corporation"
    contact = re.search(GUID, answers[1]["headers"]["odata-entityid"]).group(0)
    account = re.search(GUID, answers[2]["headers"]["odata-entityid"]).group(0)
    assert answers[2]["headers"]["location"] == answers[2]["headers"]["odata-entityid"]
    listed = json.loads(answers[5]["body"])["value"]
    assert [r["accountid"] for r in listed] == [account]

    assert store_row(sandbox, "contact", contact)["jobtitle"] == "Referenced"
    row = store_row(sandbox, "account", account)
    assert row["_primarycontactid_value"] == contact and row["telephone1"] == "555-0123"


def test_failing_changeset_rolls_back_every_operation(sandbox, dv: requests.Session) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [changeset([
        http_part(f"POST {sandbox.api}/accounts", {"name": f"Rollback {tag}"}, content_id="1"),
        http_part(f"POST {sandbox.api}/contacts", {"lastname": f"Rollback {tag}"}, content_id="2"),
        http_part(f"POST {sandbox.api}/accounts", {"name": "x" * 161}, content_id="3"),
    ], f"changeset_{tag}")]
    resp = post_batch(dv, sandbox.api, parts)
    assert resp.status_code == 400
    answers = batch_responses(resp)
    assert [a["status"] for a in answers] == [400]
    assert json.loads(answers[0]["body"])["error"]["code"] == "0x80044331"
    assert get(dv, sandbox.api, "accounts", **{"$filter": f"name eq 'Rollback {tag}'"})["value"] == []
    assert get(dv, sandbox.api, "contacts", **{"$filter": f"lastname eq 'Rollback {tag}'"})["value"] == []


def test_batch_stops_at_the_first_failure_without_continue_on_error(sandbox, dv: requests.Session) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [
        http_part(f"POST {sandbox.api}/accounts", {"name": f"Stop A {tag}"}),
        http_part(f"GET {sandbox.api}/accounts({uuid.uuid4()})"),
        http_part(f"POST {sandbox.api}/accounts", {"name": f"Stop B {tag}"}),
    ]
    resp = post_batch(dv, sandbox.api, parts)
    assert resp.status_code == 404
    assert [a["status"] for a in batch_responses(resp)] == [204, 404]
    assert len(get(dv, sandbox.api, "accounts", **{"$filter": f"name eq 'Stop A {tag}'"})["value"]) == 1
    assert get(dv, sandbox.api, "accounts", **{"$filter": f"name eq 'Stop B {tag}'"})["value"] == []


def test_batch_continue_on_error_answers_every_part(sandbox, dv: requests.Session) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [
        http_part(f"POST {sandbox.api}/accounts", {"name": f"Go A {tag}"}),
        http_part(f"GET {sandbox.api}/accounts({uuid.uuid4()})"),
        http_part(f"POST {sandbox.api}/accounts", {"Name": "bad property"}),
        http_part(f"POST {sandbox.api}/accounts", {"name": f"Go B {tag}"}),
    ]
    resp = post_batch(dv, sandbox.api, parts, prefer="odata.continue-on-error")
    assert resp.status_code == 200
    answers = batch_responses(resp)
    assert [a["status"] for a in answers] == [204, 404, 400, 204]
    assert json.loads(answers[1]["body"])["error"]["code"] == "0x80040217"
    assert json.loads(answers[2]["body"])["error"]["code"] == "0x0"
    names = {r["name"] for r in get(dv, sandbox.api, "accounts", **{"$filter": f"endswith(name, '{tag}')"})["value"]}
    assert names == {f"Go A {tag}", f"Go B {tag}"}


# -- bulk actions ----------------------------------------------------------------------------------
def test_create_update_upsert_multiple(sandbox, dv: requests.Session) -> None:
    tag = uuid.uuid4().hex[:6]
    kind = "Microsoft.Dynamics.CRM.account"
    created = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [
        {"@odata.type": kind, "name": f"Multi {tag} {i}", "accountnumber": f"M{tag}{i}"} for i in range(3)]})
    assert created.status_code == 200
    body = created.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    ids = body["Ids"]
    assert len(ids) == 3 and all(re.fullmatch(GUID, i) for i in ids)
    assert [store_row(sandbox, "account", i)["name"] for i in ids] == [f"Multi {tag} {i}" for i in range(3)]

    updated = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": [
        {"@odata.type": kind, "accountid": key, "telephone1": f"T{i}"} for i, key in enumerate(ids)]})
    assert updated.status_code == 204
    assert [store_row(sandbox, "account", i)["telephone1"] for i in ids] == ["T0", "T1", "T2"]

    upserted = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [
        {"@odata.type": kind, "@odata.id": f"accounts(accountnumber='M{tag}0')", "name": "Upserted existing"},
        {"@odata.type": kind, "@odata.id": f"accounts(accountnumber='M{tag}9')", "name": "Upserted new"},
    ]})
    assert upserted.status_code in (200, 204)
    assert store_row(sandbox, "account", ids[0])["name"] == "Upserted existing"
    new = get(dv, sandbox.api, f"accounts(accountnumber='M{tag}9')", **{"$select": "name,accountnumber"})
    assert new["name"] == "Upserted new" and new["accountnumber"] == f"M{tag}9"


def test_create_multiple_is_atomic(sandbox, dv: requests.Session) -> None:
    tag = uuid.uuid4().hex[:6]
    kind = "Microsoft.Dynamics.CRM.account"
    resp = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [
        {"@odata.type": kind, "name": f"Atomic {tag}"}, {"@odata.type": kind, "name": "y" * 161}]})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "0x80044331"
    assert get(dv, sandbox.api, "accounts", **{"$filter": f"name eq 'Atomic {tag}'"})["value"] == []


# -- service documents and metadata ----------------------------------------------------------------
def test_who_am_i(sandbox, dv: requests.Session) -> None:
    for path in ("WhoAmI()", "WhoAmI"):
        resp = dv.get(f"{sandbox.api}/{path}")
        assert resp.status_code == 200
        assert resp.json() == {
            "@odata.context": f"{sandbox.api}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": ROOT_BUSINESS_UNIT,
            "UserId": INTEGRATION_USER,
            "OrganizationId": sandbox.info["dataverse"]["organization_id"],
        }


def test_service_document_lists_every_entity_set(sandbox, dv: requests.Session) -> None:
    for url in (f"{sandbox.api}/", sandbox.api):
        resp = dv.get(url)
        assert resp.status_code == 200
        body = resp.json()
        assert body["@odata.context"] == f"{sandbox.api}/$metadata"
        names = {e["name"] for e in body["value"]}
        expected = {e.set_name for e in sandbox.sandbox.backends["dataverse"].schema}
        assert names == expected
        assert {"accounts", "contacts", "products", "transactioncurrencies", "systemusers", "teams",
                "businessunits", "uoms", "uomschedules", "bcbi_companies"} <= names
        assert all(e["kind"] == "EntitySet" and e["url"] == e["name"] for e in body["value"])


def test_metadata_is_well_formed_edmx_listing_every_entity_set(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/$metadata", headers={"Accept": "application/xml"})
    assert resp.status_code == 200
    assert "xml" in resp.headers["Content-Type"]
    root = ET.fromstring(resp.content)
    assert root.tag == f"{EDMX}Edmx" and root.get("Version") == "4.0"
    [schema] = root.iter(f"{EDM}Schema")
    assert schema.get("Namespace") == "Microsoft.Dynamics.CRM" and schema.get("Alias") == "mscrm"
    types = {t.get("Name"): t for t in schema.iter(f"{EDM}EntityType")}
    sets = {s.get("Name"): s.get("EntityType") for s in root.iter(f"{EDM}EntitySet")}
    service = {e["name"] for e in dv.get(f"{sandbox.api}/").json()["value"]}
    assert set(sets) == service
    for set_name, type_name in sets.items():
        local = type_name.split(".")[-1]
        assert local in types, f"{set_name} points at an undeclared type {type_name}"
    account = types["account"]
    assert [r.get("Name") for r in account.iter(f"{EDM}PropertyRef")] == ["accountid"]
    props = {p.get("Name"): p.get("Type") for p in account.iter(f"{EDM}Property")}
    assert props["name"] == "Edm.String" and props["_primarycontactid_value"] == "Edm.Guid"
    assert props["versionnumber"] == "Edm.Int64" and props["modifiedon"] == "Edm.DateTimeOffset"
    navs = {n.get("Name") for n in account.iter(f"{EDM}NavigationProperty")}
    assert {"primarycontactid", "contact_customer_accounts"} <= navs
    assert any(f.get("Name") == "WhoAmI" for f in root.iter(f"{EDM}Function"))


def test_entity_definitions_filter_and_key_forms(sandbox, dv: requests.Session) -> None:
    filtered = get(dv, sandbox.api, "EntityDefinitions", **{
        "$select": "LogicalName,EntitySetName,PrimaryIdAttribute", "$filter": "LogicalName eq 'account'"})
    [entry] = filtered["value"]
    assert entry["LogicalName"] == "account" and entry["EntitySetName"] == "accounts"
    assert entry["PrimaryIdAttribute"] == "accountid" and re.fullmatch(GUID, entry["MetadataId"])
    assert get(dv, sandbox.api, "EntityDefinitions", **{"$filter": "LogicalName eq 'nosuchtable'"})["value"] == []

    keyed = get(dv, sandbox.api, "EntityDefinitions(LogicalName='contact')",
                **{"$select": "EntitySetName,PrimaryIdAttribute"})
    assert keyed["EntitySetName"] == "contacts" and keyed["PrimaryIdAttribute"] == "contactid"
    assert "value" not in keyed and "MetadataId" in keyed
    assert dv.get(f"{sandbox.api}/EntityDefinitions(LogicalName='nosuchtable')").status_code == 404


def test_entity_definitions_keys_publish_the_account_number_key(sandbox, dv: requests.Session) -> None:
    keys = get(dv, sandbox.api, "EntityDefinitions(LogicalName='account')/Keys")["value"]
    assert [(k["SchemaName"], k["KeyAttributes"]) for k in keys] == [("sbx_accountnumber_key", ["accountnumber"])]
    assert keys[0]["EntityKeyIndexStatus"] == "Active"


def test_entity_definitions_picklist_options(sandbox, dv: requests.Session) -> None:
    body = get(dv, sandbox.api,
               "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
               **{"$select": "LogicalName", "$expand": "OptionSet($select=Options)"})
    attributes = {a["LogicalName"]: a for a in body["value"]}
    options = {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"]
               for o in attributes["customertypecode"]["OptionSet"]["Options"]}
    assert options[1] == "Competitor" and options[3] == "Customer" and options[11] == "Vendor"
    assert set(range(1, 13)) <= set(options)
    assert "name" not in attributes and "statecode" not in attributes


# -- change tracking -------------------------------------------------------------------------------
def test_change_tracking_delta(sandbox, dv: requests.Session) -> None:
    to_update = create(dv, sandbox.api, "accounts", {"name": unique("Track update")})
    to_delete = create(dv, sandbox.api, "accounts", {"name": unique("Track delete")})

    initial = dv.get(f"{sandbox.api}/accounts", params={"$select": "name,telephone1"},
                     headers={"Prefer": "odata.track-changes"})
    assert initial.status_code == 200
    assert "odata.track-changes" in initial.headers["Preference-Applied"]
    body = initial.json()
    assert "@odata.nextLink" not in body
    delta_link = body["@odata.deltaLink"]
    assert delta_link.startswith(f"{sandbox.api}/accounts?") and "$deltatoken=" in delta_link
    assert "$select=name,telephone1" in delta_link
    assert {to_update, to_delete} <= {r["accountid"] for r in body["value"]}

    created = create(dv, sandbox.api, "accounts", {"name": unique("Track create")})
    assert dv.patch(f"{sandbox.api}/accounts({to_update})", json={"telephone1": "555-0001"}).status_code == 204
    assert dv.delete(f"{sandbox.api}/accounts({to_delete})").status_code == 204

    delta = dv.get(delta_link)
    assert delta.status_code == 200
    changes = delta.json()
    assert changes["@odata.context"] == f"{sandbox.api}/$metadata#accounts(name,telephone1)/$delta"
    rows, deleted = changes["value"][:2], changes["value"][2:]
    assert [r["accountid"] for r in rows] == [created, to_update]
    assert rows[1]["telephone1"] == "555-0001" and "@odata.etag" in rows[1]
    assert deleted == [{"@odata.context": f"{sandbox.api}/$metadata#accounts/$deletedEntity",
                        "id": to_delete, "reason": "deleted"}]

    again = dv.get(changes["@odata.deltaLink"])
    assert again.status_code == 200 and again.json()["value"] == []
