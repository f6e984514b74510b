"""The Business Central API v2.0 entities the Dataverse integration touches, declared as data.

Routes, validation, serialization and ``$metadata`` of the BC app are derived from these
declarations, so the conventions below matter (the app and the connector rely on them):

- the key is ``id`` (BC's SystemId, ``Edm.Guid``, writable: a client may choose it on POST);
- every company-scoped entity carries hidden storage columns: ``companyId`` (the scope),
  ``rowVersion`` (the ETag source) and ``systemCreatedAt``; ``lastModifiedDateTime`` is the public,
  read-only modified-on stamp (BC's SystemModifiedAt);
- Code fields have ``kind="Code"`` (BC upper-cases them) and the BC table's length; enums are
  ``Edm.String`` with ``kind="Enum"`` and an option set whose labels are the AL member names
  *unescaped* (``" "``, ``"Non-Inventory"``); the wire form (``_x0020_``) is the app's business;
- a GUID reference (``currencyId``) is a plain ``Edm.Guid``; the single-valued navigation that
  expands it names it as ``via``; its Code twin (``currencyCode``) is kept in step by the app;
- what BC knows about an entity beyond its fields lives in one :class:`BCEntity` (``EntityType.info``,
  read through :func:`entity_info`): the table caption used in error texts, the number series of
  server-assigned numbers, the code field of code-keyed setup tables, webhook support, the fields
  required on create or forbidden on create, Code fields that name a row of another entity
  (checked through table relations), the API route, and whether the set is read-only.

Facts (lengths, enum members, read-only flags) come from the BC base tables and API pages.
``build_schema`` returns new objects on every call because apps mutate their schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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

NAMESPACE = "Microsoft.NAV"


@dataclass(frozen=True)
class BCEntity:
    """BC's facts about one entity beyond its fields (API page and base-table rules)."""

    caption: str  # the BC table caption, as error texts name it
    number_series: str | None = None  # prefix of server-assigned numbers (`number`)
    code_field: str | None = None  # the key field of code-keyed setup tables
    # BC lists the set as webhook-supported
    # (https://learn.microsoft.com/en-us/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions)
    webhooks: bool = False
    required_on_create: tuple[str, ...] = ()
    create_forbidden: tuple[str, ...] = ()  # writable later, refused on POST (item inventory)
    # Code field -> (entity, field) it must name a row of, as the base table's TableRelation says.
    code_references: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    api_route: Literal["standard", "custom"] = "standard"
    read_only: bool = False  # the set accepts GET only (companies)


def entity_info(entity: EntityType) -> BCEntity:
    """The typed BC facts of ``entity`` (a caption from its display name for hand-built entities)."""
    if isinstance(entity.info, BCEntity):
        return entity.info
    return BCEntity(caption=entity.display_name or entity.name)

# -- enums --------------------------------------------------------------------------------------


def enum(name: str, labels: Iterable[tuple[int, str]], default: str) -> OptionSet:
    """A BC enum: (ordinal, AL member name) pairs; ``default`` is the InitValue's member name."""
    options = tuple(Option(value, label) for value, label in labels)
    default_value = next(o.value for o in options if o.label == default)
    return OptionSet(name, options, default=default_value)


def _default_label(options: OptionSet) -> str | None:
    return options.label(options.default) if options.default is not None else None


CONTACT_TYPE = enum("contactType", [(0, "Company"), (1, "Person")], "Company")
CUSTOMER_BLOCKED = enum("customerBlocked", [(0, " "), (1, "Ship"), (2, "Invoice"), (3, "All")], " ")
VENDOR_BLOCKED = enum("vendorBlocked", [(0, " "), (1, "Payment"), (2, "All")], " ")
ITEM_TYPE = enum("itemType", [(0, "Inventory"), (1, "Service"), (2, "Non-Inventory")], "Inventory")
CONTACT_BUSINESS_RELATION = enum(
    "contactBusinessRelation",
    [
        (0, " "),
        (1, "Customer"),
        (2, "Vendor"),
        (3, "Bank Account"),
        (4, "Employee"),
        (5, "None"),
        (6, "Other"),
        (7, "Multiple"),
    ],
    " ",
)
ADDRESS_FORMAT = enum(
    "countryRegionAddressFormat",
    [
        (0, "Post Code+City"),
        (1, "City+Post Code"),
        (2, "City+County+Post Code"),
        (3, "Blank Line+Post Code+City"),
        (13, "Custom"),
    ],
    "City+Post Code",
)
CONTACT_LINK_TO_TABLE = enum(
    "contactBusinessRelationLinkToTable",
    [(0, " "), (1, "Customer"), (2, "Vendor"), (3, "Bank Account"), (4, "Employee")],
    " ",
)
RESOURCE_TYPE = enum("resourceType", [(0, "Person"), (1, "Machine")], "Person")


# -- property factories -------------------------------------------------------------------------


def key() -> Property:
    return Property("id", Edm.Guid, nullable=False, kind="Guid")


def code(name: str, length: int, *, read_only: bool = False) -> Property:
    """A Code[n] field: upper-cased by BC, compared case-insensitively."""
    return Property(name, Edm.String, max_length=length, read_only=read_only, kind="Code")


def text(name: str, length: int | None, *, read_only: bool = False) -> Property:
    return Property(name, Edm.String, max_length=length, read_only=read_only, kind="Text")


def decimal(name: str, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Decimal, read_only=read_only, kind="Decimal")


def boolean(name: str) -> Property:
    return Property(name, Edm.Boolean, default=False, kind="Boolean")


def guid(name: str, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Guid, read_only=read_only, kind="Guid")


def date(name: str, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Date, read_only=read_only, kind="Date")


def choice(name: str, options: OptionSet) -> Property:
    return Property(name, Edm.String, kind="Enum", options=options, default=_default_label(options))


def reference(name: str, target: str, via: str) -> Navigation:
    """A single-valued navigation that expands the row ``via`` points at."""
    return Navigation(name, target=target, collection=False, via=via)


def _address() -> list[Property]:
    """The postal block customers, vendors and contacts share (lengths of the BC tables)."""
    return [
        text("addressLine1", 100),
        text("addressLine2", 50),
        text("city", 30),
        text("state", 30),
        code("country", 10),
        code("postalCode", 20),
    ]


def _system_columns() -> list[Property]:
    """Server-maintained columns every company-scoped entity has; only lastModifiedDateTime is public."""
    return [
        Property("lastModifiedDateTime", Edm.DateTimeOffset, read_only=True, kind="DateTime"),
        Property("companyId", Edm.Guid, hidden=True),
        Property("rowVersion", Edm.Int64, hidden=True),
        Property("systemCreatedAt", Edm.DateTimeOffset, hidden=True),
    ]


# -- entity assembly ----------------------------------------------------------------------------

@dataclass
class _Entity:
    """Collects one company-scoped entity; ``build`` adds the shared columns and conventions."""

    name: str
    set_name: str
    caption: str
    properties: list[Property]
    navigations: list[Navigation] = field(default_factory=list)
    number_series: str | None = None
    code_keyed: bool = False
    webhooks: bool = False
    code_references: dict[str, tuple[str, str]] = field(default_factory=dict)
    create_forbidden: tuple[str, ...] = ()
    api_route: Literal["standard", "custom"] = "standard"

    def build(self) -> EntityType:
        properties = [key(), *self.properties, *_system_columns()]
        names = [p.name for p in properties] + [n.name for n in self.navigations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.name}: declared twice: {duplicates}")
        alternate_keys: list[AlternateKey] = []
        required: tuple[str, ...] = ()
        if self.number_series is not None:
            required = ("displayName",)
            alternate_keys.append(AlternateKey("number", ("number",)))
        if self.code_keyed:
            required = ("code",)
            alternate_keys.append(AlternateKey("code", ("code",)))
        info = BCEntity(
            caption=self.caption,
            number_series=self.number_series,
            code_field="code" if self.code_keyed else None,
            webhooks=self.webhooks,
            required_on_create=required,
            create_forbidden=self.create_forbidden,
            code_references=dict(self.code_references),
            api_route=self.api_route,
        )
        for name in [*required, *self.create_forbidden, *self.code_references]:
            if name not in names:
                raise ValueError(f"{self.name}: {name!r} names no declared field")
        return EntityType(
            name=self.name,
            set_name=self.set_name,
            key="id",
            properties=properties,
            navigations=self.navigations,
            alternate_keys=alternate_keys,
            primary_name="displayName",
            display_name=self.caption,
            version_property="rowVersion",
            modified_on="lastModifiedDateTime",
            created_on="systemCreatedAt",
            scope_property="companyId",
            info=info,
        )


def _company() -> EntityType:
    """The root ``companies`` set: read-only, not company-scoped, no ETag in BC's responses."""
    return EntityType(
        name="company",
        set_name="companies",
        key="id",
        properties=[
            Property("id", Edm.Guid, nullable=False, read_only=True, kind="Guid"),
            Property("systemVersion", Edm.String, read_only=True, kind="Text"),
            Property("timestamp", Edm.Int64, read_only=True, kind="BigInteger"),
            Property("name", Edm.String, max_length=30, read_only=True, kind="Text"),
            Property("displayName", Edm.String, max_length=250, read_only=True, kind="Text"),
            Property("businessProfileId", Edm.String, max_length=250, read_only=True, kind="Text"),
            Property("systemCreatedAt", Edm.DateTimeOffset, read_only=True, kind="DateTime"),
            Property("systemCreatedBy", Edm.Guid, read_only=True, kind="Guid"),
            Property("systemModifiedAt", Edm.DateTimeOffset, read_only=True, kind="DateTime"),
            Property("systemModifiedBy", Edm.Guid, read_only=True, kind="Guid"),
        ],
        primary_name="name",
        display_name="Company",
        modified_on="systemModifiedAt",
        created_on="systemCreatedAt",
        info=BCEntity(caption="Company", read_only=True),
    )


_SALESPERSON_REF = ("salespersonPurchaser", "code")
_COUNTRY_REF = ("countryRegion", "code")


def _customer() -> EntityType:
    return _Entity(
        "customer",
        "customers",
        "Customer",
        [
            code("number", 20),
            text("displayName", 100),
            choice("type", CONTACT_TYPE),
            *_address(),
            text("phoneNumber", 30),
            text("email", 80),
            text("website", 255),
            code("salespersonCode", 20),
            decimal("balanceDue", read_only=True),
            decimal("creditLimit"),
            boolean("taxLiable"),
            guid("taxAreaId"),
            text("taxAreaDisplayName", 100, read_only=True),
            text("taxRegistrationNumber", 20),
            guid("currencyId"),
            code("currencyCode", 10),
            guid("paymentTermsId"),
            guid("shipmentMethodId"),
            guid("paymentMethodId"),
            choice("blocked", CUSTOMER_BLOCKED),
        ],
        navigations=[
            reference("currency", "currency", "currencyId"),
            reference("paymentTerm", "paymentTerm", "paymentTermsId"),
            reference("shipmentMethod", "shipmentMethod", "shipmentMethodId"),
            reference("paymentMethod", "paymentMethod", "paymentMethodId"),
        ],
        number_series="C",
        webhooks=True,
        code_references={"salespersonCode": _SALESPERSON_REF, "country": _COUNTRY_REF},
    ).build()


def _vendor() -> EntityType:
    return _Entity(
        "vendor",
        "vendors",
        "Vendor",
        [
            code("number", 20),
            text("displayName", 100),
            *_address(),
            text("phoneNumber", 30),
            text("email", 80),
            text("website", 255),
            text("taxRegistrationNumber", 20),
            guid("currencyId"),
            code("currencyCode", 10),
            code("irs1099Code", 10),
            guid("paymentTermsId"),
            guid("paymentMethodId"),
            boolean("taxLiable"),
            choice("blocked", VENDOR_BLOCKED),
            decimal("balance", read_only=True),
        ],
        navigations=[
            reference("currency", "currency", "currencyId"),
            reference("paymentTerm", "paymentTerm", "paymentTermsId"),
            reference("paymentMethod", "paymentMethod", "paymentMethodId"),
        ],
        number_series="V",
        webhooks=True,
        code_references={"country": _COUNTRY_REF},
    ).build()


def _contact() -> EntityType:
    return _Entity(
        "contact",
        "contacts",
        "Contact",
        [
            code("number", 20),
            choice("type", CONTACT_TYPE),
            text("displayName", 100),
            text("jobTitle", 30),
            code("companyNumber", 20),
            text("companyName", 100),
            choice("contactBusinessRelation", CONTACT_BUSINESS_RELATION),
            *_address(),
            text("phoneNumber", 30),
            text("mobilePhoneNumber", 30),
            text("email", 80),
            text("website", 255),
            code("searchName", 100),
            boolean("privacyBlocked"),
            text("taxRegistrationNumber", 20),
            date("lastInteractionDate", read_only=True),
        ],
        number_series="CT",
        code_references={"companyNumber": ("contact", "number"), "country": _COUNTRY_REF},
    ).build()


def _item() -> EntityType:
    return _Entity(
        "item",
        "items",
        "Item",
        [
            code("number", 20),
            text("displayName", 100),
            text("displayName2", 50),
            choice("type", ITEM_TYPE),
            guid("itemCategoryId"),
            code("itemCategoryCode", 20),
            boolean("blocked"),
            code("gtin", 14),
            # Writable in the API page (posts an adjustment), but not on POST; docs call it read-only.
            decimal("inventory"),
            decimal("unitPrice"),
            boolean("priceIncludesTax"),
            decimal("unitCost"),
            guid("taxGroupId"),
            code("taxGroupCode", 20),
            guid("baseUnitOfMeasureId"),
            code("baseUnitOfMeasureCode", 10),
            guid("generalProductPostingGroupId"),
            code("generalProductPostingGroupCode", 20),
            guid("inventoryPostingGroupId"),
            code("inventoryPostingGroupCode", 20),
        ],
        navigations=[
            # The API page names the part baseUnitOfMeasure; the v2.0 docs call it unitOfMeasure.
            reference("baseUnitOfMeasure", "unitOfMeasure", "baseUnitOfMeasureId"),
            reference("unitOfMeasure", "unitOfMeasure", "baseUnitOfMeasureId"),
        ],
        number_series="I",
        webhooks=True,
        create_forbidden=("inventory",),
    ).build()


def _resource() -> EntityType:
    return _Entity(
        "resource",
        "resources",
        "Resource",
        [
            code("number", 20),
            text("displayName", 100),
            choice("type", RESOURCE_TYPE),
            code("baseUnitOfMeasureCode", 10),
            decimal("unitCost"),
            decimal("unitPrice"),
            boolean("blocked"),
        ],
        number_series="R",
        code_references={"baseUnitOfMeasureCode": ("unitOfMeasure", "code")},
        api_route="custom",
    ).build()


def _contact_business_relation() -> EntityType:
    """Which customer or vendor a company contact stands for (base table 5054 "Contact Business
    Relation"). API v2.0 does not carry the link, so the integration's custom API serves it, as a real
    integration would add one."""
    return _Entity(
        "contactBusinessRelation",
        "contactBusinessRelations",
        "Contact Business Relation",
        [
            code("contactNumber", 20),
            code("businessRelationCode", 10),
            choice("linkToTable", CONTACT_LINK_TO_TABLE),
            code("linkNumber", 20),
        ],
        code_references={"contactNumber": ("contact", "number")},
        api_route="custom",
    ).build()


def _currency() -> EntityType:
    return _Entity(
        "currency",
        "currencies",
        "Currency",
        [
            code("code", 10),
            text("displayName", 30),
            text("symbol", 10),
            text("amountDecimalPlaces", 5),
            decimal("amountRoundingPrecision"),
        ],
        code_keyed=True,
        webhooks=True,
    ).build()


def _salesperson() -> EntityType:
    return _Entity(
        "salespersonPurchaser",
        "salespeoplePurchasers",
        "Salesperson/Purchaser",
        [
            code("code", 20),
            text("displayName", 50),
            text("email", 80),
            text("email2", 80),
            text("phoneNo", 30),
            text("jobTitle", 30),
            decimal("commisionPercent"),  # sic: BC's API spells it with one "s"
            boolean("privacyBlocked"),
            boolean("blocked"),
        ],
        code_keyed=True,
    ).build()


def _unit_of_measure() -> EntityType:
    return _Entity(
        "unitOfMeasure",
        "unitsOfMeasure",
        "Unit of Measure",
        [
            code("code", 10),
            text("displayName", 50),
            code("internationalStandardCode", 10),
            text("symbol", 10),
        ],
        code_keyed=True,
        webhooks=True,
    ).build()


def _payment_term() -> EntityType:
    return _Entity(
        "paymentTerm",
        "paymentTerms",
        "Payment Terms",
        [
            code("code", 10),
            text("displayName", 100),
            # DateFormula fields travel as their text form ("14D", "1M+CM").
            text("dueDateCalculation", None),
            text("discountDateCalculation", None),
            decimal("discountPercent"),
            boolean("calculateDiscountOnCreditMemos"),
        ],
        code_keyed=True,
        webhooks=True,
    ).build()


def _shipment_method() -> EntityType:
    return _Entity(
        "shipmentMethod",
        "shipmentMethods",
        "Shipment Method",
        [code("code", 10), text("displayName", 100)],
        code_keyed=True,
        webhooks=True,
    ).build()


def _payment_method() -> EntityType:
    return _Entity(
        "paymentMethod",
        "paymentMethods",
        "Payment Method",
        [code("code", 10), text("displayName", 100)],
        code_keyed=True,
        webhooks=True,
    ).build()


def _country_region() -> EntityType:
    return _Entity(
        "countryRegion",
        "countriesRegions",
        "Country/Region",
        [code("code", 10), text("displayName", 50), choice("addressFormat", ADDRESS_FORMAT)],
        code_keyed=True,
        webhooks=True,
    ).build()


_ENTITIES = (
    _company,
    _customer,
    _vendor,
    _contact,
    _item,
    _currency,
    _salesperson,
    _unit_of_measure,
    _payment_term,
    _shipment_method,
    _payment_method,
    _country_region,
    _resource,
    _contact_business_relation,
)


# -- public interface ---------------------------------------------------------------------------


def build_schema() -> Schema:
    """A fresh BC schema (new objects every call)."""
    return Schema(NAMESPACE, [make() for make in _ENTITIES])


def company_scoped(schema: Schema) -> list[EntityType]:
    """The entities that live under ``companies({id})`` (everything but ``company``)."""
    return [e for e in schema if e.scope_property is not None]
