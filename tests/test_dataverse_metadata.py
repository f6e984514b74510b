"""EntityDefinitions derived from declarations, queried the way Dataverse clients (PPDC, DVA) query them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mockservers.dataverse.exceptions import DataverseError
from mockservers.dataverse.metadata import (
    attribute_definitions,
    entity_definition,
    key_definitions,
    many_to_one_relationships,
    one_to_many_relationships,
)
from mockservers.dataverse.metadata_query import MetadataQuery
from mockservers.dataverse.tables import DataverseTable
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

ROOT = "https://127.0.0.1:5001/api/data/v9.2/"
CUSTOMER_TYPES = OptionSet(
    "account_customertypecode",
    (Option(1, "Competitor"), Option(3, "Customer"), Option(11, "Vendor")),
    default=3,
)
STATES = OptionSet("account_statecode", (Option(0, "Active"), Option(1, "Inactive")))
STATUSES = OptionSet("account_statuscode", (Option(1, "Active", state=0), Option(2, "Inactive", state=1)))


def build_schema() -> Schema:
    account = EntityType(
        name="account",
        set_name="accounts",
        key="accountid",
        primary_name="name",
        display_name="Account",
        properties=[
            Property("accountid", Edm.Guid),
            Property("name", Edm.String, max_length=160, required=True),
            Property("accountnumber", Edm.String, max_length=20),
            Property("customertypecode", Edm.Int32, kind="Picklist", options=CUSTOMER_TYPES),
            Property("statecode", Edm.Int32, kind="State", options=STATES),
            Property("statuscode", Edm.Int32, kind="Status", options=STATUSES),
            Property("creditlimit", Edm.Decimal, kind="Money", precision=19, scale=4),
            Property("numberofemployees", Edm.Int32),
            Property("donotemail", Edm.Boolean),
            Property("modifiedon", Edm.DateTimeOffset, read_only=True),
            Property("versionnumber", Edm.Int64, read_only=True),
            Property(
                "_primarycontactid_value", Edm.Guid, read_only=True, lookup="primarycontactid", kind="Lookup"
            ),
            Property(
                "_bcbi_companyid_value", Edm.Guid, read_only=True, lookup="bcbi_CompanyId", kind="Lookup"
            ),
            Property("bcbi_stamp", Edm.String, hidden=True),
        ],
        navigations=[
            Navigation("primarycontactid", "contact", collection=False, via="_primarycontactid_value"),
            Navigation("bcbi_CompanyId", "bcbi_company", collection=False, via="_bcbi_companyid_value"),
            Navigation(
                "contact_customer_accounts", "contact", collection=True, via="_parentcustomerid_value"
            ),
        ],
        alternate_keys=[AlternateKey("AccountNumberKey", ("accountnumber",), display_name="Account Number")],
        change_tracking=True,
        info=DataverseTable("Account", "Accounts", "Accounts", object_type_code=1),
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
        info=DataverseTable("Contact", "Contacts", "Contacts", object_type_code=2),
    )
    company = EntityType(
        name="bcbi_company",
        set_name="bcbi_companies",
        key="bcbi_companyid",
        primary_name="bcbi_name",
        ownership="OrganizationOwned",
        properties=[Property("bcbi_companyid", Edm.Guid), Property("bcbi_name", Edm.String, max_length=30)],
    )
    return Schema("Microsoft.Dynamics.CRM", [account, contact, company], alias="mscrm")


SCHEMA = build_schema()
ACCOUNT = SCHEMA.entity("account")
CONTACT = SCHEMA.entity("contact")


@pytest.fixture
def query() -> MetadataQuery:
    return MetadataQuery(SCHEMA, ROOT)


def run(query: MetadataQuery, path: str, **options: str) -> dict[str, Any]:
    status, body = query.execute(path.split("/"), {f"${k}": v for k, v in options.items()})
    assert status == 200
    return body


def refused(query: MetadataQuery, path: str, **options: str) -> DataverseError:
    with pytest.raises(DataverseError) as info:
        query.execute(path.split("/"), {f"${k}": v for k, v in options.items()})
    return info.value


def localized(label_object: dict[str, Any]) -> str:
    return label_object["UserLocalizedLabel"]["Label"]


# ---------------------------------------------------------------- the two calls PPDC always makes


def test_ppdc_entity_set_lookup(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions",
        select="LogicalName,EntitySetName,PrimaryIdAttribute",
        filter="LogicalName eq 'account'",
    )
    assert body == {
        "@odata.context": f"{ROOT}$metadata#EntityDefinitions(LogicalName,EntitySetName,PrimaryIdAttribute)",
        "value": [
            {
                "LogicalName": "account",
                "EntitySetName": "accounts",
                "PrimaryIdAttribute": "accountid",
                "MetadataId": str(uuid.UUID(body["value"][0]["MetadataId"])),
            }
        ],
    }


def test_ppdc_unknown_table_gives_empty_value(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions",
        select="LogicalName,EntitySetName,PrimaryIdAttribute",
        filter="LogicalName eq 'accounts'",
    )
    assert body["value"] == []


def test_ppdc_picklist_cast_with_option_labels(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        select="LogicalName",
        expand="OptionSet($select=Options)",
    )
    assert body["@odata.context"] == (
        f"{ROOT}$metadata#EntityDefinitions('account')/Attributes/"
        "Microsoft.Dynamics.CRM.PicklistAttributeMetadata(LogicalName,OptionSet,OptionSet(Options))"
    )
    # Only real picklists: state/status/boolean are other classes.
    assert [item["LogicalName"] for item in body["value"]] == ["customertypecode"]
    item = body["value"][0]
    assert set(item) == {"LogicalName", "MetadataId", "OptionSet"}
    assert set(item["OptionSet"]) == {"Options", "MetadataId"}
    options = item["OptionSet"]["Options"]
    assert [(o["Value"], localized(o["Label"])) for o in options] == [
        (1, "Competitor"),
        (3, "Customer"),
        (11, "Vendor"),
    ]
    localized_label = options[0]["Label"]["LocalizedLabels"][0]
    assert set(localized_label) == {"Label", "LanguageCode", "IsManaged", "MetadataId", "HasChanged"}
    assert localized_label["LanguageCode"] == 1033
    assert localized_label["HasChanged"] is None


def test_picklist_cast_on_table_without_choices_is_empty_not_404(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions(LogicalName='contact')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        select="LogicalName",
        expand="OptionSet($select=Options)",
    )
    assert body["value"] == []


def test_ppdc_attribute_lookup_by_metadata_id(query: MetadataQuery) -> None:
    """PPDC's column helpers address the table by MetadataId and filter Attributes by LogicalName."""
    account_id = entity_definition(ACCOUNT)["MetadataId"]
    body = run(
        query,
        f"EntityDefinitions({account_id})/Attributes",
        select="MetadataId,LogicalName,SchemaName",
        filter="LogicalName eq 'name'",
    )
    assert len(body["value"]) == 1
    row = body["value"][0]
    assert row["LogicalName"] == "name"
    assert row["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    assert list(row) == ["@odata.type", "LogicalName", "SchemaName", "MetadataId"]


# ---------------------------------------------------------------- keyed forms


def test_keyed_entity_definition_is_an_object(query: MetadataQuery) -> None:
    body = run(query, "EntityDefinitions(LogicalName='account')", select="EntitySetName,PrimaryIdAttribute")
    assert body == {
        "@odata.context": f"{ROOT}$metadata#EntityDefinitions(EntitySetName,PrimaryIdAttribute)/$entity",
        "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid",
        "MetadataId": entity_definition(ACCOUNT)["MetadataId"],
    }


def test_keyed_by_metadata_id_with_expansions(query: MetadataQuery) -> None:
    account_id = entity_definition(ACCOUNT)["MetadataId"]
    body = run(
        query, f"EntityDefinitions({account_id})", expand="Keys,ManyToOneRelationships,OneToManyRelationships"
    )
    assert body["@odata.context"] == (
        f"{ROOT}$metadata#EntityDefinitions(Keys,ManyToOneRelationships,OneToManyRelationships)/$entity"
    )
    assert body["MetadataId"] == account_id
    assert body["LogicalName"] == "account"
    assert body["SchemaName"] == "Account"
    assert body["ObjectTypeCode"] == 1
    assert body["OwnershipType"] == "UserOwned"
    assert body["ChangeTrackingEnabled"] is True
    assert body["IsActivity"] is False
    assert body["IsCustomEntity"] is False
    assert localized(body["DisplayName"]) == "Account"
    assert localized(body["DisplayCollectionName"]) == "Accounts"
    assert body["CanCreateAttributes"] == {
        "Value": True,
        "CanBeChanged": False,
        "ManagedPropertyLogicalName": "cancreateattributes",
    }
    assert [k["KeyAttributes"] for k in body["Keys"]] == [["accountnumber"]]
    assert {r["ReferencingEntityNavigationPropertyName"] for r in body["ManyToOneRelationships"]} == {
        "primarycontactid",
        "bcbi_CompanyId",
    }
    # Contacts point at accounts through parentcustomerid; account_primary_contact belongs to contact.
    assert [r["ReferencedEntityNavigationPropertyName"] for r in body["OneToManyRelationships"]] == [
        "contact_customer_accounts"
    ]


def test_unknown_table_keyed_is_404(query: MetadataQuery) -> None:
    error = refused(query, "EntityDefinitions(LogicalName='nosuchtable')")
    assert error.status == 404
    assert "nosuchtable" in error.message
    assert refused(query, f"EntityDefinitions({uuid.uuid4()})").status == 404


def test_single_attribute_by_logical_name(query: MetadataQuery) -> None:
    body = run(query, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')")
    assert body["@odata.context"] == f"{ROOT}$metadata#EntityDefinitions('account')/Attributes/$entity"
    assert body["LogicalName"] == "name"
    assert body["MaxLength"] == 160
    assert body["IsPrimaryName"] is True
    assert body["RequiredLevel"]["Value"] == "ApplicationRequired"
    assert (
        refused(query, "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='nope')").status
        == 404
    )


def test_single_attribute_cast_expands_status_options(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='statuscode')/Microsoft.Dynamics.CRM.StatusAttributeMetadata",
        select="LogicalName",
        expand="OptionSet",
    )
    assert body["OptionSet"]["OptionSetType"] == "Status"
    assert [(o["Value"], o["State"]) for o in body["OptionSet"]["Options"]] == [(1, 0), (2, 1)]
    wrong_type = refused(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')/Microsoft.Dynamics.CRM.StatusAttributeMetadata",
    )
    assert wrong_type.status == 404


# ---------------------------------------------------------------- attribute derivation


ATTRIBUTE_TYPES = [
    ("accountid", "UniqueIdentifierAttributeMetadata", "Uniqueidentifier", "UniqueidentifierType"),
    ("name", "StringAttributeMetadata", "String", "StringType"),
    ("customertypecode", "PicklistAttributeMetadata", "Picklist", "PicklistType"),
    ("statecode", "StateAttributeMetadata", "State", "StateType"),
    ("statuscode", "StatusAttributeMetadata", "Status", "StatusType"),
    ("creditlimit", "MoneyAttributeMetadata", "Money", "MoneyType"),
    ("numberofemployees", "IntegerAttributeMetadata", "Integer", "IntegerType"),
    ("donotemail", "BooleanAttributeMetadata", "Boolean", "BooleanType"),
    ("modifiedon", "DateTimeAttributeMetadata", "DateTime", "DateTimeType"),
    ("versionnumber", "BigIntAttributeMetadata", "BigInt", "BigIntType"),
    ("primarycontactid", "LookupAttributeMetadata", "Lookup", "LookupType"),
    ("bcbi_companyid", "LookupAttributeMetadata", "Lookup", "LookupType"),
]


@pytest.mark.parametrize(("logical", "cls", "attribute_type", "type_name"), ATTRIBUTE_TYPES)
def test_attribute_types(logical: str, cls: str, attribute_type: str, type_name: str) -> None:
    by_name = {a["LogicalName"]: a for a in attribute_definitions(ACCOUNT)}
    attribute = by_name[logical]
    assert attribute["@odata.type"] == f"#Microsoft.Dynamics.CRM.{cls}"
    assert attribute["AttributeType"] == attribute_type
    assert attribute["AttributeTypeName"] == {"Value": type_name}
    assert attribute["EntityLogicalName"] == "account"


def test_attributes_cover_public_columns_only() -> None:
    names = [a["LogicalName"] for a in attribute_definitions(ACCOUNT)]
    assert sorted(names) == sorted([name for name, *_ in ATTRIBUTE_TYPES] + ["accountnumber"])
    assert "bcbi_stamp" not in names and "_primarycontactid_value" not in names
    assert [a["LogicalName"] for a in attribute_definitions(CONTACT)] == [
        "contactid",
        "fullname",
        "parentcustomerid",
    ]


def test_attribute_flags() -> None:
    by_name = {a["LogicalName"]: a for a in attribute_definitions(ACCOUNT)}
    key = by_name["accountid"]
    assert (key["IsPrimaryId"], key["IsValidForCreate"], key["IsValidForUpdate"]) == (True, True, False)
    assert key["RequiredLevel"]["Value"] == "SystemRequired"
    assert (by_name["modifiedon"]["IsValidForCreate"], by_name["modifiedon"]["IsValidForUpdate"]) == (
        False,
        False,
    )
    lookup = by_name["primarycontactid"]  # written through its navigation property
    assert (lookup["IsValidForCreate"], lookup["IsValidForUpdate"], lookup["IsValidForRead"]) == (
        True,
        True,
        True,
    )
    assert lookup["Targets"] == ["contact"]
    assert by_name["bcbi_companyid"]["IsCustomAttribute"] is True
    assert by_name["name"]["IsCustomAttribute"] is False
    assert by_name["creditlimit"]["Precision"] == 4
    customer = {a["LogicalName"]: a for a in attribute_definitions(CONTACT)}["parentcustomerid"]
    assert customer["AttributeType"] == "Customer"
    assert customer["Targets"] == ["account", "contact"]
    # Deterministic ids: a restart yields the same MetadataIds.
    assert attribute_definitions(ACCOUNT) == attribute_definitions(build_schema().entity("account"))


def test_entity_definition_of_custom_table() -> None:
    definition = entity_definition(SCHEMA.entity("bcbi_company"))
    assert definition["SchemaName"] == "bcbi_Company"
    assert definition["IsCustomEntity"] is True
    assert definition["OwnershipType"] == "OrganizationOwned"
    assert definition["ObjectTypeCode"] >= 10000
    assert (
        definition["ObjectTypeCode"]
        == entity_definition(build_schema().entity("bcbi_company"))["ObjectTypeCode"]
    )


def test_keys_and_relationships() -> None:
    (key,) = key_definitions(ACCOUNT)
    assert key["SchemaName"] == "AccountNumberKey"
    assert key["LogicalName"] == "accountnumberkey"
    assert key["KeyAttributes"] == ["accountnumber"]
    assert key["EntityKeyIndexStatus"] == "Active"
    uuid.UUID(key["MetadataId"])

    by_nav = {
        r["ReferencingEntityNavigationPropertyName"]: r for r in many_to_one_relationships(SCHEMA, CONTACT)
    }
    assert set(by_nav) == {"parentcustomerid_account", "parentcustomerid_contact"}
    to_account = by_nav["parentcustomerid_account"]
    assert to_account["SchemaName"] == "contact_customer_accounts"
    assert (to_account["ReferencedEntity"], to_account["ReferencedAttribute"]) == ("account", "accountid")
    assert (to_account["ReferencingEntity"], to_account["ReferencingAttribute"]) == (
        "contact",
        "parentcustomerid",
    )
    assert to_account["ReferencedEntityNavigationPropertyName"] == "contact_customer_accounts"
    assert to_account["RelationshipType"] == "OneToManyRelationship"

    referencing = {
        (r["ReferencingEntity"], r["ReferencingAttribute"])
        for r in one_to_many_relationships(SCHEMA, CONTACT)
    }
    assert referencing == {("account", "primarycontactid"), ("contact", "parentcustomerid")}
    # A relationship declared on both ends (lookup + collection) is listed once.
    assert [r["SchemaName"] for r in one_to_many_relationships(SCHEMA, ACCOUNT)] == [
        "contact_customer_accounts"
    ]
    company = one_to_many_relationships(SCHEMA, SCHEMA.entity("bcbi_company"))
    assert [(r["SchemaName"], r["IsCustomRelationship"]) for r in company] == [("bcbi_CompanyId", True)]


def test_relationship_collections_over_the_path(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions(LogicalName='account')/ManyToOneRelationships",
        select="SchemaName,ReferencedEntity",
        filter="ReferencedEntity eq 'contact'",
    )
    assert body["@odata.context"] == (
        f"{ROOT}$metadata#EntityDefinitions('account')/ManyToOneRelationships(SchemaName,ReferencedEntity)"
    )
    assert [(r["SchemaName"], r["ReferencedEntity"]) for r in body["value"]] == [
        ("account_primary_contact", "contact")
    ]
    keys = run(query, "EntityDefinitions(LogicalName='account')/Keys(LogicalName='accountnumberkey')")
    assert keys["KeyAttributes"] == ["accountnumber"]


# ---------------------------------------------------------------- $filter / $select / $expand


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("LogicalName eq 'account'", ["account"]),
        ("LogicalName eq 'ACCOUNT'", ["account"]),  # string compares ignore case
        ("ChangeTrackingEnabled eq true", ["account"]),
        ("LogicalName in ('account','bcbi_company')", ["account", "bcbi_company"]),
        ("LogicalName eq 'account' or LogicalName eq 'contact'", ["account", "contact"]),
        ("not (LogicalName eq 'account') and IsCustomEntity eq false", ["contact"]),
        ("CanCreateAttributes/Value eq true", ["account", "contact", "bcbi_company"]),
        ("DisplayName/UserLocalizedLabel/Label eq 'Account'", ["account"]),
        ("OwnershipType eq Microsoft.Dynamics.CRM.OwnershipTypes'OrganizationOwned'", ["bcbi_company"]),
        ("ObjectTypeCode lt 10", ["account", "contact"]),
        ("PrimaryImageAttribute eq null", ["account", "contact", "bcbi_company"]),
        ("PrimaryNameAttribute ne null and ObjectTypeCode ge 10000", ["bcbi_company"]),
    ],
)
def test_entity_filters(query: MetadataQuery, expression: str, expected: list[str]) -> None:
    body = run(query, "EntityDefinitions", select="LogicalName", filter=expression)
    assert [row["LogicalName"] for row in body["value"]] == expected


def test_metadata_id_filter_with_guid_literal(query: MetadataQuery) -> None:
    account_id = entity_definition(ACCOUNT)["MetadataId"]
    body = run(query, "EntityDefinitions", select="LogicalName", filter=f"MetadataId eq {account_id}")
    assert [row["LogicalName"] for row in body["value"]] == ["account"]


def test_attribute_filter_and_enum_cast(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes",
        select="LogicalName",
        filter="AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Lookup'",
    )
    assert [row["LogicalName"] for row in body["value"]] == ["primarycontactid", "bcbi_companyid"]
    enums = run(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.EnumAttributeMetadata",
        select="LogicalName",
    )
    assert [row["LogicalName"] for row in enums["value"]] == ["customertypecode", "statecode", "statuscode"]
    # Items of a derived class announce it; the collection's own class is implied.
    assert all(row["@odata.type"].startswith("#Microsoft.Dynamics.CRM.") for row in enums["value"])
    strings = run(
        query,
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        select="LogicalName,MaxLength",
        filter="MaxLength gt 50",
    )
    assert strings["value"] == [
        {"LogicalName": "name", "MaxLength": 160, "MetadataId": strings["value"][0]["MetadataId"]}
    ]


def test_expand_attributes_with_nested_options(query: MetadataQuery) -> None:
    body = run(
        query,
        "EntityDefinitions",
        select="LogicalName",
        filter="LogicalName eq 'contact'",
        expand="Attributes($select=LogicalName,AttributeType;$filter=IsPrimaryId eq false)",
    )
    assert body["@odata.context"] == (
        f"{ROOT}$metadata#EntityDefinitions(LogicalName,Attributes,Attributes(LogicalName,AttributeType))"
    )
    (row,) = body["value"]
    assert [(a["LogicalName"], a["AttributeType"]) for a in row["Attributes"]] == [
        ("fullname", "String"),
        ("parentcustomerid", "Customer"),
    ]


def test_no_select_returns_everything_without_option_sets(query: MetadataQuery) -> None:
    body = run(query, "EntityDefinitions")
    assert body["@odata.context"] == f"{ROOT}$metadata#EntityDefinitions"
    assert [row["LogicalName"] for row in body["value"]] == ["account", "contact", "bcbi_company"]
    assert "Attributes" not in body["value"][0]
    attributes = run(query, "EntityDefinitions(LogicalName='account')/Attributes")
    assert all("OptionSet" not in a for a in attributes["value"])


@pytest.mark.parametrize(
    ("path", "options", "status"),
    [
        ("EntityDefinitions", {"filter": "LogicalName eq"}, 400),
        ("EntityDefinitions", {"filter": "LogicalName eq 'O'Bryan'"}, 400),
        ("EntityDefinitions", {"filter": "NoSuchProperty eq 'x'"}, 400),
        ("EntityDefinitions", {"filter": "DisplayName eq 'Account'"}, 400),  # complex value, not primitive
        ("EntityDefinitions", {"filter": "contains(LogicalName,'acc')"}, 400),
        ("EntityDefinitions", {"select": "LogicalName,Bogus"}, 400),
        ("EntityDefinitions", {"expand": "Bogus"}, 400),
        ("EntityDefinitions", {"top": "1"}, 400),
        ("EntityDefinitions(LogicalName='account')/Attributes", {"expand": "OptionSet"}, 400),
        ("EntityDefinitions(LogicalName='account')/Attributes", {"select": "MaxLength"}, 400),
        (
            "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.NoSuchMetadata",
            {},
            404,
        ),
        ("EntityDefinitions(LogicalName='account')/Nope", {}, 404),
        ("EntityDefinitions(EntitySetName='accounts')", {}, 400),
        ("RelationshipDefinitions", {}, 404),
    ],
)
def test_bad_requests(query: MetadataQuery, path: str, options: dict[str, str], status: int) -> None:
    error = refused(query, path, **options)
    assert error.status == status
    assert error.code.startswith("0x")
    assert error.message


def test_service_root_without_trailing_slash() -> None:
    body = MetadataQuery(SCHEMA, ROOT.rstrip("/")).execute(["EntityDefinitions"], {"$select": "LogicalName"})[
        1
    ]
    assert body["@odata.context"] == f"{ROOT}$metadata#EntityDefinitions(LogicalName)"


# ---------------------------------------------------------------- Microsoft's SDK reads our answers


class _Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.status_code = 200
        self.text = "{}"

    def json(self) -> dict[str, Any]:
        return self._body


def test_ppdc_parses_the_answers(query: MetadataQuery) -> None:
    """Feed our responses to PowerPlatform-Dataverse-Client's own metadata code (transport replaced)."""
    from urllib.parse import parse_qsl, urlsplit

    from PowerPlatform.Dataverse.data._odata import _ODataClient

    seen: list[str] = []

    def answer(method: str, url: str, params: dict[str, str] | None = None, **_: Any) -> _Answer:
        assert method == "get"
        parts = urlsplit(url)
        path = parts.path.split("/api/data/v9.2/", 1)[1]
        options = dict(parse_qsl(parts.query)) | (params or {})
        seen.append(path)
        return _Answer(query.execute(path.split("/"), options)[1])

    client = _ODataClient.__new__(_ODataClient)
    client.api = ROOT.rstrip("/")
    client._logical_to_entityset_cache = {}
    client._logical_primaryid_cache = {}
    client._picklist_label_cache = {}
    client._picklist_cache_ttl_seconds = 3600
    client._request = answer
    client._request_metadata_with_retry = answer

    assert client._entity_set_from_schema_name("Account") == "accounts"
    converted = client._convert_labels_to_ints("account", {"name": "Contoso", "customertypecode": "Vendor"})
    assert converted == {"name": "Contoso", "customertypecode": 11}
    assert seen == [
        "EntityDefinitions",
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
    ]
