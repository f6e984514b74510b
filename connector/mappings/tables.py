"""What the connector knows about the tables on each side: keys, names, modified-on, lookups.

Dataverse facts come from the table reference (https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/account
and siblings); Business Central facts from the API v2.0 reference
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/). A lookup
column ``x`` reads as ``_x_value`` and is written with ``x@odata.bind``; a polymorphic lookup is bound
through its per-target navigation (``parentcustomerid_account``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DATAVERSE_MODIFIED_ON = "modifiedon"
DATAVERSE_MODIFIED_BY = "_modifiedby_value"
DATAVERSE_COMPANY = "bcbi_companyid"
BC_MODIFIED_ON = "lastModifiedDateTime"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class DataverseTable:
    logical_name: str
    set_name: str
    key: str
    name_field: str
    has_company: bool = False  # carries the bcbi_companyid lookup (company-id stamping, §7)
    lookups: dict[str, str] = field(default_factory=dict)  # lookup column -> target table
    polymorphic: frozenset[str] = frozenset()  # lookups bound as <column>_<target>@odata.bind
    choices: frozenset[str] = frozenset()  # choice (option set) columns


@dataclass(frozen=True)
class BCEntity:
    set_name: str
    caption: str  # the BC table caption, used in messages
    number_field: str  # what a user types to name a record: "number" or "code"
    name_field: str = "displayName"
    custom_api: bool = False  # served by the integration's custom API, not by API v2.0
    # GUID reference fields: field -> (related entity set, caption, field holding the code users see)
    references: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # Code fields relating to another entity by its code: field -> (related entity set, caption)
    code_references: dict[str, tuple[str, str]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    codes: frozenset[str] = frozenset()  # Code fields: BC stores them upper-cased and trimmed
    new_code: str | None = None  # the first code of records created from Dataverse (then incremented)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", self.codes | {self.number_field})

    def field_caption(self, name: str) -> str:
        """The BC field's caption ("Shipment Method Code" for shipmentMethodId), else its API name."""
        if name in self.references:
            return self.references[name][1]
        if name in self.code_references:
            return self.code_references[name][1]
        return self.captions.get(name, name)


_ADDRESS_CODES = frozenset({"country", "postalCode"})
_OWNER = {"ownerid": "systemuser"}

DATAVERSE_TABLES: dict[str, DataverseTable] = {t.logical_name: t for t in (
    DataverseTable("account", "accounts", "accountid", "name", has_company=True,
                   lookups={"transactioncurrencyid": "transactioncurrency", "primarycontactid": "contact",
                            "bcbi_companyid": "bcbi_company", **_OWNER},
                   choices=frozenset({"paymenttermscode", "address1_freighttermscode", "address1_shippingmethodcode",
                                      "customertypecode"})),
    DataverseTable("contact", "contacts", "contactid", "fullname", has_company=True,
                   lookups={"transactioncurrencyid": "transactioncurrency", "parentcustomerid": "account",
                            "bcbi_companyid": "bcbi_company", **_OWNER},
                   polymorphic=frozenset({"parentcustomerid"})),
    DataverseTable("product", "products", "productid", "name", has_company=True,
                   lookups={"transactioncurrencyid": "transactioncurrency", "defaultuomscheduleid": "uomschedule",
                            "defaultuomid": "uom", "bcbi_companyid": "bcbi_company"},
                   choices=frozenset({"producttypecode"})),
    DataverseTable("transactioncurrency", "transactioncurrencies", "transactioncurrencyid", "currencyname"),
    DataverseTable("systemuser", "systemusers", "systemuserid", "fullname"),
    DataverseTable("uomschedule", "uomschedules", "uomscheduleid", "name"),
    DataverseTable("uom", "uoms", "uomid", "name", lookups={"uomscheduleid": "uomschedule"}),
    DataverseTable("bcbi_company", "bcbi_companies", "bcbi_companyid", "bcbi_name",
                   lookups={"bcbi_defaultowningteam": "team"}),
    DataverseTable("team", "teams", "teamid", "name"),
)}

_CURRENCY = ("currencies", "Currency Code", "currencyCode")
_PAYMENT_TERMS = ("paymentTerms", "Payment Terms Code", "")
_SHIPMENT_METHOD = ("shipmentMethods", "Shipment Method Code", "")

BC_ENTITIES: dict[str, BCEntity] = {e.set_name: e for e in (
    BCEntity("customers", "Customer", "number",
             references={"currencyId": _CURRENCY, "paymentTermsId": _PAYMENT_TERMS,
                         "shipmentMethodId": _SHIPMENT_METHOD},
             code_references={"salespersonCode": ("salespeoplePurchasers", "Salesperson Code")},
             captions={"displayName": "Name", "creditLimit": "Credit Limit (LCY)"},
             codes=_ADDRESS_CODES | {"salespersonCode", "currencyCode"}),
    BCEntity("vendors", "Vendor", "number",
             references={"currencyId": _CURRENCY, "paymentTermsId": _PAYMENT_TERMS},
             captions={"displayName": "Name"}, codes=_ADDRESS_CODES | {"currencyCode"}),
    BCEntity("contacts", "Contact", "number", captions={"displayName": "Name"},
             codes=_ADDRESS_CODES | {"companyNumber", "searchName"}),
    BCEntity("items", "Item", "number",
             references={"baseUnitOfMeasureId": ("unitsOfMeasure", "Base Unit of Measure", "baseUnitOfMeasureCode")},
             captions={"displayName": "Description"}, codes=frozenset({"baseUnitOfMeasureCode"})),
    BCEntity("resources", "Resource", "number", custom_api=True,
             code_references={"baseUnitOfMeasureCode": ("unitsOfMeasure", "Base Unit of Measure")},
             captions={"displayName": "Name"}, codes=frozenset({"baseUnitOfMeasureCode"})),
    BCEntity("contactBusinessRelations", "Contact Business Relation", "contactNumber", custom_api=True),
    BCEntity("currencies", "Currency", "code", captions={"displayName": "Description"}),
    BCEntity("salespeoplePurchasers", "Salesperson/Purchaser", "code", captions={"displayName": "Name"},
             new_code="SP NO. 00001"),
    BCEntity("unitsOfMeasure", "Unit of Measure", "code"),
    BCEntity("paymentTerms", "Payment Terms", "code"),
    BCEntity("shipmentMethods", "Shipment Method", "code"),
)}


# Table pairs whose uncoupled BC record is coupled to an existing Dataverse row with the same natural
# key instead of creating a second one (BC's OnFindUncoupledDestinationRecord): (BC field, Dataverse column).
NATURAL_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("currencies", "transactioncurrency"): ("code", "isocurrencycode"),
    ("unitsOfMeasure", "uomschedule"): ("code", "baseuomname"),
}


def dataverse_table(name: str) -> DataverseTable:
    try:
        return DATAVERSE_TABLES[name]
    except KeyError:
        raise KeyError(f"the connector does not know the Dataverse table {name!r}") from None


def bc_entity(name: str) -> BCEntity:
    try:
        return BC_ENTITIES[name]
    except KeyError:
        raise KeyError(f"the connector does not know the Business Central entity {name!r}") from None


def custom_api_sets() -> frozenset[str]:
    return frozenset(e.set_name for e in BC_ENTITIES.values() if e.custom_api)


def lookup_value_name(column: str) -> str:
    """The Web API property that reads a lookup column's GUID."""
    return f"_{column}_value"


def bind_name(table: DataverseTable, column: str, target: str) -> str:
    return f"{column}_{target}@odata.bind" if column in table.polymorphic else f"{column}@odata.bind"


def next_code(code: str) -> str:
    """BC's IncStr: the last run of digits plus one, keeping its width ('SP NO. 00009' -> 'SP NO. 00010')."""
    match = re.search(r"(\d+)(\D*)$", code)
    if match is None:
        return code + "1"
    digits, tail = match.group(1), match.group(2)
    return code[:match.start(1)] + str(int(digits) + 1).zfill(len(digits)) + tail
