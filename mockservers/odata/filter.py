"""`$filter`: one pipeline from text to SQL, on odata-query's parser and its SQLAlchemy visitor.

1. ``filter_syntax`` parses the text once into a tree (aliases and JSON arrays as nodes, and/or
   chains flattened, depth limits applied);
2. a ``FilterDialect`` (``filter_binding``; each service subclasses it) resolves parameter aliases,
   expands its own functions into ordinary tree nodes, binds every operand to its EDM type with
   Microsoft.OData.Core's promotion rules and applies the service's rules — the result is a
   ``FilterExpression``, kept for the next request with the same text, entity, service, dialect
   options and parameter aliases unless it read the clock or the caller (trees of recent texts are
   kept too: parsing is pure);
3. ``compile_filter`` turns that tree into a SQLAlchemy clause through a property whitelist (only
   declared, non-hidden properties and navigations resolve, never arbitrary attributes of the mapped
   class), with GUIDs compared lower-case, datetimes as naive UTC (the offset is applied, not
   dropped), SQLite-compatible functions, and one join alias per navigation path.
Every failure is an engine error (``QuerySyntaxError``, ``UnknownProperty``, ``UnsupportedQuery``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from dateutil.parser import isoparse
from odata_query import ast
from odata_query import exceptions as oq_exc
from odata_query.sqlalchemy.orm import AstToSqlAlchemyOrmVisitor
from sqlalchemy.orm import aliased

from .database import common_case, text_position
from .errors import QuerySyntaxError, UnknownProperty, UnsupportedQuery
from .filter_binding import Binder, EdmType, FilterDialect, FilterExpression
from .filter_syntax import Junction, parse_filter
from .schema import EntityType, Schema

__all__ = ["Binder", "EdmType", "FilterDialect", "FilterExpression", "FilterVisitor", "compile_filter", "parse_filter"]


def _as_naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


class FilterVisitor(AstToSqlAlchemyOrmVisitor):
    """Turns a bound `$filter` tree into a SQLAlchemy clause for one declared entity."""

    def __init__(self, schema: Schema, entity: EntityType, models: dict[str, type], model: Any = None) -> None:
        self.schema = schema
        self.entity = entity
        self.models = models
        super().__init__(model if model is not None else models[entity.name])
        self.outer_joins: list[tuple[Any, Any]] = []  # (aliased class, relationship attr)
        self._aliases: dict[str, tuple[Any, EntityType]] = {}

    def _type_name(self, entity: EntityType) -> str:
        return f"{self.schema.namespace}.{entity.name}"

    # -- names ------------------------------------------------------------------------------
    def visit_Identifier(self, node: ast.Identifier) -> Any:
        prop = self.entity.property(node.name)
        if (prop is not None and not prop.hidden) or self.entity.navigation(node.name) is not None:
            return getattr(self.root_model, node.name)
        raise UnknownProperty(node.full_name(), self._type_name(self.entity))

    def _resolve_navigation(self, node: ast._Node) -> tuple[Any, EntityType, str]:
        """Resolve a navigation path to an aliased target class (joined once per path)."""
        if isinstance(node, ast.Identifier):
            base, base_entity, base_path, nav_name = self.root_model, self.entity, "", node.name
        elif isinstance(node, ast.Attribute):
            base, base_entity, base_path = self._resolve_navigation(node.owner)
            nav_name = node.attr
        else:
            raise QuerySyntaxError("Unsupported path in $filter.")
        nav = base_entity.navigation(nav_name)
        if nav is None:
            raise UnknownProperty(nav_name, self._type_name(base_entity))
        if nav.collection:
            raise QuerySyntaxError(
                f"The navigation property '{nav_name}' is a collection; use any() or all() to filter on it."
            )
        path = f"{base_path}/{nav_name}"
        if path not in self._aliases:
            target_entity = self.schema.entity(nav.target)
            assert target_entity is not None
            alias: Any = aliased(self.models[nav.target])
            self.outer_joins.append((alias, getattr(base, nav_name)))
            self._aliases[path] = (alias, target_entity)
        alias, target_entity = self._aliases[path]
        return alias, target_entity, path

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        alias, target_entity, _ = self._resolve_navigation(node.owner)
        prop = target_entity.property(node.attr)
        if (prop is not None and not prop.hidden) or target_entity.navigation(node.attr) is not None:
            return getattr(alias, node.attr)
        raise UnknownProperty(node.attr, self._type_name(target_entity))

    def visit_CollectionLambda(self, node: ast.CollectionLambda) -> Any:
        """The binder made the lambda body relative to the collection's entity type."""
        assert isinstance(node.owner, ast.Identifier)
        nav = self.entity.navigation(node.owner.name)
        assert nav is not None and nav.collection
        owner_prop = getattr(self.root_model, nav.name)
        target_entity = self.schema.entity(nav.target)
        assert target_entity is not None
        sub = None
        if node.lambda_:
            sub_visitor = FilterVisitor(self.schema, target_entity, self.models)
            sub = sub_visitor.visit(node.lambda_.expression)
            if sub_visitor.outer_joins:
                raise UnsupportedQuery("Navigation paths inside any()/all() are not supported by the sandbox.")
        if isinstance(node.operator, ast.Any):
            return owner_prop.any(sub)
        return ~owner_prop.any(~sub) if sub is not None else ~owner_prop.any()

    # -- operators --------------------------------------------------------------------------
    def _substr_function(self, field: ast._Node, substr: ast._Node, func: str) -> Any:
        """contains/startswith/endswith; the binder already checked that both arguments are strings."""
        target = self.visit(field)
        if not hasattr(target, func):  # a plain value (contains('abc', name))
            target = sa.literal(target)
        return getattr(target, func)(self.visit(substr))

    def visit_Compare(self, node: ast.Compare) -> Any:
        clause = super().visit_Compare(node)
        # Most rows have no value in a lookup (no parent, no company): an index search for the empty
        # ones would read most of the table and then sort it.
        sides = (node.left, node.right)
        lookups = self.entity.lookup_columns()
        if (isinstance(node.comparator, ast.Eq) and any(isinstance(side, ast.Null) for side in sides)
                and any(isinstance(side, ast.Identifier) and side.name in lookups for side in sides)):
            return common_case(clause)
        return clause

    def visit_Junction(self, node: Junction) -> Any:
        terms = [self.visit(term) for term in node.terms]
        return sa.and_(*terms) if isinstance(node.op, ast.And) else sa.or_(*terms)

    # -- literals ---------------------------------------------------------------------------
    def visit_GUID(self, node: ast.GUID) -> Any:
        return sa.literal(node.val.lower(), sa.String(36))

    def visit_DateTime(self, node: ast.DateTime) -> Any:
        return sa.literal(_as_naive_utc(isoparse(node.val)), sa.DateTime())

    # -- functions the library compiles to something SQLite lacks ---------------------------
    def func_indexof(self, first: ast._Node, second: ast._Node) -> Any:
        return text_position(self.visit(first), self.visit(second)) - 1

    def func_concat(self, *args: ast._Node) -> Any:
        left, right = (self.visit(a) for a in args)
        return left.concat(right) if hasattr(left, "concat") else sa.literal(left).concat(right)

    def func_date(self, field: ast._Node) -> Any:
        return sa.func.date(self.visit(field))


def compile_filter(schema: Schema, entity: EntityType, models: dict[str, type],
                   expression: FilterExpression | str) -> tuple[Any, list]:
    """Compile a prepared `$filter` (or plain standard text) to (where clause, outer joins to add)."""
    if isinstance(expression, str):
        expression = FilterDialect(schema).prepare(expression, entity)
    if expression.entity != entity.name:
        raise ValueError(f"a $filter prepared for {expression.entity} cannot filter {entity.name}")
    visitor = FilterVisitor(schema, entity, models)
    try:
        clause = visitor.visit(expression.tree)
    except (UnknownProperty, QuerySyntaxError, UnsupportedQuery):
        raise
    except oq_exc.ODataException as exc:
        raise UnsupportedQuery(f"The $filter expression is not supported by the sandbox: {exc}") from exc
    except (ValueError, TypeError, AttributeError, NotImplementedError, OverflowError, sa.exc.ArgumentError) as exc:
        raise UnsupportedQuery(f"The $filter expression '{expression.text}' is not supported by the sandbox.") from exc
    if not isinstance(clause, sa.sql.ClauseElement) or isinstance(clause, sa.sql.elements.BindParameter):
        raise QuerySyntaxError("The $filter expression must evaluate to a single boolean value.")
    return clause, visitor.outer_joins
