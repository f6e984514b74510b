"""Dataverse table definitions (`EntityDefinitions`) derived from the entity declarations.

Clients resolve a table's entity set name, primary key and choice labels through these documents
before they touch data (Microsoft's Python SDK does so on nearly every call), so they are generated
from the same ``Schema`` as the data routes and answered with the Web API's metadata query rules:
``$select`` (``MetadataId`` always returned), ``$filter`` on primitive, enum and complex-path
properties, ``$expand`` of the navigation collections, type-cast segments, and no paging.
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odata_query import ast
from odata_query.visitor import NodeVisitor

from mockservers.odata.errors import QuerySyntaxError
from mockservers.odata.filter import parse_filter as parse_odata_filter
from mockservers.odata.query import split_top_level as split_options
from mockservers.odata.schema import AlternateKey, Edm, EntityType, Navigation, OptionSet, Property, Schema

CRM = "Microsoft.Dynamics.CRM"
LANGUAGE_CODE = 1033
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bc-dataverse-sandbox.invalid/dataverse/metadata")
_LOOKUP_COLUMN = re.compile(r"^_(?P<name>.+)_value$")
# Publisher prefixes this sandbox declares (BC's integration solution, the default and generated ones).
_CUSTOM_PREFIX = re.compile(r"^(?:bcbi|new|cr[0-9a-z]{3})_")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?:\((?P<key>.*)\))?$")
_NAMED_KEY = re.compile(r"^(?P<prop>\w+)='(?P<value>(?:[^']|'')*)'$")

# Standard tables keep the type codes the real service gives them; others get a stable custom code.
_KNOWN_TYPE_CODES = {
    "account": 1,
    "contact": 2,
    "systemuser": 8,
    "team": 9,
    "businessunit": 10,
    "organization": 1019,
    "pricelevel": 1022,
    "product": 1024,
    "uom": 1055,
    "uomschedule": 1056,
    "transactioncurrency": 9105,
}
_KNOWN_SCHEMA_NAMES = {
    "account": "Account",
    "contact": "Contact",
    "systemuser": "SystemUser",
    "team": "Team",
    "businessunit": "BusinessUnit",
    "pricelevel": "PriceLevel",
    "product": "Product",
    "uom": "UoM",
    "uomschedule": "UoMSchedule",
    "transactioncurrency": "TransactionCurrency",
}


class MetadataError(Exception):
    """A metadata request the real service refuses; the app renders ``{"error":{"code","message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def metadata_id(*parts: str) -> str:
    """Deterministic id so clients that cache MetadataIds see the same value across restarts."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


def label(text: str | None, owner_id: str, purpose: str = "label") -> dict[str, Any]:
    """A Label complex value with one 1033 localized label (or none when there is no text)."""
    if not text:
        return {"LocalizedLabels": [], "UserLocalizedLabel": None}
    localized = {
        "Label": text,
        "LanguageCode": LANGUAGE_CODE,
        "IsManaged": True,
        "MetadataId": metadata_id(owner_id, purpose),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": dict(localized)}


def managed(value: Any, logical_name: str, can_be_changed: bool = True) -> dict[str, Any]:
    """A BooleanManagedProperty-style value (``CanCreateAttributes``, ``IsCustomizable``, …)."""
    return {"Value": value, "CanBeChanged": can_be_changed, "ManagedPropertyLogicalName": logical_name}


def is_custom_name(logical_name: str) -> bool:
    """Custom tables and columns carry a publisher prefix (``bcbi_company``); system ones do not."""
    return bool(_CUSTOM_PREFIX.match(logical_name))


def schema_name(logical_name: str) -> str:
    """SchemaName for a logical name: the real casing for known tables, else prefix-preserving title case."""
    if logical_name in _KNOWN_SCHEMA_NAMES:
        return _KNOWN_SCHEMA_NAMES[logical_name]
    if is_custom_name(logical_name):
        prefix, rest = logical_name.split("_", 1)
        return f"{prefix}_{rest[:1].upper()}{rest[1:]}"
    return logical_name[:1].upper() + logical_name[1:]


def object_type_code(entity: EntityType) -> int:
    """The real code for standard tables; a stable 10000+ code derived from the name otherwise."""
    if "object_type_code" in entity.extra:
        return int(entity.extra["object_type_code"])
    if entity.name in _KNOWN_TYPE_CODES:
        return _KNOWN_TYPE_CODES[entity.name]
    return 10000 + zlib.crc32(entity.name.encode()) % 90000


def attribute_name(prop: Property) -> str:
    """Logical attribute name of a column: lookups are published without the ``_…_value`` wrapper."""
    match = _LOOKUP_COLUMN.match(prop.name)
    if match and (prop.lookup or prop.kind in ("Lookup", "Customer", "Owner")):
        return match.group("name")
    return prop.name


def _lookup_targets(entity: EntityType, prop: Property) -> list[str]:
    targets: list[str] = []
    for nav in entity.navigations:
        if not nav.collection and nav.via == prop.name and nav.target not in targets:
            targets.append(nav.target)
    if not targets and prop.lookup:
        nav = entity.navigation(prop.lookup)
        if nav is not None:
            targets.append(nav.target)
    return targets


def _is_lookup(entity: EntityType, prop: Property) -> bool:
    return attribute_name(prop) != prop.name or bool(prop.lookup)


# --------------------------------------------------------------------------------------------------
# EntityMetadata
# --------------------------------------------------------------------------------------------------

ENTITY_NAVIGATIONS = (
    "Attributes",
    "Keys",
    "ManyToOneRelationships",
    "OneToManyRelationships",
    "ManyToManyRelationships",
)


def entity_definition(entity: EntityType) -> dict[str, Any]:
    """EntityMetadata for one table (structural properties only; navigations come from ``$expand``)."""
    entity_id = metadata_id("entity", entity.name)
    display = entity.display_name or entity.name.replace("_", " ").title()
    display_plural = entity.extra.get("display_collection_name") or f"{display}s"
    custom = bool(entity.extra.get("custom", is_custom_name(entity.name)))
    return {
        "MetadataId": entity_id,
        "LogicalName": entity.name,
        "SchemaName": entity.extra.get("schema_name") or schema_name(entity.name),
        "EntitySetName": entity.set_name,
        "LogicalCollectionName": entity.extra.get("logical_collection_name") or entity.set_name,
        "CollectionSchemaName": entity.extra.get("collection_schema_name") or schema_name(entity.name) + "s",
        "PrimaryIdAttribute": entity.key,
        "PrimaryNameAttribute": entity.primary_name,
        "PrimaryImageAttribute": None,
        "ObjectTypeCode": object_type_code(entity),
        "OwnershipType": entity.ownership,
        "ChangeTrackingEnabled": entity.change_tracking,
        "IsCustomEntity": custom,
        "IsManaged": not custom,
        "IsActivity": False,
        "IsActivityParty": False,
        "IsIntersect": False,
        "IsLogicalEntity": False,
        "IsPrivate": False,
        "IsValidForAdvancedFind": True,
        "IsAuditEnabled": managed(False, "canmodifyauditsettings"),
        "IsCustomizable": managed(True, "iscustomizable", can_be_changed=custom),
        "CanCreateAttributes": managed(True, "cancreateattributes", can_be_changed=custom),
        "CanCreateForms": managed(True, "cancreateforms", can_be_changed=custom),
        "CanCreateViews": managed(True, "cancreateviews", can_be_changed=custom),
        "TableType": "Standard",
        "EntityColor": None,
        "IntroducedVersion": "1.0" if custom else "5.0.0.0",
        "DisplayName": label(display, entity_id, "displayname"),
        "DisplayCollectionName": label(display_plural, entity_id, "displaycollectionname"),
        "Description": label(entity.extra.get("description"), entity_id, "description"),
    }


# --------------------------------------------------------------------------------------------------
# AttributeMetadata
# --------------------------------------------------------------------------------------------------

# Attribute class → (base class chain, extra structural fields, navigation fields).
_ATTRIBUTE_CLASSES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "AttributeMetadata": ((), (), ()),
    "StringAttributeMetadata": (
        ("AttributeMetadata",),
        ("MaxLength", "DatabaseLength", "Format", "FormatName"),
        (),
    ),
    "MemoAttributeMetadata": (("AttributeMetadata",), ("MaxLength", "DatabaseLength", "Format"), ()),
    "IntegerAttributeMetadata": (("AttributeMetadata",), ("MinValue", "MaxValue", "Format"), ()),
    "BigIntAttributeMetadata": (("AttributeMetadata",), ("MinValue", "MaxValue"), ()),
    "DecimalAttributeMetadata": (("AttributeMetadata",), ("Precision", "MinValue", "MaxValue"), ()),
    "DoubleAttributeMetadata": (("AttributeMetadata",), ("Precision", "MinValue", "MaxValue"), ()),
    "MoneyAttributeMetadata": (
        ("AttributeMetadata",),
        ("Precision", "PrecisionSource", "MinValue", "MaxValue", "IsBaseCurrency"),
        (),
    ),
    "BooleanAttributeMetadata": (("AttributeMetadata",), ("DefaultValue",), ("OptionSet", "GlobalOptionSet")),
    "DateTimeAttributeMetadata": (("AttributeMetadata",), ("Format", "DateTimeBehavior"), ()),
    "LookupAttributeMetadata": (("AttributeMetadata",), ("Targets", "Format"), ()),
    "UniqueIdentifierAttributeMetadata": (("AttributeMetadata",), (), ()),
    "ImageAttributeMetadata": (("AttributeMetadata",), ("MaxSizeInKB",), ()),
    "EnumAttributeMetadata": (
        ("AttributeMetadata",),
        ("DefaultFormValue",),
        ("OptionSet", "GlobalOptionSet"),
    ),
    "PicklistAttributeMetadata": (
        ("EnumAttributeMetadata", "AttributeMetadata"),
        ("DefaultFormValue",),
        ("OptionSet", "GlobalOptionSet"),
    ),
    "StateAttributeMetadata": (
        ("EnumAttributeMetadata", "AttributeMetadata"),
        ("DefaultFormValue",),
        ("OptionSet", "GlobalOptionSet"),
    ),
    "StatusAttributeMetadata": (
        ("EnumAttributeMetadata", "AttributeMetadata"),
        ("DefaultFormValue",),
        ("OptionSet", "GlobalOptionSet"),
    ),
}

_BASE_ATTRIBUTE_FIELDS = (
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntityLogicalName",
    "AttributeType",
    "AttributeTypeName",
    "AttributeOf",
    "ColumnNumber",
    "DisplayName",
    "Description",
    "IsPrimaryId",
    "IsPrimaryName",
    "IsValidForCreate",
    "IsValidForUpdate",
    "IsValidForRead",
    "IsCustomAttribute",
    "IsManaged",
    "IsLogical",
    "IsValidODataAttribute",
    "RequiredLevel",
    "SourceType",
    "IntroducedVersion",
)

# Dataverse attribute kind → (AttributeType, AttributeTypeName, metadata class).
_KINDS = {
    "String": ("String", "StringType", "StringAttributeMetadata"),
    "Memo": ("Memo", "MemoType", "MemoAttributeMetadata"),
    "Integer": ("Integer", "IntegerType", "IntegerAttributeMetadata"),
    "BigInt": ("BigInt", "BigIntType", "BigIntAttributeMetadata"),
    "Decimal": ("Decimal", "DecimalType", "DecimalAttributeMetadata"),
    "Double": ("Double", "DoubleType", "DoubleAttributeMetadata"),
    "Money": ("Money", "MoneyType", "MoneyAttributeMetadata"),
    "Boolean": ("Boolean", "BooleanType", "BooleanAttributeMetadata"),
    "DateTime": ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
    "Lookup": ("Lookup", "LookupType", "LookupAttributeMetadata"),
    "Customer": ("Customer", "CustomerType", "LookupAttributeMetadata"),
    "Owner": ("Owner", "OwnerType", "LookupAttributeMetadata"),
    "Uniqueidentifier": ("Uniqueidentifier", "UniqueidentifierType", "UniqueIdentifierAttributeMetadata"),
    "Picklist": ("Picklist", "PicklistType", "PicklistAttributeMetadata"),
    "State": ("State", "StateType", "StateAttributeMetadata"),
    "Status": ("Status", "StatusType", "StatusAttributeMetadata"),
    "Image": ("Virtual", "ImageType", "ImageAttributeMetadata"),
}
_EDM_KINDS = {
    Edm.String: "String",
    Edm.Guid: "Uniqueidentifier",
    Edm.Int32: "Integer",
    Edm.Int64: "BigInt",
    Edm.Decimal: "Decimal",
    Edm.Double: "Double",
    Edm.Boolean: "Boolean",
    Edm.DateTimeOffset: "DateTime",
    Edm.Date: "DateTime",
    Edm.Binary: "Image",
}
_NUMERIC_RANGES = {
    "Integer": (-2147483648, 2147483647),
    "BigInt": (-9223372036854775808, 9223372036854775807),
    "Decimal": (-100000000000.0, 100000000000.0),
    "Double": (-100000000000.0, 100000000000.0),
    "Money": (-922337203685477.0, 922337203685477.0),
}


def _attribute_kind(entity: EntityType, prop: Property) -> str:
    if _is_lookup(entity, prop):
        return prop.kind if prop.kind in ("Customer", "Owner") else "Lookup"
    if prop.kind in _KINDS:
        return prop.kind
    if prop.options is not None:
        return "Picklist"
    return _EDM_KINDS.get(prop.type, "String")


def attribute_class(entity: EntityType, prop: Property) -> str:
    """The metadata class name (``PicklistAttributeMetadata`` …) a column is published as."""
    return _KINDS[_attribute_kind(entity, prop)][2]


def _required_level(entity: EntityType, prop: Property) -> dict[str, Any]:
    if prop.name == entity.key:
        level = "SystemRequired"
    elif prop.required:
        level = "ApplicationRequired"
    else:
        level = "None"
    return managed(level, "canmodifyrequirementlevelsettings")


def _writable(entity: EntityType, prop: Property) -> bool:
    """Lookups are written through their navigation property, the ``_x_value`` column itself is read-only."""
    if _is_lookup(entity, prop):
        navs = [n for n in entity.navigations if not n.collection and n.via == prop.name]
        return any(not n.read_only for n in navs)
    return not prop.read_only


def _type_fields(entity: EntityType, prop: Property, kind: str) -> dict[str, Any]:
    if kind in ("String", "Memo"):
        length = prop.max_length or (2000 if kind == "Memo" else 100)
        fields: dict[str, Any] = {
            "MaxLength": length,
            "DatabaseLength": length * 2,
            "Format": "Text" if kind == "String" else "TextArea",
        }
        if kind == "String":
            fields["FormatName"] = {"Value": "Text"}
        return fields
    if kind in _NUMERIC_RANGES:
        low, high = _NUMERIC_RANGES[kind]
        fields = {"MinValue": low, "MaxValue": high}
        if kind == "Integer":
            fields["Format"] = "None"
        if kind in ("Decimal", "Double", "Money"):
            fields = {"Precision": prop.scale if prop.scale is not None else 2, **fields}
        if kind == "Money":
            fields.update(PrecisionSource=2, IsBaseCurrency=prop.name.endswith("_base"))
        return fields
    if kind == "Boolean":
        return {"DefaultValue": bool(prop.default) if prop.default is not None else False}
    if kind == "DateTime":
        date_only = prop.type == Edm.Date
        return {
            "Format": "DateOnly" if date_only else "DateAndTime",
            "DateTimeBehavior": {"Value": "DateOnly" if date_only else "UserLocal"},
        }
    if kind in ("Lookup", "Customer", "Owner"):
        return {"Targets": _lookup_targets(entity, prop), "Format": None}
    if kind in ("Picklist", "State", "Status"):
        default = prop.options.default if prop.options is not None else None
        return {"DefaultFormValue": default if default is not None else -1}
    if kind == "Image":
        return {"MaxSizeInKB": 10240}
    return {}


def attribute_definition(entity: EntityType, prop: Property, column_number: int = 0) -> dict[str, Any]:
    """AttributeMetadata for one public column (``OptionSet`` is a navigation, added by ``$expand``)."""
    logical = attribute_name(prop)
    attr_id = metadata_id("attribute", entity.name, logical)
    kind = _attribute_kind(entity, prop)
    attribute_type, type_name, cls = _KINDS[kind]
    writable = _writable(entity, prop)
    custom = is_custom_name(logical)
    definition: dict[str, Any] = {
        "@odata.type": f"#{CRM}.{cls}",
        "MetadataId": attr_id,
        "LogicalName": logical,
        "SchemaName": schema_name(logical),
        "EntityLogicalName": entity.name,
        "AttributeType": attribute_type,
        "AttributeTypeName": {"Value": type_name},
        "AttributeOf": None,
        "ColumnNumber": column_number,
        "DisplayName": label(prop.display_name or logical, attr_id, "displayname"),
        "Description": label(prop.description, attr_id, "description"),
        "IsPrimaryId": prop.name == entity.key,
        "IsPrimaryName": prop.name == entity.primary_name,
        "IsValidForCreate": writable or prop.name == entity.key,
        "IsValidForUpdate": writable and prop.name != entity.key,
        "IsValidForRead": True,
        "IsCustomAttribute": custom,
        "IsManaged": not custom,
        "IsLogical": False,
        "IsValidODataAttribute": True,
        "RequiredLevel": _required_level(entity, prop),
        "SourceType": 0,
        "IntroducedVersion": "1.0" if custom else "5.0.0.0",
    }
    definition.update(_type_fields(entity, prop, kind))
    return definition


def attribute_definitions(entity: EntityType) -> list[dict[str, Any]]:
    """AttributeMetadata for every public column of a table; hidden columns never appear."""
    return [
        attribute_definition(entity, prop, number)
        for number, prop in enumerate(entity.public_properties(), start=1)
    ]


def option_set_definition(entity: EntityType, prop: Property) -> dict[str, Any] | None:
    """The expanded ``OptionSet`` of a choice or Yes/No column (``None`` for other columns)."""
    kind = _attribute_kind(entity, prop)
    options = prop.options
    if kind == "Boolean":
        name = options.name if options else f"{entity.name}_{prop.name}"
        set_id = metadata_id("optionset", name)
        labels = {o.value: o.label for o in options.options} if options else {}
        return {
            "MetadataId": set_id,
            "Name": name,
            "OptionSetType": "Boolean",
            "IsGlobal": False,
            "IsCustomOptionSet": is_custom_name(prop.name),
            "IsManaged": True,
            "DisplayName": label(prop.display_name, set_id, "displayname"),
            "TrueOption": _option(set_id, 1, labels.get(1, "Yes")),
            "FalseOption": _option(set_id, 0, labels.get(0, "No")),
        }
    if kind not in ("Picklist", "State", "Status") or options is None:
        return None
    return _choice_option_set(options, kind, prop)


def _choice_option_set(options: OptionSet, kind: str, prop: Property) -> dict[str, Any]:
    set_id = metadata_id("optionset", options.name)
    rendered = []
    for option in options.options:
        item = _option(set_id, option.value, option.label)
        if kind == "Status":
            item["State"] = option.state
            item["TransitionData"] = None
        elif kind == "State":
            item["DefaultStatus"] = None
            item["InvariantName"] = option.label.replace(" ", "")
        rendered.append(item)
    return {
        "MetadataId": set_id,
        "Name": options.name,
        "OptionSetType": kind,
        "IsGlobal": options.is_global,
        "IsCustomOptionSet": is_custom_name(options.name),
        "IsManaged": True,
        "DisplayName": label(prop.display_name, set_id, "displayname"),
        "Description": label(None, set_id, "description"),
        "ParentOptionSetName": None,
        "Options": rendered,
    }


def _option(set_id: str, value: int, text: str) -> dict[str, Any]:
    owner = f"{set_id}/{value}"
    return {
        "Value": value,
        "Color": None,
        "IsManaged": True,
        "ExternalValue": None,
        "ParentValues": [],
        "Tag": None,
        "IsHidden": False,
        "MetadataId": None,
        "HasChanged": None,
        "Label": label(text, owner, "label"),
        "Description": label(None, owner, "description"),
    }


# --------------------------------------------------------------------------------------------------
# Keys and relationships
# --------------------------------------------------------------------------------------------------


def key_definitions(entity: EntityType) -> list[dict[str, Any]]:
    """EntityKeyMetadata for the table's alternate keys (the primary key is not listed)."""
    result = []
    for key in entity.alternate_keys:
        key_id = metadata_id("key", entity.name, key.name)
        columns = [entity.property(name) for name in key.properties]
        result.append(
            {
                "MetadataId": key_id,
                "LogicalName": key.name.lower(),
                "SchemaName": key.name,
                "EntityLogicalName": entity.name,
                "KeyAttributes": [
                    attribute_name(c) if c is not None else n
                    for c, n in zip(columns, key.properties, strict=True)
                ],
                "EntityKeyIndexStatus": "Active",
                "DisplayName": label(key.display_name or key.name, key_id, "displayname"),
                "IsManaged": False,
                "IsCustomizable": managed(True, "iscustomizable"),
                "AsyncJob": None,
            }
        )
    return result


@dataclass(frozen=True)
class _Relationship:
    schema_name: str
    referenced: str
    referenced_attribute: str
    referencing: str
    referencing_attribute: str
    referenced_nav: str | None
    referencing_nav: str | None


def _relationships(schema: Schema) -> list[_Relationship]:
    """Every one-to-many relationship, seen from the lookup side first, then unmatched collections."""
    found: list[_Relationship] = []
    paired: set[tuple[str, str, str]] = set()  # (referenced, referencing, lookup column)
    for entity in schema:
        for nav in entity.navigations:
            target = schema.entity(nav.target)
            via = entity.property(nav.via)
            if nav.collection or target is None or via is None:
                continue
            partner = nav.partner or _collection_partner(target, entity, nav)
            found.append(
                _Relationship(
                    schema_name=partner or nav.name,
                    referenced=target.name,
                    referenced_attribute=target.key,
                    referencing=entity.name,
                    referencing_attribute=attribute_name(via),
                    referenced_nav=partner,
                    referencing_nav=nav.name,
                )
            )
            paired.add((target.name, entity.name, nav.via))
    for entity in schema:
        for nav in entity.navigations:
            target = schema.entity(nav.target)
            if not nav.collection or target is None or (entity.name, target.name, nav.via) in paired:
                continue
            via = target.property(nav.via)
            found.append(
                _Relationship(
                    schema_name=nav.name,
                    referenced=entity.name,
                    referenced_attribute=entity.key,
                    referencing=target.name,
                    referencing_attribute=attribute_name(via) if via else nav.via,
                    referenced_nav=nav.name,
                    referencing_nav=nav.partner,
                )
            )
    return found


def _collection_partner(target: EntityType, entity: EntityType, nav: Navigation) -> str | None:
    for other in target.navigations:
        if other.collection and other.target == entity.name and other.via == nav.via:
            return other.name
    return None


def _relationship_definition(rel: _Relationship) -> dict[str, Any]:
    custom = is_custom_name(rel.referencing_attribute) or is_custom_name(rel.referencing)
    return {
        "MetadataId": metadata_id("relationship", rel.schema_name),
        "SchemaName": rel.schema_name,
        "RelationshipType": "OneToManyRelationship",
        "IsCustomRelationship": custom,
        "IsManaged": not custom,
        "IsValidForAdvancedFind": True,
        "IsHierarchical": False,
        "SecurityTypes": "Append",
        "ReferencedAttribute": rel.referenced_attribute,
        "ReferencedEntity": rel.referenced,
        "ReferencingAttribute": rel.referencing_attribute,
        "ReferencingEntity": rel.referencing,
        "ReferencedEntityNavigationPropertyName": rel.referenced_nav or rel.schema_name,
        "ReferencingEntityNavigationPropertyName": rel.referencing_nav,
        "CascadeConfiguration": {
            "Assign": "NoCascade",
            "Delete": "RemoveLink",
            "Merge": "NoCascade",
            "Reparent": "NoCascade",
            "Share": "NoCascade",
            "Unshare": "NoCascade",
            "RollupView": "NoCascade",
        },
    }


def many_to_one_relationships(schema: Schema, entity: EntityType) -> list[dict[str, Any]]:
    """Relationships where ``entity`` holds the lookup (its single-valued navigations)."""
    return [_relationship_definition(r) for r in _relationships(schema) if r.referencing == entity.name]


def one_to_many_relationships(schema: Schema, entity: EntityType) -> list[dict[str, Any]]:
    """Relationships where other tables (or this one) look up ``entity``."""
    return [_relationship_definition(r) for r in _relationships(schema) if r.referenced == entity.name]


# --------------------------------------------------------------------------------------------------
# $filter evaluation over metadata dicts
# --------------------------------------------------------------------------------------------------

_UNSUPPORTED_OPTIONS = ("$top", "$skip", "$orderby", "$count", "$search", "$apply", "$skiptoken")


def parse_filter(text: str) -> ast._Node:
    """Parse ``$filter`` with the engine's odata-query wrapper (enum literals ``ns.Type'Member'`` included)."""
    try:
        return parse_odata_filter(text)
    except QuerySyntaxError as exc:
        raise MetadataError(400, "0x80060888", exc.message) from exc


class _FilterEvaluator(NodeVisitor):
    """Evaluates a parsed ``$filter`` against one metadata dict (string compares ignore case)."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record

    def visit_Identifier(self, node: ast.Identifier) -> Any:
        if node.namespace:
            raise MetadataError(400, "0x0", f"Unsupported identifier '{node.full_name()}' in $filter.")
        return self.record.get(node.name)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        owner = self.visit(node.owner)
        return owner.get(node.attr) if isinstance(owner, Mapping) else None

    def generic_visit(self, node: ast._Node) -> Any:
        if isinstance(node, ast._Literal):
            try:
                value = node.py_val
            except (ValueError, NotImplementedError) as exc:
                raise MetadataError(400, "0x80060888", f"Invalid literal in $filter: {exc}") from exc
            return str(value) if isinstance(node, ast.GUID) else value
        raise MetadataError(
            400, "0x80060888", f"The {type(node).__name__} expression is not supported in metadata queries."
        )

    def visit_List(self, node: ast.List) -> list[Any]:
        return [self.visit(item) for item in node.val]

    def visit_BoolOp(self, node: ast.BoolOp) -> bool:
        if isinstance(node.op, ast.And):
            return bool(self.visit(node.left)) and bool(self.visit(node.right))
        return bool(self.visit(node.left)) or bool(self.visit(node.right))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> bool:
        if isinstance(node.op, ast.Not):
            return not self.visit(node.operand)
        raise MetadataError(400, "0x80060888", "Arithmetic is not supported in metadata queries.")

    def visit_Compare(self, node: ast.Compare) -> bool:
        left, right = _comparable(self.visit(node.left)), self.visit(node.right)
        if isinstance(left, Mapping | list):
            raise MetadataError(400, "0x0", "Only primitive and enum properties can be compared in $filter.")
        op = node.comparator
        if isinstance(op, ast.In):
            return left in [_comparable(v) for v in right]
        right = _comparable(right)
        if isinstance(op, ast.Eq):
            return left == right
        if isinstance(op, ast.NotEq):
            return left != right
        if left is None or right is None:
            return False
        try:
            return _ORDERING[type(op)](left, right)
        except TypeError as exc:
            raise MetadataError(400, "0x0", f"Cannot compare {left!r} with {right!r}.") from exc


_ORDERING: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


def _comparable(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _filter_roots(node: ast._Node) -> set[str]:
    """Top-level property names a filter refers to, to reject unknown ones even when nothing matches."""
    if isinstance(node, ast.Identifier):
        return {node.name}
    if isinstance(node, ast.Attribute):
        return _filter_roots(node.owner)
    names: set[str] = set()
    for value in vars(node).values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, ast._Node):
                names |= _filter_roots(item)
    return names


# --------------------------------------------------------------------------------------------------
# Query options: $select / $expand
# --------------------------------------------------------------------------------------------------


def split_top_level(text: str, separator: str) -> list[str]:
    """Non-empty items of a list that nests options in parentheses (the engine's splitter)."""
    try:
        return [p.strip() for p in split_options(text, separator) if p.strip()] if text else []
    except QuerySyntaxError as error:
        raise MetadataError(400, "0x80060888", error.message) from error


@dataclass
class QueryOptions:
    """The options that apply to one level of a metadata response."""

    select: list[str] | None = None
    filter: ast._Node | None = None
    expand: dict[str, QueryOptions] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> QueryOptions:
        for name in options:
            if name.lower() in _UNSUPPORTED_OPTIONS:
                raise MetadataError(
                    400, "0x80060888", f"The query option '{name}' is not supported for metadata."
                )
        parsed = cls()
        if options.get("$select"):
            parsed.select = [s.strip() for s in options["$select"].split(",") if s.strip()]
        if options.get("$filter"):
            parsed.filter = parse_filter(options["$filter"])
        for item in split_top_level(options.get("$expand", ""), ","):
            match = re.fullmatch(r"(?P<name>\w+)(?:\((?P<inner>.*)\))?", item, re.DOTALL)
            if match is None:
                raise MetadataError(400, "0x80060888", f"Invalid $expand item '{item}'.")
            inner: dict[str, str] = {}
            for option in split_top_level(match.group("inner") or "", ";"):
                key, sep, value = option.partition("=")
                if not sep:
                    raise MetadataError(400, "0x80060888", f"Invalid option '{option}' in $expand.")
                inner[key.strip()] = value
            parsed.expand[match.group("name")] = cls.parse(inner)
        return parsed

    def projection(self) -> str:
        """Select/expand list for ``@odata.context`` (``(LogicalName,OptionSet,OptionSet(Options))``)."""
        items = [s for s in self.select or [] if s != "*"]
        items += list(self.expand)
        items += [
            f"{name}({inner.projection()[1:-1]})" for name, inner in self.expand.items() if inner.select
        ]
        return f"({','.join(items)})" if items else ""


# --------------------------------------------------------------------------------------------------
# Resolving EntityDefinitions paths
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One metadata object plus what ``$expand`` may need to build its navigations."""

    data: dict[str, Any]
    entity: EntityType
    prop: Property | None = None


class MetadataQuery:
    """Answers ``GET EntityDefinitions…`` requests for one service schema.

    ``execute`` takes the URL path segments from ``EntityDefinitions`` on (already split on ``/`` and
    percent-decoded) and the query options, and returns ``(status, body)``; refusals raise
    ``MetadataError``.
    """

    def __init__(self, schema: Schema, service_root: str) -> None:
        self.schema = schema
        self.service_root = service_root if service_root.endswith("/") else service_root + "/"
        self._entity_ids = {metadata_id("entity", e.name): e for e in schema}

    # -- public ------------------------------------------------------------------------------------

    def execute(self, segments: Sequence[str], options: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        query = QueryOptions.parse(options)
        if not segments:
            raise MetadataError(404, "0x8006088a", "Resource not found for the segment ''.")
        name, key = self._segment(segments[0])
        if name != "EntityDefinitions":
            raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{segments[0]}'.")
        if key is None:
            if len(segments) > 1:
                raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{segments[1]}'.")
            items = [_Item(entity_definition(e), e) for e in self.schema]
            return 200, self._collection("EntityDefinitions", "EntityMetadata", items, query)
        entity = self._entity_by_key(key)
        if len(segments) == 1:
            return 200, self._single(
                "EntityDefinitions", "EntityMetadata", _Item(entity_definition(entity), entity), query
            )
        return 200, self._under_entity(entity, list(segments[1:]), query)

    # -- path handling -----------------------------------------------------------------------------

    @staticmethod
    def _segment(segment: str) -> tuple[str, str | None]:
        match = _SEGMENT.match(segment)
        if match is None:
            raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
        return match.group("name"), match.group("key")

    def _entity_by_key(self, key: str) -> EntityType:
        lookup = _parse_key(key, "LogicalName")
        if lookup[0] not in ("LogicalName", "MetadataId"):
            raise MetadataError(400, "0x80060888", f"'{lookup[0]}' is not a key of EntityDefinitions.")
        if lookup[0] == "MetadataId":
            entity = self._entity_ids.get(lookup[1].lower())
        else:
            entity = self.schema.entity(lookup[1])
        if entity is None:
            raise MetadataError(
                404, "0x80040217", f"Could not find an entity with {lookup[0]} = '{lookup[1]}'."
            )
        return entity

    def _under_entity(self, entity: EntityType, segments: list[str], query: QueryOptions) -> dict[str, Any]:
        name, key = self._segment(segments[0])
        base = f"EntityDefinitions('{entity.name}')/{name}"
        if name == "Attributes":
            return self._attributes(entity, key, segments[1:], base, query)
        if name == "Keys" and len(segments) == 1:
            items = [_Item(k, entity) for k in key_definitions(entity)]
            return self._keyed_or_collection(base, "EntityKeyMetadata", items, key, "LogicalName", query)
        relationship_sources: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "ManyToOneRelationships": lambda: many_to_one_relationships(self.schema, entity),
            "OneToManyRelationships": lambda: one_to_many_relationships(self.schema, entity),
            "ManyToManyRelationships": lambda: [],
        }
        if name in relationship_sources and len(segments) == 1:
            items = [_Item(r, entity) for r in relationship_sources[name]()]
            return self._keyed_or_collection(
                base, "OneToManyRelationshipMetadata", items, key, "SchemaName", query
            )
        raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{segments[0]}'.")

    def _attributes(
        self, entity: EntityType, key: str | None, rest: list[str], base: str, query: QueryOptions
    ) -> dict[str, Any]:
        cast = None
        if rest:
            cast = self._cast(rest[0])
            if len(rest) > 1:
                raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{rest[1]}'.")
            base = f"{base}/{rest[0]}"
        type_name = cast or "AttributeMetadata"
        items = []
        for number, prop in enumerate(entity.public_properties(), start=1):
            cls = attribute_class(entity, prop)
            if cast is None or cast == cls or cast in _ATTRIBUTE_CLASSES[cls][0]:
                items.append(_Item(attribute_definition(entity, prop, number), entity, prop))
        return self._keyed_or_collection(base, type_name, items, key, "LogicalName", query)

    @staticmethod
    def _cast(segment: str) -> str:
        prefix = f"{CRM}."
        name = segment[len(prefix) :] if segment.startswith(prefix) else None
        if name not in _ATTRIBUTE_CLASSES:
            raise MetadataError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
        return name

    def _keyed_or_collection(
        self,
        base: str,
        type_name: str,
        items: list[_Item],
        key: str | None,
        key_name: str,
        query: QueryOptions,
    ) -> dict[str, Any]:
        if key is None:
            return self._collection(base, type_name, items, query)
        prop, value = _parse_key(key, key_name)
        for item in items:
            if str(item.data.get(prop, "")).lower() == value.lower():
                return self._single(base, type_name, item, query)
        raise MetadataError(404, "0x80040217", f"Could not find a {type_name} with {prop} = '{value}'.")

    # -- shaping -----------------------------------------------------------------------------------

    def _context(self, path: str, query: QueryOptions) -> str:
        return f"{self.service_root}$metadata#{path}{query.projection()}"

    def _collection(
        self, path: str, type_name: str, items: list[_Item], query: QueryOptions
    ) -> dict[str, Any]:
        rows = self._apply(type_name, items, query)
        return {"@odata.context": self._context(path, query), "value": rows}

    def _single(self, path: str, type_name: str, item: _Item, query: QueryOptions) -> dict[str, Any]:
        if query.filter is not None:
            raise MetadataError(400, "0x80060888", "The query option '$filter' applies to collections only.")
        (row,) = self._apply(type_name, [item], query)
        return {"@odata.context": self._context(path, query) + "/$entity", **row}

    def _apply(self, type_name: str, items: list[_Item], query: QueryOptions) -> list[dict[str, Any]]:
        fields, navigations = _fields_of(type_name, items)
        for name in query.select or []:
            if name != "*" and name not in fields:
                raise _unknown_property(name, type_name)
        for name in query.expand:
            if name not in navigations:
                raise _unknown_property(name, type_name)
        if query.filter is not None:
            for name in _filter_roots(query.filter):
                if name not in fields:
                    raise _unknown_property(name, type_name)
            items = [i for i in items if _FilterEvaluator(i.data).visit(query.filter)]
        return [self._shape(item, type_name, query) for item in items]

    def _shape(self, item: _Item, type_name: str, query: QueryOptions) -> dict[str, Any]:
        data = item.data
        if query.select and "*" not in query.select:
            row = {name: data.get(name) for name in query.select if name != "MetadataId"}
            row["MetadataId"] = data["MetadataId"]
            if "@odata.type" in data:
                row = {"@odata.type": data["@odata.type"], **row}
        else:
            row = dict(data)
        if row.get("@odata.type") == f"#{CRM}.{type_name}":
            del row["@odata.type"]
        for name, inner in query.expand.items():
            row[name] = self._expanded(item, name, inner)
        return row

    def _expanded(self, item: _Item, name: str, query: QueryOptions) -> Any:
        entity = item.entity
        if name in ("OptionSet", "GlobalOptionSet"):
            option_set = option_set_definition(entity, item.prop) if item.prop is not None else None
            if option_set is None or (name == "GlobalOptionSet" and not option_set["IsGlobal"]):
                return None
            return self._apply_plain(option_set, query)
        sources: dict[str, Callable[[], list[_Item]]] = {
            "Attributes": lambda: [
                _Item(attribute_definition(entity, p, n), entity, p)
                for n, p in enumerate(entity.public_properties(), start=1)
            ],
            "Keys": lambda: [_Item(k, entity) for k in key_definitions(entity)],
            "ManyToOneRelationships": lambda: [
                _Item(r, entity) for r in many_to_one_relationships(self.schema, entity)
            ],
            "OneToManyRelationships": lambda: [
                _Item(r, entity) for r in one_to_many_relationships(self.schema, entity)
            ],
            "ManyToManyRelationships": lambda: [],
        }
        types = {
            "Attributes": "AttributeMetadata",
            "Keys": "EntityKeyMetadata",
            "ManyToOneRelationships": "OneToManyRelationshipMetadata",
            "OneToManyRelationships": "OneToManyRelationshipMetadata",
            "ManyToManyRelationships": "ManyToManyRelationshipMetadata",
        }
        return self._apply(types[name], sources[name](), query)

    @staticmethod
    def _apply_plain(data: dict[str, Any], query: QueryOptions) -> dict[str, Any]:
        if query.filter is not None or query.expand:
            raise MetadataError(400, "0x80060888", "Only $select is supported inside an expanded OptionSet.")
        if not query.select or "*" in query.select:
            return data
        for name in query.select:
            if name not in data:
                raise _unknown_property(name, "OptionSetMetadataBase")
        row = {name: data[name] for name in query.select if name != "MetadataId"}
        row["MetadataId"] = data["MetadataId"]
        return row


def _fields_of(type_name: str, items: list[_Item]) -> tuple[set[str], set[str]]:
    """Selectable properties and expandable navigations of a metadata type."""
    if type_name in _ATTRIBUTE_CLASSES:
        chain = (type_name, *_ATTRIBUTE_CLASSES[type_name][0])
        fields = set(_BASE_ATTRIBUTE_FIELDS)
        navigations: set[str] = set()
        for cls in chain:
            fields.update(_ATTRIBUTE_CLASSES[cls][1])
            navigations.update(_ATTRIBUTE_CLASSES[cls][2])
        return fields, navigations
    if type_name == "EntityMetadata":
        return set(_SAMPLE_FIELDS["entity"]), set(ENTITY_NAVIGATIONS)
    if type_name == "EntityKeyMetadata":
        return set(_SAMPLE_FIELDS["key"]), set()
    return set(_SAMPLE_FIELDS["relationship"]), set()


def _sample_fields() -> dict[str, tuple[str, ...]]:
    """Property names of the non-attribute metadata types, read off generated samples so they cannot drift."""
    sample = EntityType(
        name="sample",
        set_name="samples",
        key="sampleid",
        properties=[Property(name="sampleid", type=Edm.Guid)],
        alternate_keys=[AlternateKey(name="sample_key", properties=("sampleid",))],
    )
    relationship = _Relationship("s", "a", "aid", "b", "aid", "s", "a")
    return {
        "entity": tuple(entity_definition(sample)),
        "key": tuple(key_definitions(sample)[0]),
        "relationship": tuple(_relationship_definition(relationship)),
    }


_SAMPLE_FIELDS = _sample_fields()


def _unknown_property(name: str, type_name: str) -> MetadataError:
    return MetadataError(400, "0x0", f"Could not find a property named '{name}' on type '{CRM}.{type_name}'.")


def _parse_key(key: str, default_property: str) -> tuple[str, str]:
    """``LogicalName='account'`` / ``'account'`` / a bare MetadataId → (property, value)."""
    key = key.strip()
    if _GUID.match(key):
        return "MetadataId", key
    named = _NAMED_KEY.match(key)
    if named:
        return named.group("prop"), named.group("value").replace("''", "'")
    if len(key) >= 2 and key[0] == key[-1] == "'":
        return default_property, key[1:-1].replace("''", "'")
    raise MetadataError(400, "0x80060888", f"Bad key '{key}'.")
