"""The Dataverse tables the Business Central integration touches, declared as data.

Everything else in the Dataverse app (routes, validation, serialization, ``$metadata``,
``EntityDefinitions``) is derived from these declarations, so the conventions below matter:

- every table's key is ``<logicalname>id`` (``Edm.Guid``, writable: clients may choose it on create);
- a lookup column ``x`` is the read-only ``_x_value`` property plus the single-valued navigation ``x``
  that writes it with ``x@odata.bind``; polymorphic lookups (Customer, Owner) store the target table
  in a hidden ``x_type`` column and get one navigation per target (``parentcustomerid_account``);
- the owner lookup is bound by its column name (``ownerid@odata.bind: /teams(..)``); the table's
  ``bind_aliases`` say which per-target navigation each target table resolves to;
- everything Dataverse knows about a table beyond its columns lives in one :class:`DataverseTable`
  (``EntityType.info``, read through :func:`table_info`): schema and collection names, object type
  code, required levels, computed columns, create-only columns, the SDK messages it supports.
  ``required_levels`` is the only place a column's requirement is stated; the columns it names are
  marked ``required`` when the table is built.

Facts (lengths, option values, relationship names) come from the public table reference pages.
``build_schema`` returns new objects on every call because apps mutate their schema (alternate keys).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

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

RequiredLevel = Literal["SystemRequired", "ApplicationRequired", "Recommended"]

# The messages every ordinary table answers (https://learn.microsoft.com/en-us/power-apps/developer/
# data-platform/reference/entities/account#messages lists them per table).
STANDARD_MESSAGES = frozenset(
    {"Create", "Retrieve", "RetrieveMultiple", "Update", "Delete", "Upsert", "Associate", "Disassociate"}
)
# Bulk messages; not every standard table supports them, so each table declares its own
# (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/bulk-operations#availability).
BULK_MESSAGES = frozenset({"CreateMultiple", "UpdateMultiple", "UpsertMultiple"})
READ_MESSAGES = frozenset({"Retrieve", "RetrieveMultiple", "Associate", "Disassociate"})


@dataclass(frozen=True)
class Computed:
    """A server-computed text column: non-empty ``parts`` joined with ``separator``.

    A part is a column name or a tuple of columns that share one line (joined with a space).
    """

    separator: str
    parts: tuple[str | tuple[str, ...], ...]


@dataclass(frozen=True)
class DataverseTable:
    """Dataverse's facts about one table beyond its columns (its EntityMetadata and write rules)."""

    schema_name: str
    collection_schema_name: str
    display_collection_name: str
    # The real code for standard tables; None for custom tables (the metadata layer derives one).
    object_type_code: int | None = None
    # Requirement level per attribute (lookups by their attribute name, ``defaultuomid``). Only
    # SystemRequired is enforced by the platform; ApplicationRequired is for apps to enforce
    # (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/entity-attribute-metadata#column-requirement-level).
    required_levels: Mapping[str, RequiredLevel] = field(default_factory=dict)
    computed: Mapping[str, Computed] = field(default_factory=dict)
    # Column name bound with ``@odata.bind`` -> {target table: per-target navigation}.
    bind_aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Attributes valid for create only (IsValidForUpdate = false): an update ignores them.
    create_only: frozenset[str] = frozenset()
    # SDK messages the table supports; they become its sdkmessagefilter rows.
    messages: frozenset[str] = STANDARD_MESSAGES
    # Rows the org comes with (business units, currencies, users…): seeded into an empty store and
    # restored by a reset.
    system_rows: bool = False
    description: str | None = None

    def supports(self, message: str) -> bool:
        return message in self.messages

    def required_level(self, attribute: str) -> RequiredLevel | None:
        return self.required_levels.get(attribute)


# Publisher prefixes this sandbox declares (BC's integration solution, the default and generated ones).
_CUSTOM_PREFIX = re.compile(r"^(?:bcbi|new|cr[0-9a-z]{3})_")


def is_custom_name(logical_name: str) -> bool:
    """Custom tables and columns carry a publisher prefix (``bcbi_company``); system ones do not."""
    return bool(_CUSTOM_PREFIX.match(logical_name))


def schema_name(logical_name: str) -> str:
    """A SchemaName for a logical name that declares none: prefix-preserving title case."""
    if is_custom_name(logical_name):
        prefix, rest = logical_name.split("_", 1)
        return f"{prefix}_{rest[:1].upper()}{rest[1:]}"
    return logical_name[:1].upper() + logical_name[1:]


def table_info(entity: EntityType) -> DataverseTable:
    """The typed Dataverse facts of ``entity``: declared, or derived from its names for tables built
    by hand (tests' schemas)."""
    if isinstance(entity.info, DataverseTable):
        return entity.info
    name = schema_name(entity.name)
    display = entity.display_name or entity.name.replace("_", " ").title()
    return DataverseTable(name, name + "s", display + "s")


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
    read_only: bool = False,
    kind: str = "String",
    display_name: str | None = None,
) -> Property:
    return Property(
        name,
        Edm.String,
        max_length=max_length,
        read_only=read_only,
        kind=kind,
        display_name=display_name,
    )


def memo(name: str, max_length: int = 2000, *, read_only: bool = False) -> Property:
    return string(name, max_length, read_only=read_only, kind="Memo")


def integer(name: str, *, default: int | None = None, read_only: bool = False) -> Property:
    return Property(name, Edm.Int32, default=default, read_only=read_only, kind="Integer")


def decimal(name: str, scale: int, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Decimal, scale=scale, read_only=read_only, kind="Decimal")


def boolean(name: str, *, default: bool = False, read_only: bool = False) -> Property:
    return Property(name, Edm.Boolean, default=default, read_only=read_only, kind="Boolean")


def guid(name: str, *, read_only: bool = False) -> Property:
    return Property(name, Edm.Guid, read_only=read_only, kind="Uniqueidentifier")


def choice(name: str, optionset: OptionSet) -> Property:
    return Property(name, Edm.Int32, options=optionset, default=optionset.default, kind="Picklist")


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


def lookup(name: str, target: str, *, read_only: bool = False) -> tuple[Property, Navigation]:
    """A single-target lookup: ``_name_value`` (always read-only) plus the navigation ``name``."""
    value = Property(f"_{name}_value", Edm.Guid, read_only=True, kind="Lookup", lookup=name)
    nav = Navigation(name, target=target, collection=False, via=value.name, read_only=read_only)
    return value, nav


def polymorphic_lookup(
    name: str, targets: Iterable[str], kind: str
) -> tuple[list[Property], list[Navigation]]:
    """A Customer/Owner lookup: value + hidden target-table column + one navigation per target."""
    type_column = f"{name}_type"
    value = Property(
        f"_{name}_value",
        Edm.Guid,
        read_only=True,
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
    """Collects a table's columns and navigations; ``add`` accepts factories' tuples and lists.

    ``info`` is the table's :class:`DataverseTable`; ``build`` checks that every attribute it names
    (required levels, create-only, computed columns, bind aliases) is a declared column.
    """

    name: str
    set_name: str
    primary_name: str
    display_name: str
    info: DataverseTable
    ownership: str = "UserOwned"
    change_tracking: bool = False
    properties: list[Property] = field(default_factory=list)
    navigations: list[Navigation] = field(default_factory=list)

    def add(self, *items: Any) -> _Table:
        for item in items:
            if isinstance(item, Property):
                self.properties.append(item)
            elif isinstance(item, Navigation):
                self.navigations.append(item)
            else:
                self.add(*item)
        return self

    def _column(self, attribute: str) -> str:
        """The stored column of an attribute: itself, or ``_x_value`` for the lookup ``x``."""
        for candidate in (attribute, f"_{attribute}_value"):
            if any(p.name == candidate for p in self.properties):
                return candidate
        raise ValueError(f"{self.name}: {attribute!r} names no declared column")

    def build(self) -> EntityType:
        names = [p.name for p in self.properties] + [n.name for n in self.navigations]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"{self.name}: declared twice: {sorted(duplicates)}")
        info = self.info
        required = {self._column(a) for a in info.required_levels}
        for attribute in [*info.create_only, *info.computed, *info.bind_aliases]:
            self._column(attribute)
        unknown = info.messages - STANDARD_MESSAGES - BULK_MESSAGES - READ_MESSAGES
        if unknown:
            raise ValueError(f"{self.name}: unknown messages {sorted(unknown)}")
        properties = [replace(p, required=p.name in required) for p in self.properties]
        return EntityType(
            name=self.name,
            set_name=self.set_name,
            key=f"{self.name}id",
            properties=[key(self.name), *properties],
            navigations=self.navigations,
            primary_name=self.primary_name,
            display_name=self.display_name,
            version_property="versionnumber",
            modified_on="modifiedon",
            created_on="createdon",
            change_tracking=self.change_tracking,
            ownership=self.ownership,
            info=info,
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


_ADDRESS1_COMPOSITE = Computed(
    "\r\n",
    (
        "address1_line1",
        "address1_line2",
        "address1_line3",
        ("address1_city", "address1_stateorprovince", "address1_postalcode"),  # one line, space-separated
        "address1_country",
    ),
)
_FULLNAME = Computed(" ", ("firstname", "lastname"))


def _account() -> EntityType:
    state_set, status_set = active_inactive("account")
    info = DataverseTable(
        "Account", "Accounts", "Accounts", 1,
        required_levels={"name": "ApplicationRequired"},
        computed={"address1_composite": _ADDRESS1_COMPOSITE},
        bind_aliases=OWNER_BIND_ALIASES,
        messages=STANDARD_MESSAGES | BULK_MESSAGES,
    )
    t = _Table("account", "accounts", "name", "Account", info, change_tracking=True)
    t.add(
        string("name", 160, display_name="Account Name"),
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
    return t.build()


def _contact() -> EntityType:
    state_set, status_set = active_inactive("contact")
    info = DataverseTable(
        "Contact", "Contacts", "Contacts", 2,
        required_levels={"lastname": "ApplicationRequired"},
        computed={"fullname": _FULLNAME, "address1_composite": _ADDRESS1_COMPOSITE},
        bind_aliases=OWNER_BIND_ALIASES,
        messages=STANDARD_MESSAGES | BULK_MESSAGES,
    )
    t = _Table("contact", "contacts", "fullname", "Contact", info, change_tracking=True)
    parent_props, parent_navs = polymorphic_lookup("parentcustomerid", ["account", "contact"], "Customer")
    t.add(
        string("firstname", 50),
        string("middlename", 50),
        string("lastname", 50),
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
    return t.build()


def _product() -> EntityType:
    info = DataverseTable(
        "Product", "Products", "Products", 1024,
        required_levels={
            "productnumber": "SystemRequired",
            "name": "ApplicationRequired",
            "productstructure": "SystemRequired",
            "quantitydecimal": "ApplicationRequired",
            "defaultuomscheduleid": "ApplicationRequired",
            "defaultuomid": "ApplicationRequired",
        },
        messages=STANDARD_MESSAGES | BULK_MESSAGES,
    )
    t = _Table("product", "products", "name", "Product", info, ownership="OrganizationOwned", change_tracking=True)
    t.add(
        string("productnumber", 100, display_name="Product ID"),
        string("name", 100),
        choice("producttypecode", PRODUCT_TYPE),
        choice("productstructure", PRODUCT_STRUCTURE),
        integer("quantitydecimal"),
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
        lookup("defaultuomscheduleid", "uomschedule"),
        lookup("defaultuomid", "uom"),
        lookup("transactioncurrencyid", "transactioncurrency"),
        lookup("bcbi_companyid", "bcbi_company"),
        _system_columns(),
    )
    return t.build()


def _transactioncurrency() -> EntityType:
    state_set, status_set = active_inactive("transactioncurrency")
    info = DataverseTable(
        "TransactionCurrency", "TransactionCurrencies", "Currencies", 9105,
        required_levels={
            "isocurrencycode": "SystemRequired",
            "currencyname": "SystemRequired",
            "currencysymbol": "SystemRequired",
            "currencyprecision": "SystemRequired",
            "exchangerate": "SystemRequired",
        },
        # Set on create only (IsValidForUpdate = False in the table reference).
        create_only=frozenset({"isocurrencycode"}),
        system_rows=True,
    )
    t = _Table(
        "transactioncurrency", "transactioncurrencies", "currencyname", "Currency", info,
        ownership="OrganizationOwned", change_tracking=True,
    )
    t.add(
        string("isocurrencycode", 5, display_name="Currency Code"),
        string("currencyname", 100),
        string("currencysymbol", 10),
        Property("currencyprecision", Edm.Int32, default=2, kind="Integer", display_name="Currency Precision"),
        decimal("exchangerate", 12),
        state(state_set),
        status(status_set),
        _system_columns(),
        related("transactioncurrency_account", "account", "transactioncurrencyid"),
        related("transactioncurrency_contact", "contact", "transactioncurrencyid"),
        related("transactioncurrency_product", "product", "transactioncurrencyid"),
    )
    return t.build()


def _systemuser() -> EntityType:
    info = DataverseTable(
        "SystemUser", "SystemUsers", "Users", 8,
        required_levels={"accessmode": "SystemRequired", "businessunitid": "SystemRequired"},
        computed={"fullname": _FULLNAME},
        system_rows=True,
    )
    t = _Table("systemuser", "systemusers", "fullname", "User", info, ownership="BusinessOwned",
               change_tracking=True)
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
        choice("accessmode", ACCESS_MODE),
        lookup("businessunitid", "businessunit"),
        _system_columns(),
        related("user_accounts", "account", "owninguser"),
        related("contact_owning_user", "contact", "owninguser"),
    )
    return t.build()


def _team() -> EntityType:
    info = DataverseTable(
        "Team", "Teams", "Teams", 9,
        required_levels={"name": "SystemRequired", "teamtype": "SystemRequired", "businessunitid": "SystemRequired"},
        system_rows=True,
    )
    t = _Table("team", "teams", "name", "Team", info, ownership="BusinessOwned")
    t.add(
        string("name", 160, display_name="Team Name"),
        choice("teamtype", TEAM_TYPE),
        boolean("isdefault"),
        guid("azureactivedirectoryobjectid"),
        memo("description"),
        lookup("businessunitid", "businessunit"),
        lookup("administratorid", "systemuser"),
        _system_columns(),
        related("team_accounts", "account", "owningteam"),
        related("team_contacts", "contact", "owningteam"),
    )
    return t.build()


def _businessunit() -> EntityType:
    info = DataverseTable(
        "BusinessUnit", "BusinessUnits", "Business Units", 10,
        required_levels={"name": "SystemRequired"},
        system_rows=True,
    )
    t = _Table("businessunit", "businessunits", "name", "Business Unit", info, ownership="BusinessOwned")
    t.add(
        string("name", 160),
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
    return t.build()


def _uomschedule() -> EntityType:
    state_set, status_set = active_inactive("uomschedule")
    info = DataverseTable(
        "UoMSchedule", "UoMSchedules", "Unit Groups", 1056,
        required_levels={"name": "SystemRequired", "baseuomname": "SystemRequired"},
        system_rows=True,
    )
    t = _Table("uomschedule", "uomschedules", "name", "Unit Group", info, ownership="OrganizationOwned")
    t.add(
        string("name", 200),
        string("baseuomname", 100, display_name="Base Unit Name"),
        memo("description"),
        state(state_set),
        status(status_set),
        _system_columns(),
        related("unit_of_measure_schedule_conversions", "uom", "uomscheduleid"),
        related("unit_of_measurement_schedule_products", "product", "defaultuomscheduleid"),
    )
    return t.build()


def _uom() -> EntityType:
    info = DataverseTable(
        "UoM", "UoMs", "Units", 1055,
        required_levels={"name": "SystemRequired", "quantity": "ApplicationRequired", "uomscheduleid": "SystemRequired"},
        create_only=frozenset({"uomscheduleid"}),
        system_rows=True,
    )
    t = _Table("uom", "uoms", "name", "Unit", info, ownership="OrganizationOwned")
    t.add(
        string("name", 100),
        decimal("quantity", 5),
        boolean("isschedulebaseuom", read_only=True),
        lookup("uomscheduleid", "uomschedule"),
        # ApplicationRequired in Dataverse, but the group's base unit has none when a client writes it.
        lookup("baseuom", "uom"),
        _system_columns(),
        related("unit_of_measurement_base_unit", "uom", "baseuom"),
        related("unit_of_measurement_products", "product", "defaultuomid"),
    )
    return t.build()


def _bcbi_company() -> EntityType:
    state_set, status_set = active_inactive("bcbi_company")
    info = DataverseTable(
        "bcbi_Company", "bcbi_Companies", "Companies",
        required_levels={"bcbi_name": "ApplicationRequired"},
        bind_aliases=OWNER_BIND_ALIASES,
        # custom tables support the bulk messages (bulk-operations#availability)
        messages=STANDARD_MESSAGES | BULK_MESSAGES,
        system_rows=True,
    )
    t = _Table("bcbi_company", "bcbi_companies", "bcbi_name", "Company", info)
    t.add(
        string("bcbi_name", 30, display_name="Name"),
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
    return t.build()

# -- system tables clients read ------------------------------------------------------------------
# Their rows are the org's own: the organization row comes from the fixture's org settings, the SDK
# message rows are derived from the declarations above (see models.DataverseBackend).


def _organization() -> EntityType:
    """The org's settings (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/reference/entities/organization)."""
    info = DataverseTable(
        "Organization", "Organizations", "Organizations", 1019,
        required_levels={"name": "SystemRequired", "basecurrencyid": "SystemRequired",
                         "languagecode": "SystemRequired"},
        # the base currency and language are chosen when the org is provisioned
        create_only=frozenset({"basecurrencyid", "languagecode"}),
        messages=READ_MESSAGES | {"Update"},
    )
    t = _Table("organization", "organizations", "name", "Organization", info, ownership="OrganizationOwned")
    t.add(
        string("name", 160),
        lookup("basecurrencyid", "transactioncurrency"),
        string("basecurrencysymbol", 5, read_only=True, display_name="Currency Symbol"),
        integer("languagecode"),
        integer("localeid"),
        string("currencysymbol", 13),
        integer("currencydecimalprecision"),
        integer("pricingdecimalprecision"),
        string("dateformatstring", 255),
        string("timeformatstring", 255),
        boolean("isauditenabled"),
        _system_columns(),
    )
    return t.build()


def _sdkmessage() -> EntityType:
    """Messages the org answers (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/reference/entities/sdkmessage)."""
    info = DataverseTable(
        "SdkMessage", "SdkMessages", "Sdk Messages", 4606,
        required_levels={"name": "SystemRequired", "categoryname": "SystemRequired", "availability": "SystemRequired",
                         "isreadonly": "SystemRequired"},
        messages=READ_MESSAGES,
    )
    t = _Table("sdkmessage", "sdkmessages", "name", "Sdk Message", info, ownership="OrganizationOwned")
    t.add(
        string("name", 256),
        string("categoryname", 25, display_name="Category Name"),
        integer("availability"),
        boolean("autotransact"),
        boolean("isactive", default=True),
        boolean("isprivate"),
        boolean("isreadonly"),
        boolean("template"),
        boolean("isvalidforexecuteasync", read_only=True),
        boolean("workflowsdkstepenabled", read_only=True),
        _system_columns(),
        related("sdkmessageid_sdkmessagefilter", "sdkmessagefilter", "sdkmessageid"),
    )
    return t.build()


def _sdkmessagefilter() -> EntityType:
    """Which message is valid for which table; the documented way to detect bulk-operation support
    (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/bulk-operations#availability-with-standard-tables)."""
    info = DataverseTable(
        "SdkMessageFilter", "SdkMessageFilters", "Sdk Message Filters", 4607,
        required_levels={"sdkmessageid": "SystemRequired", "primaryobjecttypecode": "SystemRequired",
                         "availability": "SystemRequired", "iscustomprocessingstepallowed": "SystemRequired"},
        messages=READ_MESSAGES,
    )
    t = _Table("sdkmessagefilter", "sdkmessagefilters", "name", "Sdk Message Filter", info,
               ownership="OrganizationOwned")
    t.add(
        string("name", 256),
        string("primaryobjecttypecode", 64, read_only=True, kind="EntityName", display_name="Primary Object Type Code"),
        string("secondaryobjecttypecode", 64, read_only=True, kind="EntityName",
               display_name="Secondary Object Type Code"),
        integer("availability"),
        boolean("iscustomprocessingstepallowed"),
        boolean("isvisible", read_only=True),
        boolean("workflowsdkstepenabled", read_only=True),
        lookup("sdkmessageid", "sdkmessage"),
        _system_columns(),
    )
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
    _organization,
    _sdkmessage,
    _sdkmessagefilter,
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
    def text(part: str | tuple[str, ...]) -> str:
        if isinstance(part, tuple):  # a group of columns on one line
            return " ".join(t for t in (text(p) for p in part) if t)
        value = row.get(part)
        return "" if value is None else str(value).strip()

    result: dict[str, str | None] = {}
    for column, spec in table_info(entity).computed.items():
        joined = spec.separator.join(t for t in (text(p) for p in spec.parts) if t)
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
    alias = table_info(entity).bind_aliases.get(name)
    if alias is None or target_table is None or target_table not in alias:
        return None
    return entity.navigation(alias[target_table])
