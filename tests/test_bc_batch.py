"""BC JSON `$batch`: per-request statuses, company addressing, `Isolation: snapshot`
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/use-odata-batch).

State is checked in the store after each batch: an atomic batch with one failure leaves no trace,
a plain one keeps what succeeded before (and after) the failure.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

if TYPE_CHECKING:
    from tests.conftest import RunningSandbox

pytestmark = pytest.mark.storage

MISSING = "5de545bc-f6f9-ef11-9344-6045bdc8c234"


@pytest.fixture(scope="module")
def batch_url(sandbox: RunningSandbox) -> str:
    return f"{sandbox.bc_api}/$batch"


def stored(sandbox: RunningSandbox, set_name: str, **where: Any) -> list[dict[str, Any]]:
    backend = sandbox.sandbox.backends["bc"]
    table = backend.store.table(backend.schema.by_set(set_name))
    stmt = sa.select(table)
    for name, value in where.items():
        stmt = stmt.where(table.c[name] == value)
    with backend.store.read() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def post_batch(bc: requests.Session, url: str, requests_: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    resp = bc.post(url, json={"requests": requests_}, **kwargs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"responses"}
    assert len(body["responses"]) == len(requests_)
    return body["responses"]


def test_mixed_success_and_failure(sandbox: RunningSandbox, bc: requests.Session, batch_url: str) -> None:
    cid = sandbox.companies[0]
    existing = bc.post(f"{sandbox.bc_api}/companies({cid})/customers", json={"displayName": "Batch Target"}).json()
    tag = uuid.uuid4().hex[:8]
    responses = post_batch(bc, batch_url, [
        {"id": "1", "method": "POST", "url": f"companies({cid})/customers",
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": f"Batch New {tag}"}},
        {"id": "2", "method": "GET", "url": f"companies({cid})/customers({existing['id']})"},
        {"id": "3", "method": "PATCH", "url": f"companies({cid})/customers({existing['id']})",
         "headers": {"If-Match": existing["@odata.etag"]}, "body": {"city": "Batchville"}},
        {"id": "4", "method": "PATCH", "url": f"companies({cid})/customers({existing['id']})",
         "body": {"city": "No If-Match"}},
        {"id": "5", "method": "GET", "url": f"companies({cid})/customers({MISSING})"},
        {"id": "6", "method": "POST", "url": f"companies({cid})/items",
         "body": {"displayName": "Bad Type", "type": "Invalid Type"}},
        {"method": "GET", "url": f"companies({cid})/customers?$top=2&$select=id"},
        {"id": "8", "method": "DELETE", "url": f"companies({cid})/customers({existing['id']})"},
    ])
    assert [r["status"] for r in responses] == [201, 200, 200, 400, 404, 400, 200, 204]
    assert [r["id"] for r in responses] == ["1", "2", "3", "4", "5", "6", None, "8"]
    created, got, patched, no_match, missing, bad_enum, listed, deleted = responses
    assert created["body"]["displayName"] == f"Batch New {tag}"
    assert created["headers"]["location"].endswith(f"/customers({created['body']['id']})")
    assert created["headers"]["content-type"].startswith("application/json")
    assert got["body"]["id"] == existing["id"]
    assert patched["body"]["city"] == "Batchville" and patched["body"]["@odata.etag"] != existing["@odata.etag"]
    assert no_match["body"]["error"]["code"] == "BadRequest_InvalidToken"
    assert "  CorrelationId:  " in no_match["body"]["error"]["message"]
    assert missing["body"]["error"]["code"] == "BadRequest_ResourceNotFound"
    assert bad_enum["body"]["error"]["message"].startswith(
        "'Invalid Type' is not an option. The existing options are: Inventory,Service,Non-Inventory")
    assert len(listed["body"]["value"]) == 2
    assert "body" not in deleted
    # state: the new customer exists, the patched-then-deleted one is gone, the bad item never was
    assert len(stored(sandbox, "customers", displayName=f"Batch New {tag}")) == 1
    assert stored(sandbox, "customers", id=existing["id"]) == []
    assert stored(sandbox, "items", displayName="Bad Type") == []


def test_a_failed_request_leaves_nothing_of_its_own(sandbox: RunningSandbox, bc: requests.Session,
                                                     batch_url: str) -> None:
    """The requests of a plain batch share one transaction, each in a savepoint: a create that fails at
    its insert (an id already taken) gives its customer number back, so the next create takes it."""
    cid = sandbox.companies[0]
    url = f"{sandbox.bc_api}/companies({cid})/customers"
    first = bc.post(url, json={"displayName": "Series A"}).json()
    second = bc.post(url, json={"displayName": "Series B"}).json()
    tag = uuid.uuid4().hex[:8]
    responses = post_batch(bc, batch_url, [
        {"id": "taken", "method": "POST", "url": f"companies({cid})/customers",
         "headers": {"Content-Type": "application/json"}, "body": {"id": first["id"], "displayName": f"Dup {tag}"}},
        {"id": "next", "method": "POST", "url": f"companies({cid})/customers",
         "headers": {"Content-Type": "application/json"}, "body": {"displayName": f"Next {tag}"}},
    ])
    assert [r["status"] for r in responses] == [409, 201]

    def digits(number: str) -> int:
        return int("".join(ch for ch in number if ch.isdigit()))

    step = digits(second["number"]) - digits(first["number"])
    assert digits(responses[1]["body"]["number"]) == digits(second["number"]) + step
    assert stored(sandbox, "customers", displayName=f"Dup {tag}") == []
    assert [r["number"] for r in stored(sandbox, "customers", displayName=f"Next {tag}")] == [
        responses[1]["body"]["number"]]


@pytest.mark.parametrize("how", ["Company header (name)", "CompanyId header", "company on the batch URL (id)",
                                 "company on the batch URL (name)", "company in the inner URL"])
def test_company_addressing(sandbox: RunningSandbox, bc: requests.Session, batch_url: str, how: str) -> None:
    second = sandbox.info["bc"]["companies"][1]
    tag = f"Addressed {uuid.uuid4().hex[:6]}"
    item: dict[str, Any] = {"id": "a", "method": "POST", "url": "customers", "body": {"displayName": tag}}
    url = batch_url
    if how == "Company header (name)":
        item["headers"] = {"Company": second["name"]}
    elif how == "CompanyId header":
        item["headers"] = {"CompanyId": second["id"]}
    elif how == "company on the batch URL (id)":
        url = f"{batch_url}?company={second['id']}"
    elif how == "company on the batch URL (name)":
        url = f"{batch_url}?company={second['name']}"
    else:
        item["url"] = f"customers?company={second['id']}"
    read = {"id": "b", "method": "GET", "url": item["url"].split("?")[0] + f"?$filter=displayName eq '{tag}'",
            "headers": item.get("headers", {})}
    if how == "company in the inner URL":
        read["url"] = f"customers?company={second['id']}&$filter=displayName eq '{tag}'"
    responses = post_batch(bc, url, [item, read])
    assert [r["status"] for r in responses] == [201, 200], responses
    rows = stored(sandbox, "customers", displayName=tag)
    assert [r["companyId"] for r in rows] == [second["id"]]
    assert [r["id"] for r in responses[1]["body"]["value"]] == [rows[0]["id"]]


def test_inner_urls_relative_and_absolute(sandbox: RunningSandbox, bc: requests.Session, batch_url: str) -> None:
    cid = sandbox.companies[0]
    root_path = sandbox.bc_api.split("://", 1)[1].split("/", 1)[1]
    responses = post_batch(bc, batch_url, [
        {"id": "rel", "method": "GET", "url": f"companies({cid})/currencies?$select=code"},
        {"id": "abs-path", "method": "GET", "url": f"/{root_path}/companies({cid})/currencies?$select=code"},
        {"id": "abs-url", "method": "GET", "url": f"{sandbox.bc_api}/companies({cid})/currencies?$select=code"},
        {"id": "companies", "method": "GET", "url": "companies"},
    ])
    assert [r["status"] for r in responses] == [200, 200, 200, 200]
    codes = [[c["code"] for c in r["body"]["value"]] for r in responses[:3]]
    assert codes[0] == codes[1] == codes[2] and codes[0]
    assert [c["id"] for c in responses[3]["body"]["value"]] == sandbox.companies


def test_snapshot_isolation_rolls_everything_back(sandbox: RunningSandbox, bc: requests.Session,
                                                  batch_url: str) -> None:
    cid = sandbox.companies[0]
    target = bc.post(f"{sandbox.bc_api}/companies({cid})/customers", json={"displayName": "Snapshot Target"}).json()
    tag = uuid.uuid4().hex[:8]
    responses = post_batch(bc, batch_url, [
        {"id": "1", "method": "POST", "url": f"companies({cid})/customers", "body": {"displayName": f"Snap A {tag}"}},
        {"id": "2", "method": "PATCH", "url": f"companies({cid})/customers({target['id']})",
         "headers": {"If-Match": "*"}, "body": {"city": "Rolled"}},
        {"id": "3", "method": "POST", "url": f"companies({cid})/customers", "body": {"type": "Company"}},
        {"id": "4", "method": "POST", "url": f"companies({cid})/customers", "body": {"displayName": f"Snap B {tag}"}},
    ], headers={"Isolation": "snapshot"})
    assert [r["status"] for r in responses] == [201, 200, 400, 201]
    assert responses[2]["body"]["error"]["code"] == "Application_DialogException"
    assert stored(sandbox, "customers", displayName=f"Snap A {tag}") == []
    assert stored(sandbox, "customers", displayName=f"Snap B {tag}") == []
    row = stored(sandbox, "customers", id=target["id"])[0]
    assert not row["city"]
    fresh = bc.get(f"{sandbox.bc_api}/companies({cid})/customers({target['id']})").json()
    assert fresh["@odata.etag"] == target["@odata.etag"]
    # the same batch without isolation keeps what succeeded
    responses = post_batch(bc, batch_url, [
        {"id": "1", "method": "POST", "url": f"companies({cid})/customers", "body": {"displayName": f"Snap A {tag}"}},
        {"id": "2", "method": "PATCH", "url": f"companies({cid})/customers({target['id']})",
         "headers": {"If-Match": "*"}, "body": {"city": "Kept"}},
        {"id": "3", "method": "POST", "url": f"companies({cid})/customers", "body": {"type": "Company"}},
        {"id": "4", "method": "POST", "url": f"companies({cid})/customers", "body": {"displayName": f"Snap B {tag}"}},
    ])
    assert [r["status"] for r in responses] == [201, 200, 400, 201]
    assert len(stored(sandbox, "customers", displayName=f"Snap A {tag}")) == 1
    assert len(stored(sandbox, "customers", displayName=f"Snap B {tag}")) == 1
    assert stored(sandbox, "customers", id=target["id"])[0]["city"] == "Kept"


def test_snapshot_isolation_commits_when_all_succeed(sandbox: RunningSandbox, bc: requests.Session,
                                                     batch_url: str) -> None:
    cid = sandbox.companies[0]
    tag = uuid.uuid4().hex[:8]
    responses = post_batch(bc, batch_url, [
        {"id": str(n), "method": "POST", "url": f"companies({cid})/vendors", "body": {"displayName": f"V{n} {tag}"}}
        for n in range(5)], headers={"Isolation": "snapshot"})
    assert [r["status"] for r in responses] == [201] * 5
    numbers = [r["body"]["number"] for r in responses]
    assert len(set(numbers)) == 5  # the number series advances inside one transaction
    for n in range(5):
        assert len(stored(sandbox, "vendors", displayName=f"V{n} {tag}")) == 1


def test_hundred_requests_are_allowed_and_more_are_refused(sandbox: RunningSandbox, bc: requests.Session,
                                                           batch_url: str) -> None:
    cid = sandbox.companies[0]
    item = {"method": "GET", "url": f"companies({cid})/currencies?$top=1&$select=code"}
    responses = post_batch(bc, batch_url, [dict(item, id=str(n)) for n in range(100)])
    assert {r["status"] for r in responses} == {200}
    resp = bc.post(batch_url, json={"requests": [dict(item, id=str(n)) for n in range(101)]})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "BadRequest" and "100" in error["message"]
    assert resp.headers["request-id"] in error["message"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"requests": {}}', b'{"requests": "x"}', b"{}"])
def test_malformed_batch_bodies(bc: requests.Session, batch_url: str, body: bytes) -> None:
    resp = bc.post(batch_url, data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "BadRequest"


@pytest.mark.parametrize("item", [{"url": "companies"}, {"method": "GET"}, "just text", {"method": 1, "url": 2},
                                  {"method": "GET", "url": "$batch"}])
def test_malformed_inner_requests_fail_alone(sandbox: RunningSandbox, bc: requests.Session, batch_url: str,
                                             item: Any) -> None:
    responses = post_batch(bc, batch_url, [item, {"id": "ok", "method": "GET", "url": "companies"}])
    assert responses[0]["status"] == 400
    assert responses[0]["body"]["error"]["code"] == "BadRequest"
    assert responses[1]["status"] == 200


def test_batch_needs_post(bc: requests.Session, batch_url: str) -> None:
    resp = bc.get(batch_url)
    assert resp.status_code in (404, 405)
    assert resp.json()["error"]["code"].startswith("BadRequest")
