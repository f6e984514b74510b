"""The Dataverse `$filter` dialect: query functions and parameter aliases, on the parsed tree.

Dataverse adds more than 60 query functions to OData, called by their fully qualified name with
named parameters, e.g. ``Microsoft.Dynamics.CRM.In(PropertyName='statecode',PropertyValues=["0","1"])``
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/filter-rows#dataverse-query-functions).
``DataverseFilters`` binds their parameters against the function declarations (``PropertyName``
and ``PropertyValue`` are strings or integers, ``PropertyValues`` a collection of strings), then
expands each call into ordinary comparisons typed by the property's declaration (``x in (…)``,
ranges computed from the server clock in UTC), which the engine then binds like any other filter.
``not`` may not wrap a query function, as Dataverse says
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/use-web-api-functions).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from dateutil.parser import isoparse
from odata_query import ast

from ..odata.errors import QuerySyntaxError, UnknownProperty, UnsupportedQuery
from ..odata.filter import Binder, EdmType, FilterDialect
from ..odata.filter_binding import cannot_convert, unknown_function
from ..odata.filter_syntax import JsonArray, Junction, walk
from ..odata.schema import Edm, EntityType, Property, Schema

_NAMESPACE = ("Microsoft", "Dynamics", "CRM")
_PREFIX = "Microsoft.Dynamics.CRM."

_DATE_RANGES = ("Today", "Yesterday", "Tomorrow", "Last7Days", "Next7Days", "ThisWeek", "LastWeek", "NextWeek",
                "ThisMonth", "LastMonth", "NextMonth", "ThisYear", "LastYear", "NextYear")
_DAY_VALUE = ("On", "OnOrAfter", "OnOrBefore")
_COUNTED = tuple(f"{kind}X{unit}" for kind in ("Last", "Next") for unit in ("Hours", "Days", "Weeks", "Months", "Years")) + \
    tuple(f"OlderThanX{unit}" for unit in ("Minutes", "Hours", "Days", "Weeks", "Months", "Years"))
_IDS = ("EqualUserId", "NotEqualUserId", "EqualBusinessId", "NotEqualBusinessId")
_LISTS = ("In", "NotIn", "Between", "NotBetween")
# Declared by Dataverse but not emulated (fiscal periods, hierarchies, choices columns, languages, teams).
_NOT_EMULATED = (
    "InFiscalPeriod", "InFiscalPeriodAndYear", "InFiscalYear", "InOrAfterFiscalPeriodAndYear",
    "InOrBeforeFiscalPeriodAndYear", "LastFiscalPeriod", "LastFiscalYear", "LastXFiscalPeriods", "LastXFiscalYears",
    "NextFiscalPeriod", "NextFiscalYear", "NextXFiscalPeriods", "NextXFiscalYears", "ThisFiscalPeriod",
    "ThisFiscalYear", "Above", "AboveOrEqual", "EqualUserOrUserHierarchy", "EqualUserOrUserHierarchyAndTeams",
    "EqualUserOrUserTeams", "EqualUserTeams", "NotUnder", "Under", "UnderOrEqual", "ContainValues",
    "DoesNotContainValues", "EqualUserLanguage", "Contains",
)
# The parameters each function declares, with their EDM types.
_PARAMETERS: dict[str, dict[str, str]] = {
    **{name: {"PropertyName": "Edm.String", "PropertyValues": "Collection(Edm.String)"} for name in _LISTS},
    **{name: {"PropertyName": "Edm.String"} for name in (*_IDS, *_DATE_RANGES)},
    **{name: {"PropertyName": "Edm.String", "PropertyValue": "Edm.String"} for name in _DAY_VALUE},
    **{name: {"PropertyName": "Edm.String", "PropertyValue": "Edm.Int32"} for name in _COUNTED},
}


def orderby_with_aliases(text: str, aliases: Mapping[str, str]) -> str:
    """`$orderby=@p1 desc&@p1=revenue`: each alias stands for a property name (quoted or not)."""
    def value(match: re.Match) -> str:
        if match.group(0) not in aliases:
            raise QuerySyntaxError(f"The parameter alias '{match.group(0)}' was not found in the request.")
        return aliases[match.group(0)].strip().strip("'")

    return re.sub(r"@[A-Za-z_]\w*", value, text)


class DataverseFilters(FilterDialect):
    """Standard OData plus the Dataverse query functions, for one request (aliases, caller, clock)."""

    def __init__(self, schema: Schema, aliases: Mapping[str, str] | None = None, *, now: Callable[[], datetime],
                 user_id: str | None, business_unit_id: str | None) -> None:
        super().__init__(schema, aliases, now=now)
        self.user_id = user_id
        self.business_unit_id = business_unit_id

    def before_binding(self, tree: ast._Node, entity: EntityType) -> ast._Node:
        for node in walk(tree):
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and any(
                    _is_query_function(inner) for inner in walk(node.operand)):
                raise QuerySyntaxError("Not operator along with the Custom Named Condition operators is not allowed")
        return tree

    # -- binding -------------------------------------------------------------------------------------
    def bind_function(self, binder: Binder, node: ast.Call) -> tuple[ast._Node, EdmType | None]:
        full_name = node.func.full_name()
        name = node.func.name
        if node.func.namespace != _NAMESPACE or (name not in _PARAMETERS and name not in _NOT_EMULATED):
            raise unknown_function(full_name)
        if name in _NOT_EMULATED:
            raise UnsupportedQuery(f"The query function '{full_name}' is not supported by the sandbox.")
        given = {a.name.name: a.param for a in node.args if isinstance(a, ast.NamedParam)}
        declared = _PARAMETERS[name]
        if len(given) != len(node.args) or set(given) != set(declared):
            names = ",".join(a.name.name if isinstance(a, ast.NamedParam) else "" for a in node.args)
            raise QuerySyntaxError(f"Could not find a function named '{full_name}' with parameters '{names}'.")
        for param, expected in declared.items():
            given[param] = self._parameter(binder, given[param], expected)
        return binder.bind(self.expand(name, given, binder))

    @staticmethod
    def _parameter(binder: Binder, value: ast._Node, expected: str) -> ast._Node:
        """ODL converts each argument to the declared parameter type, or refuses it."""
        if expected == "Collection(Edm.String)":
            if isinstance(value, JsonArray):
                return value
        elif expected == "Edm.String":
            if isinstance(value, ast.String):
                return value
            if isinstance(value, ast.Date):  # PropertyValue=2024-01-01 for On/OnOrAfter/OnOrBefore
                return ast.String(value.val)
        elif isinstance(value, ast.Integer) and -(2**31) <= int(value.val) < 2**31:
            return value
        raise cannot_convert(EdmType(_type_name(binder, value)), expected)

    # -- expansion into standard nodes ---------------------------------------------------------------
    def expand(self, fn: str, args: dict[str, ast._Node], binder: Binder) -> ast._Node:
        prop = self._property(args["PropertyName"], binder.entity)
        variable = binder.range_variable  # inside any()/all() the column belongs to the lambda variable
        column: ast._Node = ast.Identifier(prop.name) if variable is None else ast.Attribute(
            ast.Identifier(variable), prop.name)
        if fn in _LISTS:
            values: list[Any] = [self._literal(prop, v) for v in _items(args["PropertyValues"])]
            if not values:
                raise QuerySyntaxError("The PropertyValues parameter must be a non-empty array.")
            if fn in ("In", "NotIn"):
                expr: ast._Node = ast.Compare(ast.In(), column, ast.List(values))
                return expr if fn == "In" else ast.UnaryOp(ast.Not(), expr)
            if len(values) != 2:
                raise QuerySyntaxError(f"{fn} expects exactly two PropertyValues.")
            lo, hi = values
            if fn == "Between":
                return Junction(ast.And(), (ast.Compare(ast.GtE(), column, lo), ast.Compare(ast.LtE(), column, hi)))
            return Junction(ast.Or(), (ast.Compare(ast.Lt(), column, lo), ast.Compare(ast.Gt(), column, hi)))
        if fn in _IDS:
            self.varies()  # the caller's ids: not cached
            value = self.user_id if "User" in fn else self.business_unit_id
            comparator = ast.NotEq() if fn.startswith("Not") else ast.Eq()
            return ast.Compare(comparator, column, ast.GUID(value) if value else ast.Null())
        return self._date_function(fn, prop, column, args.get("PropertyValue"))

    def _property(self, name_node: ast._Node, entity: EntityType) -> Property:
        name = name_node.val if isinstance(name_node, ast.String) else ""
        prop = entity.property(name)
        if prop is None or prop.hidden:  # a lookup may be named by its column (ownerid for _ownerid_value)
            prop = next((p for p in entity.properties if p.lookup == name and not p.hidden), None)
        if prop is None:
            raise UnknownProperty(name, f"{self.schema.namespace}.{entity.name}")
        return prop

    @staticmethod
    def _literal(prop: Property, value: ast._Node) -> ast._Node:
        """A `PropertyValues` item as a literal of the property's type (the values are JSON strings)."""
        if isinstance(value, ast.Null):
            return value
        text = value.val if isinstance(value, ast.String | ast.Integer | ast.Float | ast.Boolean) else str(value)
        invalid = QuerySyntaxError(f"The value '{text}' is not valid for '{prop.name}'.")
        if prop.type in (Edm.Int32, Edm.Int64):
            if not re.fullmatch(r"-?\d+", text):
                raise invalid
            return ast.Integer(text)
        if prop.type in (Edm.Decimal, Edm.Double):
            if not re.fullmatch(r"-?\d+(\.\d+)?", text):
                raise invalid
            return ast.Float(text) if "." in text else ast.Integer(text)
        if prop.type is Edm.Boolean:
            if text.lower() not in ("true", "false", "1", "0"):
                raise invalid
            return ast.Boolean("true" if text.lower() in ("true", "1") else "false")
        if prop.type is Edm.Guid:
            try:
                return ast.GUID(str(uuid.UUID(text.strip("{}"))))
            except ValueError:
                raise invalid from None
        if prop.type in (Edm.DateTimeOffset, Edm.Date):
            try:
                parsed = isoparse(text)
            except ValueError:
                raise invalid from None
            if prop.type is Edm.Date or "T" not in text:
                return ast.Date(parsed.date().isoformat())
            return ast.DateTime(text)
        return ast.String(text)

    def _date_function(self, fn: str, prop: Property, column: ast._Node, value: ast._Node | None) -> ast._Node:
        if prop.type not in (Edm.DateTimeOffset, Edm.Date):
            raise QuerySyntaxError(f"The query function {fn} requires a date and time column.")
        if fn not in _DAY_VALUE:
            self.varies()  # ranges from the clock's today: not cached
        assert self.now is not None
        now = self.now().replace(tzinfo=None)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day = timedelta(days=1)
        month = today.replace(day=1)
        year = today.replace(month=1, day=1)
        week = today - today.weekday() * day
        fixed: dict[str, tuple[datetime | None, datetime | None]] = {
            "Today": (today, today + day),
            "Yesterday": (today - day, today),
            "Tomorrow": (today + day, today + 2 * day),
            "Last7Days": (today - 7 * day, None),
            "Next7Days": (now, today + 8 * day),
            "ThisMonth": (month, _add_months(month, 1)),
            "LastMonth": (_add_months(month, -1), month),
            "NextMonth": (_add_months(month, 1), _add_months(month, 2)),
            "ThisYear": (year, year.replace(year=year.year + 1)),
            "LastYear": (year.replace(year=year.year - 1), year),
            "NextYear": (year.replace(year=year.year + 1), year.replace(year=year.year + 2)),
            "ThisWeek": (week, week + 7 * day),
            "LastWeek": (week - 7 * day, week),
            "NextWeek": (week + 7 * day, week + 14 * day),
        }
        if fn in fixed:
            return _range(prop, column, *fixed[fn])
        if fn in _DAY_VALUE:
            assert isinstance(value, ast.String)
            try:
                day_start = datetime.fromisoformat(value.val[:10])
            except ValueError:
                raise QuerySyntaxError(f"The value '{value.val}' is not a valid date.") from None
            if fn == "On":
                return _range(prop, column, day_start, day_start + day)
            if fn == "OnOrAfter":
                return _range(prop, column, day_start, None)
            return _range(prop, column, None, day_start + day)
        assert isinstance(value, ast.Integer)
        n = int(value.val)
        if n < 0:
            raise QuerySyntaxError(f"{fn} expects a non-negative integer PropertyValue.")
        m = re.fullmatch(r"(Last|Next|OlderThan)X(Minutes|Hours|Days|Weeks|Months|Years)", fn)
        assert m is not None
        kind, unit = m.groups()
        try:
            if unit in ("Months", "Years"):
                months = n * (12 if unit == "Years" else 1)
                back, forward = _add_months(today, -months), _add_months(today, months)
            else:
                delta = {"Minutes": timedelta(minutes=n), "Hours": timedelta(hours=n), "Days": n * day,
                         "Weeks": 7 * n * day}[unit]
                base = now if unit in ("Minutes", "Hours") else today
                back, forward = base - delta, base + delta + (day if unit in ("Days", "Weeks") else timedelta())
        except (OverflowError, ValueError):
            raise QuerySyntaxError(f"The value '{n}' of PropertyValue is out of range for {fn}.") from None
        if kind == "Last":  # up to and including now
            return _range(prop, column, back, None)
        if kind == "Next":
            return _range(prop, column, now, forward)
        return _range(prop, column, None, back)


def _is_query_function(node: ast._Node) -> bool:
    return isinstance(node, ast.Call) and node.func.namespace == _NAMESPACE


def _type_name(binder: Binder, node: ast._Node) -> str:
    if isinstance(node, ast.List):
        return "Collection(Edm.String)" if all(isinstance(v, ast.String) for v in node.val) else "Collection"
    _, kind = binder.bind(node)
    return kind.name if kind is not None else "null"


def _items(node: ast._Node) -> list[ast._Node]:
    return list(node.val) if isinstance(node, ast.List) else []


def _range(prop: Property, column: ast._Node, lo: datetime | None, hi: datetime | None) -> ast._Node:
    terms: list[ast._Node] = []
    if lo is not None:
        terms.append(ast.Compare(ast.GtE(), column, _moment(prop, lo)))
    if hi is not None:
        terms.append(ast.Compare(ast.Lt(), column, _moment(prop, hi)))
    return terms[0] if len(terms) == 1 else Junction(ast.And(), tuple(terms))


def _moment(prop: Property, value: datetime) -> ast._Node:
    if prop.type is Edm.Date:
        return ast.Date(date(value.year, value.month, value.day).isoformat())
    # millisecond precision: the store keeps milliseconds, so a bound at "now" must not round down
    return ast.DateTime(value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z")


def _add_months(value: datetime, months: int) -> datetime:
    month_index = value.month - 1 + months
    year = value.year + month_index // 12
    return value.replace(year=year, month=month_index % 12 + 1, day=1)


__all__ = ["DataverseFilters", "orderby_with_aliases"]
