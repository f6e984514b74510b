"""Option mappings: BC setup records (payment terms, shipment methods) ⇄ values of a choice column.

Dataverse has no table of payment terms: ``account.paymenttermscode`` is a choice. BC couples each
of its records to one option value ("CRM Option Mapping"), matching an existing option by its label,
and adds the option to the column's option set when none matches
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/administration/administration-custom-option-mapping,
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-optionsets).
Option mappings only go to Dataverse; the couplings live in ``OptionCoupling``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import delete, select

from .clients import ClientError
from .jobs import JobLog, RecordRef
from .mappings.tables import bc_entity
from .runtime import Connector, ConnectorError
from .store import FieldStatus, MappingKind, OptionCoupling, TableMapping

LANGUAGE = 1033


def _squeezed(text: str) -> str:
    """Codes are captions without spaces and signs ('NET 30' and 'Net 30' are the same terms)."""
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def read_options(cx: Connector, table: str, attribute: str) -> dict[int, str]:
    """The option set of a choice column, from EntityDefinitions: value -> label."""
    path = (f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{attribute}')"
            "/Microsoft.Dynamics.CRM.PicklistAttributeMetadata")
    body = cx.dataverse.core.send("GET", path, params={"$select": "LogicalName",
                                                        "$expand": "OptionSet($select=Options)"}).json()
    options: dict[int, str] = {}
    for option in (body.get("OptionSet") or {}).get("Options", []):
        label = ((option.get("Label") or {}).get("UserLocalizedLabel") or {}).get("Label")
        options[int(option["Value"])] = str(label or "")
    return options


def insert_option(cx: Connector, table: str, attribute: str, label: str) -> int:
    body = {"EntityLogicalName": table, "AttributeLogicalName": attribute,
            "Label": {"LocalizedLabels": [{"Label": label, "LanguageCode": LANGUAGE}]}}
    # Not retried on its own: a lost answer would add the option twice. Options are looked up by
    # label before inserting, so repeating the whole pass is safe.
    answer = cx.dataverse.core.send("POST", "InsertOptionValue", json=body, idempotent=False).json()
    return int(answer["NewOptionValue"])


def code_field(mapping: TableMapping) -> str:
    for f in mapping.fields:
        if f.status is FieldStatus.ENABLED and f.bc_field and f.dataverse_field == "label":
            return f.bc_field
    return bc_entity(mapping.bc_entity).number_field


class OptionPass:
    """One synchronization of an option mapping over BC setup records."""

    def __init__(self, cx: Connector, mapping: TableMapping, job: JobLog,
                 progress: Callable[[int], None] | None = None) -> None:
        if mapping.kind is not MappingKind.OPTION or not mapping.option_attribute:
            raise ConnectorError(f"{mapping.name} is not an option mapping")
        self.cx, self.mapping, self.job, self.progress = cx, mapping, job, progress
        self.field = code_field(mapping)

    def run(self, records: Iterable[dict[str, Any]], *, insert_only: bool = False, insert_missing: bool = True) -> None:
        mapping = self.mapping
        attribute = mapping.option_attribute
        assert attribute is not None
        options = read_options(self.cx, mapping.dataverse_table, attribute)
        with self.cx.state.session() as session:
            couplings = {c.bc_id: c for c in session.scalars(
                select(OptionCoupling).where(OptionCoupling.mapping_name == mapping.name))}
        taken = {c.option_value for c in couplings.values() if c.option_value in options}
        for record in records:
            bc_id, code = str(record["id"]).lower(), str(record.get(self.field) or "")
            coupling = couplings.get(bc_id)
            if coupling is not None and coupling.option_value in options:
                self.job.count("skipped" if insert_only else "unchanged")
                continue
            try:
                value = self._match(options, taken, code)
                if value is None and not insert_missing:
                    self.job.count("failed")
                    self.job.error(RecordRef(mapping.bc_entity, bc_id, mapping.dataverse_table, None),
                                   f"{bc_entity(mapping.bc_entity).caption} {code}", None,
                                   f"No uncoupled option of {attribute} has the label {code!r}.")
                    continue
                if value is None:
                    value = insert_option(self.cx, mapping.dataverse_table, attribute, code)
                    options[value] = code
                    self.job.count("inserted")
                else:
                    self.job.count("coupled")
            except ClientError as error:
                self.job.count("failed")
                self.job.error(RecordRef(mapping.bc_entity, bc_id, mapping.dataverse_table, None),
                               f"{bc_entity(mapping.bc_entity).caption} {code}", None, str(error))
                continue
            taken.add(value)
            with self.cx.state.session() as session:
                session.execute(delete(OptionCoupling).where(OptionCoupling.mapping_name == mapping.name,
                                                             OptionCoupling.bc_id == bc_id))
                session.add(OptionCoupling(mapping_name=mapping.name, bc_id=bc_id, bc_code=code,
                                           option_value=value, option_label=options[value]))
            if self.progress:
                self.progress(1)
        self.job.flush()

    @staticmethod
    def _match(options: dict[int, str], taken: set[int], code: str) -> int | None:
        wanted = _squeezed(code)
        for value, label in sorted(options.items()):
            if value not in taken and _squeezed(label) == wanted:
                return value
        return None
