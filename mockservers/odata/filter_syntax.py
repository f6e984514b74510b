"""`$filter` text to a tree: odata-query's lexer and grammar, extended, and the depth limits.

The library's SLY grammar is reused rule for rule; what this module adds:
- keyword-prefix fix: identifiers such as ``allowemail`` or ``nullcount`` lex as identifiers;
- parameter aliases (``@p1``) as ``Alias`` nodes and JSON arrays (``["a","b"]``, items in double or
  single quotes, as the Dataverse query functions take them) as ``JsonArray`` nodes, so the
  dialects resolve them on the tree instead of rewriting text;
- ``Ns.EnumType'Member'`` enum literals become the member string; ``x in ('a')`` single-item lists;
- function calls with three or more named parameters (the library's rule for them is broken);
- the tree comes back normalized: chains of ``and``/``or`` become one ``Junction`` (so 500 terms
  do not nest 500 deep) and double negations cancel.

Limits (every violation is a ``QuerySyntaxError``/``UnsupportedQuery``, never a crash):
- Microsoft.OData.Core's own: the parser's recursion depth may not exceed 800
  (``ODataUriParserSettings.FilterLimit``), counted the way its recursive-descent parser counts
  (seven levels per parenthesis or function argument list, one per ``not``); the message is the
  library's "Recursion depth exceeded allowed limit.";
- the sandbox's, because SQL engines cannot run arbitrarily deep expressions (SQLite's parser stack
  and its expression depth of 1000): at most ``MAX_NESTING`` nested operators/functions/lambdas
  after normalization, ``MAX_SQL_DEPTH`` conditions in one condition chain, ``MAX_LITERALS`` values.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from odata_query import ast
from odata_query import exceptions as oq_exc
from odata_query.grammar import ODataLexer, ODataParser
from sly.lex import Token
from sly.yacc import ParserMeta

from .errors import QuerySyntaxError, UnsupportedQuery

logging.getLogger("odata_query").setLevel(logging.ERROR)

ODL_FILTER_LIMIT = 800  # Microsoft.OData.Core ODataUriParserSettings.FilterLimit
MAX_NESTING = 25
MAX_SQL_DEPTH = 900
MAX_LITERALS = 10_000
MAX_PATH_SEGMENTS = 50


# -- nodes the library does not have -------------------------------------------------------------
@dataclass(frozen=True)
class Alias(ast._Node):
    """A parameter alias reference (``@p1``); the value is another query parameter."""

    name: str  # with the leading "@"


@dataclass(frozen=True)
class JsonArray(ast.List):
    """A JSON array literal (``["a","b"]``): the value form of Dataverse ``PropertyValues``."""


@dataclass(frozen=True)
class Junction(ast._Node):
    """``a and b and c`` (or ``or``) as one node: a chain of any length without nesting."""

    op: ast._BoolOpToken
    terms: tuple[ast._Node, ...]


# -- lexer -----------------------------------------------------------------------------------------
_COMMA_EXPECTED = ("Invalid JSON. A comma character ',' was expected in scope 'Array'. Every two elements in an "
                   "array and properties of an object must be separated by commas.")


def _json_array(text: str, start: int) -> tuple[list[ast._Literal], int]:
    """Scan a JSON array at ``text[start] == '['``; strings may use either quote (as ODL's reader)."""
    items: list[ast._Literal] = []
    i, n = start + 1, len(text)
    expect_item = True
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            raise QuerySyntaxError("Invalid JSON. Unexpected end of input was found in JSON content. "
                                   "Not all object and array scopes were closed.")
        ch = text[i]
        if ch == "]":
            if items and expect_item:
                raise QuerySyntaxError("Invalid JSON. Unexpected token ']' in scope 'Array'.")
            return items, i + 1
        if not expect_item:
            if ch != ",":
                raise QuerySyntaxError(_COMMA_EXPECTED)
            expect_item = True
            i += 1
            continue
        if ch in "\"'":
            j = text.find(ch, i + 1)
            if j > 0 and "\\" not in text[i + 1:j]:  # no escapes: the text up to the closing quote
                items.append(ast.String(text[i + 1:j]))
                i = j + 1
                expect_item = False
                continue
            j, chars = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                    chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(text[j], text[j]))
                else:
                    chars.append(text[j])
                j += 1
            if j >= n:
                raise QuerySyntaxError("Invalid JSON. Unexpected end of input reached while processing a JSON "
                                       "string value.")
            items.append(ast.String("".join(chars)))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ",] \t\r\n":
                j += 1
            word = text[i:j]
            items.append(_json_scalar(word))
            i = j
        expect_item = False


def _json_scalar(word: str) -> ast._Literal:
    lowered = word.lower()
    if lowered in ("true", "false"):
        return ast.Boolean(lowered)
    if lowered == "null":
        return ast.Null()
    try:
        float(word)
    except ValueError:
        raise QuerySyntaxError(f"Invalid JSON. The value '{word}' is not a valid JSON value.") from None
    if word.lstrip("+-").isdigit():
        return ast.Integer(word)
    return ast.Float(word)


class _Lexer(ODataLexer):
    """The library lexer with word boundaries on keyword-like literals, aliases and JSON arrays."""

    tokens = ODataLexer.tokens | {"ALIAS", "ARRAY"}
    _: Any  # SLY injects the rule decorator into the class body

    @_(r"@[_a-z]\w*")  # noqa: F821 - SLY injects `_`
    def ALIAS(self, t):
        t.value = Alias(t.value)
        return t

    @_(r"\[")  # noqa: F821
    def ARRAY(self, t):
        items, end = _json_array(self.text, t.index)
        t.value = JsonArray(items)
        self.index = end
        return t

    @_(r"(?:true|false)\b")  # noqa: F821
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


# -- parser: the library's rules, plus aliases and arrays as primitive literals --------------------
class _QuietLog:
    def debug(self, *args: Any) -> None: ...
    info = warning = error = debug


def _copy_rule(func: Any, name: str) -> Any:
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    setattr(copy, "rules", list(func.rules))  # noqa: B010 - the attribute SLY reads
    return copy


def _list_named_param(self: Any, p: Any) -> list:
    return [*p.list_named_param, p.named_param]  # the library reads a non-existent `p.list_items` here


setattr(_list_named_param, "rules", ['list_named_param BWS "," BWS named_param'])  # noqa: B010


def _extra_literal(self: Any, p: Any) -> Any:
    return p[0]


setattr(_extra_literal, "rules", ["primitive_literal : ARRAY", "primitive_literal : ALIAS"])  # noqa: B010


def _function_call(self: Any, func: ast.Identifier, args: list[ast._Node]) -> ast.Call:
    return ast.Call(func, args)  # names and argument counts are checked when binding, with ODL's messages


def _build_parser() -> type:
    """A subclass of the library's parser: SLY builds tables from a class body, so re-declare its rules."""
    namespace = ParserMeta.__prepare__("FilterParser", (ODataParser,))
    namespace["tokens"] = _Lexer.tokens
    namespace["precedence"] = ODataParser.precedence
    namespace["log"] = _QuietLog()
    namespace["__module__"] = __name__
    for name, value in vars(ODataParser).items():
        if not (callable(value) and hasattr(value, "rules")):
            continue
        chain = []
        while value is not None:
            chain.append(value)
            value = getattr(value, "next_func", None)
        for func in reversed(chain):
            broken = name == "list_named_param" and func.rules == ['list_named_param BWS "," BWS named_param']
            namespace[name] = _copy_rule(_list_named_param if broken else func, name)
    namespace["extra_literal"] = _copy_rule(_extra_literal, "extra_literal")
    namespace["_function_call"] = _function_call
    return ParserMeta("FilterParser", (ODataParser,), namespace)


_Parser = _build_parser()


# -- token-level passes ------------------------------------------------------------------------------
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


_BINARY = {"AND", "OR", "EQ", "NE", "LT", "LE", "GT", "GE", "IN", "ADD", "SUB", "MUL", "DIV", "MOD"}


def _check_parser_depth(tokens: list[Token]) -> None:
    """Refuse what Microsoft.OData.Core's recursive-descent parser refuses (its FilterLimit of 800).

    Its parser enters six levels (expression, or, and, comparison, additive, multiplicative) plus one
    for the primary at every parenthesis or argument list, and one per unary ``not``/``-``.
    """
    base, pending, stack, run = 0, 0, [], 0
    for tok in tokens:
        kind = tok.type
        if kind in ("NOT", "UMINUS"):
            pending += 1
        elif kind == "(":
            stack.append((base, pending))
            base, pending = base + 7 + pending, 0
        elif kind == ")":
            if stack:
                base, pending = stack.pop()
            pending = 0
        elif kind in _BINARY or kind in (",", ":"):
            pending = 0
        if base + 7 + pending > ODL_FILTER_LIMIT:
            raise QuerySyntaxError("Recursion depth exceeded allowed limit.")
        run = run + 1 if kind == "/" else run if kind in ("ODATA_IDENTIFIER", "ANY", "ALL") else 0
        if run > MAX_PATH_SEGMENTS:
            raise UnsupportedQuery(f"A path in $filter has more than {MAX_PATH_SEGMENTS} segments; the sandbox "
                                   "does not resolve paths that long.")


def tokenize(text: str) -> list[Token]:
    try:
        tokens = list(_Lexer().tokenize(text))
    except oq_exc.TokenizingException as exc:
        raise QuerySyntaxError(f"Syntax error in $filter: {exc}") from exc
    return _single_item_lists(_unqualify_enum_literals(tokens))


def parse_expression(text: str) -> ast._Node:
    """Parse one `$filter` expression (or parameter-alias value) into a normalized tree."""
    if not text or not text.strip():
        raise QuerySyntaxError("The $filter expression is empty.")
    tokens = tokenize(text)
    _check_parser_depth(tokens)
    try:
        tree = _Parser().parse(iter(tokens))
    except oq_exc.ODataException as exc:
        raise QuerySyntaxError(f"Syntax error in $filter: {exc}") from exc
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError, RecursionError) as exc:
        raise QuerySyntaxError(f"Syntax error in $filter '{text}'.") from exc
    if tree is None:
        raise QuerySyntaxError(f"Syntax error in $filter '{text}'.")
    return normalize(tree)


def parse_filter(text: str) -> ast._Node:
    """Parse `$filter` text; the tree may contain ``Alias`` and ``JsonArray`` nodes for a dialect.

    Parsing is a pure function of the text and trees are never changed in place (every rewrite
    builds new nodes), so the trees of recent texts are kept and shared; a text that does not parse
    is parsed (and refused) again every time."""
    if len(text) > CACHED_TEXT_LENGTH:  # long texts (key lists) are seldom repeated: not worth the memory
        return _parse_filter(text)
    return _parse_cached(text)


CACHED_TEXT_LENGTH = 2048  # longest `$filter` text whose tree is cached
CACHED_TREES = 512


def _parse_filter(text: str) -> ast._Node:
    tree = parse_expression(text)
    check_limits(tree)
    return tree


_parse_cached = functools.lru_cache(maxsize=CACHED_TREES)(_parse_filter)


# -- tree helpers ----------------------------------------------------------------------------------
_SEQUENCES = (list, tuple)


def children(node: ast._Node) -> list[ast._Node]:
    """The direct child nodes of ``node``, in field order (every check visits each node: kept lean)."""
    found: list[ast._Node] = []
    for value in vars(node).values():
        if isinstance(value, ast._Node):
            found.append(value)
        elif isinstance(value, _SEQUENCES):
            for item in value:
                if isinstance(item, ast._Node):
                    found.append(item)
    return found


def walk(node: ast._Node) -> Iterator[ast._Node]:
    """Every node of the tree, without recursion."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(children(current))


def normalize(tree: ast._Node) -> ast._Node:
    """Flatten and/or chains into ``Junction`` nodes and cancel double negations, bottom-up, iteratively."""
    done: dict[int, ast._Node] = {}
    stack: list[tuple[ast._Node, bool]] = [(tree, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in done:
            continue
        if not ready:
            stack.append((node, True))
            if isinstance(node, ast.BoolOp):
                stack.extend((term, False) for term in _chain(node))
            else:
                stack.extend((child, False) for child in children(node))
            continue
        done[id(node)] = _rebuild(node, done)
    return done[id(tree)]


def rebuild(tree: ast._Node, replace: Any) -> ast._Node:
    """The tree rebuilt bottom-up (iteratively); ``replace(node)`` may return a substitute or None."""
    done: dict[int, ast._Node] = {}
    stack: list[tuple[ast._Node, bool]] = [(tree, False)]
    while stack:
        node, ready = stack.pop()
        if not ready:
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))
            continue
        new = _with_children(node, done)
        substitute = replace(new)
        done[id(node)] = new if substitute is None else substitute
    return done[id(tree)]


def _chain(node: ast.BoolOp) -> list[ast._Node]:
    """The terms of a chain of the same boolean operator, left to right."""
    terms: list[ast._Node] = []
    stack: list[ast._Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.BoolOp) and type(current.op) is type(node.op):
            stack.append(current.right)
            stack.append(current.left)
        else:
            terms.append(current)
    return terms


def _rebuild(node: ast._Node, done: dict[int, ast._Node]) -> ast._Node:
    if isinstance(node, ast.BoolOp):
        terms: list[ast._Node] = []
        for term in _chain(node):
            new = done[id(term)]
            if isinstance(new, Junction) and type(new.op) is type(node.op):
                terms.extend(new.terms)
            else:
                terms.append(new)
        return Junction(node.op, tuple(terms))
    if isinstance(node, ast.UnaryOp):
        operand = done[id(node.operand)]
        if isinstance(node.op, ast.Not) and isinstance(operand, ast.UnaryOp) and isinstance(operand.op, ast.Not):
            return operand.operand  # not not x is x, also for null (three-valued logic)
        return ast.UnaryOp(node.op, operand)
    return _with_children(node, done)


def _with_children(node: ast._Node, done: dict[int, ast._Node]) -> ast._Node:
    changes: dict[str, Any] = {}
    for key, value in vars(node).items():
        if isinstance(value, ast._Node):
            changes[key] = done.get(id(value), value)
        elif isinstance(value, list):
            changes[key] = [done.get(id(v), v) if isinstance(v, ast._Node) else v for v in value]
        elif isinstance(value, tuple) and any(isinstance(v, ast._Node) for v in value):
            changes[key] = tuple(done.get(id(v), v) if isinstance(v, ast._Node) else v for v in value)
    if not changes or all(changes[k] is getattr(node, k) for k in changes):
        return node
    return type(node)(**{**vars(node), **changes})


def check_limits(tree: ast._Node) -> None:
    """The sandbox's own limits on a normalized tree (see the module docstring)."""
    nesting: dict[int, int] = {}
    sql_depth: dict[int, int] = {}
    literals = 0
    stack: list[tuple[ast._Node, list[ast._Node] | None]] = [(tree, None)]  # a node's children once it was seen
    while stack:
        node, kids = stack.pop()
        if kids is None:
            kids = children(node)
            stack.append((node, kids))
            stack.extend((kid, None) for kid in kids)
            continue
        literals += isinstance(node, ast._Literal) and not isinstance(node, ast.List)
        structural = isinstance(node, Junction | ast.Compare | ast.BinOp | ast.UnaryOp | ast.Call |
                                ast.CollectionLambda | ast.Lambda)
        nesting[id(node)] = max((nesting[id(k)] for k in kids), default=0) + structural
        chain = len(node.terms) - 1 if isinstance(node, Junction) else 0
        sql_depth[id(node)] = max((sql_depth[id(k)] for k in kids), default=0) + 1 + chain
        if nesting[id(node)] > MAX_NESTING:
            raise UnsupportedQuery(f"The $filter expression nests operators, functions and lambdas more than "
                                   f"{MAX_NESTING} levels deep; the sandbox supports at most {MAX_NESTING}.")
        if sql_depth[id(node)] > MAX_SQL_DEPTH:
            raise UnsupportedQuery(f"The $filter expression has more conditions than the sandbox can evaluate "
                                   f"(an expression depth of {sql_depth[id(node)]}; at most {MAX_SQL_DEPTH}).")
        if literals > MAX_LITERALS:
            raise UnsupportedQuery(f"The $filter expression has more than {MAX_LITERALS} values; the sandbox "
                                   f"supports at most {MAX_LITERALS}.")
