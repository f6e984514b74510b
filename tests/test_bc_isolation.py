"""Company isolation in the BC API and token isolation between the two clouds (issue 3 acceptance).

A record of company A is invisible under company B for every verb and every addressing form, lists
and counts are scoped, and a token minted for one resource is refused by the other service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

if TYPE_CHECKING:
    from tests.conftest import RunningSandbox

pytestmark = pytest.mark.storage


@pytest.fixture(scope="module")
def record_of_a(bc: requests.Session, sandbox: RunningSandbox) -> dict[str, Any]:
    resp = bc.post(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers",
                   json={"displayName": "Only In Company A", "city": "Alpha"})
    assert resp.status_code == 201, resp.text
    return resp.json()


def stored(sandbox: RunningSandbox, key: str) -> dict[str, Any]:
    backend = sandbox.sandbox.backends["bc"]
    table = backend.store.table(backend.schema.by_set("customers"))
    with backend.store.read() as conn:
        return dict(conn.execute(sa.select(table).where(table.c.id == key)).mappings().one())


def _under_b(sandbox: RunningSandbox, form: str, key: str) -> tuple[str, dict[str, str]]:
    b = sandbox.info["bc"]["companies"][1]
    if form == "path":
        return f"{sandbox.bc_api}/companies({b['id']})/customers({key})", {}
    if form == "query id":
        return f"{sandbox.bc_api}/customers({key})", {"company": b["id"]}
    return f"{sandbox.bc_api}/customers({key})", {"company": b["name"]}


@pytest.mark.parametrize("form", ["path", "query id", "query name"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_company_a_record_is_not_found_under_company_b(
        sandbox: RunningSandbox, bc: requests.Session, record_of_a: dict[str, Any], method: str, form: str) -> None:
    url, params = _under_b(sandbox, form, record_of_a["id"])
    kwargs: dict[str, Any] = {"params": params}
    if method == "PATCH":
        kwargs |= {"json": {"city": "Beta"}, "headers": {"If-Match": "*"}}
    if method == "DELETE":
        kwargs["headers"] = {"If-Match": record_of_a["@odata.etag"]}
    resp = bc.request(method, url, **kwargs)
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "BadRequest_ResourceNotFound"
    assert resp.json()["error"]["message"].startswith("Resource not found for the segment 'customers'.")
    row = stored(sandbox, record_of_a["id"])
    assert row["companyId"] == sandbox.companies[0] and row["city"] == "Alpha"
    again = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers({record_of_a['id']})")
    assert again.status_code == 200 and again.json()["@odata.etag"] == record_of_a["@odata.etag"]


def test_references_to_another_companys_rows_are_refused(sandbox: RunningSandbox, bc: requests.Session) -> None:
    """A reference to another company's row is refused on write, as BC checks table relations per company."""
    a, b = sandbox.companies
    currency_of_b = bc.get(f"{sandbox.bc_api}/companies({b})/currencies?$top=1").json()["value"][0]
    resp = bc.post(f"{sandbox.bc_api}/companies({a})/customers",
                   json={"displayName": "Cross Ref", "currencyId": currency_of_b["id"]})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "Application_DialogException"


@pytest.mark.parametrize("set_name", ["customers", "vendors", "items", "contacts", "currencies", "paymentTerms"])
def test_lists_and_counts_are_scoped(sandbox: RunningSandbox, bc: requests.Session, set_name: str) -> None:
    backend = sandbox.sandbox.backends["bc"]
    table = backend.store.table(backend.schema.by_set(set_name))
    seen: list[set[str]] = []
    for company_id in sandbox.companies:
        with backend.store.read() as conn:
            expected = {r for (r,) in conn.execute(sa.select(table.c.id).where(table.c.companyId == company_id))}
        resp = bc.get(f"{sandbox.bc_api}/companies({company_id})/{set_name}?$select=id")
        assert resp.status_code == 200
        got = {r["id"] for r in resp.json()["value"]}
        assert got == expected and got
        count = bc.get(f"{sandbox.bc_api}/companies({company_id})/{set_name}/$count")
        assert int(count.text) == len(expected)
        seen.append(got)
    assert not seen[0] & seen[1]


def test_company_b_cannot_see_a_record_created_through_the_query_form(
        sandbox: RunningSandbox, bc: requests.Session) -> None:
    a, b = sandbox.companies
    created = bc.post(f"{sandbox.bc_api}/vendors", params={"company": a}, json={"displayName": "Vendor Of A"})
    assert created.status_code == 201
    key = created.json()["id"]
    assert bc.get(f"{sandbox.bc_api}/companies({a})/vendors({key})").status_code == 200
    assert bc.get(f"{sandbox.bc_api}/companies({b})/vendors({key})").status_code == 404
    listed = bc.get(f"{sandbox.bc_api}/companies({b})/vendors", params={"$filter": f"id eq {key}"})
    assert listed.status_code == 200 and listed.json()["value"] == []


# -- tokens across the two clouds --------------------------------------------------------------------------
def test_dataverse_token_is_refused_by_bc(sandbox: RunningSandbox) -> None:
    dataverse_token = sandbox.token()  # default scope: the Dataverse org
    assert sandbox.session(dataverse_token).get(f"{sandbox.api}/WhoAmI").status_code == 200
    resp = requests.get(f"{sandbox.bc_api}/companies", headers={"Authorization": f"Bearer {dataverse_token}"},
                        verify=sandbox.ca_bundle, timeout=10)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == "Authentication_InvalidCredentials"
    assert error["message"].startswith("The server has rejected the client credentials.  CorrelationId:  ")
    assert resp.headers["request-id"] in error["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_bc_token_is_refused_by_dataverse(sandbox: RunningSandbox) -> None:
    bc_token = sandbox.bc_token()
    assert requests.get(f"{sandbox.bc_api}/companies", headers={"Authorization": f"Bearer {bc_token}"},
                        verify=sandbox.ca_bundle, timeout=10).status_code == 200
    resp = sandbox.session(bc_token).get(f"{sandbox.api}/accounts?$top=1")
    assert resp.status_code == 401
    assert "error" in resp.json()


def test_no_write_happens_with_a_foreign_token(sandbox: RunningSandbox) -> None:
    dataverse_token = sandbox.token()
    resp = requests.post(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers",
                         json={"displayName": "Smuggled"}, headers={"Authorization": f"Bearer {dataverse_token}"},
                         verify=sandbox.ca_bundle, timeout=10)
    assert resp.status_code == 401
    backend = sandbox.sandbox.backends["bc"]
    table = backend.store.table(backend.schema.by_set("customers"))
    with backend.store.read() as conn:
        assert conn.execute(sa.select(table.c.id).where(table.c.displayName == "Smuggled")).first() is None


def test_same_id_may_exist_in_two_companies(sandbox: RunningSandbox, bc: requests.Session) -> None:
    """Companies are separate tables in BC: a POST under B with an id that exists only in A creates B's
    own record (it used to answer 409 "already exists", telling B about A's record)."""
    a, b = (f"{sandbox.bc_api}/companies({c})/customers" for c in sandbox.companies[:2])
    first = bc.post(a, json={"displayName": "Twin In A", "city": "Alpha"})
    assert first.status_code == 201, first.text
    twin_id = first.json()["id"]

    second = bc.post(b, json={"id": twin_id, "displayName": "Twin In B", "city": "Beta"})
    assert second.status_code == 201, second.text
    assert second.json()["id"] == twin_id and second.json()["number"]

    in_a, in_b = bc.get(f"{a}({twin_id})").json(), bc.get(f"{b}({twin_id})").json()
    assert (in_a["displayName"], in_a["city"]) == ("Twin In A", "Alpha")
    assert (in_b["displayName"], in_b["city"]) == ("Twin In B", "Beta")

    patched = bc.patch(f"{b}({twin_id})", json={"city": "Gamma"}, headers={"If-Match": in_b["@odata.etag"]})
    assert patched.status_code == 200, patched.text
    assert bc.get(f"{a}({twin_id})").json()["city"] == "Alpha", "B's update stays in B"
    assert bc.delete(f"{b}({twin_id})").status_code == 204
    assert bc.get(f"{b}({twin_id})").status_code == 404
    assert bc.get(f"{a}({twin_id})").json()["@odata.etag"] == in_a["@odata.etag"], "B's delete stays in B"

    again = bc.post(a, json={"id": twin_id, "displayName": "Twin Again"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "Internal_EntityWithSameKeyExists"


def test_same_id_in_two_companies_expands_within_its_company(sandbox: RunningSandbox, bc: requests.Session) -> None:
    """A reference (currencyId) resolves to the row of the record's own company, even when the other
    company holds a row with the same id."""
    a, b = sandbox.companies[:2]
    currency_id = "cc000000-0000-4000-8000-00000000beef"
    for company, code in ((a, "TWA"), (b, "TWB")):
        made = bc.post(f"{sandbox.bc_api}/companies({company})/currencies",
                       json={"id": currency_id, "code": code, "displayName": f"Twin {code}"})
        assert made.status_code == 201, made.text
    customer = bc.post(f"{sandbox.bc_api}/companies({b})/customers",
                       json={"displayName": "Pays In Twin", "currencyId": currency_id}).json()
    assert customer["currencyCode"] == "TWB"

    expanded = bc.get(f"{sandbox.bc_api}/companies({b})/customers({customer['id']})", params={"$expand": "currency"})
    assert expanded.status_code == 200, expanded.text
    assert expanded.json()["currency"]["code"] == "TWB"
    filtered = bc.get(f"{sandbox.bc_api}/companies({b})/customers", params={"$filter": "currency/code eq 'TWB'"})
    assert [c["id"] for c in filtered.json()["value"]] == [customer["id"]]
    other = bc.get(f"{sandbox.bc_api}/companies({b})/customers", params={"$filter": "currency/code eq 'TWA'"})
    assert other.status_code == 200 and other.json()["value"] == [], "A's currency row is not B's"
