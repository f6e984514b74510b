"""The BC API v2.0 error table (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/dynamics-error-codes) and the If-Match rules, over real
HTTPS with real tokens.

One table-driven test walks every applicable row: the request, the documented status, the `code`
in the `{"error": {"code", "message"}}` envelope, a fragment of the message, the
`  CorrelationId:  <guid>.` tail and the `request-id` header carrying the same guid. Rows that
aim at the shared probe customer also check it is unchanged afterwards.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

if TYPE_CHECKING:
    from tests.conftest import RunningSandbox

pytestmark = pytest.mark.storage

MISSING = "5de545bc-f6f9-ef11-9344-6045bdc8c234"
ZERO = "00000000-0000-0000-0000-000000000000"
CORRELATION = re.compile(r"^(?P<text>.*)  CorrelationId:  (?P<id>[0-9a-f-]{36})\.$", re.S)


def assert_bc_error(resp: requests.Response, status: int, code: str, fragment: str = "") -> str:
    """The BC error envelope; returns the message text without the correlation tail."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    m = CORRELATION.match(body["error"]["message"])
    assert m, body["error"]["message"]
    assert str(uuid.UUID(m["id"])) == m["id"]
    assert resp.headers["request-id"] == m["id"]
    assert fragment in m["text"], m["text"]
    return m["text"]


# -- module state -----------------------------------------------------------------------------------
@dataclass
class Probe:
    """One customer the failing rows aim at, plus an ETag that went stale by a later PATCH."""

    url: str
    stale_etag: str
    etag: str
    body: dict[str, Any]


@pytest.fixture(scope="module")
def company(sandbox: RunningSandbox) -> str:
    return f"{sandbox.bc_api}/companies({sandbox.companies[0]})"


@pytest.fixture(scope="module")
def probe(bc: requests.Session, company: str) -> Probe:
    created = bc.post(f"{company}/customers", json={"displayName": "Error Probe"})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    changed = bc.patch(url, json={"city": "Seattle"}, headers={"If-Match": created.json()["@odata.etag"]})
    assert changed.status_code == 200, changed.text
    return Probe(url, created.json()["@odata.etag"], changed.json()["@odata.etag"], changed.json())


@contextmanager
def no_setup(_sandbox: RunningSandbox) -> Iterator[None]:
    yield


@contextmanager
def throttle(sandbox: RunningSandbox) -> Iterator[None]:
    """Lower the BC request limit below what the module already spent, then put it back."""
    before = sandbox.control("GET", "limits", service="bc")
    assert before.status_code == 200, before.text
    config = before.json()
    config = config.get("config", config)
    lowered = sandbox.control("PUT", "limits", service="bc", json={"max_requests": 1, "window_seconds": 600})
    assert lowered.status_code == 200, lowered.text
    try:
        yield
    finally:
        restored = sandbox.control("PUT", "limits", service="bc", json={
            "max_requests": config["max_requests"], "window_seconds": config["window_seconds"]})
        assert restored.status_code == 200, restored.text
        assert sandbox.control("POST", "limits/reset", service="bc").status_code == 200


@dataclass
class Row:
    situation: str
    method: str
    path: str  # {company} {root} {probe} {bc} placeholders
    status: int
    code: str
    fragment: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    setup: Callable[[RunningSandbox], Any] = no_setup
    token: str | None = None  # "garbage" sends a bad bearer token
    touches_probe: bool = False


ROWS = [
    Row("key not found", "GET", "{company}/customers(" + MISSING + ")", 404, "BadRequest_ResourceNotFound",
        "Resource not found for the segment 'customers'."),
    Row("key not found on PATCH", "PATCH", "{company}/customers(" + MISSING + ")", 404,
        "BadRequest_ResourceNotFound", "Resource not found for the segment 'customers'.",
        json={"displayName": "x"}, headers={"If-Match": "*"}),
    Row("key not found on DELETE", "DELETE", "{company}/customers(" + MISSING + ")", 404,
        "BadRequest_ResourceNotFound", "Resource not found for the segment 'customers'."),
    Row("unknown segment", "GET", "{company}/customerz", 404, "BadRequest_ResourceNotFound",
        "Resource not found for the segment 'customerz'."),
    Row("unknown company", "GET", "{root}/companies(" + MISSING + ")/customers", 404,
        "BadRequest_ResourceNotFound", "'companies'"),
    Row("unknown URL outside the API", "GET", "{bc}/nothing/here", 404, "BadRequest_NotFound",
        "No HTTP resource was found that matches the request URI"),
    Row("bad GUID key", "GET", "{company}/customers(not-a-guid)", 400, "BadRequest_NotFound",
        "Bad Request - Error in query syntax."),
    Row("quoted GUID key", "GET", "{company}/customers('" + MISSING + "')", 400, "BadRequest_NotFound",
        "Bad Request - Error in query syntax."),
    Row("bad company key", "GET", "{root}/companies(42)/customers", 400, "BadRequest_NotFound",
        "Bad Request - Error in query syntax."),
    Row("unknown property in $filter", "GET", "{company}/customers?$filter=systemModifiedAt gt 2020-01-01T00:00:00Z",
        400, "BadRequest", "Could not find a property named 'systemModifiedAt' on type 'Microsoft.NAV.customer'."),
    Row("unknown property in $select", "GET", "{company}/customers?$select=number,nickname", 400, "BadRequest",
        "Could not find a property named 'nickname' on type 'Microsoft.NAV.customer'."),
    Row("unknown property in $orderby", "GET", "{company}/customers?$orderby=nickname", 400, "BadRequest",
        "'nickname'"),
    Row("unknown property in $expand", "GET", "{company}/customers?$expand=nickname", 400, "BadRequest",
        "'nickname'"),
    Row("hidden storage column in $filter", "GET", "{company}/customers?$filter=companyId eq " + MISSING, 400,
        "BadRequest", "Could not find a property named 'companyId'"),
    Row("unknown property in body", "PATCH", "{probe}", 400, "BadRequest",
        "The property 'nickname' does not exist on type 'Microsoft.NAV.customer'.",
        json={"nickname": "x"}, headers={"If-Match": "*"}, touches_probe=True),
    Row("unknown property in POST body", "POST", "{company}/customers", 400, "BadRequest", "'nickname'",
        json={"displayName": "Never", "nickname": "x"}),
    Row("malformed JSON body", "POST", "{company}/customers", 400, "BadRequest", "Invalid Request Body",
        json=b"{not json"),
    Row("body not an object", "POST", "{company}/customers", 400, "BadRequest", "Invalid Request Body",
        json=["displayName"]),
    Row("read-only property written", "PATCH", "{probe}", 400, "BadRequest_InvalidOperation", "'balanceDue'",
        json={"balanceDue": 10}, headers={"If-Match": "*"}, touches_probe=True),
    Row("read-only lastModifiedDateTime written", "POST", "{company}/customers", 400, "BadRequest_InvalidOperation",
        "'lastModifiedDateTime'", json={"displayName": "Never", "lastModifiedDateTime": "2020-01-01T00:00:00Z"}),
    Row("required displayName missing", "POST", "{company}/customers", 400, "Application_DialogException",
        'A "displayName" must be provided.', json={"type": "Company"}),
    Row("blank displayName on PATCH", "PATCH", "{probe}", 400, "Application_DialogException",
        'The blank "displayName" is not allowed.', json={"displayName": ""}, headers={"If-Match": "*"},
        touches_probe=True),
    Row("bad reference paymentTermsId", "POST", "{company}/customers", 400, "Application_DialogException",
        'The "paymentTermsId" does not match to a Payment Terms.',
        json={"displayName": "Never", "paymentTermsId": MISSING}),
    Row("bad reference currencyCode", "PATCH", "{probe}", 400, "Application_DialogException",
        'The "currencyCode" does not match to a Currency.', json={"currencyCode": "XXX"},
        headers={"If-Match": "*"}, touches_probe=True),
    Row("salespersonCode not in its table", "PATCH", "{probe}", 400, "Application_DialogException",
        "The field salespersonCode of table Customer contains a value (NOBODY) that cannot be found in the "
        "related table (Salesperson/Purchaser).", json={"salespersonCode": "nobody"}, headers={"If-Match": "*"},
        touches_probe=True),
    Row("inventory set on item create", "POST", "{company}/items", 400, "Application_DialogException",
        'The "inventory" cannot be set when the record is created.',
        json={"displayName": "Stocked", "inventory": 5}),
    Row("string too long", "PATCH", "{probe}", 400, "Application_StringExceededLength",
        "The length of the string is 31, but it must be less than or equal to 30 characters.",
        json={"city": "C" * 31}, headers={"If-Match": "*"}, touches_probe=True),
    Row("enum value not an option", "POST", "{company}/items", 400, "Unknown",
        "'Invalid Type' is not an option. The existing options are: Inventory,Service,Non-Inventory",
        json={"displayName": "Never", "type": "Invalid Type"}),
    Row("invalid GUID value in body", "POST", "{company}/customers", 400, "Application_InvalidGUID",
        "Invalid format of GUID string.", json={"displayName": "Never", "paymentTermsId": "nope"}),
    Row("duplicate number", "POST", "{company}/customers", 409, "Internal_EntityWithSameKeyExists",
        "The Customer already exists. Identification fields and values: number='10000'",
        json={"displayName": "Twin", "number": "10000"}),
    Row("duplicate number on PATCH", "PATCH", "{probe}", 409, "Internal_EntityWithSameKeyExists",
        "Identification fields and values: number='10000'", json={"number": "10000"}, headers={"If-Match": "*"},
        touches_probe=True),
    Row("duplicate id", "POST", "{company}/customers", 409, "Internal_EntityWithSameKeyExists",
        "The Customer already exists.", json={"displayName": "Twin", "id": "c5010000-0000-4000-8000-000000000001"}),
    Row("stale ETag on PATCH", "PATCH", "{probe}", 409, "Request_EntityChanged",
        "Another user has already changed the record.", json={"displayName": "Lost"},
        headers={"If-Match": "{stale}"}, touches_probe=True),
    Row("stale ETag on DELETE", "DELETE", "{probe}", 409, "Request_EntityChanged",
        "Another user has already changed the record.", headers={"If-Match": "{stale}"}, touches_probe=True),
    Row("missing If-Match on PATCH", "PATCH", "{probe}", 400, "BadRequest_InvalidToken",
        "Could not validate the client concurrency token required by the service. Please provide a valid token "
        "in the client request.", json={"displayName": "Lost"}, touches_probe=True),
    Row("malformed If-Match on PATCH", "PATCH", "{probe}", 400, "BadRequest_InvalidToken",
        "Could not validate the client concurrency token", json={"displayName": "Lost"},
        headers={"If-Match": 'W/"garbage!"'}, touches_probe=True),
    Row("@odata.etag in the body is no If-Match", "PATCH", "{probe}", 400, "BadRequest_InvalidToken",
        "Could not validate the client concurrency token", json={"displayName": "Lost", "@odata.etag": "{etag}"},
        touches_probe=True),
    Row("POST companies", "POST", "{root}/companies", 405, "BadRequest_MethodNotAllowed",
        "'POST' requests for 'companies' of EdmType 'Entity' are not allowed", json={"name": "New"}),
    Row("PATCH a company", "PATCH", "{company}", 405, "BadRequest_MethodNotAllowed", "'companies'",
        json={"name": "New"}, headers={"If-Match": "*"}),
    Row("DELETE a company", "DELETE", "{company}", 405, "BadRequest_MethodNotAllowed",
        "'DELETE' requests for 'companies' of EdmType 'Entity' are not allowed", headers={"If-Match": "*"}),
    Row("POST to a company", "POST", "{company}", 405, "BadRequest_MethodNotAllowed", "'POST' requests for 'companies'",
        json={"name": "New"}),
    Row("PUT on an entity", "PUT", "{probe}", 405, "BadRequest_MethodNotAllowed", "'PUT' requests for 'customers'",
        json={"displayName": "x"}, headers={"If-Match": "*"}, touches_probe=True),
    Row("bad credentials", "GET", "{company}/customers", 401, "Authentication_InvalidCredentials",
        "The server has rejected the client credentials.", token="garbage"),
    Row("no credentials", "GET", "{company}/customers", 401, "Authentication_InvalidCredentials",
        "The server has rejected the client credentials.", token=""),
    Row("or across distinct fields", "GET", "{company}/customers?$filter=city eq 'Atlanta' or state eq 'GA'", 400,
        "BadRequest", "The 'OR' operator is not supported on distinct fields on an OData filter."),
    Row("in without $schemaversion=2.1", "GET", "{company}/customers?$filter=number in ('10000','20000')", 400,
        "BadRequest", "$schemaversion=2.1"),
    Row("bad $filter syntax", "GET", "{company}/customers?$filter=displayName eq", 400, "BadRequest", ""),
    Row("bad $top", "GET", "{company}/customers?$top=-1", 400, "BadRequest", "$top"),
    Row("bad $skiptoken", "GET", "{company}/customers?$skiptoken=zzz", 400, "BadRequest", "$skiptoken"),
    Row("unknown company in ?company=", "GET", "{root}/customers?company=Nobody Inc.", 400,
        "Internal_CompanyNotFound", "'Nobody Inc.'"),
    Row("throttled", "GET", "{company}/customers?$top=1", 429, "Application_TooManyRequests",
        "Number of requests exceeded the limit of 1", setup=throttle),
]


def _fill(text: str, sandbox: RunningSandbox, probe: Probe) -> str:
    return (text.replace("{company}", f"{sandbox.bc_api}/companies({sandbox.companies[0]})")
            .replace("{root}", sandbox.bc_api).replace("{probe}", probe.url)
            .replace("{bc}", sandbox.info["bc"]["url"]).replace("{stale}", probe.stale_etag)
            .replace("{etag}", probe.etag))


@pytest.mark.parametrize("row", ROWS, ids=[r.situation for r in ROWS])
def test_error_table(row: Row, sandbox: RunningSandbox, bc: requests.Session, probe: Probe) -> None:
    headers = {k: _fill(v, sandbox, probe) for k, v in row.headers.items()}
    if row.token is not None:
        headers["Authorization"] = f"Bearer {row.token}" if row.token else ""
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(row.json, bytes):
        kwargs["data"] = row.json
        headers["Content-Type"] = "application/json"
    elif isinstance(row.json, dict):
        kwargs["json"] = {k: _fill(v, sandbox, probe) if isinstance(v, str) else v for k, v in row.json.items()}
    elif row.json is not None:
        kwargs["json"] = row.json
    url = _fill(row.path, sandbox, probe)
    with row.setup(sandbox):
        resp = bc.request(row.method, url, **kwargs)
    text = assert_bc_error(resp, row.status, row.code, row.fragment)
    assert "Traceback" not in text
    if row.status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if row.status == 429:
        assert int(resp.headers["Retry-After"]) >= 1
    if row.touches_probe:
        after = bc.get(probe.url)
        assert after.status_code == 200
        assert after.json()["@odata.etag"] == probe.etag
        assert {k: v for k, v in after.json().items() if k != "@odata.context"} == {
            k: v for k, v in probe.body.items() if k != "@odata.context"}


def test_unknown_environment_answers_the_saas_xml_body(sandbox: RunningSandbox, bc: requests.Session) -> None:
    tenant = sandbox.info["tenant_id"]
    resp = bc.get(f"{sandbox.info['bc']['url']}/v2.0/{tenant}/NoSuchEnv/api/v2.0/companies")
    assert resp.status_code == 404
    assert resp.headers["Content-Type"].startswith("application/xml")
    assert "<code>NoEnvironment</code>" in resp.text
    assert "<message>Environment does not exist.</message>" in resp.text
    assert 'xmlns="http://docs.oasis-open.org/odata/ns/metadata"' in resp.text


# -- If-Match rules ----------------------------------------------------------------------------------
def _new_customer(bc: requests.Session, company: str, name: str) -> dict[str, Any]:
    resp = bc.post(f"{company}/customers", json={"displayName": name})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _stored(sandbox: RunningSandbox, customer_id: str) -> dict[str, Any]:
    backend = sandbox.sandbox.backends["bc"]
    entity = backend.schema.by_set("customers")
    table = backend.store.table(entity)
    with backend.store.read() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == customer_id)).mappings().first()
    return dict(row) if row is not None else {}


def test_patch_without_if_match_is_rejected_and_changes_nothing(
        sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Missing")
    resp = bc.patch(f"{company}/customers({customer['id']})", json={"displayName": "Changed"})
    assert_bc_error(resp, 400, "BadRequest_InvalidToken", "concurrency token")
    assert _stored(sandbox, customer["id"])["displayName"] == "IfMatch Missing"


def test_patch_with_star_is_accepted(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Star")
    resp = bc.patch(f"{company}/customers({customer['id']})", json={"displayName": "Starred"},
                    headers={"If-Match": "*"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["displayName"] == "Starred"
    assert resp.json()["@odata.etag"] != customer["@odata.etag"]
    assert _stored(sandbox, customer["id"])["displayName"] == "Starred"


def test_patch_with_stale_etag_conflicts(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Stale")
    url = f"{company}/customers({customer['id']})"
    first = bc.patch(url, json={"city": "Boston"}, headers={"If-Match": customer["@odata.etag"]})
    assert first.status_code == 200
    second = bc.patch(url, json={"city": "Denver"}, headers={"If-Match": customer["@odata.etag"]})
    assert_bc_error(second, 409, "Request_EntityChanged", "Another user has already changed the record.")
    assert _stored(sandbox, customer["id"])["city"] == "Boston"
    # the fresh ETag from the first answer still works
    third = bc.patch(url, json={"city": "Denver"}, headers={"If-Match": first.json()["@odata.etag"]})
    assert third.status_code == 200 and third.json()["city"] == "Denver"


def test_get_ignores_a_garbage_if_match(bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Get")
    for value in ("garbage", 'W/"stale"', "*"):
        resp = bc.get(f"{company}/customers({customer['id']})", headers={"If-Match": value})
        assert resp.status_code == 200, (value, resp.text)
        assert resp.json()["id"] == customer["id"]
    listed = bc.get(f"{company}/customers?$top=1", headers={"If-Match": "garbage"})
    assert listed.status_code == 200


def test_delete_without_if_match_succeeds(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Delete")
    resp = bc.delete(f"{company}/customers({customer['id']})")
    assert resp.status_code == 204 and resp.content == b""
    assert resp.headers.get("request-id")
    assert _stored(sandbox, customer["id"]) == {}


def test_delete_with_stale_etag_conflicts(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "IfMatch Delete Stale")
    url = f"{company}/customers({customer['id']})"
    changed = bc.patch(url, json={"city": "Austin"}, headers={"If-Match": "*"})
    assert changed.status_code == 200
    resp = bc.delete(url, headers={"If-Match": customer["@odata.etag"]})
    assert_bc_error(resp, 409, "Request_EntityChanged", "Another user has already changed the record.")
    assert _stored(sandbox, customer["id"])["city"] == "Austin"
    ok = bc.delete(url, headers={"If-Match": changed.json()["@odata.etag"]})
    assert ok.status_code == 204


def test_exactly_one_of_sixteen_concurrent_patches_wins(
        sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    customer = _new_customer(bc, company, "Race Target")
    url = f"{company}/customers({customer['id']})"
    etag = customer["@odata.etag"]
    token = sandbox.bc_token()
    barrier = threading.Barrier(16)
    results: list[tuple[int, str, dict[str, Any]]] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        session = requests.Session()
        session.verify = sandbox.ca_bundle
        session.headers["Authorization"] = f"Bearer {token}"
        barrier.wait()
        resp = session.patch(url, json={"displayName": f"Racer {n}"}, headers={"If-Match": etag}, timeout=60)
        with lock:
            results.append((resp.status_code, f"Racer {n}", resp.json()))

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [409] * 15, statuses
    winner = next(name for status, name, _ in results if status == 200)
    for status, _, body in results:
        if status == 409:
            assert body["error"]["code"] == "Request_EntityChanged"
    stored = _stored(sandbox, customer["id"])
    assert stored["displayName"] == winner
    fetched = bc.get(url).json()
    assert fetched["displayName"] == winner
    # exactly one version step: the winner's ETag is the current one, and the original is stale
    assert fetched["@odata.etag"] == next(b for s, _, b in results if s == 200)["@odata.etag"]
