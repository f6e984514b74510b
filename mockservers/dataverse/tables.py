"""The Dataverse tables the Business Central integration touches, declared as data.

Everything else in the Dataverse app (routes, validation, serialization, ``$metadata``,
``EntityDefinitions``) is derived from these declarations, so the conventions below matter:

- every table's key is ``<logicalname>id`` (``Edm.Guid``, writable: clients may choose it on create);
- a lookup column ``x`` is the read-only ``_x_value`` property plus the single-valued navigation ``x``
  that writes it with ``x@odata.bind``; polymorphic lookups (Customer, Owner) store the target table
  in a hidden ``x_type`` column and get one navigation per target (``parentcustomerid_account``);
- the owner lookup is bound by its column name (``ownerid@odata.bind: /teams(..)``); the table's
  ``extra["bind_aliases"]`` says which per-target navigation each target table resolves to;
- ``extra["required_levels"]`` keeps Dataverse's own level (SystemRequired/ApplicationRequired) for
  every column declared ``required``, keyed by column (lookups by navigation/column name);
- ``extra["computed"]`` describes server-computed text columns (``fullname``, ``address1_composite``),
  see :func:`computed_values`.

Facts (lengths, option values, relationship names) come from the public table reference pages.
``build_schema`` returns new objects on every call because apps mutate their schema (alternate keys).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

NAMESPACE = "Microsoft.Dynamics.CRM"
ALIAS = "mscrm"

# CollectionSchemaName and DisplayCollectionName as EntityDefinitions reports them.
_COLLECTION_NAMES = {
    "account": ("Accounts", "Accounts"),
    "contact": ("Contacts", "Contacts"),
    "product": ("Products", "Products"),
    "transactioncurrency": ("TransactionCurrencies", "Currencies"),
    "systemuser": ("SystemUsers", "Users"),
    "team": ("Teams", "Teams"),
    "businessunit": ("BusinessUnits", "Business Units"),
    "uom": ("UoMs", "Units"),
    "uomschedule": ("UoMSchedules", "Unit Groups"),
    "bcbi_company": ("bcbi_Companies", "Companies"),
}


# -- option sets --------------------------------------------------------------------------------


def options(name: str, pairs: Iterable[tuple[int, str]], default: int | None = None) -> OptionSet:
    """A picklist option set from (value, label) pairs."""
    return OptionSet(name, tuple(Option(v, label) for v, label in pairs), default=default)


def state_options(table: str, pairs: Iterable[tuple[int, str]], default: int = 0) -> OptionSet:
    return OptionSet(f"{table}_statecode", tuple(Option(v, label) for v, label in pairs), default=default)


def status_options(table: str, triples: Iterable[tuple[int, str, int]], default: int = 1) -> OptionSet:
    """Status reasons as (value, label, state). The first reason listed for a state is its default."""
    return OptionSet(
        f"{table}_statuscode", tuple(Option(v, label, state=s) for v, label, s in triples), default=default
    )


def active_inactive(table: str) -> tuple[OptionSet, OptionSet]:
    """The common state model: 0 Active (status 1), 1 Inactive (status 2)."""
    return (
        state_options(table, [(0, "Active"), (1, "Inactive")]),
        status_options(table, [(1, "Active", 0), (2, "Inactive", 1)]),
    )


ACCOUNT_CUSTOMER_TYPE = options(
    "account_customertypecode",
    [
        (1, "Competitor"),
        (2, "Consultant"),
        (3, "Customer"),
        (4, "Investor"),
        (5, "Partner"),
        (6, "Influencer"),
        (7, "Press"),
        (8, "Prospect"),
        (9, "Reseller"),
        (10, "Supplier"),
        (11, "Vendor"),
        (12, "Other"),
    ],
)
CONTACT_CUSTOMER_TYPE = options("contact_customertypecode", [(1, "Default Value")])
PAYMENT_TERMS = options(
    "account_paymenttermscode", [(1, "Net 30"), (2, "2% 10, Net 30"), (3, "Net 45"), (4, "Net 60")]
)
FREIGHT_TERMS = options("account_address1_freighttermscode", [(1, "FOB"), (2, "No Charge")])
SHIPPING_METHOD = options(
    "account_address1_shippingmethodcode",
    [
        (1, "Airborne"),
        (2, "DHL"),
        (3, "FedEx"),
        (4, "UPS"),
        (5, "Postal Mail"),
        (6, "Full Load"),
        (7, "Will Call"),
    ],
)
PRODUCT_TYPE = options(
    "product_producttypecode",
    [(1, "Sales Inventory"), (2, "Miscellaneous Charges"), (3, "Services"), (4, "Flat Fees")],
    default=1,
)
PRODUCT_STRUCTURE = options(
    "product_productstructure", [(1, "Product"), (2, "Product Family"), (3, "Product Bundle")], default=1
)
PRODUCT_STATE = state_options("product", [(0, "Active"), (1, "Retired"), (2, "Draft"), (3, "Under Revision")])
# Listed so that each state's default reason comes first: 0->1, 1->2, 2->0, 3->3.
PRODUCT_STATUS = status_options(
    "product", [(1, "Active", 0), (2, "Retired", 1), (0, "Draft", 2), (3, "Under Revision", 3)]
)
ACCESS_MODE = options(
    "systemuser_accessmode",
    [
        (0, "Read-Write"),
        (1, "Administrative"),
        (2, "Read"),
        (3, "Support User"),
        (4, "Non-interactive"),
        (5, "Delegated Admin"),
    ],
    default=0,
)
TEAM_TYPE = options(
    "team_teamtype",
    [(0, "Owner"), (1, "Access"), (2, "AAD Security Group"), (3, "AAD Office Group")],
    default=0,
)


def default_status(status: OptionSet, state: int) -> int | None:
    """The status reason a row gets when only its state is set (first reason of that state)."""
    for option in status.options:
        if option.state == state:
            return option.value
    return None


# -- column factories ---------------------------------------------------------------------------


def key(table: str) -> Property:
    return Property(f"{table}id", Edm.Guid, nullable=False, kind="Uniqueidentifier")


def string(
    name: str,
    max_length: int,
    *,
    required: bool = False,
    read_only: bool = False,
    kind: str = "String",
    display_name: str | None = None,
) -> Property:
    return Property(
        name,
        Edm.String,
        max_length=max_length,
        required=required,
        read_only=read_only,
        kind=kind,
        display_name=display_name,
    )


def memo(name: str, max_length: int = 2000, *, read_only: bool = False) -> Property:
    return string(name, max_length, read_only=read_only, kind="Memo")


def integer(name: str, *, required: bool = False, default: int | None = None) -> Property:
    return Property(name, Edm.Int32, required=required, default=default, kind="Integer")


def decimal(name: str, scale: int, *, required: bool = False, read_only: bool = False) -> Property:
    return Property(name, Edm.Decimal, scale=scale, required=required, read_only=read_only, kind="Decimal")


def boolean(name: str, *, default: bool = False, read_only: bool = False) -> Property:
    return Property(name, Edm.Boolean, default=default, read_only=read_only, kind="Boolean")


def guid(name: str, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Guid, read_only=read_only, kind="Uniqueidentifier")


def choice(name: str, optionset: OptionSet, *, required: bool = False) -> Property:
    return Property(
        name, Edm.Int32, options=optionset, default=optionset.default, required=required, kind="Picklist"
    )


def state(optionset: OptionSet) -> Property:
    return Property(
        "statecode", Edm.Int32, options=optionset, default=optionset.default, nullable=False, kind="State"
    )


def status(optionset: OptionSet) -> Property:
    return Property(
        "statuscode", Edm.Int32, options=optionset, default=optionset.default, nullable=False, kind="Status"
    )


def money(name: str, *, read_only: bool = False) -> list[Property]:
    """A currency column and its read-only ``_base`` companion (value in the base currency)."""
    return [
        Property(name, Edm.Decimal, scale=4, read_only=read_only, kind="Money"),
        Property(f"{name}_base", Edm.Decimal, scale=4, read_only=True, kind="Money"),
    ]


def lookup(
    name: str, target: str, *, read_only: bool = False, required: bool = False
) -> tuple[Property, Navigation]:
    """A single-target lookup: ``_name_value`` (always read-only) plus the navigation ``name``."""
    value = Property(
        f"_{name}_value", Edm.Guid, read_only=True, required=required, kind="Lookup", lookup=name
    )
    nav = Navigation(name, target=target, collection=False, via=value.name, read_only=read_only)
    return value, nav


def polymorphic_lookup(
    name: str, targets: Iterable[str], kind: str, *, required: bool = False
) -> tuple[list[Property], list[Navigation]]:
    """A Customer/Owner lookup: value + hidden target-table column + one navigation per target."""
    type_column = f"{name}_type"
    value = Property(
        f"_{name}_value",
        Edm.Guid,
        read_only=True,
        required=required,
        kind=kind,
        lookup=name,
        lookup_type_column=type_column,
    )
    discriminator = Property(type_column, Edm.String, max_length=64, hidden=True, kind="EntityName")
    navs = [
        Navigation(
            f"{name}_{target}",
            target=target,
            collection=False,
            via=value.name,
            discriminator=type_column,
            discriminator_value=target,
        )
        for target in targets
    ]
    return [value, discriminator], navs


def related(
    name: str, referencing: str, lookup_column: str, *, discriminator_value: str | None = None
) -> Navigation:
    """A collection navigation: rows of ``referencing`` whose lookup ``lookup_column`` points here."""
    return Navigation(
        name,
        target=referencing,
        collection=True,
        via=f"_{lookup_column}_value",
        discriminator=f"{lookup_column}_type" if discriminator_value else None,
        discriminator_value=discriminator_value,
        read_only=True,
    )


# -- table assembly -----------------------------------------------------------------------------


@dataclass
class _Table:
    """Collects a table's columns and navigations; ``add`` accepts factories' tuples and lists."""

    name: str
    set_name: str
    primary_name: str
    display_name: str
    schema_name: str
    object_type_code: int | None
    ownership: str = "UserOwned"
    change_tracking: bool = False
    properties: list[Property] = field(default_factory=list)
    navigations: list[Navigation] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, *items: Any) -> _Table:
        for item in items:
            if isinstance(item, Property):
                self.properties.append(item)
            elif isinstance(item, Navigation):
                self.navigations.append(item)
            else:
                self.add(*item)
        return self

    def build(self) -> EntityType:
        names = [p.name for p in self.properties] + [n.name for n in self.navigations]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"{self.name}: declared twice: {sorted(duplicates)}")
        extra = {
            "schema_name": self.schema_name,
            "collection_schema_name": _COLLECTION_NAMES[self.name][0],
            "display_collection_name": _COLLECTION_NAMES[self.name][1],
            "required_levels": self.extra.pop("required_levels", {}),
            # Custom tables get no fixed code: the metadata layer derives a stable one.
            **({"object_type_code": self.object_type_code} if self.object_type_code is not None else {}),
            **self.extra,
        }
        return EntityType(
            name=self.name,
            set_name=self.set_name,
            key=f"{self.name}id",
            properties=[key(self.name), *self.properties],
            navigations=self.navigations,
            primary_name=self.primary_name,
            display_name=self.display_name,
            version_property="versionnumber",
            modified_on="modifiedon",
            created_on="createdon",
            change_tracking=self.change_tracking,
            ownership=self.ownership,
            extra=extra,
        )


def _system_columns() -> list[Any]:
    """Columns the server maintains on every table."""
    return [
        Property("createdon", Edm.DateTimeOffset, read_only=True, kind="DateTime"),
        Property("modifiedon", Edm.DateTimeOffset, read_only=True, kind="DateTime"),
        Property("versionnumber", Edm.Int64, read_only=True, kind="BigInt"),
        lookup("createdby", "systemuser", read_only=True),
        lookup("modifiedby", "systemuser", read_only=True),
    ]


def _ownership_columns() -> list[Any]:
    """Owner (user or team) plus the read-only owning user/team/business unit it implies.

    ``ownerid`` is SystemRequired in Dataverse, but the server fills it with the caller when a
    client omits it, so it is not declared ``required`` here.
    """
    owner_props, owner_navs = polymorphic_lookup("ownerid", ["systemuser", "team"], "Owner")
    return [
        owner_props,
        owner_navs,
        lookup("owninguser", "systemuser", read_only=True),
        lookup("owningteam", "team", read_only=True),
        lookup("owningbusinessunit", "businessunit", read_only=True),
    ]


OWNER_BIND_ALIASES = {"ownerid": {"systemuser": "ownerid_systemuser", "team": "ownerid_team"}}


def _address1() -> list[Property]:
    return [
        string("address1_line1", 250),
        string("address1_line2", 250),
        string("address1_line3", 250),
        string("address1_city", 80),
        string("address1_stateorprovince", 50),
        string("address1_postalcode", 20),
        string("address1_country", 80),
        memo("address1_composite", 1000, read_only=True),
    ]


_ADDRESS1_COMPOSITE = {
    "separator": "\r\n",
    "parts": [
        "address1_line1",
        "address1_line2",
        "address1_line3",
        ["address1_city", "address1_stateorprovince", "address1_postalcode"],  # one line, space-separated
        "address1_country",
    ],
}
_FULLNAME = {"separator": " ", "parts": ["firstname", "lastname"]}


def _account() -> EntityType:
    state_set, status_set = active_inactive("account")
    t = _Table("account", "accounts", "name", "Account", "Account", 1, change_tracking=True)
    t.add(
        string("name", 160, required=True, display_name="Account Name"),
        string("accountnumber", 20, display_name="Account Number"),
        string("telephone1", 50),
        string("telephone2", 50),
        string("fax", 50),
        string("websiteurl", 200),
        string("emailaddress1", 100),
        _address1(),
        string("address1_primarycontactname", 100),
        choice("address1_freighttermscode", FREIGHT_TERMS),
        choice("address1_shippingmethodcode", SHIPPING_METHOD),
        choice("paymenttermscode", PAYMENT_TERMS),
        choice("customertypecode", ACCOUNT_CUSTOMER_TYPE),
        money("creditlimit"),
        money("revenue"),
        decimal("exchangerate", 12, read_only=True),
        boolean("creditonhold"),
        integer("numberofemployees"),
        memo("description"),
        state(state_set),
        status(status_set),
        lookup("primarycontactid", "contact"),
        lookup("parentaccountid", "account"),
        lookup("transactioncurrencyid", "transactioncurrency"),
        lookup("bcbi_companyid", "bcbi_company"),
        _ownership_columns(),
        _system_columns(),
        related("contact_customer_accounts", "contact", "parentcustomerid", discriminator_value="account"),
        related("account_parent_account", "account", "parentaccountid"),
    )
    t.extra.update(
        required_levels={"name": "ApplicationRequired"},
        computed={"address1_composite": _ADDRESS1_COMPOSITE},
        bind_aliases=OWNER_BIND_ALIASES,
    )
    return t.build()


def _contact() -> EntityType:
    state_set, status_set = active_inactive("contact")
    t = _Table("contact", "contacts", "fullname", "Contact", "Contact", 2, change_tracking=True)
    parent_props, parent_navs = polymorphic_lookup("parentcustomerid", ["account", "contact"], "Customer")
    t.add(
        string("firstname", 50),
        string("middlename", 50),
        string("lastname", 50, required=True),
        string("fullname", 160, read_only=True),
        string("jobtitle", 100),
        string("emailaddress1", 100),
        string("telephone1", 50),
        string("mobilephone", 50),
        string("fax", 50),
        string("pager", 50),
        string("websiteurl", 200),
        _address1(),
        choice("customertypecode", CONTACT_CUSTOMER_TYPE),
        money("creditlimit"),
        decimal("exchangerate", 12, read_only=True),
        memo("description"),
        state(state_set),
        status(status_set),
        parent_props,
        parent_navs,
        lookup("transactioncurrencyid", "transactioncurrency"),
        lookup("bcbi_companyid", "bcbi_company"),
        _ownership_columns(),
        _system_columns(),
        related("account_primary_contact", "account", "primarycontactid"),
        related("contact_customer_contacts", "contact", "parentcustomerid", discriminator_value="contact"),
    )
    t.extra.update(
        required_levels={"lastname": "ApplicationRequired"},
        computed={"fullname": _FULLNAME, "address1_composite": _ADDRESS1_COMPOSITE},
        bind_aliases=OWNER_BIND_ALIASES,
    )
    return t.build()


def _product() -> EntityType:
    t = _Table(
        "product",
        "products",
        "name",
        "Product",
        "Product",
        1024,
        ownership="OrganizationOwned",
        change_tracking=True,
    )
    t.add(
        string("productnumber", 100, required=True, display_name="Product ID"),
        string("name", 100, required=True),
        choice("producttypecode", PRODUCT_TYPE),
        choice("productstructure", PRODUCT_STRUCTURE, required=True),
        integer("quantitydecimal", required=True),
        money("price"),
        money("standardcost"),
        money("currentcost"),
        decimal("exchangerate", 12, read_only=True),
        decimal("quantityonhand", 2),
        decimal("stockvolume", 2),
        decimal("stockweight", 2),
        string("vendorid", 100),
        string("vendorname", 100),
        string("vendorpartnumber", 100),
        memo("description"),
        state(PRODUCT_STATE),
        status(PRODUCT_STATUS),
        lookup("defaultuomscheduleid", "uomschedule", required=True),
        lookup("defaultuomid", "uom", required=True),
        lookup("transactioncurrencyid", "transactioncurrency"),
        lookup("bcbi_companyid", "bcbi_company"),
        _system_columns(),
    )
    t.extra.update(
        required_levels={
            "productnumber": "SystemRequired",
            "name": "ApplicationRequired",
            "productstructure": "SystemRequired",
            "quantitydecimal": "ApplicationRequired",
            "defaultuomscheduleid": "ApplicationRequired",
            "defaultuomid": "ApplicationRequired",
        }
    )
    return t.build()


def _transactioncurrency() -> EntityType:
    state_set, status_set = active_inactive("transactioncurrency")
    t = _Table(
        "transactioncurrency",
        "transactioncurrencies",
        "currencyname",
        "Currency",
        "TransactionCurrency",
        9105,
        ownership="OrganizationOwned",
        change_tracking=True,
    )
    t.add(
        string("isocurrencycode", 5, required=True, display_name="Currency Code"),
        string("currencyname", 100, required=True),
        string("currencysymbol", 10, required=True),
        Property(
            "currencyprecision",
            Edm.Int32,
            required=True,
            default=2,
            kind="Integer",
            display_name="Currency Precision",
        ),
        decimal("exchangerate", 12, required=True),
        state(state_set),
        status(status_set),
        _system_columns(),
        related("transactioncurrency_account", "account", "transactioncurrencyid"),
        related("transactioncurrency_contact", "contact", "transactioncurrencyid"),
        related("transactioncurrency_product", "product", "transactioncurrencyid"),
    )
    t.extra.update(
        required_levels={
            "isocurrencycode": "SystemRequired",
            "currencyname": "SystemRequired",
            "currencysymbol": "SystemRequired",
            "currencyprecision": "SystemRequired",
            "exchangerate": "SystemRequired",
        },
        # Set on create only (IsValidForUpdate = False in the table reference).
        create_only=["isocurrencycode"],
    )
    return t.build()


def _systemuser() -> EntityType:
    t = _Table(
        "systemuser",
        "systemusers",
        "fullname",
        "User",
        "SystemUser",
        8,
        ownership="BusinessOwned",
        change_tracking=True,
    )
    t.add(
        string("firstname", 256),
        string("lastname", 256),
        string("fullname", 200, read_only=True),
        string("domainname", 1024, display_name="User Name"),
        string("internalemailaddress", 100, display_name="Primary Email"),
        string("mobilephone", 64),
        string("title", 128),
        guid("applicationid"),
        guid("azureactivedirectoryobjectid"),
        boolean("isdisabled"),
        boolean("islicensed"),
        boolean("isintegrationuser"),
        choice("accessmode", ACCESS_MODE, required=True),
        lookup("businessunitid", "businessunit", required=True),
        _system_columns(),
        related("user_accounts", "account", "owninguser"),
        related("contact_owning_user", "contact", "owninguser"),
    )
    t.extra.update(
        required_levels={"accessmode": "SystemRequired", "businessunitid": "SystemRequired"},
        computed={"fullname": _FULLNAME},
    )
    return t.build()


def _team() -> EntityType:
    t = _Table("team", "teams", "name", "Team", "Team", 9, ownership="BusinessOwned")
    t.add(
        string("name", 160, required=True, display_name="Team Name"),
        choice("teamtype", TEAM_TYPE, required=True),
        boolean("isdefault"),
        guid("azureactivedirectoryobjectid"),
        memo("description"),
        lookup("businessunitid", "businessunit", required=True),
        lookup("administratorid", "systemuser"),
        _system_columns(),
        related("team_accounts", "account", "owningteam"),
        related("team_contacts", "contact", "owningteam"),
    )
    t.extra.update(
        required_levels={
            "name": "SystemRequired",
            "teamtype": "SystemRequired",
            "businessunitid": "SystemRequired",
        }
    )
    return t.build()


def _businessunit() -> EntityType:
    t = _Table(
        "businessunit",
        "businessunits",
        "name",
        "Business Unit",
        "BusinessUnit",
        10,
        ownership="BusinessOwned",
    )
    t.add(
        string("name", 160, required=True),
        boolean("isdisabled"),
        memo("description"),
        lookup("parentbusinessunitid", "businessunit"),
        _system_columns(),
        related("business_unit_parent_business_unit", "businessunit", "parentbusinessunitid"),
        related("business_unit_system_users", "systemuser", "businessunitid"),
        related("business_unit_teams", "team", "businessunitid"),
        related("business_unit_accounts", "account", "owningbusinessunit"),
        related("business_unit_contacts", "contact", "owningbusinessunit"),
    )
    t.extra.update(required_levels={"name": "SystemRequired"})
    return t.build()


def _uomschedule() -> EntityType:
    state_set, status_set = active_inactive("uomschedule")
    t = _Table(
        "uomschedule",
        "uomschedules",
        "name",
        "Unit Group",
        "UoMSchedule",
        1056,
        ownership="OrganizationOwned",
    )
    t.add(
        string("name", 200, required=True),
        string("baseuomname", 100, required=True, display_name="Base Unit Name"),
        memo("description"),
        state(state_set),
        status(status_set),
        _system_columns(),
        related("unit_of_measure_schedule_conversions", "uom", "uomscheduleid"),
        related("unit_of_measurement_schedule_products", "product", "defaultuomscheduleid"),
    )
    t.extra.update(required_levels={"name": "SystemRequired", "baseuomname": "SystemRequired"})
    return t.build()


def _uom() -> EntityType:
    t = _Table("uom", "uoms", "name", "Unit", "UoM", 1055, ownership="OrganizationOwned")
    t.add(
        string("name", 100, required=True),
        decimal("quantity", 5, required=True),
        boolean("isschedulebaseuom", read_only=True),
        lookup("uomscheduleid", "uomschedule", required=True),
        # ApplicationRequired in Dataverse, but the group's base unit has none when a client writes it.
        lookup("baseuom", "uom"),
        _system_columns(),
        related("unit_of_measurement_base_unit", "uom", "baseuom"),
        related("unit_of_measurement_products", "product", "defaultuomid"),
    )
    t.extra.update(
        required_levels={
            "name": "SystemRequired",
            "quantity": "ApplicationRequired",
            "uomscheduleid": "SystemRequired",
        },
        create_only=["uomscheduleid"],
    )
    return t.build()


def _bcbi_company() -> EntityType:
    state_set, status_set = active_inactive("bcbi_company")
    t = _Table("bcbi_company", "bcbi_companies", "bcbi_name", "Company", "bcbi_Company", None)
    t.add(
        string("bcbi_name", 30, required=True, display_name="Name"),
        string("bcbi_externalid", 36, display_name="External Id"),
        lookup("bcbi_defaultowningteam", "team"),
        state(state_set),
        status(status_set),
        _ownership_columns(),
        _system_columns(),
        related("bcbi_company_account", "account", "bcbi_companyid"),
        related("bcbi_company_contact", "contact", "bcbi_companyid"),
        related("bcbi_company_product", "product", "bcbi_companyid"),
    )
    t.extra.update(required_levels={"bcbi_name": "ApplicationRequired"}, bind_aliases=OWNER_BIND_ALIASES)
    return t.build()


_TABLES = (
    _account,
    _contact,
    _product,
    _transactioncurrency,
    _systemuser,
    _team,
    _businessunit,
    _uom,
    _uomschedule,
    _bcbi_company,
)


# -- public interface ---------------------------------------------------------------------------


def build_schema(customizations: Mapping[str, Any] | None = None) -> Schema:
    """A fresh Dataverse schema (new objects every call), with org customizations applied."""
    schema = Schema(NAMESPACE, [make() for make in _TABLES], alias=ALIAS)
    if customizations:
        apply_customizations(schema, customizations)
    return schema


_CUSTOMIZATION_KINDS = {"alternate_keys"}


def apply_customizations(schema: Schema, customizations: Mapping[str, Any]) -> None:
    """Apply an org customization document (see fixtures/default/dataverse-customizations.json).

    Raises ValueError on anything it does not understand, so a typo never silently does nothing.
    """
    unknown = set(customizations) - _CUSTOMIZATION_KINDS - {"_notes"}
    if unknown:
        raise ValueError(f"unknown customization kinds: {sorted(unknown)}")
    for table, keys in customizations.get("alternate_keys", {}).items():
        entity = schema.entity(table)
        if entity is None:
            raise ValueError(f"alternate key for unknown table {table!r}")
        for spec in keys:
            try:
                name, properties = spec["name"], spec["properties"]
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{table}: alternate key needs 'name' and 'properties': {spec!r}") from exc
            entity.add_alternate_key(AlternateKey(name, tuple(properties), spec.get("display_name")))


def load_customizations(path: str | Path) -> dict[str, Any]:
    """Read a customization document from disk."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def computed_values(entity: EntityType, row: Mapping[str, Any]) -> dict[str, str | None]:
    """Values of the server-computed text columns of ``entity`` for a stored ``row``.

    Non-empty parts are joined with the declared separator; all-empty gives None.
    """
    def text(part: str | list[str]) -> str:
        if isinstance(part, list):  # a group of columns on one line
            return " ".join(t for t in (text(p) for p in part) if t)
        value = row.get(part)
        return "" if value is None else str(value).strip()

    result: dict[str, str | None] = {}
    for column, spec in entity.extra.get("computed", {}).items():
        joined = spec["separator"].join(t for t in (text(p) for p in spec["parts"]) if t)
        result[column] = joined or None
    return result


def bind_navigation(entity: EntityType, name: str, target_table: str | None) -> Navigation | None:
    """The navigation an ``<name>@odata.bind`` annotation writes.

    ``name`` is taken as a navigation name first; otherwise, if it is a bind alias (``ownerid``),
    the bound URL's table picks the per-target navigation. None means an undeclared property.
    """
    nav = entity.navigation(name)
    if nav is not None:
        return nav
    alias = entity.extra.get("bind_aliases", {}).get(name)
    if alias is None or target_table is None or target_table not in alias:
        return None
    return entity.navigation(alias[target_table])
