"""Field transfer: the destination values a source record implies, and which of them changed.

Follows codeunit 5336 "Integration Record Synch." as documented for field mappings
(https://learn.microsoft.com/dynamics365/business-central/admin-how-to-modify-table-mappings-for-synchronization):
on insert every mapped field is written, on modify only the fields whose value differs; a Code
destination counts as changed only when it differs from the upper-cased, trimmed source; lookups and
options travel through the coupling of the related record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..store import Direction, FieldMapping, FieldStatus, TableMapping
from .resolve import Resolver, as_uuid_text
from .tables import (
    ZERO_GUID,
    BCEntity,
    DataverseTable,
    bc_entity,
    bind_name,
    dataverse_table,
    lookup_value_name,
)


class TransferError(Exception):
    """A field could not be transferred; the record fails with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ActiveField:
    """A field mapping as a pass uses it. A pass reads these values for every field of every record:
    plain attributes, copied once from the mapping, cost a fraction of the ORM's instrumented ones."""

    bc_field: str | None
    dataverse_field: str | None
    direction: Direction
    constant_value: str | None
    via_mapping: str | None
    clear_value_on_failed_sync: bool
    not_null: bool

    @classmethod
    def of(cls, f: FieldMapping) -> ActiveField:
        return cls(f.bc_field, f.dataverse_field, f.direction, f.constant_value, f.via_mapping,
                   bool(f.clear_value_on_failed_sync), bool(f.not_null))


@dataclass
class Transfer:
    values: dict[str, Any] = field(default_factory=dict)  # what to send, in the destination's wire names
    changed: list[ActiveField] = field(default_factory=list)

    @property
    def bidirectional_changes(self) -> list[ActiveField]:
        return [f for f in self.changed if f.direction is Direction.BIDIRECTIONAL]


def active_fields(mapping: TableMapping, direction: Direction) -> list[ActiveField]:
    """Field mappings a pass in ``direction`` uses: that direction or bidirectional, and enabled."""
    fields = [ActiveField.of(f) for f in mapping.fields
              if f.status is FieldStatus.ENABLED and f.direction in (direction, Direction.BIDIRECTIONAL)]
    if not fields:
        raise TransferError(f"There are no field mapping rows for the {mapping.name} table mapping in the "
                            f"direction {direction.value}.")
    return fields


def _norm(value: Any) -> Any:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value)).normalize()
        except InvalidOperation:
            return value
    if isinstance(value, str):
        try:  # a GUID compares case-insensitively
            return value.lower() if len(value) == 36 and value.count("-") == 4 else value
        except AttributeError:  # pragma: no cover
            return value
    return value


def differs(destination: Any, source: Any, *, code: bool = False) -> bool:
    if code and isinstance(source, str):
        source = source.strip().upper()
    if type(destination) is type(source) and destination == source:
        return False  # equal values of one type normalize alike (the common case, without the work)
    return _norm(destination) != _norm(source)


@dataclass
class TransferContext:
    """Facts a transfer needs beyond the two records (resolved once per job)."""

    resolver: Resolver
    lcy_currency_id: str | None = None  # the Dataverse currency that stands for BC's blank (LCY) currency


def dataverse_columns(mapping: TableMapping) -> set[str]:
    """The Web API properties a mapping reads from Dataverse rows (lookups as ``_x_value``)."""
    table = dataverse_table(mapping.dataverse_table)
    return {lookup_value_name(f.dataverse_field) if f.dataverse_field in table.lookups else f.dataverse_field
            for f in mapping.fields if f.dataverse_field and mapping.kind.value == "Table"}


def bc_fields(mapping: TableMapping) -> set[str]:
    """The BC properties a mapping reads, plus the code twins of its GUID references (for messages)."""
    entity = bc_entity(mapping.bc_entity)
    fields = {f.bc_field for f in mapping.fields if f.bc_field}
    return fields | {entity.references[n][2] for n in fields if n in entity.references and entity.references[n][2]}


class FieldTransfer:
    """Transfers one mapping's fields in one direction."""

    def __init__(self, mapping: TableMapping, direction: Direction, context: TransferContext) -> None:
        self.mapping = mapping
        self.direction = direction
        self.context = context
        self.resolver = context.resolver
        self.fields = active_fields(mapping, direction)
        self.dataverse: DataverseTable = dataverse_table(mapping.dataverse_table)
        self.bc: BCEntity = bc_entity(mapping.bc_entity)

    # -- BC -> Dataverse ------------------------------------------------------------------------
    def to_dataverse(self, source: dict[str, Any], destination: dict[str, Any] | None) -> Transfer:
        result = Transfer()
        for f in self.fields:
            if not f.dataverse_field:
                continue
            column = f.dataverse_field
            if f.via_mapping:
                via = self.resolver.via(f.via_mapping)
                if self.resolver.is_option(via):
                    value = self._option_to_dataverse(f, via, source)
                    current = destination.get(column) if destination else None
                    if destination is None or current != value:
                        result.values[column] = value
                        result.changed.append(f)
                    continue
                resolved = self._lookup_to_dataverse(f, via, source)
                if resolved is _UNRESOLVED:
                    continue  # Not Null: keep the destination's value
                current = as_uuid_text(destination.get(lookup_value_name(column))) if destination else None
                if self._is_lcy(via, resolved) and self._is_lcy(via, current):
                    continue
                if destination is None or current != resolved:
                    target = dataverse_table(via.dataverse_table)
                    result.values[bind_name(self.dataverse, column, target.logical_name)] = (
                        f"/{target.set_name}({resolved})" if resolved else None)
                    result.changed.append(f)
                continue
            value = self._source_value(f, source)
            if destination is None or differs(destination.get(column), value):
                result.values[column] = None if value == "" else _json_number(value)
                result.changed.append(f)
        return result

    def _source_value(self, f: ActiveField, source: dict[str, Any]) -> Any:
        if f.bc_field is None:
            return self._constant(f)
        return source.get(f.bc_field)

    def _constant(self, f: ActiveField) -> Any:
        text = f.constant_value or ""
        if f.dataverse_field in self.dataverse.choices and text.lstrip("-").isdigit():
            return int(text)
        return text

    def _shown(self, f: ActiveField, source: dict[str, Any]) -> tuple[str, str]:
        assert f.bc_field is not None
        value = source.get(f.bc_field)
        if f.bc_field in self.bc.references:
            entity_set, _, code_field = self.bc.references[f.bc_field]
            value = (source.get(code_field) if code_field else None) or (
                self.resolver.code_of(entity_set, str(value)) if value else None) or value
        return self.bc.field_caption(f.bc_field), str(value)

    def _related_bc_id(self, f: ActiveField, via: TableMapping, source: dict[str, Any]) -> str | None:
        assert f.bc_field is not None
        value = source.get(f.bc_field)
        if not value or value == ZERO_GUID:
            return None
        if f.bc_field in self.bc.code_references:
            return self.resolver.codes(via.bc_entity).get(str(value).upper())
        return str(value).lower()

    def _lookup_to_dataverse(self, f: ActiveField, via: TableMapping, source: dict[str, Any]) -> Any:
        raw = source.get(f.bc_field or "")
        if not raw or raw == ZERO_GUID:  # blank: no related record (for currencies: the local currency)
            return self.context.lcy_currency_id if via.bc_entity == "currencies" else None
        related = self._related_bc_id(f, via, source)
        coupled = self.resolver.dataverse_id(via, related) if related else None
        if coupled:
            return coupled
        if f.clear_value_on_failed_sync:
            return None
        if f.not_null:
            return _UNRESOLVED
        caption, shown = self._shown(f, source)
        raise TransferError(f"{caption} {shown} must be coupled to a Dataverse row.")

    def _option_to_dataverse(self, f: ActiveField, via: TableMapping, source: dict[str, Any]) -> int | None:
        related = self._related_bc_id(f, via, source)
        if related is None:
            return None
        value = self.resolver.option_value(via, related)
        if value is not None:
            return value
        if f.clear_value_on_failed_sync:
            return None
        caption, shown = self._shown(f, source)
        raise TransferError(f"{caption} {shown} must be coupled to a Dataverse option value.")

    def _is_lcy(self, via: TableMapping, value: str | None) -> bool:
        return via.bc_entity == "currencies" and (value is None or value == self.context.lcy_currency_id)

    # -- Dataverse -> BC ------------------------------------------------------------------------
    def to_bc(self, source: dict[str, Any], destination: dict[str, Any] | None) -> Transfer:
        result = Transfer()
        for f in self.fields:
            if not f.bc_field:
                continue
            name = f.bc_field
            if f.dataverse_field is None:
                value: Any = f.constant_value or ""
            elif f.via_mapping:
                value = self._from_related(f, self.resolver.via(f.via_mapping), source)
                if value is _UNRESOLVED:
                    continue
            else:
                value = source.get(f.dataverse_field)
                if value is None:
                    value = ""
            is_code = name in self.bc.codes
            current = destination.get(name) if destination else None
            if name in self.bc.references and not value:
                value = ZERO_GUID
            if destination is None or differs(current, value, code=is_code):
                result.values[name] = value.strip().upper() if is_code and isinstance(value, str) else value
                result.changed.append(f)
        return result

    def _from_related(self, f: ActiveField, via: TableMapping, source: dict[str, Any]) -> Any:
        assert f.dataverse_field is not None
        column = f.dataverse_field
        if self.resolver.is_option(via):
            option = source.get(column)
            if option is None:
                return ""
            bc_id = self.resolver.option_bc_id(via, int(option))
            if bc_id is None and not f.clear_value_on_failed_sync:
                raise TransferError(f"The {column} option value {option} must be coupled to a "
                                    f"{bc_entity(via.bc_entity).caption} record.")
            return bc_id or ""
        related = as_uuid_text(source.get(lookup_value_name(column)))
        if related is None or (via.bc_entity == "currencies" and related == self.context.lcy_currency_id):
            return ""
        bc_id = self.resolver.bc_id(via, related)
        if bc_id is None:
            if f.clear_value_on_failed_sync:
                return ""
            if f.not_null:
                return _UNRESOLVED
            raise TransferError(f"The {dataverse_table(via.dataverse_table).logical_name} row {related} in "
                                f"{column} must be coupled to a {bc_entity(via.bc_entity).caption} record.")
        if f.bc_field in self.bc.code_references:
            return self.resolver.code_of(via.bc_entity, bc_id) or ""
        return bc_id


class _Unresolved:
    def __repr__(self) -> str:  # pragma: no cover
        return "<unresolved>"


_UNRESOLVED: Any = _Unresolved()


def _json_number(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value
