"""The Dataverse errors over real HTTPS, plus the concurrency and paging limits
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors, https://learn.microsoft.com/power-apps/developer/data-platform/reference/web-service-error-codes).

One table-driven test walks every applicable row: the request, the documented status, the `code`
in the `{"error": {...}}` envelope and a fragment of the message. Every row is a failing request
aimed at one record, and the test checks that the record is unchanged afterwards.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.hostile import batch_responses

pytestmark = pytest.mark.storage

API_ROOT = "/api/data/v9.2"
MISSING = "5b4ced1c-88e1-ee11-904c-6045bd05e9d4"



# -- helpers ---------------------------------------------------------------------------------------
def batch_body(parts: list[str], boundary: str = "batch_errors") -> tuple[bytes, str]:
    """A multipart/mixed $batch body from already-rendered parts (CRLF line endings)."""
    text = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return text.encode(), f"multipart/mixed; boundary={boundary}"


def http_part(request_line: str, body: str | None = None, content_id: str | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id:
        head += f"Content-ID: {content_id}\r\n"
    inner = f"{request_line} HTTP/1.1\r\n"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\r\n"
    return f"{head}\r\n{inner}\r\n{body or ''}\r\n"


def changeset(parts: list[str], boundary: str = "changeset_errors") -> str:
    inner = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"


def assert_envelope(body: Any) -> dict[str, str]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), body
    return error


# -- the table -------------------------------------------------------------------------------------
@dataclass
class Row:
    """One situation of the error table. Strings may hold {acct}, {number}, {other_number}, {missing}."""

    situation: str
    method: str
    path: str
    status: int
    code: str | None  # None: the table documents no code (only status and message)
    fragment: str
    body: Any = None
    headers: dict[str, str | None] = field(default_factory=dict)
    batch: Callable[[dict[str, str]], list[str]] | None = None


def _undeclared_reference(_: dict[str, str]) -> list[str]:
    return [changeset([http_part("PATCH $1", '{"name": "never"}', content_id="1")])]


ROWS = [
    Row("record not found: GET", "GET", "accounts({missing})", 404, "0x80040217",
        "Entity 'account' With Id = {missing} Does Not Exist"),
    Row("record not found: PATCH with If-Match *", "PATCH", "accounts({missing})", 404, "0x80040217",
        "Does Not Exist", body={"name": "x"}, headers={"If-Match": "*"}),
    Row("record not found: DELETE", "DELETE", "accounts({missing})", 404, "0x80040217", "Does Not Exist"),
    Row("unknown entity set (case-sensitive)", "GET", "Accounts", 404, "0x8006088a",
        "Resource not found for the segment 'Accounts'."),
    Row("unknown function (case-sensitive)", "GET", "whoami()", 404, "0x8006088a", "Resource not found for the segment"),
    Row("wrong method for a function", "POST", "WhoAmI", 404, "", "No HTTP resource was found that matches the request URI",
        body={}),
    Row("unknown property in $select", "GET", "accounts?$select=Name", 400, "0x0",
        "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'."),
    Row("unknown property in $filter", "GET", "accounts?$filter=Name eq 'x'", 400, "0x0",
        "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'."),
    Row("unknown property in $orderby", "GET", "accounts?$orderby=Name desc", 400, "0x0",
        "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'."),
    Row("unknown property in $select of one record", "GET", "accounts({acct})?$select=Name", 400, "0x0",
        "Could not find a property named 'Name'"),
    Row("$ref expand on a collection navigation", "GET", "accounts?$expand=contact_customer_accounts/$ref", 400,
        "0x80060888", "Expand with $ref is only supported on lookup type navigation property."),
    Row("unknown property in POST body", "POST", "accounts", 400, "0x0",
        "Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.account'", body={"Name": "x"}),
    Row("unknown property in PATCH body", "PATCH", "accounts({acct})", 400, "0x0",
        "Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.account'", body={"Name": "x"}),
    Row("bad navigation in @odata.bind (polymorphic column name)", "POST", "contacts", 400, "0x80048d19",
        "An undeclared property 'parentcustomerid' which only has property annotations",
        body={"lastname": "Bind", "parentcustomerid@odata.bind": "/accounts({acct})"}),
    Row("bad navigation in @odata.bind on update", "PATCH", "accounts({acct})", 400, "0x80048d19",
        "An undeclared property 'PrimaryContactId'", body={"PrimaryContactId@odata.bind": "/contacts({missing})"}),
    Row("string too long on create", "POST", "accounts", 400, "0x80044331",
        "The length of the 'name' attribute of the 'account' entity exceeded the maximum allowed length of '160'.",
        body={"name": "n" * 161}),
    Row("string too long on update", "PATCH", "accounts({acct})", 400, "0x80044331",
        "The length of the 'accountnumber' attribute of the 'account' entity exceeded the maximum allowed length "
        "of '20'.", body={"accountnumber": "9" * 21}),
    Row("duplicate primary key on create", "POST", "accounts", 412, "0x80040237",
        "A record with matching key values already exists.", body={"accountid": "{acct}", "name": "Twin"}),
    Row("If-None-Match * on an existing record", "PATCH", "accounts({acct})", 412, "0x80040237",
        "A record with matching key values already exists.", body={"name": "x"}, headers={"If-None-Match": "*"}),
    Row("If-None-Match * on an existing alternate key", "PATCH", "accounts(accountnumber='{number}')", 412,
        "0x80040237", "A record with matching key values already exists.", body={"name": "x"},
        headers={"If-None-Match": "*"}),
    Row("alternate-key violation on create", "POST", "accounts", 412, "0x80060892",
        "Entity Key sbx_accountnumber_key violated", body={"name": "Clash", "accountnumber": "{number}"}),
    Row("alternate-key violation on update", "PATCH", "accounts({acct})", 412, "0x80060892",
        "A record with the same value for accountnumber already exists", body={"accountnumber": "{other_number}"}),
    Row("stale If-Match on PATCH", "PATCH", "accounts({acct})", 412, "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
        body={"name": "late"}, headers={"If-Match": 'W/"1"'}),
    Row("stale If-Match on DELETE", "DELETE", "accounts({acct})", 412, "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
        headers={"If-Match": 'W/"1"'}),
    Row("batch reference to an undeclared Content-ID", "POST", "$batch", 400, None,
        "Content-ID Reference: '$1' does not exist in the batch context.", batch=_undeclared_reference),
    Row("change tracking with $filter", "GET", "accounts?$select=name&$filter=name ne null", 400, None,
        'The "$filter" query parameter isn\'t supported when Change Tracking is enabled.',
        headers={"Prefer": "odata.track-changes"}),
    Row("change tracking with $orderby", "GET", "accounts?$select=name&$orderby=name", 400, None,
        'The "$orderby" query parameter isn\'t supported when Change Tracking is enabled.',
        headers={"Prefer": "odata.track-changes"}),
    Row("change tracking with $top", "GET", "accounts?$select=name&$top=3", 400, None,
        'The "$top" query parameter isn\'t supported when Change Tracking is enabled.',
        headers={"Prefer": "odata.track-changes"}),
    Row("$skip is not supported", "GET", "accounts?$skip=5", 400, None, "$skip"),
    Row("401: no token", "GET", "accounts({acct})", 401, None, "", headers={"Authorization": None}),
    Row("401: malformed token", "GET", "accounts({acct})", 401, None, "", headers={"Authorization": "Bearer abc.def"}),
    Row("401: not a bearer scheme", "GET", "accounts({acct})", 401, None, "",
        headers={"Authorization": "Basic dXNlcjpwYXNz"}),
]


def _fill(value: Any, ctx: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in ctx.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {_fill(k, ctx): _fill(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    return value


@pytest.fixture(scope="module")
def ctx(sandbox, dv: requests.Session) -> dict[str, str]:
    """Two accounts with distinct alternate keys: `acct` is the target of every failing row."""
    suffix = uuid.uuid4().hex[:8].upper()
    values = {"missing": MISSING, "number": f"ERR-{suffix}", "other_number": f"ERR2-{suffix}"}
    for name, number in (("acct", values["number"]), ("other", values["other_number"])):
        resp = dv.post(f"{sandbox.api}/accounts", json={"name": f"Error table {name}", "accountnumber": number})
        assert resp.status_code == 204, resp.text
        values[name] = resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    return values


@pytest.mark.parametrize("row", ROWS, ids=[r.situation for r in ROWS])
def test_error_table(sandbox, dv: requests.Session, ctx: dict[str, str], row: Row) -> None:
    before = dv.get(f"{sandbox.api}/accounts({ctx['acct']})").json()
    headers = dict(_fill(row.headers, ctx))
    kwargs: dict[str, Any] = {}
    if row.batch is not None:
        body, content_type = batch_body(row.batch(ctx))
        kwargs["data"] = body
        headers["Content-Type"] = content_type
    elif row.body is not None:
        kwargs["json"] = _fill(row.body, ctx)
    resp = dv.request(row.method, f"{sandbox.api}/{_fill(row.path, ctx)}", headers=headers, **kwargs)

    assert resp.status_code == row.status, resp.text
    assert resp.headers["OData-Version"] == "4.0"
    if row.batch is not None:
        assert resp.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
        [(status, part_headers, part_body)] = batch_responses(resp)
        assert status == row.status
        assert part_headers["content-type"].startswith("application/json")
        error = assert_envelope(json.loads(part_body))
    else:
        assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
        error = assert_envelope(resp.json())
    if row.code is not None:
        assert error["code"] == row.code, error
    assert _fill(row.fragment, ctx) in error["message"], error
    if row.status == 401:
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer authorization_uri=")
        assert f"resource_id={sandbox.info['dataverse']['url']}/" in challenge

    after = dv.get(f"{sandbox.api}/accounts({ctx['acct']})").json()
    assert after == before, "a failing request must leave the record as it was"
    if row.method == "POST" and isinstance(row.body, dict):
        for column, set_name in (("name", "accounts"), ("lastname", "contacts")):
            if isinstance(row.body.get(column), str):
                literal = row.body[column].replace("'", "''")
                found = dv.get(f"{sandbox.api}/{set_name}", params={"$filter": f"{column} eq '{literal}'"})
                assert found.json()["value"] == [], "a rejected create must not leave a row"


def test_rejected_creates_leave_no_rows(sandbox, dv: requests.Session, ctx: dict[str, str]) -> None:
    """The table's failing POSTs used these names; none of them may have produced a row."""
    for name in ("Twin", "Clash", "n" * 161):
        resp = dv.get(f"{sandbox.api}/accounts", params={"$filter": f"name eq '{name}'", "$select": "name"})
        assert resp.status_code == 200
        assert resp.json()["value"] == []
    contacts = dv.get(f"{sandbox.api}/contacts", params={"$filter": "lastname eq 'Bind'"}).json()["value"]
    assert contacts == []


# -- optimistic concurrency under contention -------------------------------------------------------
def test_exactly_one_of_16_concurrent_patches_with_the_same_etag_wins(sandbox, dv: requests.Session) -> None:
    created = dv.post(f"{sandbox.api}/accounts", json={"name": "Contended"},
                      headers={"Prefer": "return=representation"})
    assert created.status_code == 201
    record = created.json()
    key, tag, version = record["accountid"], record["@odata.etag"], record["versionnumber"]
    assert tag == f'W/"{version}"'

    writers = 16
    barrier = threading.Barrier(writers)
    token = sandbox.token()
    results: list[tuple[int, str, dict]] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        with requests.Session() as session:
            session.verify = sandbox.ca_bundle
            barrier.wait(timeout=30)
            resp = session.patch(
                f"{sandbox.api}/accounts({key})", json={"name": f"Writer {i}"},
                headers={"Authorization": f"Bearer {token}", "If-Match": tag}, timeout=60,
            )
            body = resp.json() if resp.content else {}
            with lock:
                results.append((resp.status_code, f"Writer {i}", body))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)

    statuses = sorted(status for status, _, _ in results)
    assert statuses == [204] + [412] * (writers - 1)
    for status, _, body in results:
        if status == 412:
            assert body["error"]["code"] == "0x80060882"
    [winner] = [name for status, name, _ in results if status == 204]
    after = dv.get(f"{sandbox.api}/accounts({key})", params={"$select": "name,versionnumber"}).json()
    assert after["name"] == winner
    assert after["versionnumber"] == version + 1
    assert after["@odata.etag"] == f'W/"{version + 1}"'


# -- paging and count limits (needs more than 5000 rows) --------------------------------------------
BULK_ROWS = 5100
BULK_PREFIX = "Bulk limit"


@pytest.fixture(scope="module")
def many_accounts(sandbox, dv: requests.Session) -> int:
    """Create 5,100 accounts with CreateMultiple (1,000 per request); returns the total row count."""
    for start in range(0, BULK_ROWS, 1000):
        targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"{BULK_PREFIX} {i:05d}"}
                   for i in range(start, min(start + 1000, BULK_ROWS))]
        resp = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["Ids"]) == len(targets)
    store = sandbox.sandbox.backends["dataverse"].store
    entity = sandbox.sandbox.backends["dataverse"].entity("account")
    with store.read() as conn:
        total = store.count(conn, entity)
    assert total > 5000
    return total


def test_maxpagesize_above_5000_is_clamped(sandbox, dv: requests.Session, many_accounts: int) -> None:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$select": "name"},
                  headers={"Prefer": "odata.maxpagesize=10000"})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["value"]) == 5000
    assert body["@odata.nextLink"].startswith(f"{sandbox.api}/accounts?")
    assert resp.headers["Preference-Applied"] == "odata.maxpagesize=5000"
    rest = dv.get(body["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=10000"}).json()
    assert len(rest["value"]) == many_accounts - 5000
    assert "@odata.nextLink" not in rest
    seen = {r["accountid"] for r in body["value"]} | {r["accountid"] for r in rest["value"]}
    assert len(seen) == many_accounts


def test_default_page_is_5000(sandbox, dv: requests.Session, many_accounts: int) -> None:
    body = dv.get(f"{sandbox.api}/accounts", params={"$select": "name"}).json()
    assert len(body["value"]) == 5000
    assert "@odata.nextLink" in body


def test_top_above_5000_still_pages_at_5000(sandbox, dv: requests.Session, many_accounts: int) -> None:
    body = dv.get(f"{sandbox.api}/accounts", params={"$select": "name", "$top": "5050"}).json()
    assert len(body["value"]) <= 5000


def test_odata_count_is_capped_at_5000(sandbox, dv: requests.Session, many_accounts: int) -> None:
    resp = dv.get(f"{sandbox.api}/accounts", params={"$select": "name", "$count": "true", "$top": "2"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["@odata.count"] == 5000
    assert len(body["value"]) == 2

    annotated = dv.get(
        f"{sandbox.api}/accounts", params={"$select": "name", "$count": "true", "$top": "1"},
        headers={"Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount,'
                           'Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"'},
    ).json()
    assert annotated["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5000
    assert annotated["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True

    small = dv.get(f"{sandbox.api}/accounts", params={"$count": "true", "$filter": f"name eq '{BULK_PREFIX} 00007'"})
    assert small.json()["@odata.count"] == 1


def test_count_path_is_capped_at_5000(sandbox, dv: requests.Session, many_accounts: int) -> None:
    resp = dv.get(f"{sandbox.api}/accounts/$count")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.content.decode("utf-8-sig") == "5000"
