"""The default synchronization setup ("Use Default Synchronization Setup"), as data.

Business Central creates these mappings for a Dataverse connection (codeunits "CDS Setup Defaults"
and "CRM Setup Defaults"; https://learn.microsoft.com/dynamics365/business-central/admin-synchronizing-business-central-and-sales#standard-table-mapping-for-synchronization).
Field names are translated to the API v2.0 properties; a BC field the API does not carry is left
out and listed in ``UNMAPPED`` (the README shows the same list). Filters are OData; ``{company}``
stands for the id of this company's ``bcbi_company`` row (the "company id" of the seed documents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..store.models import Direction, MappingKind

BI, TO, FROM = Direction.BIDIRECTIONAL, Direction.TO_INTEGRATION, Direction.FROM_INTEGRATION
COMPANY = "{company}"
_OWN_OR_NO_COMPANY = f"(_bcbi_companyid_value eq {COMPANY} or _bcbi_companyid_value eq null)"


@dataclass(frozen=True)
class FieldSpec:
    bc_field: str | None
    dataverse_field: str | None
    direction: Direction
    constant: str | None = None
    via: str | None = None
    clear_value_on_failed_sync: bool = False
    not_null: bool = False
    use_for_match: bool = False
    case_sensitive: bool = False
    match_priority: int = 0


@dataclass(frozen=True)
class MappingSpec:
    name: str
    bc_entity: str
    dataverse_table: str
    direction: Direction
    fields: tuple[FieldSpec, ...]
    table_filter: str | None = None
    integration_table_filter: str | None = None
    dependency_filter: str | None = None
    kind: MappingKind = MappingKind.TABLE
    option_attribute: str | None = None
    create_new_if_no_match: bool = False
    sync_after_match_coupling: bool = False
    bc_template: dict[str, Any] = field(default_factory=dict)
    dataverse_template: dict[str, Any] = field(default_factory=dict)


def F(bc: str | None, dv: str | None, direction: Direction, **options: Any) -> FieldSpec:  # noqa: N802
    return FieldSpec(bc, dv, direction, **options)


def _account_fields(*, credit_limit: bool, owner_field: str | None, shipment_method: bool) -> tuple[FieldSpec, ...]:
    fields = []
    if owner_field:  # Person ownership model: the coupled user of the salesperson owns the row
        fields.append(F(owner_field, "ownerid", TO, via="SALESPEOPLE", not_null=True))
    fields += [
        F("displayName", "name", BI),
        F("addressLine1", "address1_line1", BI),
        F("addressLine2", "address1_line2", BI),
        F("postalCode", "address1_postalcode", BI),
        F("city", "address1_city", BI),
        F("country", "address1_country", BI),
        F("state", "address1_stateorprovince", BI),
        F("currencyId", "transactioncurrencyid", BI, via="CURRENCY"),
        F("email", "emailaddress1", BI),
        F("website", "websiteurl", BI),
        F("phoneNumber", "telephone1", BI),
    ]
    if shipment_method:
        fields.append(F("shipmentMethodId", "address1_freighttermscode", BI, via="SHIPMENT METHOD"))
    fields.append(F("paymentTermsId", "paymenttermscode", BI, via="PAYMENT TERMS"))
    if credit_limit:
        fields.append(F("creditLimit", "creditlimit", TO))
    return tuple(fields)


_ACCOUNT_DEPENDENCIES = "SALESPEOPLE|CURRENCY|PAYMENT TERMS|SHIPMENT METHOD|SHIPPING AGENT"

DEFAULT_MAPPINGS: tuple[MappingSpec, ...] = (
    MappingSpec(
        "SALESPEOPLE", "salespeoplePurchasers", "systemuser", FROM,
        (
            F("email", "internalemailaddress", FROM),
            F("displayName", "fullname", FROM),
            F("phoneNo", "mobilephone", FROM),
        ),
        integration_table_filter="isdisabled eq false and isintegrationuser eq false and islicensed eq true",
    ),
    MappingSpec(
        "CUSTOMER", "customers", "account", BI,
        _account_fields(credit_limit=True, owner_field="salespersonCode", shipment_method=True),
        table_filter="blocked eq ' '",
        integration_table_filter=f"customertypecode eq 3 and statecode eq 0 and {_OWN_OR_NO_COMPANY}",
        dependency_filter=_ACCOUNT_DEPENDENCIES,
        dataverse_template={"customertypecode": 3},
    ),
    MappingSpec(
        "VENDOR", "vendors", "account", BI,
        _account_fields(credit_limit=False, owner_field=None, shipment_method=False),
        table_filter="blocked eq ' '",
        integration_table_filter=f"customertypecode eq 11 and statecode eq 0 and {_OWN_OR_NO_COMPANY}",
        dependency_filter=_ACCOUNT_DEPENDENCIES,
        dataverse_template={"customertypecode": 11},
    ),
    MappingSpec(
        "CONTACT", "contacts", "contact", BI,
        (
            F("addressLine1", "address1_line1", BI),
            F("addressLine2", "address1_line2", BI),
            F("postalCode", "address1_postalcode", BI),
            F("city", "address1_city", BI),
            F("country", "address1_country", BI),
            F("state", "address1_stateorprovince", BI),
            F("email", "emailaddress1", BI),
            F("website", "websiteurl", BI),
            F("mobilePhoneNumber", "mobilephone", BI),
            F("phoneNumber", "telephone1", BI),
            F("jobTitle", "jobtitle", BI),
            F("type", None, FROM, constant="Person"),  # names and the parent account: rules.ContactParents
        ),
        table_filter="type eq 'Person' and companyNumber ne ''",
        integration_table_filter=(f"statecode eq 0 and parentcustomerid_account/accountid ne null and "
                                  f"{_OWN_OR_NO_COMPANY}"),
        dependency_filter="CUSTOMER|VENDOR",
    ),
    MappingSpec(
        "CURRENCY", "currencies", "transactioncurrency", TO,
        (
            F("code", "isocurrencycode", TO, use_for_match=True),
            F("symbol", "currencysymbol", TO),
            F("displayName", "currencyname", TO),
        ),
        create_new_if_no_match=True,
        sync_after_match_coupling=True,
        dataverse_template={"exchangerate": 1.0, "currencyprecision": 2},
    ),
    MappingSpec(
        "PAYMENT TERMS", "paymentTerms", "account", TO,
        (F("code", "label", TO, use_for_match=True),),
        kind=MappingKind.OPTION, option_attribute="paymenttermscode",
        create_new_if_no_match=True, sync_after_match_coupling=True,
    ),
    MappingSpec(
        "SHIPMENT METHOD", "shipmentMethods", "account", TO,
        (F("code", "label", TO, use_for_match=True),),
        kind=MappingKind.OPTION, option_attribute="address1_freighttermscode",
        create_new_if_no_match=True, sync_after_match_coupling=True,
    ),
    MappingSpec(
        "UNIT OF MEASURE", "unitsOfMeasure", "uomschedule", TO,
        (F("code", "baseuomname", TO, use_for_match=True),),  # the group's name is "NAV <code>" (rules.py)
    ),
    MappingSpec(
        "ITEM-PRODUCT", "items", "product", BI,
        (
            F("number", "productnumber", TO),
            F("displayName", "name", BI),
            F("unitPrice", "price", TO),
            F("unitCost", "standardcost", TO),
            F("unitCost", "currentcost", TO),
            F("inventory", "quantityonhand", TO),
            F("baseUnitOfMeasureId", "defaultuomscheduleid", BI, via="UNIT OF MEASURE"),
        ),
        table_filter="blocked eq false",
        integration_table_filter=f"producttypecode eq 1 and statecode eq 0 and {_OWN_OR_NO_COMPANY}",
        dependency_filter="UNIT OF MEASURE",
        dataverse_template={"producttypecode": 1, "productstructure": 1, "quantitydecimal": 2},
    ),
    MappingSpec(
        "RESOURCE-PRODUCT", "resources", "product", BI,
        (
            F("number", "productnumber", TO),
            F("displayName", "name", BI),
            F("unitPrice", "price", TO),
            F("unitCost", "standardcost", TO),
            F("unitCost", "currentcost", TO),
        ),
        table_filter="blocked eq false",
        integration_table_filter=f"producttypecode eq 3 and statecode eq 0 and {_OWN_OR_NO_COMPANY}",
        dependency_filter="UNIT OF MEASURE",
        dataverse_template={"producttypecode": 3, "productstructure": 1, "quantitydecimal": 2},
    ),
)

# BC fields of the default mappings that API v2.0 does not expose (the README lists them too).
UNMAPPED: dict[str, tuple[str, ...]] = {
    "CUSTOMER": ("Contact -> address1_primarycontactname", "Fax No. -> fax",
                 "Shipping Agent Code -> address1_shippingmethodcode", "Primary Contact No. -> primarycontactid"),
    "VENDOR": ("Contact -> address1_primarycontactname", "Fax No. -> fax", "Purchaser Code -> ownerid",
               "Shipment Method Code -> address1_freighttermscode",
               "Shipping Agent Code -> address1_shippingmethodcode", "Primary Contact No. -> primarycontactid"),
    "CONTACT": ("Currency Code -> transactioncurrencyid", "Fax No. -> fax", "Pager -> pager",
                "Salesperson Code -> ownerid"),
    "ITEM-PRODUCT": ("Unit Volume -> stockvolume", "Gross Weight -> stockweight", "Vendor No. -> vendorid",
                     "Vendor Item No. -> vendorpartnumber"),
    "RESOURCE-PRODUCT": ("Vendor No. -> vendorid", "Capacity -> quantityonhand"),
}


def spec(name: str) -> MappingSpec | None:
    return next((m for m in DEFAULT_MAPPINGS if m.name == name), None)
