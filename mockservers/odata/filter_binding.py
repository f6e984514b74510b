"""Binding a parsed `$filter` to the declarations, with Microsoft.OData.Core's type rules.

Both services parse `$filter` with Microsoft.OData.Core (ODL), which binds every operand to an EDM
type and refuses operators whose operand types do not promote to one of its signatures, e.g.
"A binary operator with incompatible types was detected. Found operand types 'Edm.Guid' and
'Edm.String' for operator kind 'Equal'." This module reproduces that binder for the tree of
``filter_syntax``: property and literal types, the implicit conversions ODL allows (integers to
wider numbers, numeric literals to ``Edm.Decimal``, ``Edm.Date`` to ``Edm.DateTimeOffset``), the
built-in function signatures, ``in``, lambdas, and the messages ODL uses. A ``FilterDialect``
holds what differs per service (query functions, string literals as enum members, extra rules);
``FilterDialect.prepare`` runs the whole pipeline and returns a ``FilterExpression`` ready for SQL.

The operators and built-in functions are those of the OData URL conventions
(https://docs.oasis-open.org/odata/odata/v4.01/odata-v4.01-part2-url-conventions.html); the parser
and binder are Microsoft.OData.Core's (https://learn.microsoft.com/odata/odatalib/use-uri-parser).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from dateutil.parser import isoparse
from odata_query import ast

from .csdl import enum_spellings, qualified
from .errors import QuerySyntaxError, UnknownProperty, UnsupportedQuery
from .filter_syntax import (
    CACHED_TEXT_LENGTH,
    Alias,
    JsonArray,
    Junction,
    check_limits,
    normalize,
    parse_expression,
    parse_filter,
    rebuild,
    walk,
)
from .schema import EntityType, OptionSet, Schema

BOOLEAN, STRING, GUID = "Edm.Boolean", "Edm.String", "Edm.Guid"
INT32, INT64, SINGLE, DOUBLE, DECIMAL = "Edm.Int32", "Edm.Int64", "Edm.Single", "Edm.Double", "Edm.Decimal"
DATE, DATETIMEOFFSET, TIMEOFDAY, DURATION = "Edm.Date", "Edm.DateTimeOffset", "Edm.TimeOfDay", "Edm.Duration"
NUMERIC = (INT32, INT64, SINGLE, DOUBLE, DECIMAL)

# ODL's relational signatures (eq ne gt ge lt le): both operands promote to one of these.
RELATIONAL = (*NUMERIC, STRING, "Edm.Binary", BOOLEAN, GUID, DATE, DATETIMEOFFSET, DURATION, TIMEOFDAY)
# Arithmetic signatures: (left, right, result).
_ARITHMETIC = [(t, t, t) for t in NUMERIC]
ADDITION = [*_ARITHMETIC, (DATETIMEOFFSET, DURATION, DATETIMEOFFSET), (DURATION, DATETIMEOFFSET, DATETIMEOFFSET),
            (DURATION, DURATION, DURATION), (DATE, DURATION, DATE), (DURATION, DATE, DATE)]
SUBTRACTION = [*_ARITHMETIC, (DATETIMEOFFSET, DURATION, DATETIMEOFFSET), (DURATION, DURATION, DURATION),
               (DATETIMEOFFSET, DATETIMEOFFSET, DURATION), (DATE, DURATION, DATE), (DATE, DATE, DURATION)]

# Implicit conversions (ODL MetadataUtilsCommon.CanConvertPrimitiveTypeTo); ``*`` = literals only.
_WIDER = {
    INT32: {INT64, SINGLE, DOUBLE, DECIMAL},
    INT64: {SINGLE, DOUBLE, DECIMAL},
    SINGLE: {DOUBLE, "*" + DECIMAL},
    DOUBLE: {"*" + DECIMAL},
    DECIMAL: {"*" + DOUBLE},  # the sandbox's reading of an unsuffixed literal such as 1.5 (ODL guesses its type)
    DATE: {DATETIMEOFFSET},
}

_OPERATOR_KIND = {
    ast.Eq: "Equal", ast.NotEq: "NotEqual", ast.Gt: "GreaterThan", ast.GtE: "GreaterThanOrEqual",
    ast.Lt: "LessThan", ast.LtE: "LessThanOrEqual", ast.In: "In", ast.And: "And", ast.Or: "Or",
    ast.Add: "Add", ast.Sub: "Subtract", ast.Mult: "Multiply", ast.Div: "Divide", ast.Mod: "Modulo",
    ast.Not: "Not", ast.USub: "Negate",
}


@dataclass(frozen=True)
class EdmType:
    """The type of a bound operand: a primitive, an enum, an entity or a collection of entities."""

    name: str
    kind: str = "primitive"  # primitive | enum | entity | collection
    options: OptionSet | None = None
    entity: EntityType | None = None


def _p(name: str) -> EdmType:
    return EdmType(name)


# -- built-in functions (ODL BuiltInFunctions): (argument types, nullable flags) per signature --------
@dataclass(frozen=True)
class Signature:
    args: tuple[tuple[str, bool], ...]  # (type, nullable)
    returns: str  # "" = the type of the first argument (round/floor/ceiling)

    def describe(self, name: str) -> str:
        return f"{name}(" + ", ".join(t + (" Nullable=true" if n else "") for t, n in self.args) + ")"


def _sig(returns: str, *args: tuple[str, bool]) -> Signature:
    return Signature(tuple(args), returns)


_S = (STRING, True)
_DTO, _DTO_N = (DATETIMEOFFSET, False), (DATETIMEOFFSET, True)
_DATE_ARGS = [_sig(INT32, _DTO), _sig(INT32, _DTO_N), _sig(INT32, (DATE, False)), _sig(INT32, (DATE, True))]
_TIME_ARGS = [_sig(INT32, _DTO), _sig(INT32, _DTO_N), _sig(INT32, (DURATION, False)), _sig(INT32, (DURATION, True)),
              _sig(INT32, (TIMEOFDAY, False)), _sig(INT32, (TIMEOFDAY, True))]
_MATH = [_sig("", (DOUBLE, False)), _sig("", (DECIMAL, False)), _sig("", (DOUBLE, True)), _sig("", (DECIMAL, True))]
BUILT_IN: dict[str, list[Signature]] = {
    "endswith": [_sig(BOOLEAN, _S, _S)],
    "indexof": [_sig(INT32, _S, _S)],
    "replace": [_sig(STRING, _S, _S, _S)],
    "startswith": [_sig(BOOLEAN, _S, _S)],
    "tolower": [_sig(STRING, _S)],
    "toupper": [_sig(STRING, _S)],
    "trim": [_sig(STRING, _S)],
    "substring": [_sig(STRING, _S, (INT32, a), *(((INT32, b),) if b is not None else ()))
                  for a, b in ((False, None), (True, None), (False, False), (True, False), (False, True), (True, True))],
    "contains": [_sig(BOOLEAN, _S, _S)],
    "concat": [_sig(STRING, _S, _S)],
    "length": [_sig(INT32, _S)],
    "year": _DATE_ARGS, "month": _DATE_ARGS, "day": _DATE_ARGS,
    "hour": _TIME_ARGS, "minute": _TIME_ARGS, "second": _TIME_ARGS,
    "fractionalseconds": [_sig(DECIMAL, _DTO), _sig(DECIMAL, _DTO_N), _sig(DECIMAL, (TIMEOFDAY, False)),
                          _sig(DECIMAL, (TIMEOFDAY, True))],
    "totaloffsetminutes": [_sig(INT32, _DTO), _sig(INT32, _DTO_N)],
    "now": [_sig(DATETIMEOFFSET)], "maxdatetime": [_sig(DATETIMEOFFSET)], "mindatetime": [_sig(DATETIMEOFFSET)],
    "totalseconds": [_sig(DECIMAL, (DURATION, False)), _sig(DECIMAL, (DURATION, True))],
    "date": [_sig(DATE, _DTO), _sig(DATE, _DTO_N)],
    "time": [_sig(TIMEOFDAY, _DTO), _sig(TIMEOFDAY, _DTO_N)],
    "round": _MATH, "floor": _MATH, "ceiling": _MATH,
    "geo.distance": [_sig(DOUBLE, ("Edm.GeographyPoint", True), ("Edm.GeographyPoint", True)),
                     _sig(DOUBLE, ("Edm.GeometryPoint", True), ("Edm.GeometryPoint", True))],
    "geo.length": [_sig(DOUBLE, ("Edm.GeometryLineString", True)), _sig(DOUBLE, ("Edm.GeographyLineString", True))],
    "geo.intersects": [_sig(BOOLEAN, ("Edm.GeometryPoint", True), ("Edm.GeometryPolygon", True)),
                       _sig(BOOLEAN, ("Edm.GeometryPolygon", True), ("Edm.GeometryPoint", True)),
                       _sig(BOOLEAN, ("Edm.GeographyPoint", True), ("Edm.GeographyPolygon", True)),
                       _sig(BOOLEAN, ("Edm.GeographyPolygon", True), ("Edm.GeographyPoint", True))],
}
# What the SQL compiler can evaluate; the other built-ins bind but are refused as not emulated.
SQL_FUNCTIONS = {"contains", "startswith", "endswith", "tolower", "toupper", "length", "trim", "substring", "indexof",
                 "concat", "year", "month", "day", "hour", "minute", "second", "date", "now", "round", "floor",
                 "ceiling"}


def incompatible(left: EdmType | None, right: EdmType | None, kind: str) -> QuerySyntaxError:
    return QuerySyntaxError(
        "A binary operator with incompatible types was detected. Found operand types "
        f"'{_name(left)}' and '{_name(right)}' for operator kind '{kind}'.")


def _name(t: EdmType | None) -> str:
    return t.name if t is not None else "null"


def can_convert(source: EdmType | None, target: str, constant: bool) -> bool:
    """ODL's implicit conversion of a primitive operand (``None`` = the null literal)."""
    if source is None:
        return True
    if source.kind != "primitive":
        return False
    if source.name == target:
        return True
    wider = _WIDER.get(source.name, set())
    return target in wider or (constant and "*" + target in wider)


def unknown_function(name: str) -> QuerySyntaxError:
    return QuerySyntaxError(f"An unknown function with name '{name}' was found. This may also be a function import "
                            "or a key lookup on a navigation property, which is not allowed.")


def cannot_convert(source: EdmType | None, target: str) -> QuerySyntaxError:
    return QuerySyntaxError(f"Expression of type '{_name(source)}' cannot be converted to type '{target}'.")


class Binder:
    """Types every node of a tree against one entity type and applies ODL's conversions."""

    def __init__(self, dialect: FilterDialect, entity: EntityType, range_variable: str | None = None) -> None:
        self.dialect = dialect
        self.schema = dialect.schema
        self.entity = entity
        self.range_variable = range_variable

    def type_name(self, entity: EntityType) -> str:
        return f"{self.schema.namespace}.{entity.name}"

    # -- entry ---------------------------------------------------------------------------------------
    def bind_filter(self, tree: ast._Node) -> ast._Node:
        node, kind = self.bind(tree)
        if kind is not None and kind.name != BOOLEAN:
            raise QuerySyntaxError("The $filter expression must evaluate to a single boolean value.")
        return node

    def bind(self, node: ast._Node) -> tuple[ast._Node, EdmType | None]:
        method = getattr(self, f"bind_{type(node).__name__}", None)
        if method is None:
            if isinstance(node, ast._Literal):
                return self.bind_literal(node)
            raise UnsupportedQuery(f"The {type(node).__name__} expression is not supported in $filter by the sandbox.")
        return method(node)

    # -- names ---------------------------------------------------------------------------------------
    def property_type(self, entity: EntityType, name: str) -> EdmType:
        prop = entity.property(name)
        if prop is not None and not prop.hidden:
            if prop.kind == "Enum" and prop.options is not None:
                return EdmType(qualified(self.schema, prop.options.name), "enum", options=prop.options)
            return _p(str(prop.type))
        nav = entity.navigation(name)
        if nav is not None:
            target = self.schema.entity(nav.target)
            assert target is not None
            if nav.collection:
                return EdmType(f"Collection({self.type_name(target)})", "collection", entity=target)
            return EdmType(self.type_name(target), "entity", entity=target)
        raise UnknownProperty(name, self.type_name(entity))

    def bind_Identifier(self, node: ast.Identifier) -> tuple[ast._Node, EdmType | None]:
        if node.namespace:
            raise UnknownProperty(node.full_name(), self.type_name(self.entity))
        if self.range_variable is not None:
            if node.name == self.range_variable:
                raise UnsupportedQuery("Comparing the lambda variable itself is not supported by the sandbox; "
                                       "compare one of its properties.")
            raise UnsupportedQuery("Properties of the outer entity inside any()/all() are not supported by the "
                                   "sandbox; use the lambda variable.")
        return node, self.property_type(self.entity, node.name)

    def bind_Attribute(self, node: ast.Attribute) -> tuple[ast._Node, EdmType | None]:
        if self.range_variable is not None and node.owner == ast.Identifier(self.range_variable):
            return ast.Identifier(node.attr), self.property_type(self.entity, node.attr)
        if self.range_variable is not None and not _rooted_at(node, self.range_variable):
            raise UnsupportedQuery("Properties of the outer entity inside any()/all() are not supported by the "
                                   "sandbox; use the lambda variable.")
        owner, owner_type = self._owner(node.owner)
        if owner_type is None or owner_type.kind != "entity":
            raise QuerySyntaxError(f"The parent value for a property access of a property '{node.attr}' is not a "
                                   "single value. Property access can only be applied to a single value.")
        assert owner_type.entity is not None
        return ast.Attribute(owner, node.attr), self.property_type(owner_type.entity, node.attr)

    def _owner(self, node: ast._Node) -> tuple[ast._Node, EdmType | None]:
        if self.range_variable is not None and node == ast.Identifier(self.range_variable):
            return node, EdmType(self.type_name(self.entity), "entity", entity=self.entity)
        return self.bind(node)

    # -- literals ------------------------------------------------------------------------------------
    def bind_literal(self, node: ast._Literal) -> tuple[ast._Node, EdmType | None]:
        if isinstance(node, ast.Null):
            return node, None
        if isinstance(node, ast.Integer):
            value = int(node.val)
            if not -(2**63) <= value < 2**63:  # beyond Edm.Int64
                raise QuerySyntaxError(f"The integer literal '{node.val}' is out of range.")
            return node, _p(INT32 if -(2**31) <= value < 2**31 else INT64)
        if isinstance(node, ast.Float):
            try:
                number = float(node.val)
            except ValueError:
                raise QuerySyntaxError(f"Invalid numeric literal '{node.val}'.") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise QuerySyntaxError(f"Invalid numeric literal '{node.val}'.")
            return node, _p(DOUBLE if "e" in node.val.lower() else DECIMAL)
        if isinstance(node, ast.String):
            return node, _p(STRING)
        if isinstance(node, ast.Boolean):
            return node, _p(BOOLEAN)
        if isinstance(node, ast.GUID):
            return ast.GUID(node.val.lower()), _p(GUID)
        if isinstance(node, ast.DateTime):
            try:
                isoparse(node.val)
            except ValueError:
                raise QuerySyntaxError(f"Invalid datetime literal '{node.val}'.") from None
            return node, _p(DATETIMEOFFSET)
        if isinstance(node, ast.Date):
            try:
                date.fromisoformat(node.val)
            except ValueError:
                raise QuerySyntaxError(f"Invalid date literal '{node.val}'.") from None
            return node, _p(DATE)
        if isinstance(node, ast.Time):
            return node, _p(TIMEOFDAY)
        if isinstance(node, ast.Duration):
            try:
                _ = node.py_val
            except (ValueError, OverflowError):
                raise QuerySyntaxError(f"Invalid duration literal '{node.val}'.") from None
            return node, _p(DURATION)
        if isinstance(node, ast.List):
            raise QuerySyntaxError("A list literal is only allowed on the right side of the 'in' operator.")
        raise UnsupportedQuery(f"The literal '{getattr(node, 'val', node)}' is not supported in $filter by the sandbox.")

    def bind_Alias(self, node: Alias) -> tuple[ast._Node, EdmType | None]:
        raise QuerySyntaxError(f"The parameter alias '{node.name}' is not allowed here.")

    # -- operators -----------------------------------------------------------------------------------
    def bind_Junction(self, node: Junction) -> tuple[ast._Node, EdmType | None]:
        kind = _OPERATOR_KIND[type(node.op)]
        terms: list[ast._Node] = []
        left_type: EdmType | None = None
        for index, term in enumerate(node.terms):
            bound, term_type = self.bind(term)
            if index and not (_is_boolean(left_type) and _is_boolean(term_type)):
                raise incompatible(left_type, term_type, kind)
            if index == 0:
                left_type = term_type
            elif len(node.terms) > 1:
                left_type = _p(BOOLEAN)
            terms.append(bound)
        if len(terms) == 1 and not _is_boolean(left_type):
            raise incompatible(left_type, None, kind)
        return Junction(node.op, tuple(terms)), _p(BOOLEAN)

    def bind_UnaryOp(self, node: ast.UnaryOp) -> tuple[ast._Node, EdmType | None]:
        operand, kind = self.bind(node.operand)
        if isinstance(node.op, ast.Not):
            if not _is_boolean(kind):
                raise _unary(kind, "Not")
            return ast.UnaryOp(node.op, operand), _p(BOOLEAN)
        if kind is not None and (kind.kind != "primitive" or kind.name not in (*NUMERIC, DURATION)):
            raise _unary(kind, "Negate")
        return ast.UnaryOp(node.op, operand), kind

    def bind_BinOp(self, node: ast.BinOp) -> tuple[ast._Node, EdmType | None]:
        left, left_type = self.bind(node.left)
        right, right_type = self.bind(node.right)
        kind = _OPERATOR_KIND[type(node.op)]
        signatures = ADDITION if kind == "Add" else SUBTRACTION if kind == "Subtract" else _ARITHMETIC
        for a, b, result in signatures:
            if can_convert(left_type, a, _const(left)) and can_convert(right_type, b, _const(right)):
                return ast.BinOp(node.op, left, right), _p(result)
        raise incompatible(left_type, right_type, kind)

    def bind_Compare(self, node: ast.Compare) -> tuple[ast._Node, EdmType | None]:
        if isinstance(node.comparator, ast.In):
            return self._bind_in(node)
        left, left_type = self.bind(node.left)
        right, right_type = self.bind(node.right)
        kind = _OPERATOR_KIND[type(node.comparator)]
        left, right = self.relational(kind, left, left_type, right, right_type)
        return ast.Compare(node.comparator, left, right), _p(BOOLEAN)

    def relational(self, kind: str, left: ast._Node, left_type: EdmType | None, right: ast._Node,
                   right_type: EdmType | None) -> tuple[ast._Node, ast._Node]:
        """Check a comparison as ODL's TypePromotionUtils does; returns the operands with conversions applied."""
        if left_type is None and right_type is None:
            return left, right
        for t in (left_type, right_type):
            if t is not None and t.kind == "collection":
                raise QuerySyntaxError(f"The operand for a binary operator '{kind}' is not a single value. Binary "
                                       "operators require both operands to be single values.")
        if kind in ("Equal", "NotEqual") and (
                (left_type is None and right_type is not None and right_type.kind in ("entity", "enum"))
                or (right_type is None and left_type is not None and left_type.kind in ("entity", "enum"))):
            return left, right
        if left_type is not None and right_type is not None and left_type.kind == right_type.kind == "entity":
            raise UnsupportedQuery("Comparing two navigation properties is not supported in $filter by the sandbox; "
                                   "compare their lookup values.")
        if left_type is not None and right_type is not None and left_type.kind == right_type.kind == "enum":
            if left_type.name == right_type.name:
                return left, right
            raise incompatible(left_type, right_type, kind)
        if self.dialect.strings_as_enums:
            if left_type is not None and left_type.kind == "enum" and _is_string_literal(right, right_type):
                return left, self.enum_member(left_type, right, right_type, kind)
            if right_type is not None and right_type.kind == "enum" and _is_string_literal(left, left_type):
                return self.enum_member(right_type, left, left_type, kind, flip=True), right
        if any(t is not None and t.kind != "primitive" for t in (left_type, right_type)):
            raise incompatible(left_type, right_type, kind)
        for target in RELATIONAL:
            if can_convert(left_type, target, _const(left)) and can_convert(right_type, target, _const(right)):
                return _converted(left, left_type, target), _converted(right, right_type, target)
        raise incompatible(left_type, right_type, kind)

    def enum_member(self, enum: EdmType, literal: ast._Node, literal_type: EdmType | None, kind: str,
                    flip: bool = False) -> ast._Node:
        """A string literal names an enum member (the spelling BC stores); anything else does not promote."""
        assert enum.options is not None and isinstance(literal, ast.String)
        spelled = enum_spellings(enum.options).get(literal.val.lower())
        if spelled is None:
            raise incompatible(literal_type, enum, kind) if flip else incompatible(enum, literal_type, kind)
        return ast.String(spelled)

    def _bind_in(self, node: ast.Compare) -> tuple[ast._Node, EdmType | None]:
        left, left_type = self.bind(node.left)
        if not isinstance(node.right, ast.List):
            raise QuerySyntaxError("The right operand for the IN operation is not a collection value. IN operations "
                                   "require the left operand to be a single value and the right operand to be a "
                                   "collection value.")
        if left_type is not None and left_type.kind in ("collection", "entity"):
            raise QuerySyntaxError("The left operand for the IN operation is not a single value. IN operations "
                                   "require the left operand to be a single value and the right operand to be a "
                                   "collection value.")
        items: list[Any] = []
        for item in node.right.val:
            bound, item_type = self.bind(item)
            if left_type is not None and left_type.name == GUID and isinstance(bound, ast.String) and _is_guid(
                    bound.val):
                items.append(ast.GUID(str(uuid.UUID(bound.val.strip("{}")))))  # ODL reads the list as JSON
                continue
            try:
                _, converted = self.relational("Equal", left, left_type, bound, item_type)
            except QuerySyntaxError:
                raise QuerySyntaxError(
                    "An instance of InNode can only be created where the item types of the right operand "
                    f"'{_name(item_type)}' and the left operand '{_name(left_type)}' can be compared.") from None
            items.append(converted)
        return ast.Compare(node.comparator, left, ast.List(items)), _p(BOOLEAN)

    # -- functions and lambdas -----------------------------------------------------------------------
    def bind_Call(self, node: ast.Call) -> tuple[ast._Node, EdmType | None]:
        name = node.func.full_name()
        if name not in BUILT_IN:
            return self.dialect.bind_function(self, node)
        if any(isinstance(a, ast.NamedParam) for a in node.args):
            raise unknown_function(name)
        bound = [self.bind(a) for a in node.args]
        for _, kind in bound:
            if kind is not None and kind.kind == "collection":
                raise QuerySyntaxError(f"The argument for an invocation of a function with name '{name}' is not a "
                                       "single value. All arguments for this function must be single values.")
        signatures = BUILT_IN[name]
        for signature in signatures:
            if len(signature.args) == len(bound) and all(
                    can_convert(kind, t, _const(arg)) for (arg, kind), (t, _) in zip(bound, signature.args, strict=True)):
                if name not in SQL_FUNCTIONS:
                    raise UnsupportedQuery(f"The function '{name}' is not supported in $filter by the sandbox.")
                if name == "now" and self.dialect.now is not None:  # the service's clock, not the database's
                    self.dialect.varies()
                    return ast.DateTime(_instant(self.dialect.now())), _p(DATETIMEOFFSET)
                returns = signature.returns or signature.args[0][0]
                return ast.Call(node.func, [arg for arg, _ in bound]), _p(returns)
        described = "; ".join(s.describe(name) for s in signatures)
        raise QuerySyntaxError(f"No function signature for the function with name '{name}' matches the specified "
                               f"arguments. The function signatures considered are: {described}.")

    def bind_NamedParam(self, node: ast.NamedParam) -> tuple[ast._Node, EdmType | None]:
        raise QuerySyntaxError(f"A named parameter '{node.name.name}' is only allowed in a function call.")

    def bind_CollectionLambda(self, node: ast.CollectionLambda) -> tuple[ast._Node, EdmType | None]:
        owner, owner_type = self._owner(node.owner)
        if owner_type is None or owner_type.kind != "collection":
            raise QuerySyntaxError("Any/All may only be used following a collection.")
        if not isinstance(owner, ast.Identifier) or self.range_variable is not None:
            raise UnsupportedQuery("any()/all() is supported by the sandbox on the collection-valued navigation "
                                   "properties of the queried table only.")
        if node.lambda_ is None:
            return ast.CollectionLambda(owner, node.operator, None), _p(BOOLEAN)
        assert owner_type.entity is not None
        inner = Binder(self.dialect, owner_type.entity, range_variable=node.lambda_.identifier.name)
        body, body_type = inner.bind(node.lambda_.expression)
        if not _is_boolean(body_type):
            raise QuerySyntaxError("The Any/All query expression must evaluate to a single boolean value.")
        return ast.CollectionLambda(owner, node.operator, ast.Lambda(node.lambda_.identifier, body)), _p(BOOLEAN)


def _rooted_at(node: ast._Node, variable: str) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.owner
    return node == ast.Identifier(variable)


def _unary(kind: EdmType | None, operator: str) -> QuerySyntaxError:
    return QuerySyntaxError("A unary operator with an incompatible type was detected. Found operand type "
                            f"'{_name(kind)}' for operator kind '{operator}'.")


def _is_boolean(kind: EdmType | None) -> bool:
    return kind is None or kind.name == BOOLEAN


def _const(node: ast._Node) -> bool:
    return isinstance(node, ast._Literal) or (isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast._Literal))


def _is_string_literal(node: ast._Node, kind: EdmType | None) -> bool:
    return isinstance(node, ast.String) and kind is not None and kind.name == STRING


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text.strip("{}"))
    except ValueError:
        return False
    return True


def _instant(value: datetime) -> str:
    """A point in time as an Edm.DateTimeOffset literal in UTC (a naive value is UTC already), at the
    millisecond precision rows are stamped with: a row written at this instant is not before it."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _converted(node: ast._Node, kind: EdmType | None, target: str) -> ast._Node:
    """ODL's ConvertNode for the one conversion SQL needs spelled out: a date literal as a point in time."""
    if kind is not None and kind.name == DATE and target == DATETIMEOFFSET and isinstance(node, ast.Date):
        return ast.DateTime(f"{node.val}T00:00:00Z")
    return node


# -- the pipeline ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterExpression:
    """A `$filter` parsed, resolved, bound and checked for one entity type: ready to compile to SQL."""

    text: str
    entity: str
    tree: ast._Node


class _Prepared:
    """A bounded, thread-safe LRU of prepared expressions."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, FilterExpression] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> FilterExpression | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, expression: FilterExpression) -> None:
        with self._lock:
            self._items[key] = expression
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


PREPARED = _Prepared(1024)


class FilterDialect:
    """Standard OData v4 `$filter` as Microsoft.OData.Core binds it; each service subclasses it.

    Hooks, in pipeline order: ``resolve_aliases`` (parameter aliases, as ODL: an alias without a
    value is null), ``before_binding`` (service rewrites on the raw tree), binding with
    ``bind_function`` for names that are not built-in, ``after_binding`` (service rules).

    ``now`` is the service's clock: ``now()`` is that instant (without it, the database's time).

    Prepared expressions are cached (``PREPARED``), keyed by everything that decides the result: the
    schema, the dialect's class and ``settings()``, the entity, the text and the parameter aliases.
    What else a dialect reads while preparing (the clock, the caller) must call ``varies()``: such
    an expression is prepared anew for every request. Errors are never cached.
    """

    strings_as_enums = False  # a string literal may stand for an enum member (ODL's StringAsEnumResolver)

    def __init__(self, schema: Schema, aliases: Mapping[str, str] | None = None, *,
                 now: Callable[[], datetime] | None = None) -> None:
        self.schema = schema
        self.aliases = dict(aliases or {})
        self.now = now
        self._varies = False

    def prepare(self, text: str, entity: EntityType) -> FilterExpression:
        key = self._cache_key(text, entity)
        if key is not None and (cached := PREPARED.get(key)) is not None:
            return cached
        self._varies = False
        tree = parse_filter(text)
        tree = self.resolve_aliases(tree)
        tree = self.before_binding(tree, entity)
        tree = Binder(self, entity).bind_filter(tree)
        self.after_binding(tree, entity)
        expression = FilterExpression(text, entity.name, tree)
        if key is not None and not self._varies:
            PREPARED.put(key, expression)
        return expression

    def _cache_key(self, text: str, entity: EntityType) -> Hashable | None:
        if len(text) > CACHED_TEXT_LENGTH:
            return None
        return (self.schema, type(self), self.settings(), entity.name, text, tuple(sorted(self.aliases.items())))

    def settings(self) -> tuple[Hashable, ...]:
        """This dialect's options that decide how a text binds (besides the aliases); none here."""
        return ()

    def varies(self) -> None:
        """The expression being prepared depends on the request itself (the clock, the caller)."""
        self._varies = True

    def prepare_options(self, opts: Any, entity: EntityType) -> None:
        """Replace the `$filter` text of ``opts`` and of its `$expand` levels by prepared expressions."""
        if isinstance(opts.filter, str):
            opts.filter = self.prepare(opts.filter, entity)
        for item in opts.expand:
            nav = entity.navigation(item.name)
            target = self.schema.entity(nav.target) if nav is not None else None
            if target is not None:
                self.prepare_options(item.options, target)

    # -- hooks -------------------------------------------------------------------------------------
    def resolve_aliases(self, tree: ast._Node) -> ast._Node:
        if not any(isinstance(n, Alias) for n in walk(tree)):
            return tree
        values: dict[str, ast._Node] = {}

        def value(name: str, seen: tuple[str, ...]) -> ast._Node:
            if name in seen:
                raise QuerySyntaxError("Recursion depth exceeded allowed limit.")
            if name not in values:
                text = self.aliases.get(name)
                parsed = parse_expression(text) if text is not None and text.strip() else ast.Null()
                values[name] = substitute(parsed, lambda alias: value(alias.name, (*seen, name)))
            return values[name]

        resolved = normalize(substitute(tree, lambda alias: value(alias.name, ())))
        check_limits(resolved)
        return resolved

    def before_binding(self, tree: ast._Node, entity: EntityType) -> ast._Node:
        return tree

    def bind_function(self, binder: Binder, node: ast.Call) -> tuple[ast._Node, EdmType | None]:
        raise unknown_function(node.func.full_name())

    def after_binding(self, tree: ast._Node, entity: EntityType) -> None:
        return None


def substitute(tree: ast._Node, replace: Any) -> ast._Node:
    """The tree with every ``Alias`` node replaced by ``replace(alias)`` (iterative, bottom-up)."""
    return rebuild(tree, lambda node: replace(node) if isinstance(node, Alias) else None)


__all__ = ["Binder", "EdmType", "FilterDialect", "FilterExpression", "JsonArray", "can_convert", "cannot_convert",
           "incompatible", "unknown_function"]
