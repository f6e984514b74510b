"""Facts a Dataverse table declares that drive behaviour over HTTP: requirement levels, create-only
columns, supported messages, and the system tables (sdkmessage, sdkmessagefilter, organization)
derived from the declarations.

Each case asserts the status and envelope, and the state left behind.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

USD = "cc000000-0000-4000-8000-000000000001"
EUR = "cc000000-0000-4000-8000-000000000002"
ROOT_BUSINESS_UNIT = "b0000000-0000-4000-8000-000000000001"
UNIT_GROUP = "0e000000-0000-4000-8000-000000000001"
PCS = "0f000000-0000-4000-8000-000000000002"
REQUIRED_FIELD_MISSING = "0x80040200"


def _count(dv: requests.Session, api: str, set_name: str, filter_: str) -> int:
    resp = dv.get(f"{api}/{set_name}", params={"$filter": filter_, "$count": "true", "$select": "createdon"})
    assert resp.status_code == 200, resp.text
    return resp.json()["@odata.count"]


def _product(number: str, **extra: Any) -> dict[str, Any]:
    return {
        "productnumber": number, "name": f"Product {number}", "quantitydecimal": 2,
        "defaultuomscheduleid@odata.bind": f"/uomschedules({UNIT_GROUP})", "defaultuomid@odata.bind": f"/uoms({PCS})",
        **extra,
    }


# -- requirement levels ------------------------------------------------------------------------------

# (set, body without the SystemRequired column, the column, a filter that finds a row it would create)
MISSING_SYSTEM_REQUIRED = [
    ("products", {k: v for k, v in _product("SR-1").items() if k != "productnumber"}, "productnumber",
     "name eq 'Product SR-1'"),
    ("transactioncurrencies", {"currencyname": "Swiss Franc SR", "currencysymbol": "CHF", "exchangerate": 0.9},
     "isocurrencycode", "currencyname eq 'Swiss Franc SR'"),
    ("uoms", {"name": "SR-DOZEN", "quantity": 12}, "uomscheduleid", "name eq 'SR-DOZEN'"),
    ("teams", {"description": "team SR", "businessunitid@odata.bind": f"/businessunits({ROOT_BUSINESS_UNIT})"},
     "name", "description eq 'team SR'"),
    ("businessunits", {"description": "unit SR"}, "name", "description eq 'unit SR'"),
]  # fmt: skip


@pytest.mark.parametrize(("set_name", "body", "column", "finder"), MISSING_SYSTEM_REQUIRED,
                         ids=[f"{s}-{c}" for s, _, c, _ in MISSING_SYSTEM_REQUIRED])
def test_create_without_a_system_required_column_is_refused(
    sandbox, dv: requests.Session, set_name: str, body: dict, column: str, finder: str
) -> None:
    resp = dv.post(f"{sandbox.api}/{set_name}", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == REQUIRED_FIELD_MISSING
    assert error["message"].startswith("Required field missing.") and f"'{column}'" in error["message"]
    assert _count(dv, sandbox.api, set_name, finder) == 0  # nothing written


def test_application_required_columns_are_left_to_apps(sandbox, dv: requests.Session) -> None:
    """ApplicationRequired (account name, contact lastname, product name) is not enforced by the API."""
    for set_name, body in (("accounts", {"telephone1": "+1 555 0190"}), ("contacts", {"firstname": "Only"}),
                           ("products", {k: v for k, v in _product("AR-1").items() if k != "name"})):
        resp = dv.post(f"{sandbox.api}/{set_name}", json=body, headers={"Prefer": "return=representation"})
        assert resp.status_code == 201, (set_name, resp.text)


def test_system_required_columns_with_a_default_get_it(sandbox, dv: requests.Session) -> None:
    product = dv.post(f"{sandbox.api}/products", json=_product("DF-1"), headers={"Prefer": "return=representation"})
    assert product.status_code == 201, product.text
    assert product.json()["productstructure"] == 1  # Product
    team = dv.post(f"{sandbox.api}/teams", json={
        "name": f"Team {uuid.uuid4().hex[:8]}", "businessunitid@odata.bind": f"/businessunits({ROOT_BUSINESS_UNIT})",
    }, headers={"Prefer": "return=representation"})
    assert team.status_code == 201, team.text
    assert team.json()["teamtype"] == 0  # Owner


@pytest.mark.parametrize(("change", "column"), [
    ({"productnumber": None}, "productnumber"),
    ({"productstructure": None}, "productstructure"),
])
def test_update_cannot_clear_a_system_required_column(sandbox, dv: requests.Session, change: dict, column: str) -> None:
    number = f"CL-{uuid.uuid4().hex[:6]}"
    created = dv.post(f"{sandbox.api}/products", json=_product(number), headers={"Prefer": "return=representation"})
    assert created.status_code == 201, created.text
    product = created.json()
    resp = dv.patch(f"{sandbox.api}/products({product['productid']})", json=change)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == REQUIRED_FIELD_MISSING and f"'{column}'" in resp.json()["error"]["message"]
    after = dv.get(f"{sandbox.api}/products({product['productid']})").json()
    assert (after["productnumber"], after["productstructure"], after["versionnumber"]) == (
        number, 1, product["versionnumber"])


@pytest.mark.parametrize(("table", "attribute", "level"), [
    ("product", "productnumber", "SystemRequired"),
    ("product", "name", "ApplicationRequired"),
    ("product", "defaultuomid", "ApplicationRequired"),
    ("transactioncurrency", "isocurrencycode", "SystemRequired"),
    ("uom", "uomscheduleid", "SystemRequired"),
    ("account", "name", "ApplicationRequired"),
    ("account", "telephone1", "None"),
    ("account", "accountid", "SystemRequired"),
])
def test_entity_definitions_publish_the_declared_level(
    sandbox, dv: requests.Session, table: str, attribute: str, level: str
) -> None:
    resp = dv.get(f"{sandbox.api}/EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{attribute}')",
                  params={"$select": "RequiredLevel"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["RequiredLevel"]["Value"] == level


# -- create-only columns (IsValidForUpdate = false) ----------------------------------------------------

def test_create_only_columns_are_published_as_not_valid_for_update(sandbox, dv: requests.Session) -> None:
    for table, attribute in (("transactioncurrency", "isocurrencycode"), ("uom", "uomscheduleid")):
        attr = dv.get(f"{sandbox.api}/EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{attribute}')",
                      params={"$select": "IsValidForCreate,IsValidForUpdate"}).json()
        assert (attr["IsValidForCreate"], attr["IsValidForUpdate"]) == (True, False), table


def test_an_update_ignores_create_only_columns(sandbox, dv: requests.Session) -> None:
    """UpdateRequest ignores values not valid for update; the other columns of the request still apply."""
    currency = dv.post(f"{sandbox.api}/transactioncurrencies", json={
        "isocurrencycode": "XCO", "currencyname": "Create Only", "currencysymbol": "¤", "exchangerate": 2,
    }, headers={"Prefer": "return=representation"}).json()
    resp = dv.patch(f"{sandbox.api}/transactioncurrencies({currency['transactioncurrencyid']})",
                    json={"isocurrencycode": "XCP", "currencyname": "Create Only (renamed)"})
    assert resp.status_code == 204, resp.text
    after = dv.get(f"{sandbox.api}/transactioncurrencies({currency['transactioncurrencyid']})").json()
    assert (after["isocurrencycode"], after["currencyname"]) == ("XCO", "Create Only (renamed)")

    group = dv.post(f"{sandbox.api}/uomschedules", json={"name": f"Group {uuid.uuid4().hex[:6]}",
                                                         "baseuomname": "Each"},
                    headers={"Prefer": "return=representation"}).json()
    unit = dv.post(f"{sandbox.api}/uoms", json={"name": "DOZEN-CO", "quantity": 12,
                                                "uomscheduleid@odata.bind": f"/uomschedules({UNIT_GROUP})"},
                   headers={"Prefer": "return=representation"}).json()
    resp = dv.patch(f"{sandbox.api}/uoms({unit['uomid']})", json={
        "uomscheduleid@odata.bind": f"/uomschedules({group['uomscheduleid']})", "quantity": 24})
    assert resp.status_code == 204, resp.text
    after = dv.get(f"{sandbox.api}/uoms({unit['uomid']})").json()
    assert (after["_uomscheduleid_value"], float(after["quantity"])) == (UNIT_GROUP, 24.0)
