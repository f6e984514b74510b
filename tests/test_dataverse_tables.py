"""The Dataverse table declarations and the default Dataverse fixture set.

Option values and lengths are the ones the public table reference lists; the fixture is checked the
way the service would check a client's create request, so a seed that the app would reject fails here.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from mockservers.dataverse.tables import (
    DataverseTable,
    bind_navigation,
    build_schema,
    computed_values,
    default_status,
    load_customizations,
    table_info,
)
from mockservers.odata.schema import AlternateKey, Edm, EntityType, Schema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "default"
SEED = FIXTURES / "dataverse.json"
CUSTOMIZATIONS = FIXTURES / "dataverse-customizations.json"
BIND_URL = re.compile(r"^/(?P<set>[a-z_]+)\((?P<id>[0-9a-fA-F-]{36})\)$")

CRONUS_BC_ID = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
MY_COMPANY_BC_ID = "b2a3c4d5-2222-4a2b-9c3d-000000000002"


@pytest.fixture(scope="module")
def schema() -> Schema:
    return build_schema(load_customizations(CUSTOMIZATIONS))


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    return json.loads(SEED.read_text(encoding="utf-8"))


# -- declarations -------------------------------------------------------------------------------

TABLES = [
    # logical name, entity set, primary name, ownership, change tracking
    ("account", "accounts", "name", "UserOwned", True),
    ("contact", "contacts", "fullname", "UserOwned", True),
    ("product", "products", "name", "OrganizationOwned", True),
    ("transactioncurrency", "transactioncurrencies", "currencyname", "OrganizationOwned", True),
    ("systemuser", "systemusers", "fullname", "BusinessOwned", True),
    ("team", "teams", "name", "BusinessOwned", False),
    ("businessunit", "businessunits", "name", "BusinessOwned", False),
    ("uom", "uoms", "name", "OrganizationOwned", False),
    ("uomschedule", "uomschedules", "name", "OrganizationOwned", False),
    ("bcbi_company", "bcbi_companies", "bcbi_name", "UserOwned", False),
    ("organization", "organizations", "name", "OrganizationOwned", False),
    ("sdkmessage", "sdkmessages", "name", "OrganizationOwned", False),
    ("sdkmessagefilter", "sdkmessagefilters", "name", "OrganizationOwned", False),
]


def test_schema_is_the_crm_namespace_with_exactly_the_declared_tables(schema: Schema) -> None:
    assert schema.namespace == "Microsoft.Dynamics.CRM"
    assert schema.alias == "mscrm"
    assert sorted(e.name for e in schema) == sorted(t[0] for t in TABLES)


@pytest.mark.parametrize(("name", "set_name", "primary", "ownership", "tracked"), TABLES)
def test_table_identity(
    schema: Schema, name: str, set_name: str, primary: str, ownership: str, tracked: bool
) -> None:
    entity = schema.entity(name)
    assert entity is not None
    assert schema.by_set(set_name) is entity
    assert entity.key == f"{name}id"
    key = entity.property(entity.key)
    assert key is not None and key.type is Edm.Guid and not key.read_only and not key.nullable
    assert entity.primary_name == primary and entity.property(primary) is not None
    assert entity.ownership == ownership
    assert entity.change_tracking is tracked
    assert (entity.version_property, entity.modified_on, entity.created_on) == (
        "versionnumber",
        "modifiedon",
        "createdon",
    )
    assert isinstance(entity.info, DataverseTable)
    assert entity.info.schema_name and entity.info.collection_schema_name


@pytest.mark.parametrize("name", [t[0] for t in TABLES])
def test_server_maintained_columns_are_read_only(schema: Schema, name: str) -> None:
    entity = schema.entity(name)
    assert entity is not None
    for column, edm in (("createdon", Edm.DateTimeOffset), ("modifiedon", Edm.DateTimeOffset)):
        prop = entity.property(column)
        assert prop is not None and prop.type is edm and prop.read_only
    version = entity.property("versionnumber")
    assert version is not None and version.type is Edm.Int64 and version.read_only
    for lookup in ("createdby", "modifiedby"):
        nav = entity.navigation(lookup)
        assert nav is not None and nav.target == "systemuser" and nav.read_only
        value = entity.property(f"_{lookup}_value")
        assert value is not None and value.read_only and value.type is Edm.Guid


def test_build_schema_returns_new_objects_every_call() -> None:
    first, second = build_schema(), build_schema()
    assert first is not second
    for entity in first:
        other = second.entity(entity.name)
        assert other is not None and other is not entity and other.properties is not entity.properties
    first.entity("account").add_alternate_key(AlternateKey("k", ("name",)))  # type: ignore[union-attr]
    assert second.entity("account").alternate_keys == []  # type: ignore[union-attr]
    assert build_schema().entity("account").alternate_keys == []  # type: ignore[union-attr]


def _all_navigations(schema: Schema):
    for entity in schema:
        for nav in entity.navigations:
            yield entity, nav


def test_every_navigation_targets_a_table_and_its_column_is_on_the_right_side(schema: Schema) -> None:
    checked = 0
    for entity, nav in _all_navigations(schema):
        target = schema.entity(nav.target)
        assert target is not None, f"{entity.name}.{nav.name}"
        holder = target if nav.collection else entity
        via = holder.property(nav.via)
        assert via is not None, f"{entity.name}.{nav.name}: {nav.via} missing on {holder.name}"
        assert via.type is Edm.Guid and via.read_only and via.lookup
        if nav.discriminator:
            disc = holder.property(nav.discriminator)
            assert disc is not None and disc.hidden, f"{entity.name}.{nav.name}"
            assert via.lookup_type_column == nav.discriminator
            assert nav.discriminator_value == (entity.name if nav.collection else target.name)
        else:
            assert via.lookup_type_column is None, f"{entity.name}.{nav.name} must name its target table"
        checked += 1
    assert checked > 60


def test_every_lookup_value_is_written_by_a_navigation(schema: Schema) -> None:
    for entity in schema:
        for prop in entity.properties:
            if not prop.lookup:
                continue
            assert prop.name == f"_{prop.lookup}_value" and prop.read_only
            writers = [n for n in entity.navigations if not n.collection and n.via == prop.name]
            assert writers, f"{entity.name}.{prop.name}"
            if prop.lookup_type_column:
                assert {n.name for n in writers} == {f"{prop.lookup}_{n.target}" for n in writers}
            else:
                assert [n.name for n in writers] == [prop.lookup]


LOOKUPS = [
    # table, navigation, target, read-only
    ("account", "primarycontactid", "contact", False),
    ("account", "parentaccountid", "account", False),
    ("account", "transactioncurrencyid", "transactioncurrency", False),
    ("account", "bcbi_companyid", "bcbi_company", False),
    ("account", "ownerid_systemuser", "systemuser", False),
    ("account", "ownerid_team", "team", False),
    ("account", "owninguser", "systemuser", True),
    ("account", "owningteam", "team", True),
    ("account", "owningbusinessunit", "businessunit", True),
    ("contact", "parentcustomerid_account", "account", False),
    ("contact", "parentcustomerid_contact", "contact", False),
    ("contact", "bcbi_companyid", "bcbi_company", False),
    ("product", "defaultuomscheduleid", "uomschedule", False),
    ("product", "defaultuomid", "uom", False),
    ("product", "transactioncurrencyid", "transactioncurrency", False),
    ("product", "bcbi_companyid", "bcbi_company", False),
    ("systemuser", "businessunitid", "businessunit", False),
    ("team", "businessunitid", "businessunit", False),
    ("businessunit", "parentbusinessunitid", "businessunit", False),
    ("uom", "uomscheduleid", "uomschedule", False),
    ("uom", "baseuom", "uom", False),
    ("bcbi_company", "bcbi_defaultowningteam", "team", False),
]


@pytest.mark.parametrize(("table", "name", "target", "read_only"), LOOKUPS)
def test_lookup_navigations(schema: Schema, table: str, name: str, target: str, read_only: bool) -> None:
    nav = schema.entity(table).navigation(name)  # type: ignore[union-attr]
    assert nav is not None and not nav.collection
    assert nav.target == target and nav.read_only is read_only


RELATIONSHIPS = [
    # table, collection navigation, referencing table, its lookup value column
    ("account", "contact_customer_accounts", "contact", "_parentcustomerid_value"),
    ("account", "account_parent_account", "account", "_parentaccountid_value"),
    ("contact", "account_primary_contact", "account", "_primarycontactid_value"),
    ("contact", "contact_customer_contacts", "contact", "_parentcustomerid_value"),
    ("systemuser", "user_accounts", "account", "_owninguser_value"),
    ("systemuser", "contact_owning_user", "contact", "_owninguser_value"),
    ("team", "team_accounts", "account", "_owningteam_value"),
    ("businessunit", "business_unit_system_users", "systemuser", "_businessunitid_value"),
    ("transactioncurrency", "transactioncurrency_account", "account", "_transactioncurrencyid_value"),
    ("transactioncurrency", "transactioncurrency_product", "product", "_transactioncurrencyid_value"),
    ("uomschedule", "unit_of_measure_schedule_conversions", "uom", "_uomscheduleid_value"),
    ("uom", "unit_of_measurement_products", "product", "_defaultuomid_value"),
    ("bcbi_company", "bcbi_company_account", "account", "_bcbi_companyid_value"),
    ("bcbi_company", "bcbi_company_product", "product", "_bcbi_companyid_value"),
]


@pytest.mark.parametrize(("table", "name", "referencing", "via"), RELATIONSHIPS)
def test_collection_navigations(schema: Schema, table: str, name: str, referencing: str, via: str) -> None:
    nav = schema.entity(table).navigation(name)  # type: ignore[union-attr]
    assert nav is not None and nav.collection
    assert (nav.target, nav.via) == (referencing, via)
    if via == "_parentcustomerid_value":
        assert (nav.discriminator, nav.discriminator_value) == ("parentcustomerid_type", table)


def test_owner_binds_by_column_name_but_customer_needs_the_target_navigation(schema: Schema) -> None:
    account, contact = schema.entity("account"), schema.entity("contact")
    assert account is not None and contact is not None
    assert bind_navigation(account, "ownerid", "team").name == "ownerid_team"  # type: ignore[union-attr]
    assert bind_navigation(account, "ownerid", "systemuser").name == "ownerid_systemuser"  # type: ignore[union-attr]
    assert bind_navigation(account, "ownerid", "account") is None
    assert bind_navigation(contact, "parentcustomerid", "account") is None  # the documented 400
    assert bind_navigation(contact, "parentcustomerid_account", "account").target == "account"  # type: ignore[union-attr]
    owner = account.property("_ownerid_value")
    assert owner is not None and owner.kind == "Owner" and owner.lookup_type_column == "ownerid_type"
    assert account.property("ownerid_type").hidden  # type: ignore[union-attr]
    customer = contact.property("_parentcustomerid_value")
    assert customer is not None and customer.kind == "Customer"


def test_every_string_column_has_a_max_length(schema: Schema) -> None:
    for entity in schema:
        for prop in entity.properties:
            if prop.type is Edm.String:
                assert prop.max_length, f"{entity.name}.{prop.name}"


LENGTHS = [
    ("account", {"name": 160, "accountnumber": 20, "telephone1": 50, "fax": 50, "websiteurl": 200,
                 "emailaddress1": 100, "address1_line1": 250, "address1_city": 80, "address1_postalcode": 20,
                 "address1_stateorprovince": 50, "address1_country": 80, "address1_composite": 1000,
                 "address1_primarycontactname": 100, "description": 2000}),
    ("contact", {"firstname": 50, "lastname": 50, "middlename": 50, "fullname": 160, "jobtitle": 100,
                 "emailaddress1": 100, "mobilephone": 50}),
    ("product", {"productnumber": 100, "name": 100, "vendorid": 100, "vendorname": 100, "vendorpartnumber": 100}),
    ("transactioncurrency", {"isocurrencycode": 5, "currencyname": 100, "currencysymbol": 10}),
    ("systemuser", {"domainname": 1024, "internalemailaddress": 100, "fullname": 200}),
    ("team", {"name": 160}),
    ("businessunit", {"name": 160}),
    ("uom", {"name": 100}),
    ("uomschedule", {"name": 200, "baseuomname": 100}),
    ("bcbi_company", {"bcbi_name": 30, "bcbi_externalid": 36}),
]  # fmt: skip


@pytest.mark.parametrize(("table", "lengths"), LENGTHS)
def test_string_lengths_match_the_table_reference(schema: Schema, table: str, lengths: dict[str, int]) -> None:
    entity = schema.entity(table)
    assert entity is not None
    assert {c: entity.property(c).max_length for c in lengths} == lengths  # type: ignore[union-attr]


REQUIRED = [
    ("account", {"name"}),
    ("contact", {"lastname"}),
    ("product", {"productnumber", "name", "productstructure", "quantitydecimal", "_defaultuomscheduleid_value",
                 "_defaultuomid_value"}),
    ("transactioncurrency", {"isocurrencycode", "currencyname", "currencysymbol", "currencyprecision",
                             "exchangerate"}),
    ("systemuser", {"accessmode", "_businessunitid_value"}),
    ("team", {"name", "teamtype", "_businessunitid_value"}),
    ("businessunit", {"name"}),
    ("uom", {"name", "quantity", "_uomscheduleid_value"}),
    ("uomschedule", {"name", "baseuomname"}),
    ("bcbi_company", {"bcbi_name"}),
]  # fmt: skip


@pytest.mark.parametrize(("table", "required"), REQUIRED)
def test_required_columns(schema: Schema, table: str, required: set[str]) -> None:
    entity = schema.entity(table)
    assert entity is not None
    assert {p.name for p in entity.properties if p.required} == required
    levels = table_info(entity).required_levels
    assert {k if entity.property(k) else f"_{k}_value" for k in levels} == required
    assert set(levels.values()) <= {"SystemRequired", "ApplicationRequired"}


ACCOUNT_TYPES = {1: "Competitor", 2: "Consultant", 3: "Customer", 4: "Investor", 5: "Partner", 6: "Influencer",
                 7: "Press", 8: "Prospect", 9: "Reseller", 10: "Supplier", 11: "Vendor", 12: "Other"}  # fmt: skip
OPTION_SETS = [
    ("account", "customertypecode", ACCOUNT_TYPES),
    ("contact", "customertypecode", {1: "Default Value"}),
    ("product", "producttypecode", {1: "Sales Inventory", 2: "Miscellaneous Charges", 3: "Services", 4: "Flat Fees"}),
    ("product", "productstructure", {1: "Product", 2: "Product Family", 3: "Product Bundle"}),
    ("account", "paymenttermscode", {1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"}),
    ("account", "address1_freighttermscode", {1: "FOB", 2: "No Charge"}),
    ("account", "address1_shippingmethodcode", {1: "Airborne", 2: "DHL", 3: "FedEx", 4: "UPS", 5: "Postal Mail",
                                                6: "Full Load", 7: "Will Call"}),
    ("systemuser", "accessmode", {0: "Read-Write", 1: "Administrative", 2: "Read", 3: "Support User",
                                  4: "Non-interactive", 5: "Delegated Admin"}),
    ("team", "teamtype", {0: "Owner", 1: "Access", 2: "AAD Security Group", 3: "AAD Office Group"}),
    ("product", "statecode", {0: "Active", 1: "Retired", 2: "Draft", 3: "Under Revision"}),
    *[(t, "statecode", {0: "Active", 1: "Inactive"})
      for t in ("account", "contact", "transactioncurrency", "uomschedule", "bcbi_company")],
]  # fmt: skip


@pytest.mark.parametrize(("table", "column", "expected"), OPTION_SETS)
def test_option_sets_match_the_reference(schema: Schema, table: str, column: str, expected: dict) -> None:
    prop = schema.entity(table).property(column)  # type: ignore[union-attr]
    assert prop is not None and prop.options is not None and prop.type is Edm.Int32
    assert {o.value: o.label for o in prop.options.options} == expected
    assert prop.kind == {"statecode": "State"}.get(column, "Picklist")


STATUS_SETS = [
    ("product", {0: ("Draft", 2), 1: ("Active", 0), 2: ("Retired", 1), 3: ("Under Revision", 3)}),
    *[(t, {1: ("Active", 0), 2: ("Inactive", 1)})
      for t in ("account", "contact", "transactioncurrency", "uomschedule", "bcbi_company")],
]  # fmt: skip


@pytest.mark.parametrize(("table", "expected"), STATUS_SETS)
def test_status_reasons_carry_their_state(schema: Schema, table: str, expected: dict) -> None:
    entity = schema.entity(table)
    prop = entity.property("statuscode")  # type: ignore[union-attr]
    assert prop is not None and prop.kind == "Status" and prop.options is not None
    assert {o.value: (o.label, o.state) for o in prop.options.options} == expected
    assert prop.default == 1 and entity.property("statecode").default == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("table", "state", "status"),
    [("account", 0, 1), ("account", 1, 2), ("product", 0, 1), ("product", 1, 2), ("product", 2, 0), ("product", 3, 3)],
)
def test_default_status_of_each_state(schema: Schema, table: str, state: int, status: int) -> None:
    options = schema.entity(table).property("statuscode").options  # type: ignore[union-attr]
    assert default_status(options, state) == status  # type: ignore[arg-type]


def test_tables_without_state_model_have_no_statecode(schema: Schema) -> None:
    for table in ("systemuser", "team", "businessunit", "uom"):
        assert schema.entity(table).property("statecode") is None  # type: ignore[union-attr]


@pytest.mark.parametrize("table", ["account", "contact", "product"])
def test_money_columns_have_base_companions_and_a_currency(schema: Schema, table: str) -> None:
    entity = schema.entity(table)
    assert entity is not None
    money = [p for p in entity.properties if p.kind == "Money" and not p.name.endswith("_base")]
    assert money
    for prop in money:
        base = entity.property(f"{prop.name}_base")
        assert prop.type is Edm.Decimal and prop.scale == 4 and not prop.read_only
        assert base is not None and base.read_only and base.kind == "Money"
    assert entity.property("exchangerate").read_only  # type: ignore[union-attr]
    assert entity.navigation("transactioncurrencyid") is not None


def test_computed_text_columns(schema: Schema) -> None:
    contact = schema.entity("contact")
    assert contact is not None and contact.property("fullname").read_only  # type: ignore[union-attr]
    row = {"firstname": "Robert", "lastname": "Townes", "address1_line1": "192 Market Square",
           "address1_city": "Atlanta", "address1_stateorprovince": "GA", "address1_country": "US"}  # fmt: skip
    assert computed_values(contact, row) == {
        "fullname": "Robert Townes",
        "address1_composite": "192 Market Square\r\nAtlanta GA\r\nUS",
    }
    assert computed_values(contact, {"lastname": "Ray"})["fullname"] == "Ray"
    assert computed_values(contact, {}) == {"fullname": None, "address1_composite": None}


# -- customizations -----------------------------------------------------------------------------


def test_customization_file_adds_the_account_number_key(schema: Schema) -> None:
    keys = schema.entity("account").alternate_keys  # type: ignore[union-attr]
    assert [(k.name, k.properties, k.display_name) for k in keys] == [
        ("sbx_accountnumber_key", ("accountnumber",), "Account Number")
    ]
    assert build_schema().entity("account").alternate_keys == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad",
    [
        {"alternate_keys": {"nosuchtable": [{"name": "k", "properties": ["x"]}]}},
        {"alternate_keys": {"account": [{"name": "k", "properties": ["nosuchcolumn"]}]}},
        {"alternate_keys": {"account": [{"properties": ["accountnumber"]}]}},
        {"columns": {}},
    ],
)
def test_bad_customizations_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        build_schema(bad)


def test_schema_builds_storage_and_metadata(schema: Schema) -> None:
    """The engine accepts the declarations: tables with the key index, and a CSDL document."""
    import sqlalchemy as sa

    from mockservers.odata.csdl import render_csdl
    from mockservers.odata.storage import Store

    store = Store(schema)
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("account")}
    assert "ux_account_sbx_accountnumber_key" in indexes
    csdl = render_csdl(schema, container="System")
    assert '<EntitySet Name="bcbi_companies" EntityType="mscrm.bcbi_company">' in csdl
    assert 'Name="parentcustomerid_account" Type="mscrm.account" Partner="contact_customer_accounts"' in csdl
    assert "parentcustomerid_type" not in csdl  # hidden discriminator stays internal


# -- the seed fixture ---------------------------------------------------------------------------


def _bind_target(value: Any) -> tuple[str, str] | None:
    match = BIND_URL.match(value) if isinstance(value, str) else None
    return (match["set"], match["id"].lower()) if match else None


def _value_problem(prop, value: Any) -> str | None:
    if value is None:
        return None
    if prop.type is Edm.String:
        if not isinstance(value, str):
            return "not a string"
        if len(value) > prop.max_length:
            return f"longer than {prop.max_length}"
    elif prop.type is Edm.Guid:
        try:
            uuid.UUID(value)
        except (ValueError, TypeError, AttributeError):
            return "not a GUID"
    elif prop.type is Edm.Boolean:
        if not isinstance(value, bool):
            return "not a boolean"
    elif prop.type in (Edm.Int32, Edm.Int64):
        if isinstance(value, bool) or not isinstance(value, int):
            return "not an integer"
    elif prop.type is Edm.Decimal and (isinstance(value, bool) or not isinstance(value, int | float)):
        return "not a number"
    if prop.options is not None and value not in prop.options.values():
        return f"option {value} not in {sorted(prop.options.values())}"
    return None


def fixture_problems(schema: Schema, seed: dict[str, Any]) -> list[str]:
    """Everything the service would refuse in the seed, checked as client create requests."""
    problems: list[str] = []
    defined: set[tuple[str, str]] = set()
    for block in seed["tables"]:
        entity: EntityType | None = schema.by_set(block["set"])
        if entity is None:
            problems.append(f"unknown entity set {block['set']}")
            continue
        updating = bool(block.get("update"))
        for index, record in enumerate(block["records"]):
            where = f"{block['set']}[{index}]{' (update)' if updating else ''}"
            bound: set[str] = set()
            if updating:  # a PATCH body for a record created earlier: its key, then columns and binds
                key = record.get(entity.key)
                if not isinstance(key, str) or (block["set"], key.lower()) not in defined:
                    problems.append(f"{where}: updates {key}, not defined earlier")
                record = {k: v for k, v in record.items() if k != entity.key}
            for name, value in record.items():
                if name.endswith("@odata.bind"):
                    nav_name = name.removesuffix("@odata.bind")
                    target = _bind_target(value)
                    if target is None:
                        problems.append(f"{where}: {name} is not a /set(guid) URL: {value!r}")
                        continue
                    target_entity = schema.by_set(target[0])
                    nav = bind_navigation(entity, nav_name, target_entity.name if target_entity else None)
                    if nav is None or nav.collection or nav.read_only:
                        problems.append(f"{where}: {nav_name} is not a writable single-valued navigation")
                    elif target_entity is None or target_entity.name != nav.target:
                        problems.append(f"{where}: {name} binds {target[0]}, expected {nav.target}")
                    elif target not in defined:
                        problems.append(f"{where}: {name} points at {value}, not defined earlier")
                    else:
                        bound.add(entity.property(nav.via).lookup)  # type: ignore[union-attr]
                    continue
                if not entity.writable(name):
                    problems.append(f"{where}: {name} is not a writable column")
                    continue
                problem = _value_problem(entity.property(name), value)
                if problem:
                    problems.append(f"{where}: {name} {problem}")
            if updating:
                continue
            for prop in entity.properties:
                if not prop.required:
                    continue
                present = prop.lookup in bound if prop.lookup else record.get(prop.name) is not None
                if not present and prop.default is None:
                    problems.append(f"{where}: required {prop.lookup or prop.name} missing")
            state, status = record.get("statecode"), record.get("statuscode")
            if status is not None:
                reason = next(o for o in entity.property("statuscode").options.options if o.value == status)  # type: ignore[union-attr]
                if reason.state != (state if state is not None else 0):
                    problems.append(f"{where}: statuscode {status} does not belong to statecode {state}")
            key = record.get(entity.key)
            if _value_problem(entity.property(entity.key), key) or key is None:
                problems.append(f"{where}: no fixed primary key")
            elif (block["set"], key.lower()) in defined:
                problems.append(f"{where}: duplicate key {key}")
            else:
                defined.add((block["set"], key.lower()))
                if block["set"] == "uomschedules" and not updating:  # a unit group brings its base unit
                    defined.add(("uoms", str(uuid.uuid5(uuid.UUID(key), "base unit"))))
    return problems


def test_seed_is_a_valid_sequence_of_create_requests(schema: Schema, seed: dict[str, Any]) -> None:
    assert fixture_problems(schema, seed) == []


def _records(seed: dict[str, Any], set_name: str) -> list[dict[str, Any]]:
    return next(block["records"] for block in seed["tables"] if block["set"] == set_name)


def _updates(seed: dict[str, Any], set_name: str) -> list[dict[str, Any]]:
    return next(block["records"] for block in seed["tables"] if block["set"] == set_name and block.get("update"))


BREAKAGES = [
    ("accounts", lambda r: r.update({"nosuchcolumn": 1}), "not a writable column"),
    ("accounts", lambda r: r.update({"_transactioncurrencyid_value": r["accountid"]}), "not a writable column"),
    ("accounts", lambda r: r.update({"name": "x" * 161}), "longer than 160"),
    ("accounts", lambda r: r.update({"customertypecode": 13}), "option 13"),
    ("accounts", lambda r: r.pop("name"), "required name missing"),
    ("accounts", lambda r: r.update({"statecode": 1, "statuscode": 1}), "does not belong"),
    ("accounts", lambda r: r.update({"ownerid@odata.bind": "/teams(00000000-0000-4000-8000-000000000099)"}),
     "not defined earlier"),
    ("accounts", lambda r: r.update({"primarycontactid@odata.bind": "/contacts(c0000000-0000-4000-8000-000000000001)"}),
     "not defined earlier"),
    ("accounts", lambda r: r.update({"transactioncurrencyid@odata.bind": "/teams(7e000000-0000-4000-8000-000000000001)"}),
     "expected transactioncurrency"),
    ("contacts", lambda r: r.update({"parentcustomerid@odata.bind": "/accounts(a0000000-0000-4000-8000-000000000001)"}),
     "not a writable single-valued navigation"),
    ("products", lambda r: r.pop("defaultuomid@odata.bind"), "required defaultuomid missing"),
    ("contacts", lambda r: r.update({"contactid": "a0000000"}), "no fixed primary key"),
]  # fmt: skip
UPDATE_BREAKAGES = [
    (lambda r: r.update({"accountid": "a0000000-0000-4000-8000-000000000999"}), "not defined earlier"),
    (lambda r: r.update({"primarycontactid@odata.bind": "/contacts(c0000000-0000-4000-8000-000000000999)"}),
     "not defined earlier"),
    (lambda r: r.update({"nosuchcolumn": 1}), "not a writable column"),
]  # fmt: skip


@pytest.mark.parametrize(("breakage", "expected"), UPDATE_BREAKAGES)
def test_fixture_check_catches_bad_updates(schema: Schema, seed: dict[str, Any], breakage, expected: str) -> None:
    broken = copy.deepcopy(seed)
    breakage(_updates(broken, "accounts")[0])
    problems = fixture_problems(schema, broken)
    assert any(expected in p and "(update)" in p for p in problems), problems


def test_every_active_account_has_a_primary_contact_parented_to_it(seed: dict[str, Any]) -> None:
    parents = {c["contactid"]: _bind_target(c.get("parentcustomerid_account@odata.bind"))
               for c in _records(seed, "contacts")}
    primary = {u["accountid"]: _bind_target(u["primarycontactid@odata.bind"]) for u in _updates(seed, "accounts")}
    active = [a["accountid"] for a in _records(seed, "accounts") if a.get("statecode", 0) == 0]
    assert set(active) <= set(primary)
    for account, (set_name, contact) in primary.items():  # type: ignore[misc]
        assert set_name == "contacts" and parents[contact] == ("accounts", account), account


def test_every_product_has_a_unit_group_and_a_default_unit(seed: dict[str, Any]) -> None:
    units = {u["uomid"]: _bind_target(u["uomscheduleid@odata.bind"]) for u in _records(seed, "uoms")}
    for product in _records(seed, "products"):
        group = _bind_target(product["defaultuomscheduleid@odata.bind"])
        unit = _bind_target(product["defaultuomid@odata.bind"])
        assert group is not None and unit is not None and units[unit[1]] == group, product["productnumber"]



@pytest.mark.parametrize(("set_name", "breakage", "expected"), BREAKAGES)
def test_fixture_check_catches_bad_records(
    schema: Schema, seed: dict[str, Any], set_name: str, breakage, expected: str
) -> None:
    broken = copy.deepcopy(seed)
    breakage(_records(broken, set_name)[0])
    problems = fixture_problems(schema, broken)
    assert any(expected in p for p in problems), problems


def test_seed_tables_come_in_dependency_order(seed: dict[str, Any]) -> None:
    assert [(block["set"], bool(block.get("update"))) for block in seed["tables"]] == [
        ("businessunits", False), ("transactioncurrencies", False), ("systemusers", False), ("teams", False),
        ("uomschedules", False), ("uoms", False), ("bcbi_companies", False), ("accounts", False),
        ("contacts", False), ("products", False), ("accounts", True),  # primary contacts, once both exist
    ]  # fmt: skip
    counts = {block["set"]: len(block["records"]) for block in seed["tables"] if not block.get("update")}
    assert 35 <= counts["accounts"] <= 45 and 35 <= counts["contacts"] <= 45 and 20 <= counts["products"] <= 30


def test_organization_points_at_the_root_business_unit_and_base_currency(seed: dict[str, Any]) -> None:
    org = seed["organization"]
    assert set(org) == {"organizationid", "name", "base_currency", "business_unit"}
    uuid.UUID(org["organizationid"])
    root = next(r for r in _records(seed, "businessunits") if r["businessunitid"] == org["business_unit"])
    assert root["name"] == org["name"] == "Sandbox Org" and "parentbusinessunitid@odata.bind" not in root
    base = next(r for r in _records(seed, "transactioncurrencies") if r["isocurrencycode"] == org["base_currency"])
    assert base["exchangerate"] == 1
    assert {r["isocurrencycode"] for r in _records(seed, "transactioncurrencies")} == {"USD", "EUR", "GBP"}


def test_application_users_carry_the_app_registration_ids(seed: dict[str, Any]) -> None:
    users = {r.get("applicationid"): r for r in _records(seed, "systemusers")}
    integration = users["2f7b8a61-5c3e-4d9a-9f1b-6a0e3c1d2b47"]
    assert integration["azureactivedirectoryobjectid"] == "9c4e1f2a-7b3d-4e8f-a1c6-5d2b9e0f3a18"
    assert integration["accessmode"] == 4
    reporting = users["5a8d2c1f-9e3b-4f7a-b6c4-2d1e0f9a8b73"]
    assert reporting["azureactivedirectoryobjectid"] == "3e9b7c2d-1a4f-4b6e-8d5c-7f0a2e1b9c64"
    interactive = [r for r in _records(seed, "systemusers") if r["accessmode"] == 0]
    assert len(interactive) == 3  # admin + two salespeople


def test_each_bc_company_has_its_row_business_unit_and_owner_team(seed: dict[str, Any]) -> None:
    companies = {r["bcbi_externalid"]: r for r in _records(seed, "bcbi_companies")}
    assert set(companies) == {CRONUS_BC_ID, MY_COMPANY_BC_ID}
    teams = {r["teamid"]: r for r in _records(seed, "teams")}
    units = {r["businessunitid"]: r for r in _records(seed, "businessunits")}
    for bc_id, row in companies.items():
        team = teams[_bind_target(row["bcbi_defaultowningteam@odata.bind"])[1]]  # type: ignore[index]
        unit = units[_bind_target(team["businessunitid@odata.bind"])[1]]  # type: ignore[index]
        assert unit["name"] == f"{row['bcbi_name']} ({bc_id})"
        assert team["name"] == f"BCI - {unit['name']}" and team["teamtype"] == 0
        assert row["ownerid@odata.bind"] == row["bcbi_defaultowningteam@odata.bind"]


def test_exactly_one_account_is_stamped_with_the_second_company(seed: dict[str, Any]) -> None:
    second = next(r for r in _records(seed, "bcbi_companies") if r["bcbi_externalid"] == MY_COMPANY_BC_ID)
    first = next(r for r in _records(seed, "bcbi_companies") if r["bcbi_externalid"] == CRONUS_BC_ID)

    def stamped(set_name: str, company: dict) -> list[dict]:
        url = f"/bcbi_companies({company['bcbi_companyid']})"
        return [r for r in _records(seed, set_name) if r.get("bcbi_companyid@odata.bind") == url]

    assert [r["name"] for r in stamped("accounts", second)] == ["Wingtip Toys"]
    assert stamped("contacts", second) == [] and stamped("products", second) == []
    for set_name in ("accounts", "contacts", "products"):
        assert len(stamped(set_name, first)) >= 3


def test_match_cases_are_present_in_the_data(seed: dict[str, Any]) -> None:
    names = [r["name"] for r in _records(seed, "accounts")]
    for name in ("Adatum Corporation", "trey research", "Alpine  Ski House", "NORTHWIND TRADERS", "Tailspin Toys "):
        assert name in names
    assert names.count("Contoso Pharmaceuticals") == 2
    assert "Relecloud" not in names
    notes = seed["_notes"]["match_based_coupling"]
    described = {c["account"] for c in notes["customers"] if c.get("account")}
    assert described - {"Contoso Pharmaceuticals (two accounts)"} <= set(names)
    types = [r["customertypecode"] for r in _records(seed, "accounts")]
    assert types.count(3) > 25 and types.count(11) >= 3 and types.count(8) >= 3
    assert sum(r.get("statecode") == 1 for r in _records(seed, "accounts")) >= 3


def test_account_numbers_are_unique_for_the_alternate_key(seed: dict[str, Any]) -> None:
    numbers = [r["accountnumber"] for r in _records(seed, "accounts")]
    assert len(numbers) == len(set(numbers))


def test_contacts_mix_account_parents_contact_parents_and_standalone(seed: dict[str, Any]) -> None:
    contacts = _records(seed, "contacts")
    with_account = [c for c in contacts if "parentcustomerid_account@odata.bind" in c]
    with_contact = [c for c in contacts if "parentcustomerid_contact@odata.bind" in c]
    standalone = [c for c in contacts if not any(k.startswith("parentcustomerid") for k in c)]
    assert len(with_account) > 25 and len(with_contact) >= 1 and len(standalone) >= 3


def test_products_are_sales_inventory_and_a_few_services(seed: dict[str, Any]) -> None:
    products = _records(seed, "products")
    kinds = [p["producttypecode"] for p in products]
    assert kinds.count(1) >= 20 and 2 <= kinds.count(3) <= 5
    assert {p["transactioncurrencyid@odata.bind"] for p in products} == {
        "/transactioncurrencies(cc000000-0000-4000-8000-000000000001)"
    }
