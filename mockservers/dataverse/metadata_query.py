"""Answering `EntityDefinitions` requests with the Web API's metadata query rules.

``$select`` (``MetadataId`` always returned), ``$filter`` on primitive, enum and complex-path
properties (parsed by the engine's odata-query wrapper, evaluated over the definition documents),
``$expand`` of the navigation collections, type-cast segments, and no paging.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odata_query import ast
from odata_query.visitor import NodeVisitor

from mockservers.odata.errors import ODataError, QuerySyntaxError
from mockservers.odata.filter import parse_filter as parse_odata_filter
from mockservers.odata.filter_syntax import Junction
from mockservers.odata.query import split_top_level as split_options
from mockservers.odata.schema import AlternateKey, Edm, EntityType, Property, Schema

from .exceptions import DataverseError
from .metadata import (
    ATTRIBUTE_CLASSES,
    BASE_ATTRIBUTE_FIELDS,
    CRM,
    ENTITY_NAVIGATIONS,
    Relationship,
    attribute_class,
    attribute_definition,
    entity_definition,
    key_definitions,
    many_to_one_relationships,
    metadata_id,
    one_to_many_relationships,
    option_set_definition,
    relationship_definition,
)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?:\((?P<key>.*)\))?$")
_NAMED_KEY = re.compile(r"^(?P<prop>\w+)='(?P<value>(?:[^']|'')*)'$")

# --------------------------------------------------------------------------------------------------
# $filter evaluation over metadata dicts
# --------------------------------------------------------------------------------------------------

_UNSUPPORTED_OPTIONS = ("$top", "$skip", "$orderby", "$count", "$search", "$apply", "$skiptoken")


def parse_filter(text: str) -> ast._Node:
    """Parse ``$filter`` with the engine's odata-query wrapper (enum literals ``ns.Type'Member'`` included)."""
    try:
        return parse_odata_filter(text)
    except ODataError as exc:
        raise DataverseError(400, "0x80060888", exc.message) from exc


class _FilterEvaluator(NodeVisitor):
    """Evaluates a parsed ``$filter`` against one metadata dict (string compares ignore case)."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record

    def visit_Identifier(self, node: ast.Identifier) -> Any:
        if node.namespace:
            raise DataverseError(400, "0x0", f"Unsupported identifier '{node.full_name()}' in $filter.")
        return self.record.get(node.name)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        owner = self.visit(node.owner)
        return owner.get(node.attr) if isinstance(owner, Mapping) else None

    def generic_visit(self, node: ast._Node) -> Any:
        if isinstance(node, ast._Literal):
            try:
                value = node.py_val
            except (ValueError, NotImplementedError) as exc:
                raise DataverseError(400, "0x80060888", f"Invalid literal in $filter: {exc}") from exc
            return str(value) if isinstance(node, ast.GUID) else value
        raise DataverseError(
            400, "0x80060888", f"The {type(node).__name__} expression is not supported in metadata queries."
        )

    def visit_List(self, node: ast.List) -> list[Any]:
        return [self.visit(item) for item in node.val]

    def visit_Junction(self, node: Junction) -> bool:
        if isinstance(node.op, ast.And):
            return all(bool(self.visit(term)) for term in node.terms)
        return any(bool(self.visit(term)) for term in node.terms)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> bool:
        if isinstance(node.op, ast.Not):
            return not self.visit(node.operand)
        raise DataverseError(400, "0x80060888", "Arithmetic is not supported in metadata queries.")

    def visit_Compare(self, node: ast.Compare) -> bool:
        left, right = _comparable(self.visit(node.left)), self.visit(node.right)
        if isinstance(left, Mapping | list):
            raise DataverseError(400, "0x0", "Only primitive and enum properties can be compared in $filter.")
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
            raise DataverseError(400, "0x0", f"Cannot compare {left!r} with {right!r}.") from exc


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
        raise DataverseError(400, "0x80060888", error.message) from error


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
                raise DataverseError(
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
                raise DataverseError(400, "0x80060888", f"Invalid $expand item '{item}'.")
            inner: dict[str, str] = {}
            for option in split_top_level(match.group("inner") or "", ";"):
                key, sep, value = option.partition("=")
                if not sep:
                    raise DataverseError(400, "0x80060888", f"Invalid option '{option}' in $expand.")
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
    ``DataverseError``.
    """

    def __init__(self, schema: Schema, service_root: str) -> None:
        self.schema = schema
        self.service_root = service_root if service_root.endswith("/") else service_root + "/"
        self._entity_ids = {metadata_id("entity", e.name): e for e in schema}

    # -- public ------------------------------------------------------------------------------------

    def execute(self, segments: Sequence[str], options: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        query = QueryOptions.parse(options)
        if not segments:
            raise DataverseError(404, "0x8006088a", "Resource not found for the segment ''.")
        name, key = self._segment(segments[0])
        if name != "EntityDefinitions":
            raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segments[0]}'.")
        if key is None:
            if len(segments) > 1:
                raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segments[1]}'.")
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
            raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
        return match.group("name"), match.group("key")

    def _entity_by_key(self, key: str) -> EntityType:
        lookup = _parse_key(key, "LogicalName")
        if lookup[0] not in ("LogicalName", "MetadataId"):
            raise DataverseError(400, "0x80060888", f"'{lookup[0]}' is not a key of EntityDefinitions.")
        if lookup[0] == "MetadataId":
            entity = self._entity_ids.get(lookup[1].lower())
        else:
            entity = self.schema.entity(lookup[1])
        if entity is None:
            raise DataverseError(
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
        raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segments[0]}'.")

    def _attributes(
        self, entity: EntityType, key: str | None, rest: list[str], base: str, query: QueryOptions
    ) -> dict[str, Any]:
        cast = None
        if rest:
            cast = self._cast(rest[0])
            if len(rest) > 1:
                raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{rest[1]}'.")
            base = f"{base}/{rest[0]}"
        type_name = cast or "AttributeMetadata"
        items = []
        for number, prop in enumerate(entity.public_properties(), start=1):
            cls = attribute_class(entity, prop)
            if cast is None or cast == cls or cast in ATTRIBUTE_CLASSES[cls][0]:
                items.append(_Item(attribute_definition(entity, prop, number), entity, prop))
        return self._keyed_or_collection(base, type_name, items, key, "LogicalName", query)

    @staticmethod
    def _cast(segment: str) -> str:
        prefix = f"{CRM}."
        name = segment[len(prefix) :] if segment.startswith(prefix) else None
        if name not in ATTRIBUTE_CLASSES:
            raise DataverseError(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")
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
        raise DataverseError(404, "0x80040217", f"Could not find a {type_name} with {prop} = '{value}'.")

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
            raise DataverseError(400, "0x80060888", "The query option '$filter' applies to collections only.")
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
            raise DataverseError(400, "0x80060888", "Only $select is supported inside an expanded OptionSet.")
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
    if type_name in ATTRIBUTE_CLASSES:
        chain = (type_name, *ATTRIBUTE_CLASSES[type_name][0])
        fields = set(BASE_ATTRIBUTE_FIELDS)
        navigations: set[str] = set()
        for cls in chain:
            fields.update(ATTRIBUTE_CLASSES[cls][1])
            navigations.update(ATTRIBUTE_CLASSES[cls][2])
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
    relationship = Relationship("s", "a", "aid", "b", "aid", "s", "a")
    return {
        "entity": tuple(entity_definition(sample)),
        "key": tuple(key_definitions(sample)[0]),
        "relationship": tuple(relationship_definition(relationship)),
    }


_SAMPLE_FIELDS = _sample_fields()


def _unknown_property(name: str, type_name: str) -> DataverseError:
    return DataverseError(400, "0x0", f"Could not find a property named '{name}' on type '{CRM}.{type_name}'.")


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
    raise DataverseError(400, "0x80060888", f"Bad key '{key}'.")
