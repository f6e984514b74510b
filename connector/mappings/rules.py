"""Rules BC applies to particular table pairs around the field transfer.

In BC these live in event subscribers ("CDS Int. Table. Subscriber", "CRM Int. Table. Subscriber");
here they are one function per table pair, applied to the values about to be written to Dataverse
(https://learn.microsoft.com/dynamics365/business-central/admin-synchronizing-business-central-and-sales#standard-table-mapping-for-synchronization).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..clients import BCClient, DataverseClient
from .resolve import Resolver, as_uuid_text
from .tables import lookup_value_name
from .transfer import TransferError

UNIT_GROUP_PREFIX = "NAV "
RELATIONS = "contactBusinessRelations"  # served by the integration's custom API (no API v2.0 page)
LINKED = {"Customer": ("customers", "CUSTOMER"), "Vendor": ("vendors", "VENDOR")}  # link -> (BC set, mapping)
PARENT = "parentcustomerid"

# What the rules read beyond the mapped fields: (BC fields, Dataverse columns) per table pair.
READS: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {
    ("contacts", "contact"): (frozenset({"companyNumber", "type", "displayName"}),
                              frozenset({lookup_value_name(PARENT), "firstname", "middlename", "lastname", "fullname"})),
}


def extra_reads(bc_entity: str, dataverse_table: str) -> tuple[frozenset[str], frozenset[str]]:
    return READS.get((bc_entity, dataverse_table), (frozenset(), frozenset()))


Rule = Callable[[dict[str, Any], dict[str, Any], bool, dict[str, Any] | None], None]


class RuleContext(Protocol):
    dataverse: DataverseClient
    bc: BCClient

    def lcy_currency_id(self) -> str | None: ...


class PairRules:
    """The rules of one table pair, with the lookups they need cached for a job."""

    def __init__(self, cx: RuleContext, bc_entity: str, dataverse_table: str, resolver: Resolver) -> None:
        self.cx = cx
        self.resolver = resolver
        self._base_units: dict[str, str | None] = {}
        self.contacts = ContactParents(cx.bc, resolver) if (bc_entity, dataverse_table) == ("contacts", "contact") \
            else None
        self.rule: Rule | None = {
            ("currencies", "transactioncurrency"): self._currency,
            ("unitsOfMeasure", "uomschedule"): self._unit_group,
            ("items", "product"): self._product,
            ("resources", "product"): self._product,
            ("contacts", "contact"): self.contacts.to_dataverse if self.contacts else None,
        }.get((bc_entity, dataverse_table))
        self.rule_to_bc: Rule | None = self.contacts.to_bc if self.contacts else None

    # -- what the rules need read, and when they leave a record out ----------------------------------
    def prepare(self, sources: list[dict[str, Any]], to_dataverse: bool) -> None:
        """Read in bulk what the rules will look up for this chunk."""
        if self.contacts:
            self.contacts.prepare(sources, to_dataverse)

    def ignores(self, source: dict[str, Any], to_dataverse: bool) -> bool:
        """BC's post-filters: records the pass leaves out without counting them."""
        return bool(self.contacts and to_dataverse and not self.contacts.linked(source))

    def apply(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
              destination: dict[str, Any] | None = None, *, to_dataverse: bool = True) -> None:
        """Adjust the transferred values; raises TransferError when the record cannot go."""
        rule = self.rule if to_dataverse else self.rule_to_bc
        if rule is not None:
            rule(source, values, inserting, destination)

    def _currency(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
                  destination: dict[str, Any] | None) -> None:
        if inserting and not values.get("currencysymbol"):  # a currency without a symbol shows its ISO code
            values["currencysymbol"] = source.get("code")

    def _unit_group(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
                    destination: dict[str, Any] | None) -> None:
        if inserting or "baseuomname" in values:
            values["name"] = f"{UNIT_GROUP_PREFIX}{source.get('code')}"

    def _product(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
                 destination: dict[str, Any] | None) -> None:
        for column in ("price", "quantityonhand"):  # Dataverse products take no negative price or stock
            if isinstance(values.get(column), int | float) and values[column] < 0:
                values[column] = 0
        schedule = values.get("defaultuomscheduleid@odata.bind")
        if schedule:  # the unit group's base unit is the product's default unit
            unit = self._base_unit(schedule.removeprefix("/uomschedules(").removesuffix(")"))
            if unit:
                values["defaultuomid@odata.bind"] = f"/uoms({unit})"
        if inserting and "transactioncurrencyid@odata.bind" not in values:
            currency = self.cx.lcy_currency_id()
            if currency:
                values["transactioncurrencyid@odata.bind"] = f"/transactioncurrencies({currency})"

    def _base_unit(self, schedule_id: str) -> str | None:
        if schedule_id not in self._base_units:
            rows = list(self.cx.dataverse.rows(
                "uoms", select=["uomid"], page_size=1,
                filter=f"_uomscheduleid_value eq {schedule_id} and isschedulebaseuom eq true"))
            self._base_units[schedule_id] = rows[0]["uomid"] if rows else None
        return self._base_units[schedule_id]


class ContactParents:
    """A BC person contact belongs to a company contact; the customer or vendor that company contact
    stands for (its business relation) is coupled to the Dataverse account that is the contact's
    parent. BC sets the parent going to Dataverse and the company going back, and leaves out person
    contacts whose company is no customer or vendor
    (https://learn.microsoft.com/dynamics365/business-central/admin-prepare-dynamics-365-for-sales-for-integration)."""

    def __init__(self, bc: BCClient, resolver: Resolver) -> None:
        self.bc = bc
        self.resolver = resolver
        self._by_company: dict[str, tuple[str, str]] = {}  # company contact no. -> (BC set, record no.)
        self._by_record: dict[tuple[str, str], str] = {}  # (BC set, record no.) -> company contact no.
        self._ids: dict[tuple[str, str], str] = {}  # (BC set, record no.) -> record id
        self._numbers: dict[tuple[str, str], str] = {}  # (BC set, record id) -> record no.

    def _learn(self, relations: Iterable[dict[str, Any]]) -> None:
        for relation in relations:
            link = LINKED.get(str(relation.get("linkToTable")))
            if link is None:
                continue
            company, number = str(relation["contactNumber"]).upper(), str(relation["linkNumber"]).upper()
            self._by_company.setdefault(company, (link[0], number))
            self._by_record.setdefault((link[0], number), company)

    def _read_records(self, entity_set: str, *, numbers: Iterable[str] = (), ids: Iterable[str] = ()) -> None:
        numbers = [n for n in set(numbers) if (entity_set, n) not in self._ids]
        ids = [i for i in set(ids) if (entity_set, i) not in self._numbers]
        rows = [*self.bc.rows_where_in(entity_set, "number", numbers, select=["id", "number"]),
                *self.bc.rows_where_in(entity_set, "id", ids, guid=True, select=["id", "number"])]
        for row in rows:
            self._ids[(entity_set, str(row["number"]).upper())] = str(row["id"]).lower()
            self._numbers[(entity_set, str(row["id"]).lower())] = str(row["number"]).upper()

    def prepare(self, sources: list[dict[str, Any]], to_dataverse: bool) -> None:
        if to_dataverse:
            companies = {str(s.get("companyNumber") or "").upper() for s in sources} - {""} - set(self._by_company)
            self._learn(self.bc.rows_where_in(RELATIONS, "contactNumber", sorted(companies)))
            for entity_set, mapping in LINKED.values():
                numbers = [n for (s, n) in self._by_company.values() if s == entity_set]
                self._read_records(entity_set, numbers=numbers)
                self.resolver.prefetch_bc(self.resolver.via(mapping),
                                          [self._ids[(entity_set, n)] for n in numbers if (entity_set, n) in self._ids])
            return
        parents = [as_uuid_text(s.get(lookup_value_name(PARENT))) or "" for s in sources]
        for entity_set, mapping in LINKED.values():
            via = self.resolver.via(mapping)
            self.resolver.prefetch_dataverse(via, parents)
            ids = [bc_id for p in parents if p and (bc_id := self.resolver.bc_id(via, p))]
            self._read_records(entity_set, ids=ids)
            numbers = [self._numbers[(entity_set, i)] for i in ids if (entity_set, i) in self._numbers]
            missing = [n for n in numbers if (entity_set, n) not in self._by_record]
            self._learn(self.bc.rows_where_in(RELATIONS, "linkNumber", sorted(set(missing))))

    def linked(self, source: dict[str, Any]) -> tuple[str, str] | None:
        return self._by_company.get(str(source.get("companyNumber") or "").upper())

    def to_dataverse(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
                     destination: dict[str, Any] | None) -> None:
        for column, part in zip(("firstname", "middlename", "lastname"), name_parts(source.get("displayName")),
                                strict=True):
            if inserting or ((destination or {}).get(column) or "") != part:
                values[column] = part or None
        link = self.linked(source)
        if link is None:
            raise TransferError(f"The company contact {source.get('companyNumber')} is no customer or vendor.")
        entity_set, number = link
        mapping = next(m for s, m in LINKED.values() if s == entity_set)
        record = self._ids.get((entity_set, number))
        account = self.resolver.dataverse_id(self.resolver.via(mapping), record) if record else None
        if account is None:
            caption = "Customer" if entity_set == "customers" else "Vendor"
            raise TransferError(f"{caption} {number} must be coupled to a Dataverse row.")
        current = as_uuid_text((destination or {}).get(lookup_value_name(PARENT)))
        if inserting or current != account:
            values[f"{PARENT}_account@odata.bind"] = f"/accounts({account})"

    def to_bc(self, source: dict[str, Any], values: dict[str, Any], inserting: bool,
              destination: dict[str, Any] | None) -> None:
        name = source.get("fullname") or " ".join(
            str(source.get(c)) for c in ("firstname", "middlename", "lastname") if source.get(c))
        if inserting or ((destination or {}).get("displayName") or "") != name:
            values["displayName"] = name
        parent = as_uuid_text(source.get(lookup_value_name(PARENT)))
        company = None
        for entity_set, mapping in LINKED.values():
            record = self.resolver.bc_id(self.resolver.via(mapping), parent) if parent else None
            number = self._numbers.get((entity_set, record)) if record else None
            company = self._by_record.get((entity_set, number)) if number else None
            if company:
                break
        if company is None:
            raise TransferError(f"The parent account {parent} of the contact must be coupled to a customer or vendor "
                                "that has a company contact.")
        if inserting or str((destination or {}).get("companyNumber") or "").upper() != company:
            values["companyNumber"] = company


def name_parts(name: Any) -> tuple[str, str, str]:
    """BC splits a contact's name into First Name, Middle Name and Surname: one word is the surname,
    two are first name and surname, more put the second word in the middle name."""
    words = str(name or "").split()
    if len(words) <= 1:
        return "", "", words[0] if words else ""
    if len(words) == 2:
        return words[0], "", words[1]
    return words[0], words[1], " ".join(words[2:])
