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


# -- supported messages and the SDK message tables derived from them -----------------------------------

BULK = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
NOT_SUPPORTED = "0x80040800"


def _not_supported(message: str, table: str) -> str:
    return (f"The '{message}' method does not support entities of type '{table}'. "
            "MessageProcessorCache returned MessageProcessor.Empty.")


@pytest.mark.parametrize("table", ["account", "contact", "product"])
def test_the_documented_bulk_detection_query_finds_all_three_messages(sandbox, dv: requests.Session,
                                                                      table: str) -> None:
    """The query of https://learn.microsoft.com/en-us/power-apps/developer/data-platform/bulk-operations
    #availability-with-standard-tables, with the three messages in one `or` and the message names expanded."""
    messages = " or ".join(f"sdkmessageid/name eq '{m}'" for m in BULK)
    resp = dv.get(f"{sandbox.api}/sdkmessagefilters", params={
        "$select": "sdkmessagefilterid",
        "$filter": f"primaryobjecttypecode eq '{table}' and ({messages})",
        "$expand": "sdkmessageid($select=name)",
    })
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#sdkmessagefilters(sdkmessagefilterid,sdkmessageid(name))"
    assert sorted(f["sdkmessageid"]["name"] for f in body["value"]) == sorted(BULK)
    assert all(set(f) >= {"@odata.etag", "sdkmessagefilterid", "sdkmessageid"} for f in body["value"])


@pytest.mark.parametrize(("table", "message", "found"), [
    ("account", "CreateMultiple", 1), ("product", "UpdateMultiple", 1), ("contact", "UpsertMultiple", 1),
    ("team", "CreateMultiple", 0), ("transactioncurrency", "UpdateMultiple", 0), ("account", "Create", 1),
    ("sdkmessage", "Create", 0), ("organization", "Update", 1),
])
def test_the_aliased_detection_query_answers_per_table(sandbox, dv: requests.Session, table: str, message: str,
                                                       found: int) -> None:
    """The documented form with parameter aliases: one filter id when the table supports the message."""
    resp = dv.get(f"{sandbox.api}/sdkmessagefilters?$select=sdkmessagefilterid&$filter=sdkmessageid/name eq "
                  f"@message and primaryobjecttypecode eq @table&@message='{message}'&@table='{table}'")
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["value"]) == found


def test_message_filters_are_derived_from_every_declaration(sandbox, dv: requests.Session) -> None:
    from mockservers.dataverse.tables import table_info

    backend = sandbox.sandbox.backends["dataverse"]
    resp = dv.get(f"{sandbox.api}/sdkmessagefilters", params={
        "$select": "primaryobjecttypecode", "$expand": "sdkmessageid($select=name)"},
        headers={"Prefer": "odata.maxpagesize=5000"})
    assert resp.status_code == 200 and "@odata.nextLink" not in resp.json()
    served: dict[str, set[str]] = {}
    for row in resp.json()["value"]:
        served.setdefault(row["primaryobjecttypecode"], set()).add(row["sdkmessageid"]["name"])
    assert served == {e.name: set(table_info(e).messages) for e in backend.schema}
    names = {m["name"] for m in dv.get(f"{sandbox.api}/sdkmessages", params={"$select": "name"}).json()["value"]}
    assert names >= set().union(*served.values()) | {"WhoAmI", "RetrieveVersion", "RetrieveCurrentOrganization"}


def test_a_bulk_message_the_table_does_not_support_is_refused(sandbox, dv: requests.Session) -> None:
    name = f"Bulk team {uuid.uuid4().hex[:6]}"
    resp = dv.post(f"{sandbox.api}/teams/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [{
        "@odata.type": "Microsoft.Dynamics.CRM.team", "name": name,
        "businessunitid@odata.bind": f"/businessunits({ROOT_BUSINESS_UNIT})"}]})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == {"code": NOT_SUPPORTED, "message": _not_supported("CreateMultiple", "team")}
    assert _count(dv, sandbox.api, "teams", f"name eq '{name}'") == 0


@pytest.mark.parametrize(("method", "path", "body", "message", "table"), [
    ("POST", "sdkmessages", {"name": "MyMessage", "categoryname": "x", "availability": 0, "isreadonly": False},
     "Create", "sdkmessage"),
    ("PATCH", "sdkmessages({message})", {"name": "Renamed"}, "Update", "sdkmessage"),
    ("DELETE", "sdkmessages({message})", None, "Delete", "sdkmessage"),
    ("POST", "sdkmessagefilters", {"availability": 0}, "Create", "sdkmessagefilter"),
    ("PATCH", "sdkmessagefilters({filter})", {"name": "x"}, "Update", "sdkmessagefilter"),
    ("DELETE", "sdkmessagefilters({filter})", None, "Delete", "sdkmessagefilter"),
    ("POST", "organizations", {"name": "Second org"}, "Create", "organization"),
    ("DELETE", "organizations({organization})", None, "Delete", "organization"),
    ("POST", "sdkmessages/Microsoft.Dynamics.CRM.CreateMultiple",
     {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.sdkmessage", "name": "x"}]}, "CreateMultiple",
     "sdkmessage"),
])
def test_system_tables_refuse_writes_as_dataverse_does(
    sandbox, dv: requests.Session, method: str, path: str, body: dict | None, message: str, table: str
) -> None:
    ids = _system_ids(sandbox, dv)
    before = _snapshot(sandbox, dv)
    resp = dv.request(method, f"{sandbox.api}/{path.format(**ids)}", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == {"code": NOT_SUPPORTED, "message": _not_supported(message, table)}
    assert _snapshot(sandbox, dv) == before


def _system_ids(sandbox, dv: requests.Session) -> dict[str, str]:
    create = dv.get(f"{sandbox.api}/sdkmessages", params={"$filter": "name eq 'Create'"}).json()["value"][0]
    filter_ = dv.get(f"{sandbox.api}/sdkmessagefilters", params={"$top": "1"}).json()["value"][0]
    org = dv.get(f"{sandbox.api}/organizations").json()["value"][0]
    return {"message": create["sdkmessageid"], "filter": filter_["sdkmessagefilterid"],
            "organization": org["organizationid"]}


def _snapshot(sandbox, dv: requests.Session) -> dict[str, list[tuple[str, int]]]:
    """(id, version) of every row of the three system tables."""
    out = {}
    for set_name, key in (("sdkmessages", "sdkmessageid"), ("sdkmessagefilters", "sdkmessagefilterid"),
                          ("organizations", "organizationid")):
        rows = dv.get(f"{sandbox.api}/{set_name}", params={"$select": key},
                      headers={"Prefer": "odata.maxpagesize=5000"}).json()["value"]
        out[set_name] = sorted((r[key], r["@odata.etag"]) for r in rows)
    return out


# -- organization ---------------------------------------------------------------------------------------

def test_the_organization_row_holds_the_settings_clients_read(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/organizations", params={
        "$select": "name,languagecode,localeid,basecurrencysymbol,currencydecimalprecision,_basecurrencyid_value",
        "$expand": "basecurrencyid($select=isocurrencycode)"})
    assert resp.status_code == 200, resp.text
    (org,) = resp.json()["value"]
    who = dv.get(f"{sandbox.api}/WhoAmI").json()
    assert org["organizationid"] == who["OrganizationId"]
    assert (org["name"], org["languagecode"], org["localeid"], org["basecurrencysymbol"]) == (
        "Sandbox Org", 1033, 1033, "$")
    assert org["_basecurrencyid_value"] == USD and org["basecurrencyid"]["isocurrencycode"] == "USD"
    assert org["currencydecimalprecision"] == 2


def test_an_admin_may_update_the_organization_but_not_its_base_currency(sandbox, dv: requests.Session) -> None:
    org_id = _system_ids(sandbox, dv)["organization"]
    resp = dv.patch(f"{sandbox.api}/organizations({org_id})", json={
        "dateformatstring": "dd/MM/yyyy", "basecurrencyid@odata.bind": f"/transactioncurrencies({EUR})"})
    assert resp.status_code == 204, resp.text
    org = dv.get(f"{sandbox.api}/organizations({org_id})").json()
    assert (org["dateformatstring"], org["_basecurrencyid_value"]) == ("dd/MM/yyyy", USD)


# -- functions -------------------------------------------------------------------------------------------

def test_retrieve_version_answers_a_version_string(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/RetrieveVersion()")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"] == f"{sandbox.api}/$metadata#Microsoft.Dynamics.CRM.RetrieveVersionResponse"
    major, minor, build, revision = body["Version"].split(".")
    assert (major, minor) == ("9", "2") and build.isdigit() and revision.isdigit()


@pytest.mark.parametrize("path", [
    "RetrieveCurrentOrganization(AccessType=Microsoft.Dynamics.CRM.EndpointAccessType'Default')",
    "RetrieveCurrentOrganization(AccessType=@p1)?@p1=Microsoft.Dynamics.CRM.EndpointAccessType'Internet'",
    "Microsoft.Dynamics.CRM.RetrieveCurrentOrganization(AccessType='Intranet')",
])
def test_retrieve_current_organization_describes_this_org(sandbox, dv: requests.Session, path: str) -> None:
    resp = dv.get(f"{sandbox.api}/{path}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["@odata.context"] == (
        f"{sandbox.api}/$metadata#Microsoft.Dynamics.CRM.RetrieveCurrentOrganizationResponse")
    detail = body["Detail"]
    org = dv.get(f"{sandbox.api}/organizations", params={"$select": "name"}).json()["value"][0]
    assert (detail["OrganizationId"], detail["FriendlyName"]) == (org["organizationid"], org["name"])
    assert detail["TenantId"] == sandbox.info["tenant_id"]
    assert detail["OrganizationVersion"] == dv.get(f"{sandbox.api}/RetrieveVersion()").json()["Version"]
    assert detail["State"] == "Enabled"
    endpoints = detail["Endpoints"]
    assert endpoints["Keys"] == ["WebApplication", "OrganizationService", "OrganizationDataService"]
    assert endpoints["Count"] == 3 and endpoints["Values"][0] == sandbox.info["dataverse"]["url"].rstrip("/") + "/"


@pytest.mark.parametrize(("path", "status"), [
    ("RetrieveCurrentOrganization()", 400),
    ("RetrieveCurrentOrganization(AccessType=Microsoft.Dynamics.CRM.EndpointAccessType'Nowhere')", 400),
    ("RetrieveCurrentOrganization(AccessType=@missing)", 400),
    ("RetrieveVersion(Foo=1)", 404),
])
def test_function_arguments_are_checked(sandbox, dv: requests.Session, path: str, status: int) -> None:
    resp = dv.get(f"{sandbox.api}/{path}")
    assert resp.status_code == status, resp.text
    assert set(resp.json()["error"]) == {"code", "message"}


# -- visible like every other table ------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "set_name", "code"), [
    ("organization", "organizations", 1019), ("sdkmessage", "sdkmessages", 4606),
    ("sdkmessagefilter", "sdkmessagefilters", 4607),
])
def test_system_tables_are_in_entity_definitions(sandbox, dv: requests.Session, table: str, set_name: str,
                                                 code: int) -> None:
    resp = dv.get(f"{sandbox.api}/EntityDefinitions(LogicalName='{table}')",
                  params={"$select": "EntitySetName,ObjectTypeCode,OwnershipType"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["EntitySetName"], body["ObjectTypeCode"], body["OwnershipType"]) == (set_name, code,
                                                                                      "OrganizationOwned")


def test_metadata_declares_the_system_tables_and_functions(sandbox, dv: requests.Session) -> None:
    import xml.etree.ElementTree as ET

    edm = "{http://docs.oasis-open.org/odata/ns/edm}"
    root = ET.fromstring(dv.get(f"{sandbox.api}/$metadata").content)
    schema = root.find(f".//{edm}Schema")
    assert schema is not None
    types = {e.get("Name") for e in schema.findall(f"{edm}EntityType")}
    assert {"organization", "sdkmessage", "sdkmessagefilter"} <= types
    sets = {e.get("Name") for e in schema.iter(f"{edm}EntitySet")}
    assert {"organizations", "sdkmessages", "sdkmessagefilters"} <= sets
    functions = {f.get("Name"): f for f in schema.findall(f"{edm}Function")}
    assert {"WhoAmI", "RetrieveVersion", "RetrieveCurrentOrganization"} <= set(functions)
    (param,) = functions["RetrieveCurrentOrganization"].findall(f"{edm}Parameter")
    assert (param.get("Name"), param.get("Type")) == ("AccessType", "Microsoft.Dynamics.CRM.EndpointAccessType")
    nav = next(n for n in schema.find(f"{edm}EntityType[@Name='sdkmessagefilter']").findall(f"{edm}NavigationProperty")
               if n.get("Name") == "sdkmessageid")
    assert nav.get("Type") == "mscrm.sdkmessage"


def test_system_rows_come_back_unchanged_after_a_reset(tmp_path) -> None:
    """A reset drops data; the org row and the SDK message rows are rewritten with the same ids."""
    from mockservers.dataverse.models import DataverseBackend

    def system_keys(backend: DataverseBackend) -> dict[str, set[str]]:
        with backend.store.read() as conn:
            return {name: _keys(backend, conn, name) for name in ("organization", "sdkmessage", "sdkmessagefilter")}

    backend = DataverseBackend(f"sqlite:///{tmp_path / 'dv.db'}")
    before = system_keys(backend)
    assert len(before["organization"]) == 1 and len(before["sdkmessagefilter"]) > 30
    backend.reset()
    assert system_keys(backend) == before
    reopened = DataverseBackend(f"sqlite:///{tmp_path / 'dv.db'}")  # a restart on the same store adds nothing
    assert system_keys(reopened) == before


def _keys(backend, conn, name: str) -> set[str]:
    table = backend.store.table(backend.entity(name))
    return {row[f"{name}id"] for row in conn.execute(table.select()).mappings()}


def test_seeding_links_primary_contacts_once(tmp_path) -> None:
    """The fixture's update block links each account to its primary contact; a second seed changes nothing."""
    from mockservers.dataverse.models import DataverseBackend

    backend = DataverseBackend(f"sqlite:///{tmp_path / 'dv.db'}")
    first = backend.seed("default")
    assert first["accounts"] == 40 and first["contacts"] == 45

    def accounts() -> dict[str, tuple[Any, Any]]:
        with backend.store.read() as conn:
            table = backend.store.table(backend.entity("account"))
            return {r["accountid"]: (r["_primarycontactid_value"], r["versionnumber"])
                    for r in conn.execute(table.select()).mappings()}

    linked = accounts()
    assert sum(contact is not None for contact, _ in linked.values()) == 38
    assert backend.seed("default") == {}
    assert accounts() == linked
