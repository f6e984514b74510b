"""BC API v2.0 CRUD, serialization and URL forms over real HTTPS with real tokens
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/).

Each test writes its own records in CRONUS USA (first company), checks the wire answer (status,
headers, body) and, where it matters, the row in the store behind the API.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

from mockservers.bc.models import BCBackend

if TYPE_CHECKING:
    from tests.conftest import RunningSandbox

pytestmark = pytest.mark.storage

ZERO = "00000000-0000-0000-0000-000000000000"
SUCCESS_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true"
EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$")


@pytest.fixture(scope="module")
def company(sandbox: RunningSandbox) -> str:
    return f"{sandbox.bc_api}/companies({sandbox.companies[0]})"


@pytest.fixture(scope="module")
def currencies(bc: requests.Session, company: str) -> dict[str, str]:
    """Currency code -> id in CRONUS USA."""
    resp = bc.get(f"{company}/currencies")
    assert resp.status_code == 200
    return {c["code"]: c["id"] for c in resp.json()["value"]}


def stored(sandbox: RunningSandbox, set_name: str, key: str) -> dict[str, Any] | None:
    backend = sandbox.sandbox.backends["bc"]
    table = backend.store.table(backend.schema.by_set(set_name))
    with backend.store.read() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == key)).mappings().first()
    return dict(row) if row is not None else None


def create(bc: requests.Session, url: str, body: dict[str, Any]) -> requests.Response:
    resp = bc.post(url, json=body)
    assert resp.status_code == 201, resp.text
    return resp


# -- POST ---------------------------------------------------------------------------------------------
def test_post_returns_201_location_and_the_full_entity(
        sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    resp = create(bc, f"{company}/customers", {"displayName": "Ulm Falcons", "type": "Company"})
    body = resp.json()
    assert resp.headers["Content-Type"] == SUCCESS_TYPE
    assert resp.headers["OData-Version"] == "4.0"
    assert uuid.UUID(resp.headers["request-id"])
    assert resp.headers["Location"] == f"{company}/customers({body['id']})"
    assert body["@odata.context"] == f"{sandbox.bc_api}/$metadata#companies({sandbox.companies[0]})/customers/$entity"
    assert list(body)[:3] == ["@odata.context", "@odata.etag", "id"]
    assert body["@odata.etag"].startswith('W/"')
    # server-filled: number from the series, LCY currency, zero-GUID references, escaped blank enum
    assert re.fullmatch(r"C\d{5}", body["number"]), body["number"]
    assert body["currencyCode"] == "USD" and body["currencyId"] == ZERO
    for ref in ("paymentTermsId", "shipmentMethodId", "paymentMethodId", "taxAreaId"):
        assert body[ref] == ZERO, ref
    assert body["blocked"] == "_x0020_"
    assert body["addressLine1"] == "" and body["balanceDue"] == 0 and body["taxLiable"] is False
    assert DATETIME.match(body["lastModifiedDateTime"]), body["lastModifiedDateTime"]
    modified = datetime.fromisoformat(body["lastModifiedDateTime"].replace("Z", "+00:00"))
    assert before <= modified <= datetime.now(UTC)
    public = {"id", "number", "displayName", "type", "addressLine1", "addressLine2", "city", "state", "country",
              "postalCode", "phoneNumber", "email", "website", "salespersonCode", "balanceDue", "creditLimit",
              "taxLiable", "taxAreaId", "taxAreaDisplayName", "taxRegistrationNumber", "currencyId", "currencyCode",
              "paymentTermsId", "shipmentMethodId", "paymentMethodId", "blocked", "lastModifiedDateTime"}
    assert set(body) - {"@odata.context", "@odata.etag"} == public
    row = stored(sandbox, "customers", body["id"])
    assert row is not None and row["companyId"] == sandbox.companies[0] and row["displayName"] == "Ulm Falcons"
    # a second POST takes the next number of the series
    second = create(bc, f"{company}/customers", {"displayName": "Ulm Falcons II"}).json()
    assert int(second["number"][1:]) > int(body["number"][1:])


def test_post_with_a_client_supplied_id(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    chosen = str(uuid.uuid4())
    resp = create(bc, f"{company}/customers", {"id": chosen.upper(), "displayName": "Chosen Id"})
    assert resp.json()["id"] == chosen
    assert resp.headers["Location"].endswith(f"/customers({chosen})")
    assert bc.get(f"{company}/customers({chosen})").json()["displayName"] == "Chosen Id"
    assert stored(sandbox, "customers", chosen) is not None


def test_post_with_a_client_number_keeps_it_upper_cased(bc: requests.Session, company: str) -> None:
    body = create(bc, f"{company}/customers", {"displayName": "Own Number", "number": "cust-own-1",
                                               "country": "us", "postalCode": "wa 98052"}).json()
    assert body["number"] == "CUST-OWN-1"
    assert body["country"] == "US" and body["postalCode"] == "WA 98052"


@pytest.mark.parametrize("spelling", ["Non-Inventory", "Non_x002D_Inventory", "non-inventory"])
def test_item_enum_accepted_escaped_and_plain_and_served_escaped(
        sandbox: RunningSandbox, bc: requests.Session, company: str, spelling: str) -> None:
    body = create(bc, f"{company}/items", {"displayName": f"Enum {spelling}", "type": spelling}).json()
    assert body["type"] == "Non_x002D_Inventory"
    assert bc.get(f"{company}/items({body['id']})").json()["type"] == "Non_x002D_Inventory"
    patched = bc.patch(f"{company}/items({body['id']})", json={"type": "Service"}, headers={"If-Match": "*"})
    assert patched.status_code == 200 and patched.json()["type"] == "Service"


@pytest.mark.parametrize("spelling", [" ", "_x0020_", "Ship"])
def test_customer_blocked_accepts_plain_and_escaped_blank(bc: requests.Session, company: str, spelling: str) -> None:
    body = create(bc, f"{company}/customers", {"displayName": "Blocked?", "blocked": spelling}).json()
    assert body["blocked"] == ("_x0020_" if spelling.strip() in ("", "_x0020_") else spelling)


def test_currency_code_and_id_are_kept_in_step(
        sandbox: RunningSandbox, bc: requests.Session, company: str, currencies: dict[str, str]) -> None:
    by_code = create(bc, f"{company}/customers", {"displayName": "Euro Buyer", "currencyCode": "eur"}).json()
    assert by_code["currencyCode"] == "EUR" and by_code["currencyId"] == currencies["EUR"]
    url = f"{company}/customers({by_code['id']})"
    by_id = bc.patch(url, json={"currencyId": currencies["GBP"]}, headers={"If-Match": "*"})
    assert by_id.status_code == 200
    assert by_id.json()["currencyCode"] == "GBP" and by_id.json()["currencyId"] == currencies["GBP"]
    row = stored(sandbox, "customers", by_code["id"])
    assert row["currencyCode"] == "GBP" and row["currencyId"] == currencies["GBP"]
    # back to LCY: the code of the local currency clears the id
    lcy = bc.patch(url, json={"currencyCode": "USD"}, headers={"If-Match": "*"})
    assert lcy.json()["currencyCode"] == "USD" and lcy.json()["currencyId"] == ZERO
    zero = bc.patch(url, json={"currencyId": currencies["CAD"]}, headers={"If-Match": "*"}).json()
    assert zero["currencyCode"] == "CAD"
    cleared = bc.patch(url, json={"currencyId": ZERO}, headers={"If-Match": "*"}).json()
    assert cleared["currencyId"] == ZERO and cleared["currencyCode"] == "USD"


def parse_time(text: str) -> datetime:
    """BC's timestamps trim trailing zeros of the milliseconds (".12Z", ".1Z", "Z"): compare them parsed."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- PATCH / DELETE / GET ----------------------------------------------------------------------------------
def test_patch_returns_200_with_a_new_etag_and_persists(
        sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    created = create(bc, f"{company}/customers", {"displayName": "Patch Me", "city": "Ulm"}).json()
    url = f"{company}/customers({created['id']})"
    resp = bc.patch(url, json={"city": "Munich", "creditLimit": 1234.5, "@odata.etag": created["@odata.etag"]},
                    headers={"If-Match": created["@odata.etag"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["Content-Type"] == SUCCESS_TYPE
    assert body["@odata.context"].endswith("/customers/$entity")
    assert body["@odata.etag"] != created["@odata.etag"]
    assert body["city"] == "Munich" and body["creditLimit"] == 1234.5 and body["displayName"] == "Patch Me"
    assert parse_time(body["lastModifiedDateTime"]) >= parse_time(created["lastModifiedDateTime"])
    assert bc.get(url).json() == body | {"@odata.context": body["@odata.context"]}
    row = stored(sandbox, "customers", created["id"])
    assert row["city"] == "Munich" and float(row["creditLimit"]) == 1234.5
    # the id may be repeated unchanged, but not changed
    same = bc.patch(url, json={"id": created["id"]}, headers={"If-Match": "*"})
    assert same.status_code == 200
    other = bc.patch(url, json={"id": str(uuid.uuid4())}, headers={"If-Match": "*"})
    assert other.status_code == 400 and other.json()["error"]["code"] == "BadRequest_InvalidOperation"


def test_delete_returns_204_then_404(sandbox: RunningSandbox, bc: requests.Session, company: str) -> None:
    created = create(bc, f"{company}/vendors", {"displayName": "Short Lived"}).json()
    url = f"{company}/vendors({created['id']})"
    resp = bc.delete(url, headers={"If-Match": created["@odata.etag"]})
    assert resp.status_code == 204 and resp.content == b""
    assert stored(sandbox, "vendors", created["id"]) is None
    for method in ("GET", "DELETE"):
        gone = bc.request(method, url)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "BadRequest_ResourceNotFound"


def test_get_single_with_context_and_expand(
        sandbox: RunningSandbox, bc: requests.Session, company: str, currencies: dict[str, str]) -> None:
    terms = bc.get(f"{company}/paymentTerms?$top=1").json()["value"][0]
    created = create(bc, f"{company}/customers", {"displayName": "Expand Me", "currencyCode": "EUR",
                                                  "paymentTermsId": terms["id"]}).json()
    resp = bc.get(f"{company}/customers({created['id']})?$expand=currency,paymentTerm")
    assert resp.status_code == 200
    body = resp.json()
    assert body["@odata.context"] == (
        f"{sandbox.bc_api}/$metadata#companies({sandbox.companies[0]})/customers/$entity")
    assert body["currency"]["id"] == currencies["EUR"] and body["currency"]["code"] == "EUR"
    assert body["currency"]["@odata.etag"].startswith('W/"')
    assert body["paymentTerm"]["id"] == terms["id"] and body["paymentTerm"]["code"] == terms["code"]
    # an unset reference expands to null
    plain = create(bc, f"{company}/customers", {"displayName": "No Currency"}).json()
    expanded = bc.get(f"{company}/customers({plain['id']})?$expand=currency").json()
    assert expanded["currency"] is None
    selected = bc.get(f"{company}/customers({plain['id']})?$select=id,displayName").json()
    assert set(selected) == {"@odata.context", "@odata.etag", "id", "displayName"}


def test_navigation_to_the_currency(
        sandbox: RunningSandbox, bc: requests.Session, company: str, currencies: dict[str, str]) -> None:
    created = create(bc, f"{company}/customers", {"displayName": "Nav Me", "currencyCode": "GBP"}).json()
    resp = bc.get(f"{company}/customers({created['id']})/currency")
    assert resp.status_code == 200
    body = resp.json()
    assert body["id"] == currencies["GBP"] and body["code"] == "GBP"
    assert body["@odata.context"].endswith(f"/customers({created['id']})/currency/$entity")
    lcy = create(bc, f"{company}/customers", {"displayName": "Nav LCY"}).json()
    missing = bc.get(f"{company}/customers({lcy['id']})/currency")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "BadRequest_ResourceNotFound"


# -- companies ------------------------------------------------------------------------------------------------
def test_companies_list_and_single(sandbox: RunningSandbox, bc: requests.Session) -> None:
    resp = bc.get(f"{sandbox.bc_api}/companies")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == SUCCESS_TYPE
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.bc_api}/$metadata#companies"
    assert [c["id"] for c in body["value"]] == sandbox.companies
    assert [c["name"] for c in body["value"]] == [c["name"] for c in sandbox.info["bc"]["companies"]]
    fields = {"id", "systemVersion", "timestamp", "name", "displayName", "businessProfileId", "systemCreatedAt",
              "systemCreatedBy", "systemModifiedAt", "systemModifiedBy"}
    for row in body["value"]:
        assert set(row) == fields
        assert "@odata.etag" not in row
        assert DATETIME.match(row["systemCreatedAt"])
    single = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[1]})")
    assert single.status_code == 200
    assert single.json()["@odata.context"] == f"{sandbox.bc_api}/$metadata#companies/$entity"
    assert single.json()["id"] == sandbox.companies[1]
    for method in ("PATCH", "DELETE"):
        denied = bc.request(method, f"{sandbox.bc_api}/companies({sandbox.companies[1]})", json={"name": "x"},
                            headers={"If-Match": "*"})
        assert denied.status_code == 405 and denied.json()["error"]["code"] == "BadRequest_MethodNotAllowed"


# -- documents ------------------------------------------------------------------------------------------------
def test_service_document(sandbox: RunningSandbox, bc: requests.Session) -> None:
    resp = bc.get(f"{sandbox.bc_api}/")
    assert resp.status_code == 200
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.bc_api}/$metadata"
    names = {e["name"] for e in body["value"]}
    assert {"companies", "customers", "vendors", "contacts", "items", "currencies", "salespeoplePurchasers",
            "unitsOfMeasure", "paymentTerms", "shipmentMethods", "paymentMethods", "countriesRegions",
            "subscriptions"} <= names
    assert "resources" not in names
    assert all(e["kind"] == "EntitySet" and e["url"] == e["name"] for e in body["value"])


def test_metadata_is_well_formed_edmx(sandbox: RunningSandbox, bc: requests.Session) -> None:
    resp = bc.get(f"{sandbox.bc_api}/$metadata")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(resp.content)
    assert root.tag == f"{EDMX}Edmx" and root.get("Version") == "4.0"
    schemas = root.findall(f"{EDMX}DataServices/{EDM}Schema")
    assert [s.get("Namespace") for s in schemas] == ["Microsoft.NAV"]
    schema = schemas[0]
    types = {t.get("Name"): t for t in schema.findall(f"{EDM}EntityType")}
    assert {"company", "customer", "vendor", "item", "currency"} <= set(types)
    assert "resource" not in types
    customer_props = {p.get("Name"): p.get("Type") for p in types["customer"].findall(f"{EDM}Property")}
    assert customer_props["id"] == "Edm.Guid"
    assert customer_props["blocked"] == "Microsoft.NAV.customerBlocked"
    assert "companyId" not in customer_props and "rowVersion" not in customer_props
    assert types["customer"].find(f"{EDM}Key/{EDM}PropertyRef").get("Name") == "id"
    enums = {e.get("Name"): [m.get("Name") for m in e.findall(f"{EDM}Member")]
             for e in schema.findall(f"{EDM}EnumType")}
    assert enums["itemType"] == ["Inventory", "Service", "Non_x002D_Inventory"]
    assert enums["customerBlocked"][0] == "_x0020_"
    sets = {s.get("Name"): s.get("EntityType") for s in schema.iter(f"{EDM}EntitySet")}
    assert sets["customers"] == "Microsoft.NAV.customer"
    assert sets["companies"] == "Microsoft.NAV.company"
    assert sets["salespeoplePurchasers"] == "Microsoft.NAV.salespersonPurchaser"
    assert "resources" not in sets
    containers = schema.findall(f"{EDM}EntityContainer")
    assert [c.get("Name") for c in containers] == ["NAV"]


# -- URL forms ------------------------------------------------------------------------------------------------
def _forms(sandbox: RunningSandbox) -> dict[str, str]:
    base = sandbox.info["bc"]["url"]
    tenant = sandbox.info["tenant_id"]
    env = sandbox.info["bc"]["environment"]
    return {
        "tenant in URL": f"{base}/v2.0/{tenant}/{env}/api/v2.0",
        "tenant from token": f"{base}/v2.0/{env}/api/v2.0",
        "on-prem instance": f"{base}/BC/api/v2.0",
        "environment upper-cased": f"{base}/v2.0/{tenant}/{env.upper()}/api/v2.0",
        "environment capitalised": f"{base}/v2.0/{env.capitalize()}/api/v2.0",
    }


@pytest.mark.parametrize("form", ["tenant in URL", "tenant from token", "on-prem instance",
                                  "environment upper-cased", "environment capitalised"])
def test_url_forms_serve_the_same_company_data(sandbox: RunningSandbox, bc: requests.Session, form: str) -> None:
    root = _forms(sandbox)[form]
    companies = bc.get(f"{root}/companies")
    assert companies.status_code == 200, companies.text
    assert [c["id"] for c in companies.json()["value"]] == sandbox.companies
    assert companies.json()["@odata.context"] == f"{root}/$metadata#companies"
    first = bc.get(f"{root}/companies({sandbox.companies[0]})/customers?$top=3&$select=id,number")
    assert first.status_code == 200
    assert first.json()["@odata.context"].startswith(f"{root}/$metadata#companies({sandbox.companies[0]})/customers")
    reference = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers?$top=3&$select=id,number")
    assert [r["id"] for r in first.json()["value"]] == [r["id"] for r in reference.json()["value"]]
    created = create(bc, f"{root}/companies({sandbox.companies[0]})/customers", {"displayName": f"Form {form}"})
    assert created.headers["Location"].startswith(f"{root}/companies({sandbox.companies[0]})/customers(")


@pytest.mark.parametrize("by", ["id", "name"])
def test_company_as_query_option(sandbox: RunningSandbox, bc: requests.Session, by: str) -> None:
    entry = sandbox.info["bc"]["companies"][1]
    resp = bc.get(f"{sandbox.bc_api}/customers", params={"company": entry[by], "$select": "id"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["@odata.context"] == f"{sandbox.bc_api}/$metadata#customers(id)"
    scoped = bc.get(f"{sandbox.bc_api}/companies({entry['id']})/customers?$select=id")
    assert [r["id"] for r in resp.json()["value"]] == [r["id"] for r in scoped.json()["value"]]
    assert resp.json()["value"]
    created = bc.post(f"{sandbox.bc_api}/customers", params={"company": entry[by]}, json={"displayName": "Q Form"})
    assert created.status_code == 201, created.text
    assert stored(sandbox, "customers", created.json()["id"])["companyId"] == entry["id"]
    one = bc.get(f"{sandbox.bc_api}/customers({created.json()['id']})", params={"company": entry[by]})
    assert one.status_code == 200 and one.json()["displayName"] == "Q Form"


@pytest.mark.parametrize("api", ["contoso/ops/v1.0", "bctech/demo/v2.0", "acme/integration/v10.12"])
def test_custom_api_route_serves_resources(sandbox: RunningSandbox, bc: requests.Session, api: str) -> None:
    root = sandbox.bc_api.replace("/api/v2.0", f"/api/{api}")
    resp = bc.get(f"{root}/companies({sandbox.companies[0]})/resources")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"] == f"{root}/$metadata#companies({sandbox.companies[0]})/resources"
    assert body["value"] and {"id", "number", "displayName", "type", "baseUnitOfMeasureCode"} <= set(body["value"][0])
    created = create(bc, f"{root}/companies({sandbox.companies[0]})/resources", {"displayName": "Crane", "type": "Machine"})
    assert created.json()["type"] == "Machine" and created.headers["Location"].startswith(root)
    # the standard sets are not under the custom route, and resources are not under api/v2.0
    assert bc.get(f"{root}/companies({sandbox.companies[0]})/customers").status_code == 404
    standard = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/resources")
    assert standard.status_code == 404 and standard.json()["error"]["code"] == "BadRequest_ResourceNotFound"
    names = {e["name"] for e in bc.get(f"{root}/").json()["value"]}
    assert "resources" in names and "customers" not in names
    metadata = ET.fromstring(bc.get(f"{root}/$metadata").content)
    assert {s.get("Name") for s in metadata.iter(f"{EDM}EntitySet")} >= {"resources", "companies"}


@pytest.mark.parametrize("path", ["/api/contoso/v1.0/companies", "/api/contoso/ops/1.0/companies",
                                  "/api/contoso/ops/version1/companies"])
def test_malformed_custom_api_routes_are_not_found(sandbox: RunningSandbox, bc: requests.Session, path: str) -> None:
    resp = bc.get(sandbox.bc_api.replace("/api/v2.0", path))
    assert resp.status_code == 404
    assert resp.json()["error"]["code"].startswith("BadRequest_")


def test_number_series_starts_at_10_and_steps_by_10_per_company_and_prefix() -> None:
    """BC's default series (CUST: C00010, C00020, …): the first number, the step, the width kept past the
    highest number in use, and each company and each prefix on its own series."""
    backend = BCBackend("sqlite://")
    first, second = list(backend.companies)[:2]
    customers, vendors = backend.entity("customer"), backend.entity("vendor")

    def new(entity, company: str, **body: str) -> str:
        with backend.store.write() as conn:
            return backend.create(conn, entity, company, {"displayName": "Series", **body})["number"]

    assert [new(customers, first) for _ in range(3)] == ["C00010", "C00020", "C00030"]
    assert new(customers, second) == "C00010", "another company has its own series"
    assert new(vendors, first) == "V00010", "another table has its own prefix"
    assert new(customers, first, number="C00995") == "C00995"
    assert new(customers, first, number="CUSTOM-7") == "CUSTOM-7"
    assert new(customers, first) == "C01005", "the series continues 10 after the highest number in use"
    assert new(customers, first, number="C0999999") == "C0999999"
    assert new(customers, first) == "C1000009", "a longer number in use wins, and its width is kept"
