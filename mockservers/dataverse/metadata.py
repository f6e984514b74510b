"""Dataverse table definitions (`EntityDefinitions`) derived from the entity declarations.

Clients resolve a table's entity set name, primary key and choice labels through these documents
before they touch data (Microsoft's Python SDK does so on nearly every call), so they are generated
from the same ``Schema`` as the data routes. How they are queried lives in ``metadata_query.py``.
"""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from mockservers.odata.schema import Edm, EntityType, Navigation, OptionSet, Property, Schema

from .tables import is_custom_name, schema_name, table_info

CRM = "Microsoft.Dynamics.CRM"
LANGUAGE_CODE = 1033
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://bc-dataverse-sandbox.invalid/dataverse/metadata")
_LOOKUP_COLUMN = re.compile(r"^_(?P<name>.+)_value$")


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


def object_type_code(entity: EntityType) -> int:
    """The declared code of standard tables; a stable 10000+ code derived from the name otherwise."""
    code = table_info(entity).object_type_code
    return code if code is not None else 10000 + zlib.crc32(entity.name.encode()) % 90000


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
        declared = entity.navigation(prop.lookup)
        if declared is not None:
            targets.append(declared.target)
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
    info = table_info(entity)
    display = entity.display_name or entity.name.replace("_", " ").title()
    custom = is_custom_name(entity.name)
    return {
        "MetadataId": entity_id,
        "LogicalName": entity.name,
        "SchemaName": info.schema_name,
        "EntitySetName": entity.set_name,
        "LogicalCollectionName": entity.set_name,
        "CollectionSchemaName": info.collection_schema_name,
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
        "DisplayCollectionName": label(info.display_collection_name, entity_id, "displaycollectionname"),
        "Description": label(info.description, entity_id, "description"),
    }


# --------------------------------------------------------------------------------------------------
# AttributeMetadata
# --------------------------------------------------------------------------------------------------

# Attribute class → (base class chain, extra structural fields, navigation fields).
ATTRIBUTE_CLASSES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
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
    "EntityNameAttributeMetadata": (
        ("EnumAttributeMetadata", "AttributeMetadata"),
        ("DefaultFormValue",),
        ("OptionSet", "GlobalOptionSet"),
    ),
}

BASE_ATTRIBUTE_FIELDS = (
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
    "EntityName": ("EntityName", "EntityNameType", "EntityNameAttributeMetadata"),
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
    """The declared level; the primary key is always SystemRequired."""
    declared = table_info(entity).required_level(attribute_name(prop))
    if prop.name == entity.key:
        level = "SystemRequired"
    elif declared is not None:
        level = declared
    elif prop.required:  # a hand-built table that marks a column required without a level
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
    if kind == "EntityName":  # a table's logical name; its option set is not published
        return {"DefaultFormValue": -1}
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
        "IsValidForUpdate": (writable and prop.name != entity.key
                             and logical not in table_info(entity).create_only),
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
class Relationship:
    schema_name: str
    referenced: str
    referenced_attribute: str
    referencing: str
    referencing_attribute: str
    referenced_nav: str | None
    referencing_nav: str | None


def _relationships(schema: Schema) -> list[Relationship]:
    """Every one-to-many relationship, seen from the lookup side first, then unmatched collections."""
    found: list[Relationship] = []
    paired: set[tuple[str, str, str]] = set()  # (referenced, referencing, lookup column)
    for entity in schema:
        for nav in entity.navigations:
            target = schema.entity(nav.target)
            via = entity.property(nav.via)
            if nav.collection or target is None or via is None:
                continue
            partner = nav.partner or _collection_partner(target, entity, nav)
            found.append(
                Relationship(
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
                Relationship(
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


def relationship_definition(rel: Relationship) -> dict[str, Any]:
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
    return [relationship_definition(r) for r in _relationships(schema) if r.referencing == entity.name]


def one_to_many_relationships(schema: Schema, entity: EntityType) -> list[dict[str, Any]]:
    """Relationships where other tables (or this one) look up ``entity``."""
    return [relationship_definition(r) for r in _relationships(schema) if r.referenced == entity.name]
