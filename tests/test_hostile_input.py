"""Hand-built hostile requests that once answered 500 (issue 6, item 6), over real HTTPS.

Each row names the request, the status and error code the service answers, and what must be left
behind: nothing. Writes carry a marker in a name column and the test counts rows with that marker
afterwards, so a request that fails validation is shown to leave no row (the worst case found:
`POST accounts?$expand=nosuch` with `return=representation` saved the row, then answered 500).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests

from tests.hostile import batch_body, batch_parts, changeset, check_bc, check_dataverse, http_part

API_ROOT = "/api/data/v9.2"
DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 200 + "1" + "}" * 200
JSON = {"Content-Type": "application/json"}


def marker() -> str:
    return f"HOSTILE-{uuid.uuid4().hex[:10]}"


def dv_count(dv: requests.Session, api: str, set_name: str, column: str, value: str) -> int:
    resp = dv.get(f"{api}/{set_name}", params={"$filter": f"{column} eq '{value}'", "$count": "true", "$select": column})
    assert resp.status_code == 200, resp.text
    return resp.json()["@odata.count"]


def bc_count(bc: requests.Session, company: str, value: str) -> int:
    resp = bc.get(f"{company}/customers", params={"$filter": f"displayName eq '{value}'", "$count": "true"})
    assert resp.status_code == 200, resp.text
    return resp.json()["@odata.count"]


# -- Dataverse -------------------------------------------------------------------------------------
@dataclass
class DvCase:
    id: str
    method: str
    path: str  # below the API root; {mark} is replaced
    body: Callable[[str], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    status: int = 400
    code: str = "0x80048d19"
    message: str = ""
    leaves: tuple[str, str] = ("accounts", "name")  # where a row with the marker would land


def text(value: str) -> Callable[[str], bytes]:
    return lambda mark: value.replace("{mark}", mark).encode("utf-8", "surrogatepass")


DV_CASES = [
    DvCase("deep-array-create", "POST", "accounts", text(DEEP), message="deeper than the maximum of 64 levels"),
    DvCase("deep-object-create", "POST", "accounts", text('{"name":"{mark}","x":' + DEEP_OBJECT + "}"),
           message="deeper than the maximum"),
    DvCase("deep-patch", "PATCH", "accounts(a0000000-0000-4000-8000-000000000001)", text(DEEP),
           message="deeper than the maximum"),
    DvCase("deep-upsert-creates-nothing", "PATCH", "accounts(" + str(uuid.uuid4()) + ")",
           text('{"name":"{mark}","description":' + DEEP + "}"), message="deeper than the maximum"),
    DvCase("deep-createmultiple", "POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
           text('{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.account","name":"{mark}","x":' + DEEP + "}]}"),
           message="deeper than the maximum"),
    DvCase("escaped-lone-surrogate", "POST", "accounts", text('{"name":"{mark}\\ud800"}'),
           message="unpaired UTF-16 surrogate"),
    DvCase("raw-surrogate-bytes", "POST", "accounts",
           lambda mark: b'{"name":"' + mark.encode() + b'\xed\xa0\x80"}', message="not valid UTF-8"),
    DvCase("invalid-utf8", "POST", "accounts", lambda mark: b'{"name":"' + mark.encode() + b'\xff"}',
           message="not valid UTF-8"),
    DvCase("nan-literal", "POST", "accounts", text('{"name":"{mark}","creditlimit":NaN}'), message="not valid JSON"),
    DvCase("surrogate-key", "POST", "accounts", text('{"name":"{mark}","\\udfff":1}'), message="surrogate"),
    DvCase("createmultiple-type-null", "POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
           text('{"Targets":[{"@odata.type":null,"name":"{mark}"}]}'), message="@odata.type"),
    DvCase("createmultiple-type-number", "POST", "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
           text('{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.account","name":"{mark}"},'
                '{"@odata.type":7,"name":"{mark}"}]}'), message="@odata.type"),
    DvCase("upsertmultiple-id-object", "POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
           text('{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.account","@odata.id":{"a":1},"name":"{mark}"}]}'),
           message="must be a URI string"),
    DvCase("expand-nosuch-with-representation", "POST", "accounts", text('{"name":"{mark}"}'),
           headers={"Prefer": "return=representation"}, params={"$expand": "nosuch"}, code="0x0",
           message="Could not find a property named 'nosuch'"),
    DvCase("expand-nosuch-without-representation", "POST", "accounts", text('{"name":"{mark}"}'),
           params={"$expand": "nosuch"}, code="0x0", message="nosuch"),
    DvCase("systemusers-expand-foreign-nav", "POST", "systemusers",
           text('{"firstname":"x","lastname":"{mark}","domainname":"{mark}@sandbox.onmicrosoft.com"}'),
           headers={"Prefer": "return=representation"}, params={"$expand": "primarycontactid"}, code="0x0",
           message="primarycontactid", leaves=("systemusers", "lastname")),
    DvCase("upsert-select-nosuch", "PATCH", "accounts(" + str(uuid.uuid4()) + ")", text('{"name":"{mark}"}'),
           headers={"Prefer": "return=representation"}, params={"$select": "nosuch"}, code="0x0",
           message="nosuch"),
    DvCase("deltatoken-beyond-64-bits", "GET", "accounts", params={"$deltatoken": "9" * 30 + "!01/01/2026 00:00:00"},
           code="0x80040203", message="$deltatoken"),
    DvCase("deltatoken-2-to-the-63", "GET", "accounts", params={"$deltatoken": f"{2**63}!01/01/2026 00:00:00"},
           code="0x80040203", message="$deltatoken"),
    DvCase("skiptoken-int-beyond-64-bits", "GET", "accounts",
           params={"$skiptoken": '<cookie pagenumber="99999999999999999999999" pagingcookie="%253ccookie%2520page'
                                 '%253d%25221%2522%253e%253caccountid%2520last%253d%2522%257bA0000000-0000-4000-8000-'
                                 '000000000001%257d%2522%2520%252f%253e%253c%252fcookie%253e" istracking="False" />'},
           code="0x80040203", message="$skiptoken"),
    DvCase("skiptoken-missing-version", "GET", "accounts",
           params={"$skiptoken": '<cookie pagenumber="2" pagingcookie="%253ccookie%253e%253caccountid%2520last%253d'
                                 '%2522%257bA0000000-0000-4000-8000-000000000001%257d%2522%2520%252f%253e%253ctracking'
                                 '%2520%252f%253e%253c%252fcookie%253e" istracking="True" />'},
           code="0x80040203", message="$skiptoken"),
]


@pytest.mark.parametrize("case", DV_CASES, ids=[c.id for c in DV_CASES])
def test_dataverse_hostile_request_is_a_4xx_and_leaves_nothing(sandbox, dv: requests.Session, case: DvCase) -> None:
    mark = marker()
    set_name, column = case.leaves
    before = dv_count(dv, sandbox.api, set_name, column, mark)
    resp = dv.request(case.method, f"{sandbox.api}/{case.path}", params=case.params,
                      data=case.body(mark) if case.body else None, headers={**JSON, **case.headers})

    error = check_dataverse(resp)
    assert resp.status_code == case.status, resp.text
    assert error["code"] == case.code and case.message in error["message"], error
    assert dv_count(dv, sandbox.api, set_name, column, mark) == before == 0


def test_dataverse_expand_is_checked_before_the_row_is_written(sandbox, dv: requests.Session) -> None:
    """The fixed case's control: a valid `$expand` with `return=representation` still creates and answers."""
    mark = marker()
    resp = dv.post(f"{sandbox.api}/accounts", params={"$expand": "primarycontactid($select=fullname)"},
                   json={"name": mark}, headers={"Prefer": "return=representation"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == mark and resp.json()["primarycontactid"] is None
    assert dv_count(dv, sandbox.api, "accounts", "name", mark) == 1


@pytest.mark.parametrize("bad_body", [DEEP, '{"name":"{mark}\\ud800"}'], ids=["deep", "surrogate"])
def test_dataverse_batch_fails_only_the_bad_part(sandbox, dv: requests.Session, bad_body: str) -> None:
    """A bad body inside `$batch` is that operation's 400; its changeset rolls back, the next part runs."""
    mark = marker()
    good = json.dumps({"name": mark})
    body, content_type = batch_body([
        changeset([http_part(f"POST {API_ROOT}/accounts", good), http_part(f"POST {API_ROOT}/accounts",
                                                                           bad_body.replace("{mark}", mark))]),
        http_part(f"GET {API_ROOT}/accounts?$select=name&$top=1"),
    ])
    resp = dv.post(f"{sandbox.api}/$batch", data=body, headers={"Content-Type": content_type,
                                                                 "Prefer": "odata.continue-on-error"})

    assert resp.status_code == 200, resp.text
    (failed_status, failed_type, failed_body), (read_status, _, _) = batch_parts(resp)
    error = json.loads(failed_body)["error"]
    assert failed_status == 400 and failed_type.startswith("application/json") and error["code"] == "0x80048d19"
    assert read_status == 200
    assert dv_count(dv, sandbox.api, "accounts", "name", mark) == 0, "the changeset's first create rolled back"


def test_dataverse_batch_get_url_limit_is_64_kb(sandbox, dv: requests.Session) -> None:
    """A GET too long for the URL (32 KB) fits in `$batch` up to 64 KB; longer is that part's 414."""
    def get(length: int) -> str:
        url = f"{API_ROOT}/accounts?$select=name&$filter=name%20eq%20'"
        return f"GET {url}{'x' * (length - len(url) - 1)}'"

    body, content_type = batch_body([http_part(get(40_000)), http_part(get(70_000))])
    resp = dv.post(f"{sandbox.api}/$batch", data=body, headers={"Content-Type": content_type,
                                                                 "Prefer": "odata.continue-on-error"})

    assert resp.status_code == 200, resp.text
    (fits, _, _), (too_long, too_long_type, too_long_body) = batch_parts(resp)
    assert fits == 200
    assert too_long == 414 and too_long_type.startswith("application/json")
    assert "65,536" in json.loads(too_long_body)["error"]["message"]


# -- Business Central ------------------------------------------------------------------------------
@dataclass
class BcCase:
    id: str
    method: str
    path: str  # below the company root
    body: Callable[[str], bytes]
    status: int = 400
    code: str = "BadRequest"
    message: str = "Invalid Request Body"
    headers: dict[str, str] = field(default_factory=dict)


BC_CASES = [
    BcCase("deep-array-create", "POST", "customers", text(DEEP)),
    BcCase("deep-object-create", "POST", "customers", text('{"displayName":"{mark}","x":' + DEEP_OBJECT + "}")),
    BcCase("deep-patch", "PATCH", "customers({probe})", text(DEEP), headers={"If-Match": "*"}),
    BcCase("escaped-lone-surrogate", "POST", "customers", text('{"displayName":"{mark}\\ud800"}')),
    BcCase("raw-surrogate-bytes", "POST", "customers", lambda mark: b'{"displayName":"' + mark.encode() + b'\xed\xa0\x80"}'),
    BcCase("utf-16-with-bom", "POST", "customers",
           lambda mark: json.dumps({"displayName": mark}).encode("utf-16"), status=201, code="", message=""),
    BcCase("nan-literal", "POST", "customers", text('{"displayName":"{mark}","creditLimit":NaN}')),
]


@pytest.fixture(scope="module")
def company(sandbox) -> str:
    return f"{sandbox.bc_api}/companies({sandbox.companies[0]})"


@pytest.fixture(scope="module")
def probe(bc: requests.Session, company: str) -> str:
    resp = bc.post(f"{company}/customers", json={"displayName": "Hostile Probe"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize("case", BC_CASES, ids=[c.id for c in BC_CASES])
def test_bc_hostile_request_is_a_4xx_and_leaves_nothing(bc: requests.Session, company: str, probe: str,
                                                       case: BcCase) -> None:
    mark = marker()
    resp = bc.request(case.method, f"{company}/{case.path.replace('{probe}', probe)}", data=case.body(mark),
                      headers={**JSON, **case.headers})

    error = check_bc(resp)
    assert resp.status_code == case.status, resp.text
    if case.status >= 400:
        assert error["code"] == case.code and error["message"].startswith(case.message), error
        assert bc_count(bc, company, mark) == 0
    else:
        assert bc_count(bc, company, mark) == 1


def test_bc_batch_item_shapes_fail_alone(sandbox, bc: requests.Session, company: str) -> None:
    """Bad items (headers not an object, a lone surrogate in a body, an unparsable URL) are their own 400s."""
    mark = marker()
    scoped = f"companies({sandbox.companies[0]})/customers"
    body = {"requests": [
        {"id": "headers-list", "method": "GET", "url": f"{scoped}?$top=1", "headers": []},
        {"id": "headers-string", "method": "GET", "url": f"{scoped}?$top=1", "headers": "Company: x"},
        {"id": "header-value-object", "method": "GET", "url": f"{scoped}?$top=1", "headers": {"If-Match": {"a": 1}}},
        {"id": "surrogate", "method": "POST", "url": scoped, "body": {"displayName": mark + "\ud800"}},
        {"id": "bad-url", "method": "GET", "url": "https://[::1/customers"},
        {"id": "good", "method": "POST", "url": scoped, "body": {"displayName": mark}},
    ]}
    resp = bc.post(f"{sandbox.bc_api}/$batch", data=json.dumps(body).encode(), headers=JSON)

    check_bc(resp)
    assert resp.status_code == 200, resp.text
    statuses = {item["id"]: item["status"] for item in resp.json()["responses"]}
    assert statuses == {"headers-list": 400, "headers-string": 400, "header-value-object": 400, "surrogate": 400,
                        "bad-url": 400, "good": 201}
    for item in resp.json()["responses"]:
        if item["status"] == 400:
            assert item["body"]["error"]["code"] == "BadRequest"
    assert bc_count(bc, company, mark) == 1, "only the good item wrote"


def test_bc_snapshot_batch_with_a_bad_item_writes_nothing(sandbox, bc: requests.Session, company: str) -> None:
    mark = marker()
    scoped = f"companies({sandbox.companies[0]})/customers"
    body = {"requests": [{"id": "1", "method": "POST", "url": scoped, "body": {"displayName": mark}},
                         {"id": "2", "method": "POST", "url": scoped, "body": {"displayName": "x\udc00"}}]}
    resp = bc.post(f"{sandbox.bc_api}/$batch", data=json.dumps(body).encode(), headers={**JSON, "Isolation": "snapshot"})

    assert resp.status_code == 200, resp.text
    assert [i["status"] for i in resp.json()["responses"]] == [201, 400]
    assert bc_count(bc, company, mark) == 0, "the snapshot batch rolled back the first create"


@pytest.mark.parametrize("url", ["http://[::1", "https://[fe80::1/x", "http://host:port/x", "http://", "ftp://x/y"])
def test_bc_webhook_notification_url_must_be_a_valid_url(sandbox, bc: requests.Session, url: str) -> None:
    resp = bc.post(f"{sandbox.bc_api}/subscriptions", json={
        "notificationUrl": url, "resource": f"/api/v2.0/companies({sandbox.companies[0]})/customers"})

    error = check_bc(resp)
    assert resp.status_code == 400 and error["code"] == "BadRequest"
    assert "must be an absolute http or https URL" in error["message"]


def test_bc_does_not_echo_an_oversized_value(bc: requests.Session, company: str) -> None:
    """BC names the value it refuses; a 5 MB value is cut, not sent back whole."""
    value = "Z" * (5 * 1024 * 1024)
    resp = bc.post(f"{company}/customers", json={"displayName": value})

    error = check_bc(resp)
    assert resp.status_code == 400 and error["code"] == "Application_StringExceededLength"
    assert error["message"].startswith(f"The length of the string is {len(value)}, but it must be less than or "
                                       "equal to 100 characters. Value: ZZZZ")
    assert len(resp.content) < 2_000


def test_bc_short_overlong_value_is_echoed_whole(bc: requests.Session, company: str) -> None:
    value = "JACKSBORO PUMP & SPECIALTY BRIDGEPORT PUMP & SUPPLY, INC. AND SONS OF THE GREAT PLAINS REGION, LTD.XX"
    resp = bc.post(f"{company}/customers", json={"displayName": value})

    error = check_bc(resp)
    assert f"Value: {value}  CorrelationId:" in error["message"]
