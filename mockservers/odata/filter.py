"""`$filter` via odata-query, wrapped so it is safe and speaks both services' dialects.

What the wrapper adds to the library (see reference/peers-and-libraries.md §1.6):
- keyword-prefix fix: identifiers such as ``allowemail`` or ``nullcount`` lex as identifiers;
- a property whitelist: only declared, non-hidden properties and navigations resolve, never
  arbitrary attributes of the mapped class;
- GUID literals compare lower-case (GUIDs are stored lower-case strings), datetime literals are
  converted to naive UTC (the offset is not dropped), SQLite-incompatible functions remapped;
- navigation paths join through an alias per path (two lookups to the same table do not clash);
- every failure becomes ``QuerySyntaxError`` / ``UnknownProperty``, never a server error.
Dialect extensions (Dataverse query functions, parameter aliases) are rewritten to standard OData
text by ``mockservers.odata.functions`` before this module parses.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from dateutil.parser import isoparse
from odata_query import ast, utils
from odata_query import exceptions as oq_exc
from odata_query.grammar import ODataLexer, ODataParser
from odata_query.sqlalchemy.orm import AstToSqlAlchemyOrmVisitor
from sly.lex import Token
from sqlalchemy.orm import aliased

from .csdl import enum_spellings
from .errors import QuerySyntaxError, UnknownProperty
from .schema import EntityType, Schema

logging.getLogger("odata_query").setLevel(logging.ERROR)


class _Lexer(ODataLexer):
    """The library lexer with word boundaries on keyword-like literals (``allowemail`` bug)."""

    tokens = ODataLexer.tokens

    @_(r"(?:true|false)\b")  # noqa: F821 - SLY injects `_`
    def BOOLEAN(self, t):
        t.value = ast.Boolean(t.value)
        return t

    @_(r"null\b")  # noqa: F821
    def NULL(self, t):
        t.value = ast.Null()
        return t

    @_(r"any\b")  # noqa: F821
    def ANY(self, t):
        t.value = ast.Any()
        return t

    @_(r"all\b")  # noqa: F821
    def ALL(self, t):
        t.value = ast.All()
        return t


_parser = ODataParser()


def _unqualify_enum_literals(tokens: list[Token]) -> list[Token]:
    """`Namespace.EnumType'Member'` is an OData enum literal; the library lexes it as an identifier
    followed by a string, so drop the type name and compare the member name."""
    kept = []
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        is_type_prefix = (
            token.type == "ODATA_IDENTIFIER"
            and token.value.namespace
            and following is not None
            and following.type == "STRING"
            and following.index == token.index + len(token.value.full_name())
        )
        if not is_type_prefix:
            kept.append(token)
    return kept


def _single_item_lists(items: list[Token]) -> list[Token]:
    """`x in ('a')` is standard OData; the library's grammar only takes `('a',)`: add the comma."""
    closes: set[int] = set()
    for i, tok in enumerate(items[:-1]):
        if tok.type != "IN" or items[i + 1].type != "(":
            continue
        depth, has_comma = 0, False
        for j in range(i + 1, len(items)):
            kind = items[j].type
            depth += kind == "("
            depth -= kind == ")"
            has_comma = has_comma or (kind == "," and depth == 1)
            if depth == 0:
                if not has_comma:
                    closes.add(j)
                break
    out: list[Token] = []
    for j, tok in enumerate(items):
        if j in closes:
            comma = Token()
            comma.type = comma.value = ","
            comma.lineno, comma.index = tok.lineno, tok.index
            out.append(comma)
        out.append(tok)
    return out


def parse_filter(text: str) -> ast._Node:
    """Parse standard OData `$filter` text into the library's AST."""
    if not text or not text.strip():
        raise QuerySyntaxError("The $filter expression is empty.")
    try:
        tokens = _unqualify_enum_literals(list(_Lexer().tokenize(text)))
        return _parser.parse(iter(_single_item_lists(tokens)))
    except oq_exc.ODataException as exc:
        raise QuerySyntaxError(f"Syntax error in $filter: {exc}") from exc
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise QuerySyntaxError(f"Syntax error in $filter '{text}'.") from exc


def _as_naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


class FilterVisitor(AstToSqlAlchemyOrmVisitor):
    """Turns a parsed `$filter` into a SQLAlchemy clause for one declared entity."""

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
        if node.namespace:
            raise UnknownProperty(node.full_name(), self._type_name(self.entity))
        prop = self.entity.property(node.name)
        if prop is not None and not prop.hidden:
            return getattr(self.root_model, node.name)
        if self.entity.navigation(node.name) is not None:
            return getattr(self.root_model, node.name)
        raise UnknownProperty(node.name, self._type_name(self.entity))

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
            alias = aliased(self.models[nav.target])
            self.outer_joins.append((alias, getattr(base, nav_name)))
            self._aliases[path] = (alias, target_entity)
        alias, target_entity = self._aliases[path]
        return alias, target_entity, path

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        alias, target_entity, _ = self._resolve_navigation(node.owner)
        prop = target_entity.property(node.attr)
        if prop is None or prop.hidden:
            if target_entity.navigation(node.attr) is not None:
                return getattr(alias, node.attr)
            raise UnknownProperty(node.attr, self._type_name(target_entity))
        return getattr(alias, node.attr)

    def visit_CollectionLambda(self, node: ast.CollectionLambda) -> Any:
        if not isinstance(node.owner, ast.Identifier):
            raise QuerySyntaxError("any()/all() is supported on collection navigation properties only.")
        nav = self.entity.navigation(node.owner.name)
        if nav is None or not nav.collection:
            raise QuerySyntaxError(f"'{node.owner.name}' is not a collection-valued navigation property.")
        owner_prop = getattr(self.root_model, nav.name)
        target_entity = self.schema.entity(nav.target)
        assert target_entity is not None
        sub = None
        if node.lambda_:
            sub_ast = utils.expression_relative_to_identifier(node.lambda_.identifier, node.lambda_.expression)
            sub_visitor = FilterVisitor(self.schema, target_entity, self.models)
            sub = sub_visitor.visit(sub_ast)
            if sub_visitor.outer_joins:
                raise QuerySyntaxError("Navigation paths inside any()/all() are not supported.")
        if isinstance(node.operator, ast.Any):
            return owner_prop.any(sub)
        return ~owner_prop.any(~sub) if sub is not None else ~owner_prop.any()

    def visit_Compare(self, node: ast.Compare) -> Any:
        return super().visit_Compare(self._enum_literals(node))

    def _enum_literals(self, node: ast.Compare) -> ast.Compare:
        """Enum members compare by name as stored (escaped, `_x0020_`); accept the plain spelling too."""
        prop = self.entity.property(node.left.name) if isinstance(node.left, ast.Identifier) else None
        if prop is None or prop.kind != "Enum" or prop.options is None:
            return node
        spellings = enum_spellings(prop.options)

        def canonical(literal: ast._Node) -> ast._Node:
            if isinstance(literal, ast.String):
                return ast.String(spellings.get(literal.val.lower(), literal.val))
            return literal

        right = node.right
        right = ast.List([canonical(v) for v in right.val]) if isinstance(right, ast.List) else canonical(right)
        return ast.Compare(node.comparator, node.left, right)

    # -- literals ---------------------------------------------------------------------------
    def visit_Integer(self, node: ast.Integer) -> Any:
        value = node.py_val
        if not -(2**63) <= value < 2**63:  # beyond Edm.Int64: the database driver would overflow
            raise QuerySyntaxError(f"The integer literal '{node.val}' is out of range.")
        return sa.literal(value)

    def visit_GUID(self, node: ast.GUID) -> Any:
        return sa.literal(node.val.lower(), sa.String(36))

    def visit_DateTime(self, node: ast.DateTime) -> Any:
        try:
            value = isoparse(node.val)
        except ValueError as exc:
            raise QuerySyntaxError(f"Invalid datetime literal '{node.val}'.") from exc
        return sa.literal(_as_naive_utc(value), sa.DateTime())

    # -- functions the library compiles to something SQLite lacks ---------------------------
    def func_indexof(self, first: ast._Node, second: ast._Node) -> Any:
        return sa.func.instr(self.visit(first), self.visit(second)) - 1

    def func_concat(self, *args: ast._Node) -> Any:
        left, right = (self.visit(a) for a in args)
        return left.concat(right) if hasattr(left, "concat") else sa.literal(left).concat(right)

    def func_date(self, field: ast._Node) -> Any:
        return sa.func.date(self.visit(field))


def _check_list_literals(tree: ast._Node) -> None:
    """A list literal may only be the right side of `in`; elsewhere it would reach SQL as a bound list."""
    allowed: set[int] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Compare) and isinstance(node.comparator, ast.In):
            allowed.add(id(node.right))
        if isinstance(node, ast.List) and id(node) not in allowed:
            raise QuerySyntaxError("A list literal is only allowed on the right side of the 'in' operator.")
        for value in vars(node).values() if hasattr(node, "__dict__") else ():
            if isinstance(value, ast._Node):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, ast._Node))


def compile_filter(schema: Schema, entity: EntityType, models: dict[str, type], text: str) -> tuple[Any, list]:
    """Parse and compile `$filter`; returns (where clause, outer joins to add to the select)."""
    tree = parse_filter(text)
    _check_list_literals(tree)
    visitor = FilterVisitor(schema, entity, models)
    try:
        clause = visitor.visit(tree)
    except (UnknownProperty, QuerySyntaxError):
        raise
    except oq_exc.InvalidFieldException as exc:
        raise UnknownProperty(str(exc).replace("Invalid field: ", ""), f"{schema.namespace}.{entity.name}") from exc
    except oq_exc.ODataException as exc:
        raise QuerySyntaxError(f"The $filter expression is not supported: {exc}") from exc
    except (ValueError, TypeError, AttributeError, NotImplementedError, sa.exc.ArgumentError) as exc:
        raise QuerySyntaxError(f"The $filter expression '{text}' is not supported.") from exc
    if not isinstance(clause, sa.sql.ClauseElement) or isinstance(clause, sa.sql.elements.BindParameter):
        raise QuerySyntaxError("The $filter expression must be a boolean condition.")
    return clause, visitor.outer_joins

