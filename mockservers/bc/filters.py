"""The Business Central `$filter` dialect (API v2.0), on the parsed tree.

BC binds `$filter` with Microsoft.OData.Core like any OData service, with string literals standing
for enum members (``blocked eq ' '``), then translates it into AL table filters, which is where its
own limits come from
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/odata-known-limitations):
- `or` may only combine conditions on the same field ("The 'OR' operator is not supported on
  distinct fields on an OData filter.");
- `in (…)` and nested functions need `$schemaversion=2.1`
  (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/webservices/use-filter-expressions-in-odata-uris);
- lambda operators (`any`/`all`) are ignored: BC drops those conditions instead of refusing them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from datetime import datetime

from odata_query import ast

from ..odata.filter import FilterDialect
from ..odata.filter_syntax import Junction, normalize, rebuild, walk
from ..odata.schema import EntityType, Schema
from .exceptions import BCError


def _fields(node: ast._Node) -> set[str]:
    """The properties (or navigation paths) a condition reads."""
    found: set[str] = set()
    for current in walk(node):
        if isinstance(current, ast.Identifier) and not current.namespace:
            found.add(current.name)
        elif isinstance(current, ast.Attribute):
            found.add(f"{current.owner}/{current.attr}")
    return found


class BCFilters(FilterDialect):
    """Standard OData with BC's enum literals and its AL-filter rules, for one request."""

    strings_as_enums = True

    def __init__(self, schema: Schema, schema_version: str = "2.0", aliases: Mapping[str, str] | None = None, *,
                 now: Callable[[], datetime] | None = None) -> None:
        super().__init__(schema, aliases, now=now)
        self.extended = schema_version == "2.1"

    def settings(self) -> tuple[Hashable, ...]:
        return (self.extended,)

    def before_binding(self, tree: ast._Node, entity: EntityType) -> ast._Node:
        """Lambda conditions are dropped before anything looks at them, as BC does."""
        if not any(isinstance(node, ast.CollectionLambda) for node in walk(tree)):
            return tree
        dropped = rebuild(tree, lambda node: ast.Boolean("true") if isinstance(node, ast.CollectionLambda) else None)
        return normalize(dropped)

    def after_binding(self, tree: ast._Node, entity: EntityType) -> None:
        for node in walk(tree):
            if isinstance(node, Junction) and isinstance(node.op, ast.Or) and len(_fields(node)) > 1:
                raise BCError(400, "BadRequest",
                              "The 'OR' operator is not supported on distinct fields on an OData filter.")
            if self.extended:
                continue
            if isinstance(node, ast.Compare) and isinstance(node.comparator, ast.In):
                raise BCError(400, "BadRequest", "The 'in' operator is supported only with $schemaversion=2.1.")
            if isinstance(node, ast.Call) and any(isinstance(a, ast.Call) for a in node.args):
                raise BCError(400, "BadRequest",
                              "Nested functions in $filter are supported only with $schemaversion=2.1.")
