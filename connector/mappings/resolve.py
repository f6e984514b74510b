"""Lookups through couplings and option couplings, read in bulk once per chunk of records.

A lookup field (a customer's currency, a salesperson as owner) travels as the coupled record of the
other side; an option field (payment terms) as the coupled option value. Related records that are
not coupled make the record fail with BC's message unless the field mapping says to clear the value
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-modify-table-mappings-for-synchronization).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from ..clients import BCClient
from ..store import Coupling, OptionCoupling, State, TableMapping
from ..store.models import MappingKind
from .tables import bc_entity


class Resolver:
    """Per-job caches of couplings, option couplings and BC code ⇄ id maps."""

    def __init__(self, state: State, bc: BCClient, mappings: dict[str, TableMapping]) -> None:
        self.state = state
        self.bc = bc
        self.mappings = mappings
        self._to_dataverse: dict[str, dict[str, str]] = {}  # bc entity -> bc id -> dataverse id
        self._to_bc: dict[str, dict[str, str]] = {}
        self._options: dict[str, list[OptionCoupling]] = {}
        self._codes: dict[str, dict[str, str]] = {}  # bc entity -> code (upper) -> id

    def via(self, name: str) -> TableMapping:
        mapping = self.mappings.get(name)
        if mapping is None:
            raise LookupError(f"the field mapping resolves through mapping {name!r}, which does not exist")
        return mapping

    # -- couplings ------------------------------------------------------------------------------
    def prefetch_bc(self, via: TableMapping, bc_ids: Iterable[str]) -> None:
        wanted = {i for i in bc_ids if i} - set(self._to_dataverse.setdefault(via.bc_entity, {}))
        if not wanted:
            return
        with self.state.session() as session:
            for row in session.scalars(select(Coupling).where(
                    Coupling.bc_entity == via.bc_entity, Coupling.bc_id.in_(wanted), Coupling.pending.is_(False))):
                self._to_dataverse[via.bc_entity][row.bc_id] = row.dataverse_id

    def prefetch_dataverse(self, via: TableMapping, dataverse_ids: Iterable[str]) -> None:
        wanted = {i for i in dataverse_ids if i} - set(self._to_bc.setdefault(via.bc_entity, {}))
        if not wanted:
            return
        with self.state.session() as session:
            for row in session.scalars(select(Coupling).where(
                    Coupling.bc_entity == via.bc_entity, Coupling.dataverse_table == via.dataverse_table,
                    Coupling.dataverse_id.in_(wanted), Coupling.pending.is_(False))):
                self._to_bc[via.bc_entity][row.dataverse_id] = row.bc_id

    def dataverse_id(self, via: TableMapping, bc_id: str) -> str | None:
        self.prefetch_bc(via, [bc_id])
        return self._to_dataverse[via.bc_entity].get(bc_id)

    def bc_id(self, via: TableMapping, dataverse_id: str) -> str | None:
        self.prefetch_dataverse(via, [dataverse_id])
        return self._to_bc[via.bc_entity].get(dataverse_id)

    # -- option couplings ---------------------------------------------------------------------
    def options(self, via: TableMapping) -> list[OptionCoupling]:
        if via.name not in self._options:
            with self.state.session() as session:
                self._options[via.name] = list(session.scalars(
                    select(OptionCoupling).where(OptionCoupling.mapping_name == via.name)))
        return self._options[via.name]

    def option_value(self, via: TableMapping, bc_id: str) -> int | None:
        return next((o.option_value for o in self.options(via) if o.bc_id == bc_id), None)

    def option_bc_id(self, via: TableMapping, value: int) -> str | None:
        return next((o.bc_id for o in self.options(via) if o.option_value == value), None)

    # -- BC codes -----------------------------------------------------------------------------
    def codes(self, entity_set: str) -> dict[str, str]:
        """Code → id of a (small) BC setup table, read once per job."""
        if entity_set not in self._codes:
            field = bc_entity(entity_set).number_field
            self._codes[entity_set] = {str(r[field]).upper(): r["id"]
                                       for r in self.bc.rows(entity_set, select=["id", field])}
        return self._codes[entity_set]

    def code_of(self, entity_set: str, bc_id: str) -> str | None:
        return next((code for code, i in self.codes(entity_set).items() if i == bc_id), None)

    def is_option(self, via: TableMapping) -> bool:
        return via.kind is MappingKind.OPTION

    def clear(self) -> None:
        """Forget couplings learnt so far (after this job coupled new records)."""
        self._to_dataverse.clear()
        self._to_bc.clear()
        self._options.clear()


def as_uuid_text(value: Any) -> str | None:
    return str(value).lower() if value else None
