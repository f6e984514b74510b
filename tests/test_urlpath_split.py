"""``split_path`` against the plain character-by-character reading of the path grammar (split on ``/``
outside quotes and parentheses): the same segments, or the same refusal, for any path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mockservers.odata.errors import QuerySyntaxError
from mockservers.odata.urlpath import Segment, split_path


def by_characters(path: str) -> list[Segment] | None:
    """Each character in turn; None where the path is refused (unbalanced quotes or parentheses)."""
    pieces: list[str] = []
    depth, quoted, current = 0, False, ""
    for ch in path:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "/" and depth == 0 and not quoted:
            if current:
                pieces.append(current)
            current = ""
        else:
            current += ch
    if depth != 0 or quoted:
        return None
    if current:
        pieces.append(current)
    segments = []
    for text in pieces:
        if text.endswith(")") and "(" in text:
            name, _, rest = text.partition("(")
            segments.append(Segment(name, rest[:-1]))
        elif "(" in text or ")" in text:
            return None
        else:
            segments.append(Segment(text))
    return segments


def read(path: str) -> list[Segment] | None:
    try:
        return split_path(path)
    except QuerySyntaxError:
        return None


CASES = [
    ("accounts", [Segment("accounts")]),
    ("accounts(a0000000-0000-4000-8000-000000000001)/primarycontactid",
     [Segment("accounts", "a0000000-0000-4000-8000-000000000001"), Segment("primarycontactid")]),
    ("accounts(accountnumber='A/1')", [Segment("accounts", "accountnumber='A/1'")]),
    ("accounts(name='it''s')/x", [Segment("accounts", "name='it''s'"), Segment("x")]),
    ("/accounts//contacts/", [Segment("accounts"), Segment("contacts")]),
    ("f(a(b)/c)", [Segment("f", "a(b)/c")]),
    ("accounts(name='x)", None),
    ("accounts(1", None),
    ("acc)ounts", None),
]


@pytest.mark.parametrize(("path", "expected"), CASES, ids=[c[0] for c in CASES])
def test_paths_split_as_the_grammar_says(path: str, expected: list[Segment] | None) -> None:
    assert read(path) == expected == by_characters(path)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab'()/=,-1", max_size=24))
def test_any_path_splits_as_read_character_by_character(path: str) -> None:
    assert read(path) == by_characters(path)
