"""The Business Central entity declarations and the default BC fixture set.

Property lists, lengths and enum members are the ones the BC API v2.0 reference lists
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/resources/dynamics_customer and its siblings); the
fixture is checked the way the BC API would check a client's POST, and its match-based-coupling notes
are recomputed against the Dataverse fixture so the designed cases really hold.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mockservers.bc.tables import build_schema, company_scoped, entity_info
from mockservers.odata.csdl import enum_spellings, xml_name
from mockservers.odata.schema import AlternateKey, Edm, EntityType, Schema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "default"
BC_SEED = FIXTURES / "bc.json"
DV_SEED = FIXTURES / "dataverse.json"

CRONUS_ID = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
MY_COMPANY_ID = "b2a3c4d5-2222-4a2b-9c3d-000000000002"
COMPANY_NAMES = {CRONUS_ID: "CRONUS USA, Inc.", MY_COMPANY_ID: "My Company"}


def enum_label(options, value):
    """The member name a JSON enum value denotes (escaped or plain, any case), via the app's own spelling table."""
    escaped = enum_spellings(options).get(value.lower()) if isinstance(value, str) else None
    return next((o.label for o in options.options if xml_name(o.label) == escaped), None)


@pytest.fixture(scope="module")
def schema() -> Schema:
    return build_schema()


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    return json.loads(BC_SEED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dataverse() -> dict[str, Any]:
    return json.loads(DV_SEED.read_text(encoding="utf-8"))


def entity_of(schema: Schema, set_name: str) -> EntityType:
    entity = schema.by_set(set_name)
    assert entity is not None, set_name
    return entity


# -- declarations -------------------------------------------------------------------------------

ENTITIES = [
    # entity name, set name, caption, declared facts expected (subset)
    ("customer", "customers", "Customer",
     {"number_series": "C", "webhooks": True, "required_on_create": ("displayName",)}),
    ("vendor", "vendors", "Vendor", {"number_series": "V", "webhooks": True, "required_on_create": ("displayName",)}),
    ("contact", "contacts", "Contact", {"number_series": "CT", "required_on_create": ("displayName",)}),
    ("item", "items", "Item", {"number_series": "I", "webhooks": True, "required_on_create": ("displayName",),
                               "create_forbidden": ("inventory",)}),
    ("resource", "resources", "Resource", {"number_series": "R", "api_route": "custom"}),
    ("contactBusinessRelation", "contactBusinessRelations", "Contact Business Relation",
     {"api_route": "custom", "code_references": {"contactNumber": ("contact", "number")}}),
    ("currency", "currencies", "Currency", {"code_field": "code", "webhooks": True, "required_on_create": ("code",)}),
    ("salespersonPurchaser", "salespeoplePurchasers", "Salesperson/Purchaser",
     {"code_field": "code", "required_on_create": ("code",)}),
    ("unitOfMeasure", "unitsOfMeasure", "Unit of Measure", {"code_field": "code", "webhooks": True}),
    ("paymentTerm", "paymentTerms", "Payment Terms", {"code_field": "code", "webhooks": True}),
    ("shipmentMethod", "shipmentMethods", "Shipment Method", {"code_field": "code", "webhooks": True}),
    ("paymentMethod", "paymentMethods", "Payment Method", {"code_field": "code", "webhooks": True}),
    ("countryRegion", "countriesRegions", "Country/Region", {"code_field": "code", "webhooks": True}),
]
WEBHOOK_SETS = {"customers", "vendors", "items", "currencies", "paymentTerms", "paymentMethods",
                "shipmentMethods", "unitsOfMeasure", "countriesRegions"}


def test_schema_is_rebuilt_on_every_call() -> None:
    first, second = build_schema(), build_schema()
    assert first.namespace == "Microsoft.NAV" and first.alias is None
    assert first is not second
    assert first.entity("customer") is not second.entity("customer")
    first.entity("customer").add_alternate_key(AlternateKey("byName", ("displayName",)))
    assert [k.name for k in second.entity("customer").alternate_keys] == ["number"]


def test_entity_sets_are_exactly_the_declared_ones(schema: Schema) -> None:
    assert {e.set_name for e in schema} == {s for _, s, _, _ in ENTITIES} | {"companies"}


@pytest.mark.parametrize(("name", "set_name", "caption", "facts"), ENTITIES)
def test_company_scoped_entity_conventions(
    schema: Schema, name: str, set_name: str, caption: str, facts: dict[str, Any]
) -> None:
    entity = entity_of(schema, set_name)
    assert entity.name == name
    assert entity.key == "id"
    key = entity.property("id")
    assert key.type is Edm.Guid and not key.read_only and not key.hidden
    for column, edm in (("companyId", Edm.Guid), ("rowVersion", Edm.Int64), ("systemCreatedAt", Edm.DateTimeOffset)):
        prop = entity.property(column)
        assert prop is not None and prop.type is edm and prop.hidden, column
    assert entity.scope_property == "companyId"
    assert entity.version_property == "rowVersion"
    assert entity.created_on == "systemCreatedAt"
    assert entity.modified_on == "lastModifiedDateTime"
    modified = entity.property("lastModifiedDateTime")
    assert modified.type is Edm.DateTimeOffset and modified.read_only and not modified.hidden
    info = entity_info(entity)
    assert info.caption == caption
    for fact, value in facts.items():
        assert getattr(info, fact) == value, fact
    assert info.webhooks == (set_name in WEBHOOK_SETS)
    assert (info.api_route == "custom") == (set_name in ("resources", "contactBusinessRelations"))
    assert not info.read_only
    if info.number_series is not None:
        assert [(k.name, k.properties) for k in entity.alternate_keys] == [("number", ("number",))]
    elif info.code_field is not None:
        assert [(k.name, k.properties) for k in entity.alternate_keys] == [("code", ("code",))]
        assert info.required_on_create == ("code",)
    else:  # a link table (contact business relations): rows are named by their id only
        assert entity.alternate_keys == [] and info.required_on_create == ()


def test_company_is_a_read_only_root_entity(schema: Schema) -> None:
    company = entity_of(schema, "companies")
    assert company.name == "company" and company.scope_property is None
    assert company not in company_scoped(schema)
    expected = [
        ("id", Edm.Guid, None), ("systemVersion", Edm.String, None), ("timestamp", Edm.Int64, None),
        ("name", Edm.String, 30), ("displayName", Edm.String, 250), ("businessProfileId", Edm.String, 250),
        ("systemCreatedAt", Edm.DateTimeOffset, None), ("systemCreatedBy", Edm.Guid, None),
        ("systemModifiedAt", Edm.DateTimeOffset, None), ("systemModifiedBy", Edm.Guid, None),
    ]
    assert [(p.name, p.type, p.max_length) for p in company.properties] == expected
    assert all(p.read_only and not p.hidden for p in company.properties)
    assert company.version_property is None  # BC sends no @odata.etag on company rows
    assert entity_info(company).read_only and entity_info(company).caption == "Company"


# Property tables from the API v2.0 resource pages: name, EDM type, max length, kind, read-only.
S, G, D, B, DT, DA = Edm.String, Edm.Guid, Edm.Decimal, Edm.Boolean, Edm.DateTimeOffset, Edm.Date
ADDRESS = [
    ("addressLine1", S, 100, "Text", False), ("addressLine2", S, 50, "Text", False),
    ("city", S, 30, "Text", False), ("state", S, 30, "Text", False),
    ("country", S, 10, "Code", False), ("postalCode", S, 20, "Code", False),
]
PROPERTIES: dict[str, list[tuple[str, Edm, int | None, str, bool]]] = {
    "customers": [
        ("id", G, None, "Guid", False), ("number", S, 20, "Code", False), ("displayName", S, 100, "Text", False),
        ("type", S, None, "Enum", False), *ADDRESS, ("phoneNumber", S, 30, "Text", False),
        ("email", S, 80, "Text", False), ("website", S, 255, "Text", False),
        ("salespersonCode", S, 20, "Code", False), ("balanceDue", D, None, "Decimal", True),
        ("creditLimit", D, None, "Decimal", False), ("taxLiable", B, None, "Boolean", False),
        ("taxAreaId", G, None, "Guid", False), ("taxAreaDisplayName", S, 100, "Text", True),
        ("taxRegistrationNumber", S, 20, "Text", False), ("currencyId", G, None, "Guid", False),
        ("currencyCode", S, 10, "Code", False), ("paymentTermsId", G, None, "Guid", False),
        ("shipmentMethodId", G, None, "Guid", False), ("paymentMethodId", G, None, "Guid", False),
        ("blocked", S, None, "Enum", False), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "vendors": [
        ("id", G, None, "Guid", False), ("number", S, 20, "Code", False), ("displayName", S, 100, "Text", False),
        *ADDRESS, ("phoneNumber", S, 30, "Text", False), ("email", S, 80, "Text", False),
        ("website", S, 255, "Text", False), ("taxRegistrationNumber", S, 20, "Text", False),
        ("currencyId", G, None, "Guid", False), ("currencyCode", S, 10, "Code", False),
        ("irs1099Code", S, 10, "Code", False), ("paymentTermsId", G, None, "Guid", False),
        ("paymentMethodId", G, None, "Guid", False), ("taxLiable", B, None, "Boolean", False),
        ("blocked", S, None, "Enum", False), ("balance", D, None, "Decimal", True),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "contacts": [
        ("id", G, None, "Guid", False), ("number", S, 20, "Code", False), ("type", S, None, "Enum", False),
        ("displayName", S, 100, "Text", False), ("jobTitle", S, 30, "Text", False),
        ("companyNumber", S, 20, "Code", False), ("companyName", S, 100, "Text", False),
        ("contactBusinessRelation", S, None, "Enum", False), *ADDRESS, ("phoneNumber", S, 30, "Text", False),
        ("mobilePhoneNumber", S, 30, "Text", False), ("email", S, 80, "Text", False),
        ("website", S, 255, "Text", False), ("searchName", S, 100, "Code", False),
        ("privacyBlocked", B, None, "Boolean", False), ("taxRegistrationNumber", S, 20, "Text", False),
        ("lastInteractionDate", DA, None, "Date", True), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "items": [
        ("id", G, None, "Guid", False), ("number", S, 20, "Code", False), ("displayName", S, 100, "Text", False),
        ("displayName2", S, 50, "Text", False), ("type", S, None, "Enum", False),
        ("itemCategoryId", G, None, "Guid", False), ("itemCategoryCode", S, 20, "Code", False),
        ("blocked", B, None, "Boolean", False), ("gtin", S, 14, "Code", False),
        ("inventory", D, None, "Decimal", False), ("unitPrice", D, None, "Decimal", False),
        ("priceIncludesTax", B, None, "Boolean", False), ("unitCost", D, None, "Decimal", False),
        ("taxGroupId", G, None, "Guid", False), ("taxGroupCode", S, 20, "Code", False),
        ("baseUnitOfMeasureId", G, None, "Guid", False), ("baseUnitOfMeasureCode", S, 10, "Code", False),
        ("generalProductPostingGroupId", G, None, "Guid", False),
        ("generalProductPostingGroupCode", S, 20, "Code", False),
        ("inventoryPostingGroupId", G, None, "Guid", False), ("inventoryPostingGroupCode", S, 20, "Code", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "currencies": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 30, "Text", False),
        ("symbol", S, 10, "Text", False), ("amountDecimalPlaces", S, 5, "Text", False),
        ("amountRoundingPrecision", D, None, "Decimal", False), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "salespeoplePurchasers": [
        ("id", G, None, "Guid", False), ("code", S, 20, "Code", False), ("displayName", S, 50, "Text", False),
        ("email", S, 80, "Text", False), ("email2", S, 80, "Text", False), ("phoneNo", S, 30, "Text", False),
        ("jobTitle", S, 30, "Text", False), ("commisionPercent", D, None, "Decimal", False),
        ("privacyBlocked", B, None, "Boolean", False), ("blocked", B, None, "Boolean", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "unitsOfMeasure": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 50, "Text", False),
        ("internationalStandardCode", S, 10, "Code", False), ("symbol", S, 10, "Text", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "paymentTerms": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 100, "Text", False),
        ("dueDateCalculation", S, None, "Text", False), ("discountDateCalculation", S, None, "Text", False),
        ("discountPercent", D, None, "Decimal", False), ("calculateDiscountOnCreditMemos", B, None, "Boolean", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "shipmentMethods": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 100, "Text", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "paymentMethods": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 100, "Text", False),
        ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "countriesRegions": [
        ("id", G, None, "Guid", False), ("code", S, 10, "Code", False), ("displayName", S, 50, "Text", False),
        ("addressFormat", S, None, "Enum", False), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "contactBusinessRelations": [
        ("id", G, None, "Guid", False), ("contactNumber", S, 20, "Code", False),
        ("businessRelationCode", S, 10, "Code", False), ("linkToTable", S, None, "Enum", False),
        ("linkNumber", S, 20, "Code", False), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
    "resources": [
        ("id", G, None, "Guid", False), ("number", S, 20, "Code", False), ("displayName", S, 100, "Text", False),
        ("type", S, None, "Enum", False), ("baseUnitOfMeasureCode", S, 10, "Code", False),
        ("unitCost", D, None, "Decimal", False), ("unitPrice", D, None, "Decimal", False),
        ("blocked", B, None, "Boolean", False), ("lastModifiedDateTime", DT, None, "DateTime", True),
    ],
}


@pytest.mark.parametrize("set_name", sorted(PROPERTIES))
def test_public_properties_match_the_reference(schema: Schema, set_name: str) -> None:
    entity = entity_of(schema, set_name)
    actual = [(p.name, p.type, p.max_length, p.kind, p.read_only) for p in entity.public_properties()]
    assert actual == PROPERTIES[set_name]


NAVIGATIONS = {
    "customers": {"currency": ("currency", "currencyId"), "paymentTerm": ("paymentTerm", "paymentTermsId"),
                  "shipmentMethod": ("shipmentMethod", "shipmentMethodId"),
                  "paymentMethod": ("paymentMethod", "paymentMethodId")},
    "vendors": {"currency": ("currency", "currencyId"), "paymentTerm": ("paymentTerm", "paymentTermsId"),
                "paymentMethod": ("paymentMethod", "paymentMethodId")},
    "items": {"baseUnitOfMeasure": ("unitOfMeasure", "baseUnitOfMeasureId"),
              "unitOfMeasure": ("unitOfMeasure", "baseUnitOfMeasureId")},
}


@pytest.mark.parametrize("set_name", [s for _, s, _, _ in ENTITIES])
def test_navigations_point_at_declared_entities_through_guid_properties(schema: Schema, set_name: str) -> None:
    entity = entity_of(schema, set_name)
    actual = {n.name: (n.target, n.via) for n in entity.navigations if not n.collection}
    assert actual == NAVIGATIONS.get(set_name, {})
    for nav in entity.navigations:
        assert schema.entity(nav.target) is not None
        via = entity.property(nav.via)
        assert via is not None and via.type is Edm.Guid and not via.hidden and not via.read_only
        # The app keeps the Code twin in step (currencyId <-> currencyCode) where one exists.
        twin = entity.property(nav.via[:-2] + "Code")
        if twin is not None:
            assert twin.kind == "Code"
    # Salespeople are linked by code only.
    assert entity.navigation("salespersonPurchaser") is None


def test_code_references_name_declared_code_fields(schema: Schema) -> None:
    for entity in company_scoped(schema):
        for prop_name, (target, field) in entity_info(entity).code_references.items():
            assert entity.property(prop_name).kind == "Code"
            assert schema.entity(target).property(field).kind == "Code"


ENUMS = [
    # set, property, enum type name, (value, label) in order, default label, escaped spellings
    ("customers", "type", "contactType", [(0, "Company"), (1, "Person")], "Company", {}),
    ("customers", "blocked", "customerBlocked", [(0, " "), (1, "Ship"), (2, "Invoice"), (3, "All")], " ",
     {" ": "_x0020_"}),
    ("vendors", "blocked", "vendorBlocked", [(0, " "), (1, "Payment"), (2, "All")], " ", {" ": "_x0020_"}),
    ("contacts", "type", "contactType", [(0, "Company"), (1, "Person")], "Company", {}),
    ("contacts", "contactBusinessRelation", "contactBusinessRelation",
     [(0, " "), (1, "Customer"), (2, "Vendor"), (3, "Bank Account"), (4, "Employee"), (5, "None"),
      (6, "Other"), (7, "Multiple")], " ", {"Bank Account": "Bank_x0020_Account"}),
    ("items", "type", "itemType", [(0, "Inventory"), (1, "Service"), (2, "Non-Inventory")], "Inventory",
     {"Non-Inventory": "Non_x002D_Inventory"}),
    ("countriesRegions", "addressFormat", "countryRegionAddressFormat",
     [(0, "Post Code+City"), (1, "City+Post Code"), (2, "City+County+Post Code"),
      (3, "Blank Line+Post Code+City"), (13, "Custom")], "City+Post Code",
     {"Post Code+City": "Post_x0020_Code_x002B_City"}),
    ("resources", "type", "resourceType", [(0, "Person"), (1, "Machine")], "Person", {}),
    ("contactBusinessRelations", "linkToTable", "contactBusinessRelationLinkToTable",
     [(0, " "), (1, "Customer"), (2, "Vendor"), (3, "Bank Account"), (4, "Employee")], " ",
     {" ": "_x0020_", "Bank Account": "Bank_x0020_Account"}),
]


@pytest.mark.parametrize(("set_name", "prop_name", "enum_name", "members", "default", "escaped"), ENUMS)
def test_enum_option_sets(
    schema: Schema, set_name: str, prop_name: str, enum_name: str, members: list, default: str, escaped: dict
) -> None:
    prop = entity_of(schema, set_name).property(prop_name)
    assert prop.type is Edm.String and prop.kind == "Enum"
    assert prop.options.name == enum_name
    assert [(o.value, o.label) for o in prop.options.options] == members
    assert prop.default == default
    assert prop.options.label(prop.options.default) == default
    for label, wire in escaped.items():
        assert xml_name(label) == wire
        assert enum_label(prop.options, wire) == label
        assert enum_label(prop.options, label) == label
    assert enum_label(prop.options, "no such member") is None
    assert enum_label(prop.options, 1) is None


def test_shared_enum_types_are_identical_where_reused(schema: Schema) -> None:
    customer_type = entity_of(schema, "customers").property("type").options
    contact_type = entity_of(schema, "contacts").property("type").options
    assert customer_type == contact_type


# -- the fixture --------------------------------------------------------------------------------

SETUP_SETS = ["currencies", "countriesRegions", "paymentTerms", "paymentMethods", "shipmentMethods",
              "unitsOfMeasure", "salespeoplePurchasers"]


def company_tables(company: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {t["set"]: t["records"] for t in company["tables"]}


def test_fixture_companies_are_fixed(seed: dict[str, Any]) -> None:
    assert seed["environment"] == "production"
    companies = {c["id"]: c for c in seed["companies"]}
    assert set(companies) == set(COMPANY_NAMES)
    for company_id, name in COMPANY_NAMES.items():
        assert companies[company_id]["name"] == name
        assert companies[company_id]["displayName"] == name
        assert companies[company_id]["lcy"] == "USD"
        assert len(name) <= 30


def test_fixture_sets_come_in_dependency_order(seed: dict[str, Any]) -> None:
    for company in seed["companies"]:
        order = [t["set"] for t in company["tables"]]
        assert len(order) == len(set(order))
        for setup in SETUP_SETS:
            for dependent in ("customers", "vendors", "items"):
                assert order.index(setup) < order.index(dependent)
        assert order.index("contacts") > max(order.index("customers"), order.index("vendors"))


def _check_value(entity: EntityType, name: str, value: Any, where: str) -> None:
    prop = entity.property(name)
    if prop.type is Edm.Guid:
        uuid.UUID(value)
    elif prop.kind == "Enum":
        assert enum_label(prop.options, value) is not None, f"{where}: {value!r} is not a {prop.options.name}"
    elif prop.type is Edm.String:
        assert isinstance(value, str), where
        if prop.max_length is not None:
            assert len(value) <= prop.max_length, f"{where}: longer than {prop.max_length}"
        if prop.kind == "Code":
            assert value == value.upper(), f"{where}: Code values are stored upper-case"
    elif prop.type is Edm.Decimal:
        assert isinstance(value, int | float) and not isinstance(value, bool), where
        assert Decimal(str(value)) >= 0, where
    elif prop.type is Edm.Boolean:
        assert isinstance(value, bool), where
    else:  # pragma: no cover - the fixture writes no other types
        pytest.fail(f"{where}: unexpected type {prop.type}")


def test_fixture_records_are_valid_create_requests(schema: Schema, seed: dict[str, Any]) -> None:
    seen_ids: set[str] = set()
    for company in seed["companies"]:
        defined: dict[str, dict[str, dict[str, Any]]] = {}  # set -> id -> record
        for table in company["tables"]:
            entity = entity_of(schema, table["set"])
            assert entity.name != "company"
            numbers_or_codes: set[str] = set()
            for record in table["records"]:
                where = f"{company['name']}/{table['set']}/{record.get('number') or record.get('code')}"
                assert str(uuid.UUID(record["id"])) == record["id"], where
                assert record["id"] not in seen_ids, f"{where}: id used twice"
                seen_ids.add(record["id"])
                for name, value in record.items():
                    assert name == "id" or entity.writable(name), f"{where}: {name} is not writable"
                    _check_value(entity, name, value, f"{where}.{name}")
                for required in entity_info(entity).required_on_create:
                    assert record.get(required), f"{where}: {required} missing"
                alt = "number" if entity_info(entity).number_series else entity_info(entity).code_field
                if alt is not None:
                    assert record[alt] not in numbers_or_codes, f"{where}: duplicate {alt}"
                    numbers_or_codes.add(record[alt])
                _check_references(schema, entity, record, defined, where)
                defined.setdefault(table["set"], {})[record["id"]] = record


def _check_references(
    schema: Schema, entity: EntityType, record: dict[str, Any], defined: dict[str, dict[str, dict]], where: str
) -> None:
    """Referenced rows exist earlier in the same company, and id/code twins agree."""
    for nav in entity.navigations:
        if nav.via not in record:
            continue
        target = schema.entity(nav.target)
        row = defined.get(target.set_name, {}).get(record[nav.via])
        assert row is not None, f"{where}: {nav.via} does not point at an earlier {target.set_name} row"
        twin = nav.via[:-2] + "Code"
        if twin in record:
            assert record[twin] == row["code"], f"{where}: {twin} disagrees with {nav.via}"
    for prop_name, (target_name, field) in entity_info(entity).code_references.items():
        if not record.get(prop_name):
            continue
        target = schema.entity(target_name)
        matches = [r for r in defined.get(target.set_name, {}).values() if r.get(field) == record[prop_name]]
        assert len(matches) == 1, f"{where}: {prop_name} {record[prop_name]!r} names no earlier {target.set_name}"


def test_lcy_is_not_a_currency_row(seed: dict[str, Any]) -> None:
    for company in seed["companies"]:
        tables = company_tables(company)
        assert sorted(c["code"] for c in tables["currencies"]) == ["CAD", "EUR", "GBP"]
        for set_name in ("customers", "vendors"):
            assert all(r.get("currencyCode") != company["lcy"] for r in tables[set_name])


def test_fixture_content_per_company(seed: dict[str, Any]) -> None:
    by_id = {c["id"]: company_tables(c) for c in seed["companies"]}
    cronus, mine = by_id[CRONUS_ID], by_id[MY_COMPANY_ID]
    assert 45 <= len(cronus["customers"]) <= 55
    assert len(cronus["vendors"]) == 20
    assert 25 <= len(cronus["contacts"]) <= 40
    assert len(cronus["items"]) == 40
    assert 3 <= len(cronus["resources"]) <= 5
    assert {c["code"] for c in cronus["countriesRegions"]} >= {"US", "CA", "GB", "DE", "DK"}
    assert {c["code"] for c in cronus["shipmentMethods"]} >= {"CIF", "EXW", "FOB", "PICKUP"}
    assert {c["code"] for c in cronus["paymentTerms"]} >= {"1M(8D)", "14 DAYS", "CM", "COD"}
    assert {c["code"] for c in cronus["unitsOfMeasure"]} >= {"PCS", "BOX", "HOUR"}
    kinds = [enum_label(build_schema().entity("item").property("type").options, i["type"]) for i in cronus["items"]]
    assert kinds.count("Inventory") > len(kinds) / 2
    assert 1 <= kinds.count("Non-Inventory") < kinds.count("Service")
    assert (len(mine["customers"]), len(mine["vendors"]), len(mine["items"])) == (5, 3, 5)


def test_contacts_link_people_to_company_contacts_of_customers_and_vendors(seed: dict[str, Any]) -> None:
    for company in seed["companies"]:
        tables = company_tables(company)
        names = {"Customer": {c["displayName"] for c in tables["customers"]},
                 "Vendor": {v["displayName"] for v in tables["vendors"]}}
        by_number = {c["number"]: c for c in tables["contacts"]}
        people = [c for c in tables["contacts"] if c["type"] == "Person"]
        assert people and len(people) < len(tables["contacts"])
        for contact in tables["contacts"]:
            if contact["type"] == "Company":
                assert "companyNumber" not in contact
                assert contact["displayName"] in names[contact["contactBusinessRelation"]]
            else:
                parent = by_number[contact["companyNumber"]]
                assert parent["type"] == "Company"
                assert contact["companyName"] == parent["displayName"]
                assert contact["contactBusinessRelation"] == parent["contactBusinessRelation"]


def _dv_table(dataverse: dict[str, Any], set_name: str) -> list[dict[str, Any]]:
    return next(t["records"] for t in dataverse["tables"] if t["set"] == set_name)


def test_two_salespeople_match_dataverse_users_by_email(seed: dict[str, Any], dataverse: dict[str, Any]) -> None:
    users = {u["internalemailaddress"] for u in _dv_table(dataverse, "systemusers") if u.get("islicensed")}
    cronus = company_tables(next(c for c in seed["companies"] if c["id"] == CRONUS_ID))
    matching = {s["code"] for s in cronus["salespeoplePurchasers"] if s.get("email") in users}
    assert matching == {"JP", "ML"}


# -- match-based coupling design ------------------------------------------------------------------


def level(bc: str, dv: str) -> str:
    """How two texts compare: the strictest setting under which they are equal."""
    if bc == dv:
        return "exact"
    if bc.casefold() == dv.casefold():
        return "case_insensitive"
    if " ".join(bc.split()).casefold() == " ".join(dv.split()).casefold():
        return "whitespace"
    return "differs"


BIND = re.compile(r"^/bcbi_companies\((?P<id>[0-9a-f-]{36})\)$")


def _dv_accounts(dataverse: dict[str, Any]) -> list[dict[str, Any]]:
    """Accounts with the BC company they are stamped with (or None)."""
    bc_of = {v["bcbi_companyid"]: v["bc_company_id"] for v in dataverse["_notes"]["bc_companies"].values()}
    accounts = []
    for account in _dv_table(dataverse, "accounts"):
        bind = account.get("bcbi_companyid@odata.bind")
        stamp = bc_of[BIND.match(bind)["id"]] if bind else None
        accounts.append({**account, "_stamp": stamp})
    return accounts


def _outcome(accounts: list[dict[str, Any]], name: str, company_id: str, type_code: int, case_sensitive: bool) -> str:
    """Match-based coupling on the name within the rows the default Integration Table Filter lets through."""
    visible = [
        a for a in accounts
        if a.get("customertypecode") == type_code and a.get("statecode", 0) == 0 and a["_stamp"] in (company_id, None)
    ]
    if case_sensitive:
        hits = [a for a in visible if a["name"] == name]
    else:
        hits = [a for a in visible if a["name"].casefold() == name.casefold()]
    return {0: "no match", 1: "couples"}.get(len(hits), "ambiguous")


FIELDS = {"name": ("displayName", "name"), "email": ("email", "emailaddress1"), "phone": ("phoneNumber", "telephone1")}


@pytest.mark.parametrize(("kind", "set_name", "type_code"), [("customers", "customers", 3), ("vendors", "vendors", 11)])
def test_match_notes_hold_against_dataverse_accounts(
    seed: dict[str, Any], dataverse: dict[str, Any], kind: str, set_name: str, type_code: int
) -> None:
    accounts = _dv_accounts(dataverse)
    by_id = {a["accountid"]: a for a in accounts}
    company_by_name = {c["name"]: c for c in seed["companies"]}
    claims = seed["_notes"]["match_based_coupling"][kind]
    assert claims
    claimed: set[tuple[str, str]] = set()
    for claim in claims:
        company = company_by_name[claim["company"]]
        records = {r["number"]: r for r in company_tables(company)[set_name]}
        record = records[claim["bc_number"]]
        assert record["displayName"] == claim["bc_name"]
        claimed.add((company["id"], record["number"]))
        # Every account whose name matches at any level is listed, and nothing else.
        named = {a["accountid"] for a in accounts if level(record["displayName"], a["name"]) != "differs"}
        assert named == set(claim["accounts"]), claim["bc_name"]
        for account_id, fields in claim["accounts"].items():
            for field_name, expected in fields.items():
                bc_field, dv_field = FIELDS[field_name]
                actual = level(record.get(bc_field, ""), by_id[account_id].get(dv_field, ""))
                assert actual == expected, f"{claim['bc_name']} {field_name} vs {account_id}"
        for case_sensitive, key in ((False, "outcome_case_insensitive"), (True, "outcome_case_sensitive")):
            actual = _outcome(accounts, record["displayName"], company["id"], type_code, case_sensitive)
            assert actual == claim[key], f"{claim['company']} {claim['bc_name']} ({key})"
    # Records not in the notes have no account of their name in any spelling.
    for company in seed["companies"]:
        for record in company_tables(company)[set_name]:
            if (company["id"], record["number"]) in claimed:
                continue
            assert all(level(record["displayName"], a["name"]) == "differs" for a in accounts), record["displayName"]


def test_dataverse_notes_find_their_bc_counterparts(seed: dict[str, Any], dataverse: dict[str, Any]) -> None:
    """The Dataverse fixture names BC numbers and names; CRONUS USA has exactly those."""
    dv_notes = dataverse["_notes"]["match_based_coupling"]
    cronus = company_tables(next(c for c in seed["companies"] if c["id"] == CRONUS_ID))
    all_names = {r["displayName"] for c in seed["companies"] for s in ("customers", "vendors")
                 for r in company_tables(c)[s]}
    for kind, set_name, number_key in (("customers", "customers", "bc_customer"), ("vendors", "vendors", "bc_vendor")):
        by_number = {r["number"]: r for r in cronus[set_name]}
        for note in dv_notes[kind]:
            if note.get(number_key) is None:
                assert note["account"] not in all_names, f"{note['account']} is meant to be Dataverse only"
                continue
            assert by_number[note[number_key]]["displayName"] == note["bc_name"]


def test_contact_and_item_notes_hold(seed: dict[str, Any], dataverse: dict[str, Any]) -> None:
    cronus = company_tables(next(c for c in seed["companies"] if c["id"] == CRONUS_ID))
    dv_contacts = {f"{c['firstname']} {c['lastname']}": c for c in _dv_table(dataverse, "contacts")}
    bc_people = {c["displayName"]: c for c in cronus["contacts"] if c["type"] == "Person"}
    for claim in seed["_notes"]["match_based_coupling"]["contacts"]:
        person, dv = bc_people[claim["contact"]], dv_contacts[claim["contact"]]
        assert person["companyName"] == claim["company"]
        assert level(person["email"], dv["emailaddress1"]) == claim["email"]
        if "phone" in claim:
            assert level(person["phoneNumber"], dv["telephone1"]) == claim["phone"]
    products = {p["productnumber"]: p for p in _dv_table(dataverse, "products")}
    numbers = {i["number"] for i in cronus["items"]}
    exact = {n for n in numbers if n in products}
    assert exact >= {"1896-S", "1900-S", "2000-S", "70000", "70001", "70002"}
    assert "1928-S" in numbers and "1928-S" not in products and level("1928-S", "1928-s") == "case_insensitive"
    assert not any(n.startswith("DV-") for n in numbers)
    resources = {r["number"] for r in cronus["resources"]}
    services = {n for n, p in products.items() if p["producttypecode"] == 3}
    assert services <= resources and not services & numbers
