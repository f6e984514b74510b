"""CSDL (`$metadata`) rendered from a service's entity declarations.

Both services publish an EDMX 4.0 document; it is derived from the same ``Schema`` that drives storage
and serialization, so a table added to the declarations shows up here without further work.
The tree is built with ElementTree so names and values are always escaped correctly.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from mockservers.odata.schema import Edm, EntityType, Navigation, OptionSet, Property, Schema

EDMX_NS = "http://docs.oasis-open.org/odata/ns/edmx"
EDM_NS = "http://docs.oasis-open.org/odata/ns/edm"
CORE_VOCABULARY = "Org.OData.Core.V1"
CAPABILITIES_VOCABULARY = "Org.OData.Capabilities.V1"
_VOCABULARY_URIS = {
    CORE_VOCABULARY: "https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Core.V1.xml",
    CAPABILITIES_VOCABULARY: (
        "https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Capabilities.V1.xml"
    ),
}
_XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


def xml_name(label: str) -> str:
    """Encode an enum member label the way BC's OData layer does (XmlConvert-style escaping).

    A character that cannot appear in an identifier becomes ``_xHHHH_`` (space → ``_x0020_``,
    ``-`` → ``_x002D_``); a leading digit is escaped too, so the result is always a valid name.
    """
    out: list[str] = []
    for index, char in enumerate(label):
        valid = bool(_NAME_CHAR.fullmatch(char)) and not (index == 0 and char.isdigit())
        out.append(char if valid else f"_x{ord(char):04X}_")
    return "".join(out)


@lru_cache(maxsize=1024)
def enum_spellings(options: OptionSet) -> Mapping[str, str]:
    """Accepted spellings of each member (plain or escaped, any case) -> the escaped name on the wire.
    Kept per option set (a frozen value: an extended set is a new one), as every enum value written
    or compared looks it up."""
    spellings: dict[str, str] = {}
    for option in options.options:
        escaped = xml_name(option.label)
        for spelling in (option.label, escaped):
            spellings[spelling.lower()] = escaped
    return MappingProxyType(spellings)


def qualified(schema: Schema, name: str) -> str:
    """Type reference for a schema member, preferring the alias as the real services do (``mscrm.x``)."""
    return f"{schema.alias or schema.namespace}.{name}"


def enum_sets(schema: Schema) -> dict[str, OptionSet]:
    """Every distinct option set used by a public property, keyed by its (enum type) name."""
    found: dict[str, OptionSet] = {}
    for entity in schema:
        for prop in entity.public_properties():
            if prop.options is not None:
                found.setdefault(prop.options.name, prop.options)
    return found


def render_csdl(
    schema: Schema,
    *,
    container: str,
    extra_schema_xml: str = "",
    annotations: bool = False,
    enum_types: bool = False,
) -> str:
    """Return the EDMX document for ``schema``.

    ``extra_schema_xml`` is a fragment of CSDL elements (complex types, functions, actions) that the
    service adds to the schema as-is; ``enum_types`` publishes option sets as ``EnumType`` and types
    the properties with them (BC); ``annotations`` adds Core/Capabilities vocabulary annotations
    (Dataverse ``$metadata?annotations=true``).
    """
    root = ET.Element("edmx:Edmx", {"Version": "4.0", "xmlns:edmx": EDMX_NS})
    if annotations:
        for namespace, uri in _VOCABULARY_URIS.items():
            reference = ET.SubElement(root, "edmx:Reference", {"Uri": uri})
            ET.SubElement(reference, "edmx:Include", {"Namespace": namespace})
    services = ET.SubElement(root, "edmx:DataServices")
    schema_attrs = {"Namespace": schema.namespace, "xmlns": EDM_NS}
    if schema.alias:
        schema_attrs["Alias"] = schema.alias
    schema_el = ET.SubElement(services, "Schema", schema_attrs)

    enums = enum_sets(schema) if enum_types else {}
    for entity in schema:
        schema_el.append(_entity_type(schema, entity, enums, annotations))
    for option_set in enums.values():
        schema_el.append(_enum_type(option_set))
    for element in _parse_fragment(extra_schema_xml):
        schema_el.append(element)
    schema_el.append(_container(schema, container, annotations))

    ET.indent(root, space="  ")
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode")


def _entity_type(
    schema: Schema, entity: EntityType, enums: dict[str, OptionSet], annotations: bool
) -> ET.Element:
    element = ET.Element("EntityType", {"Name": entity.name})
    key = ET.SubElement(element, "Key")
    ET.SubElement(key, "PropertyRef", {"Name": entity.key})
    for prop in entity.public_properties():
        element.append(_property(schema, entity, prop, enums, annotations))
    for nav in entity.navigations:
        element.append(_navigation(schema, entity, nav))
    return element


def _property(
    schema: Schema, entity: EntityType, prop: Property, enums: dict[str, OptionSet], annotations: bool
) -> ET.Element:
    enum = prop.options if prop.options is not None and prop.options.name in enums else None
    attrs = {"Name": prop.name, "Type": qualified(schema, enum.name) if enum is not None else str(prop.type)}
    if prop.name == entity.key or not prop.nullable:
        attrs["Nullable"] = "false"
    if prop.max_length is not None and prop.type in (Edm.String, Edm.Binary):
        attrs["MaxLength"] = str(prop.max_length)
    if prop.type == Edm.Decimal:
        if prop.precision is not None:
            attrs["Precision"] = str(prop.precision)
        if prop.scale is not None:
            attrs["Scale"] = str(prop.scale)
    element = ET.Element("Property", attrs)
    if annotations:
        if prop.description:
            ET.SubElement(
                element, "Annotation", {"Term": f"{CORE_VOCABULARY}.Description", "String": prop.description}
            )
        if prop.read_only:
            ET.SubElement(element, "Annotation", {"Term": f"{CORE_VOCABULARY}.Computed", "Bool": "true"})
            permissions = ET.SubElement(element, "Annotation", {"Term": f"{CORE_VOCABULARY}.Permissions"})
            member = ET.SubElement(permissions, "EnumMember")
            member.text = f"{CORE_VOCABULARY}.Permission/Read"
    return element


def _navigation(schema: Schema, entity: EntityType, nav: Navigation) -> ET.Element:
    target = qualified(schema, nav.target)
    attrs = {"Name": nav.name, "Type": f"Collection({target})" if nav.collection else target}
    partner = nav.partner or _find_partner(schema, entity, nav)
    if partner:
        attrs["Partner"] = partner
    element = ET.Element("NavigationProperty", attrs)
    via = entity.property(nav.via)
    target_entity = schema.entity(nav.target)
    if not nav.collection and via is not None and not via.hidden and target_entity is not None:
        ET.SubElement(
            element, "ReferentialConstraint", {"Property": via.name, "ReferencedProperty": target_entity.key}
        )
    return element


def _find_partner(schema: Schema, entity: EntityType, nav: Navigation) -> str | None:
    """The opposite navigation on the target, when the declarations pair them through the same column."""
    target = schema.entity(nav.target)
    if target is None:
        return None
    for other in target.navigations:
        if other.target != entity.name or other.collection == nav.collection or other.via != nav.via:
            continue
        # The single-valued side of a polymorphic lookup names the table it points at.
        single = nav if not nav.collection else other
        if single.discriminator_value in (None, entity.name if nav.collection else target.name):
            return other.name
    return None


def _enum_type(option_set: OptionSet) -> ET.Element:
    element = ET.Element("EnumType", {"Name": option_set.name})
    for option in option_set.options:
        ET.SubElement(element, "Member", {"Name": xml_name(option.label), "Value": str(option.value)})
    return element


def _container(schema: Schema, name: str, annotations: bool) -> ET.Element:
    element = ET.Element("EntityContainer", {"Name": name})
    for entity in schema:
        entity_set = ET.SubElement(
            element, "EntitySet", {"Name": entity.set_name, "EntityType": qualified(schema, entity.name)}
        )
        for nav in entity.navigations:
            target = schema.entity(nav.target)
            if target is not None:
                ET.SubElement(
                    entity_set, "NavigationPropertyBinding", {"Path": nav.name, "Target": target.set_name}
                )
        if annotations and entity.change_tracking:
            tracking = ET.SubElement(
                entity_set, "Annotation", {"Term": f"{CAPABILITIES_VOCABULARY}.ChangeTracking"}
            )
            record = ET.SubElement(tracking, "Record")
            ET.SubElement(record, "PropertyValue", {"Property": "Supported", "Bool": "true"})
    return element


def _parse_fragment(fragment: str) -> list[ET.Element]:
    """Parse the service's extra CSDL elements; tags lose any namespace so they inherit the schema's."""
    if not fragment.strip():
        return []
    try:
        wrapper = ET.fromstring(f"<Fragment>{fragment}</Fragment>")
    except ET.ParseError as exc:
        raise ValueError(f"extra_schema_xml is not well-formed XML: {exc}") from exc
    for element in wrapper.iter():
        if element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return list(wrapper)
