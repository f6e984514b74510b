"""Rules BC applies to particular table pairs around the field transfer.

In BC these live in event subscribers ("CDS Int. Table. Subscriber", "CRM Int. Table. Subscriber");
here they are one function per table pair, applied to the values about to be written to Dataverse
(https://learn.microsoft.com/dynamics365/business-central/admin-synchronizing-business-central-and-sales#standard-table-mapping-for-synchronization).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..clients import DataverseClient

UNIT_GROUP_PREFIX = "NAV "


class RuleContext(Protocol):
    dataverse: DataverseClient

    def lcy_currency_id(self) -> str | None: ...


class PairRules:
    """The rules of one table pair, with the lookups they need cached for a job."""

    def __init__(self, cx: RuleContext, bc_entity: str, dataverse_table: str) -> None:
        self.cx = cx
        self._base_units: dict[str, str | None] = {}
        self.rule: Callable[[dict[str, Any], dict[str, Any], bool], None] | None = {
            ("currencies", "transactioncurrency"): self._currency,
            ("unitsOfMeasure", "uomschedule"): self._unit_group,
            ("items", "product"): self._product,
            ("resources", "product"): self._product,
        }.get((bc_entity, dataverse_table))

    def apply(self, source: dict[str, Any], values: dict[str, Any], inserting: bool) -> None:
        if self.rule is not None:
            self.rule(source, values, inserting)

    def _currency(self, source: dict[str, Any], values: dict[str, Any], inserting: bool) -> None:
        if inserting and not values.get("currencysymbol"):  # a currency without a symbol shows its ISO code
            values["currencysymbol"] = source.get("code")

    def _unit_group(self, source: dict[str, Any], values: dict[str, Any], inserting: bool) -> None:
        if inserting or "baseuomname" in values:
            values["name"] = f"{UNIT_GROUP_PREFIX}{source.get('code')}"

    def _product(self, source: dict[str, Any], values: dict[str, Any], inserting: bool) -> None:
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
