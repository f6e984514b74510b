"""CSDL rendering: the `$metadata` document is well-formed EDMX 4.0 and self-consistent for both services."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mockservers.odata.csdl import enum_spellings, render_csdl, xml_name
from mockservers.odata.schema import (
    AlternateKey,
    Edm,
    EntityType,
    Navigation,
    Option,
    OptionSet,
    Property,
    Schema,
)

EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def dataverse_schema() -> Schema:
    customer_type = OptionSet(
        "account_customertypecode", (Option(1, "Competitor"), Option(3, "Customer")), default=3
    )
    account = EntityType(
        name="account",
        set_name="accounts",
        key="accountid",
        primary_name="name",
        properties=[
            Property("accountid", Edm.Guid, read_only=True),
            Property("name", Edm.String, max_length=160, required=True, description='Name <"&"> of it'),
            Property("accountnumber", Edm.String, max_length=20),
            Property("customertypecode", Edm.Int32, kind="Picklist", options=customer_type),
            Property("revenue", Edm.Decimal, kind="Money", precision=19, scale=4),
            Property(
                "_primarycontactid_value", Edm.Guid, read_only=True, lookup="primarycontactid", kind="Lookup"
            ),
            Property("bcbi_companystamp", Edm.String, hidden=True),
        ],
        navigations=[
            Navigation("primarycontactid", "contact", collection=False, via="_primarycontactid_value"),
            Navigation(
                "contact_customer_accounts", "contact", collection=True, via="_parentcustomerid_value"
            ),
        ],
        alternate_keys=[AlternateKey("accountnumber_key", ("accountnumber",))],
        change_tracking=True,
    )
    contact = EntityType(
        name="contact",
        set_name="contacts",
        key="contactid",
        primary_name="fullname",
        properties=[
            Property("contactid", Edm.Guid),
            Property("fullname", Edm.String, max_length=160, read_only=True),
            Property("_parentcustomerid_value", Edm.Guid, read_only=True, kind="Customer"),
            Property("parentcustomeridtype", Edm.String, hidden=True),
        ],
        navigations=[
            Navigation("account_primary_contact", "account", collection=True, via="_primarycontactid_value"),
            Navigation(
                "parentcustomerid_account",
                "account",
                collection=False,
                via="_parentcustomerid_value",
                discriminator="parentcustomeridtype",
                discriminator_value="account",
            ),
            Navigation(
                "parentcustomerid_contact",
                "contact",
                collection=False,
                via="_parentcustomerid_value",
                discriminator="parentcustomeridtype",
                discriminator_value="contact",
            ),
            Navigation(
                "contact_customer_contacts", "contact", collection=True, via="_parentcustomerid_value"
            ),
        ],
    )
    return Schema("Microsoft.Dynamics.CRM", [account, contact], alias="mscrm")


def bc_schema() -> Schema:
    blocked = OptionSet(
        "customerBlocked", (Option(0, " "), Option(1, "Ship"), Option(2, "Invoice"), Option(3, "All"))
    )
    item_type = OptionSet(
        "itemType", (Option(0, "Inventory"), Option(1, "Service"), Option(2, "Non-Inventory"))
    )
    customer = EntityType(
        name="customer",
        set_name="customers",
        key="id",
        properties=[
            Property("id", Edm.Guid),
            Property("number", Edm.String, max_length=20, kind="Code"),
            Property("displayName", Edm.String, max_length=100),
            Property("blocked", Edm.String, kind="Enum", options=blocked),
            Property("currencyId", Edm.Guid),
            Property("companyId", Edm.Guid, hidden=True),
            Property("lastModifiedDateTime", Edm.DateTimeOffset, read_only=True),
        ],
        navigations=[Navigation("currency", "currency", collection=False, via="currencyId")],
        scope_property="companyId",
    )
    currency = EntityType(
        name="currency",
        set_name="currencies",
        key="id",
        properties=[Property("id", Edm.Guid), Property("code", Edm.String, max_length=10)],
    )
    item = EntityType(
        name="item",
        set_name="items",
        key="id",
        properties=[Property("id", Edm.Guid), Property("type", Edm.String, kind="Enum", options=item_type)],
    )
    return Schema("Microsoft.NAV", [customer, currency, item])


def parse(document: str) -> tuple[ET.Element, ET.Element]:
    assert document.startswith("<?xml")
    root = ET.fromstring(document.encode("utf-8"))
    assert root.tag == f"{EDMX}Edmx"
    assert root.get("Version") == "4.0"
    services = root.find(f"{EDMX}DataServices")
    assert services is not None
    schemas = services.findall(f"{EDM}Schema")
    assert len(schemas) == 1
    return root, schemas[0]


def assert_self_consistent(schema_el: ET.Element) -> None:
    """What a generic OData client checks when it loads the model: every reference resolves."""
    prefixes = {schema_el.get("Namespace"), schema_el.get("Alias")} - {None}
    types = {t.get("Name"): t for t in schema_el.findall(f"{EDM}EntityType")}
    enums = {e.get("Name") for e in schema_el.findall(f"{EDM}EnumType")}

    def resolve(qualified_name: str) -> str:
        prefix, _, name = qualified_name.rpartition(".")
        assert prefix in prefixes, qualified_name
        return name

    for entity_type in types.values():
        props = {p.get("Name"): p for p in entity_type.findall(f"{EDM}Property")}
        for ref in entity_type.findall(f"{EDM}Key/{EDM}PropertyRef"):
            assert ref.get("Name") in props
            assert props[ref.get("Name")].get("Nullable") == "false"
        for prop in props.values():
            if not prop.get("Type").startswith("Edm."):
                assert resolve(prop.get("Type")) in enums
        for nav in entity_type.findall(f"{EDM}NavigationProperty"):
            type_ref = nav.get("Type")
            if type_ref.startswith("Collection("):
                type_ref = type_ref[len("Collection(") : -1]
            target = types[resolve(type_ref)]
            if nav.get("Partner"):
                partner_names = {n.get("Name") for n in target.findall(f"{EDM}NavigationProperty")}
                assert nav.get("Partner") in partner_names
            for constraint in nav.findall(f"{EDM}ReferentialConstraint"):
                assert constraint.get("Property") in props
    container = schema_el.find(f"{EDM}EntityContainer")
    sets = {s.get("Name"): s for s in container.findall(f"{EDM}EntitySet")}
    for entity_set in sets.values():
        entity_type = types[resolve(entity_set.get("EntityType"))]
        nav_names = {n.get("Name") for n in entity_type.findall(f"{EDM}NavigationProperty")}
        for binding in entity_set.findall(f"{EDM}NavigationPropertyBinding"):
            assert binding.get("Path") in nav_names
            assert binding.get("Target") in sets


@pytest.mark.parametrize("annotations", [False, True])
def test_dataverse_csdl_structure(annotations: bool) -> None:
    document = render_csdl(dataverse_schema(), container="System", annotations=annotations)
    root, schema_el = parse(document)
    assert_self_consistent(schema_el)
    assert schema_el.get("Namespace") == "Microsoft.Dynamics.CRM"
    assert schema_el.get("Alias") == "mscrm"
    assert [t.get("Name") for t in schema_el.findall(f"{EDM}EntityType")] == ["account", "contact"]

    account = schema_el.find(f"{EDM}EntityType[@Name='account']")
    props = {p.get("Name"): p for p in account.findall(f"{EDM}Property")}
    assert list(props) == [
        "accountid",
        "name",
        "accountnumber",
        "customertypecode",
        "revenue",
        "_primarycontactid_value",
    ]
    assert props["name"].get("MaxLength") == "160"
    assert props["customertypecode"].get("Type") == "Edm.Int32"  # Dataverse choices stay integers
    assert (props["revenue"].get("Precision"), props["revenue"].get("Scale")) == ("19", "4")
    assert props["_primarycontactid_value"].get("Type") == "Edm.Guid"
    nav = account.find(f"{EDM}NavigationProperty[@Name='primarycontactid']")
    assert nav.get("Type") == "mscrm.contact"
    assert nav.get("Partner") == "account_primary_contact"
    constraint = nav.find(f"{EDM}ReferentialConstraint")
    assert (constraint.get("Property"), constraint.get("ReferencedProperty")) == (
        "_primarycontactid_value",
        "contactid",
    )
    contact = schema_el.find(f"{EDM}EntityType[@Name='contact']")
    collection = contact.find(f"{EDM}NavigationProperty[@Name='account_primary_contact']")
    assert collection.get("Type") == "Collection(mscrm.account)"
    assert collection.get("Partner") == "primarycontactid"
    polymorphic = contact.find(f"{EDM}NavigationProperty[@Name='parentcustomerid_account']")
    assert polymorphic.get("Partner") == "contact_customer_accounts"
    assert contact.find(f"{EDM}NavigationProperty[@Name='parentcustomerid_contact']").get("Partner") == (
        "contact_customer_contacts"
    )

    container = schema_el.find(f"{EDM}EntityContainer")
    assert container.get("Name") == "System"
    entity_set = container.find(f"{EDM}EntitySet[@Name='accounts']")
    assert entity_set.get("EntityType") == "mscrm.account"
    bindings = {b.get("Path"): b.get("Target") for b in entity_set.findall(f"{EDM}NavigationPropertyBinding")}
    assert bindings == {"primarycontactid": "contacts", "contact_customer_accounts": "contacts"}

    # Hidden storage columns never leak, in any form.
    assert "bcbi_companystamp" not in document
    assert "parentcustomeridtype" not in document
    assert not schema_el.findall(f"{EDM}EnumType")

    annotation_terms = {a.get("Term") for a in root.iter(f"{EDM}Annotation")}
    if annotations:
        assert {
            "Org.OData.Core.V1.Computed",
            "Org.OData.Core.V1.Permissions",
            "Org.OData.Core.V1.Description",
            "Org.OData.Capabilities.V1.ChangeTracking",
        } <= annotation_terms
        includes = {i.get("Namespace") for i in root.iter(f"{EDMX}Include")}
        assert includes == {"Org.OData.Core.V1", "Org.OData.Capabilities.V1"}
        computed = [
            p.get("Name")
            for p in schema_el.iter(f"{EDM}Property")
            if p.find(f"{EDM}Annotation[@Term='Org.OData.Core.V1.Computed']") is not None
        ]
        assert computed == ["accountid", "_primarycontactid_value", "fullname", "_parentcustomerid_value"]
        description = props["name"].find(f"{EDM}Annotation[@Term='Org.OData.Core.V1.Description']")
        assert description.get("String") == 'Name <"&"> of it'  # escaped on the way out, intact on the way in
    else:
        assert annotation_terms == set()
        assert root.find(f"{EDMX}Reference") is None


def test_bc_csdl_with_enum_types() -> None:
    document = render_csdl(bc_schema(), container="NAV", enum_types=True)
    _, schema_el = parse(document)
    assert_self_consistent(schema_el)
    assert schema_el.get("Namespace") == "Microsoft.NAV"
    assert schema_el.get("Alias") is None
    container = schema_el.find(f"{EDM}EntityContainer")
    sets = {s.get("Name"): s.get("EntityType") for s in container.findall(f"{EDM}EntitySet")}
    assert sets == {
        "customers": "Microsoft.NAV.customer",
        "currencies": "Microsoft.NAV.currency",
        "items": "Microsoft.NAV.item",
    }
    enums = {e.get("Name"): e for e in schema_el.findall(f"{EDM}EnumType")}
    assert set(enums) == {"customerBlocked", "itemType"}
    members = [(m.get("Name"), m.get("Value")) for m in enums["customerBlocked"].findall(f"{EDM}Member")]
    assert members == [("_x0020_", "0"), ("Ship", "1"), ("Invoice", "2"), ("All", "3")]
    item_members = [m.get("Name") for m in enums["itemType"].findall(f"{EDM}Member")]
    assert item_members == ["Inventory", "Service", "Non_x002D_Inventory"]
    customer = schema_el.find(f"{EDM}EntityType[@Name='customer']")
    blocked = customer.find(f"{EDM}Property[@Name='blocked']")
    assert blocked.get("Type") == "Microsoft.NAV.customerBlocked"
    assert customer.find(f"{EDM}NavigationProperty[@Name='currency']").get("Type") == "Microsoft.NAV.currency"
    assert "companyId" not in document


def test_enum_properties_stay_primitive_without_enum_types() -> None:
    _, schema_el = parse(render_csdl(bc_schema(), container="NAV"))
    assert not schema_el.findall(f"{EDM}EnumType")
    blocked = schema_el.find(f"{EDM}EntityType[@Name='customer']/{EDM}Property[@Name='blocked']")
    assert blocked.get("Type") == "Edm.String"


def test_extra_schema_xml_is_merged_into_the_schema() -> None:
    extra = (
        '<ComplexType Name="WhoAmIResponse">'
        '<Property Name="BusinessUnitId" Type="Edm.Guid" Nullable="false"/>'
        '<Property Name="UserId" Type="Edm.Guid" Nullable="false"/>'
        '<Property Name="OrganizationId" Type="Edm.Guid" Nullable="false"/>'
        "</ComplexType>"
        '<Function Name="WhoAmI"><ReturnType Type="mscrm.WhoAmIResponse" Nullable="false"/></Function>'
    )
    _, schema_el = parse(render_csdl(dataverse_schema(), container="System", extra_schema_xml=extra))
    complex_type = schema_el.find(f"{EDM}ComplexType[@Name='WhoAmIResponse']")
    assert [p.get("Name") for p in complex_type.findall(f"{EDM}Property")] == [
        "BusinessUnitId",
        "UserId",
        "OrganizationId",
    ]
    function = schema_el.find(f"{EDM}Function[@Name='WhoAmI']")
    assert function.find(f"{EDM}ReturnType").get("Type") == "mscrm.WhoAmIResponse"
    # The container stays the last child of the schema.
    assert list(schema_el)[-1].tag == f"{EDM}EntityContainer"


def test_malformed_extra_schema_xml_is_refused() -> None:
    with pytest.raises(ValueError, match="not well-formed"):
        render_csdl(dataverse_schema(), container="System", extra_schema_xml="<ComplexType Name='x'>")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (" ", "_x0020_"),
        ("Ship", "Ship"),
        ("Non-Inventory", "Non_x002D_Inventory"),
        ("Bank Account", "Bank_x0020_Account"),
        ("1099", "_x0031_099"),
        ("a/b", "a_x002F_b"),
    ],
)
def test_xml_name_escapes_like_bc(label: str, expected: str) -> None:
    assert xml_name(label) == expected


def test_enum_spellings_are_kept_per_option_set_and_follow_an_extended_one() -> None:
    """The spellings are cached per option set. An extended set (a new value, as Dataverse's
    InsertOptionValue makes) answers with its new member; the old one stays as it was."""
    blocked = OptionSet("Blocked", (Option(0, " "), Option(1, "Ship")))
    assert enum_spellings(blocked) == {" ": "_x0020_", "_x0020_": "_x0020_", "ship": "Ship"}
    assert enum_spellings(blocked) is enum_spellings(OptionSet("Blocked", (Option(0, " "), Option(1, "Ship"))))
    extended = OptionSet("Blocked", (*blocked.options, Option(2, "All")))
    assert enum_spellings(extended).get("all") == "All"
    assert enum_spellings(blocked).get("all") is None
    with pytest.raises(TypeError):  # shared by every caller: read-only
        enum_spellings(blocked)["all"] = "All"  # type: ignore[index]
