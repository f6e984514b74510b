"""The `$filter` parser itself: the grammar extensions, the normalized tree and the limits (no HTTP)."""

from __future__ import annotations

import pytest
from odata_query import ast

from mockservers.odata.errors import QuerySyntaxError, UnsupportedQuery
from mockservers.odata.filter import FilterDialect
from mockservers.odata.filter_syntax import Alias, JsonArray, Junction, parse_filter
from mockservers.odata.schema import Edm, EntityType, Property, Schema

SCHEMA = Schema("Test.NS", [EntityType("thing", "things", "id", [
    Property("id", Edm.Guid), Property("name", Edm.String), Property("size", Edm.Int32)])])
THING = SCHEMA.entity("thing")


@pytest.mark.parametrize(("nots", "accepted"), [(793, True), (794, False)])
def test_nested_not_counts_like_odl(nots: int, accepted: bool) -> None:
    """ODL's parser holds seven levels for a primary plus one per `not`; FilterLimit is 800."""
    text = "not " * nots + "size eq 1"
    if accepted:
        assert parse_filter(text) is not None
    else:
        with pytest.raises(QuerySyntaxError, match="^Recursion depth exceeded allowed limit.$"):
            parse_filter(text)


@pytest.mark.parametrize(("parens", "accepted"), [(113, True), (114, False)])
def test_parentheses_count_like_odl(parens: int, accepted: bool) -> None:
    """Each parenthesis re-enters ODL's expression parser: seven more levels."""
    text = "(" * parens + "size eq 1" + ")" * parens
    if accepted:
        assert isinstance(parse_filter(text), ast.Compare)
    else:
        with pytest.raises(QuerySyntaxError, match="^Recursion depth exceeded allowed limit.$"):
            parse_filter(text)


def test_chains_flatten_and_double_negations_cancel() -> None:
    tree = parse_filter(" and ".join(f"size eq {i}" for i in range(500)))
    assert isinstance(tree, Junction) and isinstance(tree.op, ast.And) and len(tree.terms) == 500
    assert [t.right.val for t in tree.terms] == [str(i) for i in range(500)]
    mixed = parse_filter("(size eq 1 or size eq 2) and size eq 3 and not not name eq 'x'")
    assert isinstance(mixed, Junction) and len(mixed.terms) == 3
    assert isinstance(mixed.terms[0], Junction) and isinstance(mixed.terms[0].op, ast.Or)
    assert mixed.terms[2] == ast.Compare(ast.Eq(), ast.Identifier("name"), ast.String("x"))
    assert parse_filter("not not not (size eq 1)") == ast.UnaryOp(ast.Not(), parse_filter("size eq 1"))


@pytest.mark.parametrize(("text", "items"), [
    ('["a","b"]', [ast.String("a"), ast.String("b")]),
    ("['a', 'b']", [ast.String("a"), ast.String("b")]),
    ('["O\'Brian", "say \\"hi\\""]', [ast.String("O'Brian"), ast.String('say "hi"')]),
    ("[1, 2.5, true, null]", [ast.Integer("1"), ast.Float("2.5"), ast.Boolean("true"), ast.Null()]),
    ("[]", []),
    ('["line\\nbreak", "plain", \'tab\\there\']', [ast.String("line\nbreak"), ast.String("plain"),
                                                   ast.String("tab\there")]),
])
def test_json_arrays_are_nodes(text: str, items: list) -> None:
    tree = parse_filter(f"f(PropertyValues={text})")
    assert tree.args[0].param == JsonArray(items)


@pytest.mark.parametrize(("text", "message"), [
    ("['O'Brian']", "Invalid JSON. A comma character ',' was expected in scope 'Array'. Every two elements in an "
                    "array and properties of an object must be separated by commas."),
    ('["a" "b"]', "Invalid JSON. A comma character ',' was expected in scope 'Array'."),
    ('["a",', "Invalid JSON. Unexpected end of input"),
    ("[x]", "Invalid JSON. The value 'x' is not a valid JSON value."),
])
def test_bad_json_arrays_are_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse_filter(f"size in {text}")
    assert caught.value.message.startswith(message)


def test_three_named_parameters_parse() -> None:
    """The library's rule for a third named parameter reads a missing attribute; ours does not."""
    tree = parse_filter("Ns.F(A=1,B='x',C=@c)")
    assert [p.name.name for p in tree.args] == ["A", "B", "C"]
    assert tree.args[2].param == Alias("@c")


def test_aliases_resolve_on_the_tree() -> None:
    dialect = FilterDialect(SCHEMA, {"@a": "'x'", "@b": "@a", "@loop": "@loop"})
    assert dialect.prepare("name eq @b", THING).tree == ast.Compare(ast.Eq(), ast.Identifier("name"), ast.String("x"))
    assert dialect.prepare("name eq @nothing", THING).tree.right == ast.Null()
    with pytest.raises(QuerySyntaxError, match="Recursion depth exceeded allowed limit."):
        dialect.prepare("name eq @loop", THING)
    with pytest.raises(QuerySyntaxError, match="operand types 'Edm.Int32' and 'Edm.String'"):
        FilterDialect(SCHEMA, {"@a": "'5'"}).prepare("size eq @a", THING)


def test_the_sandbox_limits() -> None:
    with pytest.raises(UnsupportedQuery, match="more than 25 levels deep"):
        parse_filter("tolower(" * 25 + "name" + ")" * 25 + " eq 'x'")
    with pytest.raises(UnsupportedQuery, match="more conditions than the sandbox can evaluate"):
        parse_filter(" or ".join(["size eq 1"] * 901))
    with pytest.raises(UnsupportedQuery, match="more than 10000 values"):
        parse_filter("size in (" + ",".join(["1"] * 10_001) + ")")
    with pytest.raises(UnsupportedQuery, match="more than 50 segments"):
        parse_filter("name" + "/x" * 51 + " eq 1")
