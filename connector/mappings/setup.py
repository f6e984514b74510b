"""Writing the default setup to the state, and editing mappings afterwards.

The rules on edits are BC's (https://learn.microsoft.com/dynamics365/business-central/admin-how-to-modify-table-mappings-for-synchronization):
a mapping's direction needs at least one enabled field mapping in that direction, option mappings
cannot be bidirectional, and a match priority is a whole number of zero or more.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..store import (
    DeletionConflict,
    Direction,
    FieldMapping,
    FieldStatus,
    MappingKind,
    State,
    TableMapping,
    UpdateConflict,
)
from .defaults import COMPANY, DEFAULT_MAPPINGS, MappingSpec


class MappingError(Exception):
    """An edit the mapping rules refuse."""


def _company_filter(text: str | None, company_id: str) -> str | None:
    return text.replace(COMPANY, company_id) if text else text


def build_mapping(spec: MappingSpec, company_id: str) -> TableMapping:
    return TableMapping(
        name=spec.name, bc_entity=spec.bc_entity, dataverse_table=spec.dataverse_table, kind=spec.kind,
        option_attribute=spec.option_attribute, direction=spec.direction, table_filter=spec.table_filter,
        integration_table_filter=_company_filter(spec.integration_table_filter, company_id),
        sync_only_coupled=True, deletion_conflict=DeletionConflict.NONE, update_conflict=UpdateConflict.NONE,
        dependency_filter=spec.dependency_filter, create_new_if_no_match=spec.create_new_if_no_match,
        sync_after_match_coupling=spec.sync_after_match_coupling, bc_template=dict(spec.bc_template),
        dataverse_template=dict(spec.dataverse_template),
        fields=[FieldMapping(bc_field=f.bc_field, dataverse_field=f.dataverse_field, direction=f.direction,
                             constant_value=f.constant, via_mapping=f.via,
                             clear_value_on_failed_sync=f.clear_value_on_failed_sync, not_null=f.not_null,
                             use_for_match=f.use_for_match, case_sensitive=f.case_sensitive,
                             match_priority=f.match_priority, status=FieldStatus.ENABLED)
                for f in spec.fields],
    )


def install_defaults(state: State, company_id: str) -> list[str]:
    """Replace the default mappings (couplings are kept, as BC keeps its CRM Integration Records)."""
    with state.session() as session:
        for spec in DEFAULT_MAPPINGS:
            existing = session.get(TableMapping, spec.name)
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(build_mapping(spec, company_id))
    return [spec.name for spec in DEFAULT_MAPPINGS]


def _enabled_directions(mapping: TableMapping) -> set[Direction]:
    return {f.direction for f in mapping.fields if f.status is FieldStatus.ENABLED}


def set_mapping(session: Session, mapping: TableMapping, changes: dict[str, Any]) -> list[str]:
    """Apply mapping-level settings; returns warnings (BC asks for confirmation in these cases)."""
    warnings = []
    direction = changes.get("direction")
    if direction is not None:
        if mapping.kind is MappingKind.OPTION and direction is Direction.BIDIRECTIONAL:
            raise MappingError(f"{mapping.name} is an option mapping; it cannot be Bidirectional.")
        if direction not in _enabled_directions(mapping):
            raise MappingError(f"You must set the direction of at least one enabled integration field mapping to "
                               f"'{direction.value}'.")
    for name, value in changes.items():
        setattr(mapping, name, value)
    if mapping.deletion_conflict is DeletionConflict.REMOVE_COUPLING and not mapping.sync_only_coupled:
        warnings.append("With Remove Coupling and Sync. Only Coupled Records off, a later scheduled job may "
                        "create the record again and couple it.")
    session.flush()
    return warnings


def find_field(mapping: TableMapping, key: str) -> FieldMapping:
    """A field mapping by its id, its BC field or its Dataverse field (``bc=dv`` when ambiguous)."""
    if key.isdigit():
        found = [f for f in mapping.fields if f.id == int(key)]
    elif "=" in key:
        bc, _, dv = key.partition("=")
        found = [f for f in mapping.fields if (f.bc_field or "") == bc and (f.dataverse_field or "") == dv]
    else:
        found = [f for f in mapping.fields if key in (f.bc_field, f.dataverse_field)]
    if not found:
        raise MappingError(f"{mapping.name} has no field mapping {key!r}")
    if len(found) > 1:
        choices = ", ".join(f"{f.id} ({f.bc_field}={f.dataverse_field})" for f in found)
        raise MappingError(f"{key!r} names several field mappings of {mapping.name}: {choices}; use the id")
    return found[0]


def set_field(session: Session, mapping: TableMapping, field: FieldMapping, changes: dict[str, Any]) -> None:
    if "match_priority" in changes and changes["match_priority"] < 0:
        raise MappingError("Match Priority must be zero or more.")
    if changes.get("clear_value_on_failed_sync") and (changes.get("not_null") or field.not_null):
        raise MappingError("Clear Value on Failed Sync and Not Null cannot both be set.")
    for name, value in changes.items():
        setattr(field, name, value)
    if mapping.direction not in _enabled_directions(mapping):
        raise MappingError(f"You must set the direction of at least one enabled integration field mapping to "
                           f"'{mapping.direction.value}'.")
    session.flush()
