"""BC's own limits on `$filter` (API v2.0 schema 2.0), checked on the odata-query AST before SQL.

- `or` may only combine conditions on the same field ("The 'OR' operator is not supported on
  distinct fields on an OData filter.");
- `in (…)` and nested functions need `$schemaversion=2.1`;
- lambda operators (`any`/`all`) are ignored: BC drops those conditions instead of refusing them.
"""

from __future__ import annotations

from odata_query import ast
from odata_query.roundtrip import AstToODataVisitor
from odata_query.visitor import NodeTransformer

from ..odata.filter import parse_filter
from .exceptions import BCError


def _fields(node: ast._Node) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Identifier):
            found.add(current.name)
            continue
        if isinstance(current, ast.Attribute):
            found.add(f"{current.owner}/{current.attr}")
            continue
        for value in vars(current).values() if hasattr(current, "__dict__") else ():
            if isinstance(value, ast._Node):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, ast._Node))
    return found


def _walk(node: ast._Node):
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for value in vars(current).values() if hasattr(current, "__dict__") else ():
            if isinstance(value, ast._Node):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, ast._Node))


class _DropLambdas(NodeTransformer):
    def visit_CollectionLambda(self, node: ast.CollectionLambda) -> ast._Node:
        return ast.Boolean("true")


def check_filter(text: str, schema_version: str) -> str:
    """Refuse what BC refuses; return the filter BC actually applies (lambda conditions dropped)."""
    tree = parse_filter(text)
    extended = schema_version == "2.1"
    for node in _walk(tree):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(_fields(node)) > 1:
            raise BCError(400, "BadRequest", "The 'OR' operator is not supported on distinct fields on an OData filter.")
        if isinstance(node, ast.Compare) and isinstance(node.comparator, ast.In) and not extended:
            raise BCError(400, "BadRequest", "The 'in' operator is supported only with $schemaversion=2.1.")
        if isinstance(node, ast.Call) and not extended:
            nested = [a for a in node.args if isinstance(a, ast.Call)]
            if nested:
                raise BCError(400, "BadRequest", "Nested functions in $filter are supported only with $schemaversion=2.1.")
    if any(isinstance(node, ast.CollectionLambda) for node in _walk(tree)):
        return AstToODataVisitor().visit(_DropLambdas().visit(tree))
    return text
