"""Option values added at run time with the ``InsertOptionValue`` action.

Dataverse lets a client add an option to a choice column's option set
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/insertoptionvalue,
https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-optionsets);
BC's integration does so for payment terms and shipment methods it cannot match. The added options
are rows of the org's database, applied on top of the declared option set, so they survive a
restart and disappear with a reset, as the rest of the org's data does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..odata.schema import Option, Property, Schema
from ..odata.storage import Store
from . import exceptions as exc
from .exceptions import DataverseError

# Options a client adds without a value are numbered from the default publisher's prefix (10000).
FIRST_CUSTOM_VALUE = 100_000_000

CSDL = (
    '<ComplexType Name="LocalizedLabel"><Property Name="Label" Type="Edm.String" Unicode="false"/>'
    '<Property Name="LanguageCode" Type="Edm.Int32" Nullable="false"/>'
    '<Property Name="IsManaged" Type="Edm.Boolean"/><Property Name="MetadataId" Type="Edm.Guid"/></ComplexType>'
    '<ComplexType Name="Label">'
    '<Property Name="LocalizedLabels" Type="Collection(Microsoft.Dynamics.CRM.LocalizedLabel)" Nullable="false"/>'
    '<Property Name="UserLocalizedLabel" Type="Microsoft.Dynamics.CRM.LocalizedLabel"/></ComplexType>'
    '<ComplexType Name="InsertOptionValueResponse">'
    '<Property Name="NewOptionValue" Type="Edm.Int32" Nullable="false"/></ComplexType>'
    '<Action Name="InsertOptionValue">'
    '<Parameter Name="OptionSetName" Type="Edm.String" Unicode="false"/>'
    '<Parameter Name="AttributeLogicalName" Type="Edm.String" Unicode="false"/>'
    '<Parameter Name="EntityLogicalName" Type="Edm.String" Unicode="false"/>'
    '<Parameter Name="Value" Type="Edm.Int32"/>'
    '<Parameter Name="Label" Type="Microsoft.Dynamics.CRM.Label" Nullable="false"/>'
    '<Parameter Name="Description" Type="Microsoft.Dynamics.CRM.Label"/>'
    '<Parameter Name="SolutionUniqueName" Type="Edm.String" Unicode="false"/>'
    '<ReturnType Type="Microsoft.Dynamics.CRM.InsertOptionValueResponse" Nullable="false"/></Action>'
)


class OptionValues:
    """The run-time options of one org: stored in its database, applied to its schema."""

    def __init__(self, schema: Schema, store: Store) -> None:
        self.schema = schema
        self.table = sa.Table(
            "_option_value", store.metadata,
            sa.Column("entity", sa.String(128), primary_key=True),
            sa.Column("attribute", sa.String(128), primary_key=True),
            sa.Column("value", sa.Integer, primary_key=True),
            sa.Column("label", sa.String(250), nullable=False),
        )
        store.metadata.create_all(store.engine, tables=[self.table])
        self._declared: dict[tuple[str, str], Property] = {
            (e.name, p.name): p for e in schema for p in e.properties if p.kind == "Picklist" and p.options}

    def apply(self, conn: Connection) -> None:
        """Rebuild every choice column's option set: its declaration plus the stored additions."""
        added: dict[tuple[str, str], list[Option]] = {}
        for row in conn.execute(sa.select(self.table).order_by(self.table.c.value)).mappings():
            added.setdefault((row["entity"], row["attribute"]), []).append(Option(row["value"], row["label"]))
        for (entity_name, attribute), declared in self._declared.items():
            entity = self.schema.entity(entity_name)
            assert entity is not None and declared.options is not None
            extra = tuple(added.get((entity_name, attribute), ()))
            options = replace(declared.options, options=declared.options.options + extra) if extra else declared.options
            entity.replace_property(replace(declared, options=options))

    def insert(self, conn: Connection, body: Any) -> int:
        """Validate an InsertOptionValue request, store the option, apply it; returns its value."""
        if not isinstance(body, dict):
            raise exc.bad_request("The request body must be a JSON object.")
        if body.get("OptionSetName"):
            raise DataverseError(400, exc.NOT_SUPPORTED,
                                 "Global option sets (OptionSetName) are not emulated by the sandbox.")
        entity_name, attribute = body.get("EntityLogicalName"), body.get("AttributeLogicalName")
        if not isinstance(entity_name, str) or not isinstance(attribute, str):
            raise exc.bad_request("InsertOptionValue needs EntityLogicalName and AttributeLogicalName, or "
                                  "OptionSetName.", exc.INVALID_ARGUMENT)
        if self.schema.entity(entity_name) is None:
            raise DataverseError(404, exc.OBJECT_DOES_NOT_EXIST,
                                 f"Could not find an entity with logical name '{entity_name}'.")
        declared = self._declared.get((entity_name, attribute))
        if declared is None:
            raise exc.bad_request(f"The attribute '{attribute}' of '{entity_name}' is not a choice column with a "
                                  "local option set.", exc.INVALID_ARGUMENT)
        label = _label(body.get("Label"))
        entity = self.schema.entity(entity_name)
        assert entity is not None
        current = entity.property(attribute)
        assert current is not None and current.options is not None
        values = current.options.values()
        value = body.get("Value")
        if value is None:
            value = max([v for v in values if v >= FIRST_CUSTOM_VALUE], default=FIRST_CUSTOM_VALUE - 1) + 1
        elif isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise exc.bad_request(f"The option value {value!r} is not an Edm.Int32.", exc.INVALID_ARGUMENT)
        if value in values:
            raise DataverseError(400, exc.DUPLICATE_RECORD,
                                 f"An option with value {value} already exists in the option set of '{attribute}'.")
        conn.execute(self.table.insert().values(entity=entity_name, attribute=attribute, value=value, label=label))
        self.apply(conn)
        return int(value)


def _label(label: Any) -> str:
    """The text of a Label: its first localized label."""
    localized = label.get("LocalizedLabels") if isinstance(label, dict) else None
    if not isinstance(localized, list) or not localized or not isinstance(localized[0], dict):
        raise exc.bad_request("The Label parameter needs at least one LocalizedLabels entry.", exc.INVALID_ARGUMENT)
    text = localized[0].get("Label")
    if not isinstance(text, str) or not text.strip() or len(text) > 250:
        raise exc.bad_request("An option label must be a non-empty text of at most 250 characters.",
                              exc.INVALID_ARGUMENT)
    return text
