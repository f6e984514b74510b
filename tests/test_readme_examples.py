"""The README's request examples, run against a seeded sandbox: each answers 200 and shows data.

The examples are read from README.md itself (the `dv '…'` and `bc '…'` lines and the first curl
call), so an example that stops working, or a seed that stops linking the records an example
expands, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from mockservers.odata.query import parse_expand

README = Path(__file__).resolve().parents[1] / "README.md"
_SHELL_CALL = re.compile(r"^(dv|bc) '([^']+)'$", re.M)
_FIRST_CURL = re.compile(r'"\$\(jq -r \.dataverse\.api_root \$S\)/([^"]+)"')


def _examples() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    examples = [(service, path) for service, path in _SHELL_CALL.findall(text)]
    first = _FIRST_CURL.search(text)
    assert first is not None, "the README's first curl example moved"
    examples.insert(0, ("dv", first.group(1).replace("\\$", "$")))
    return examples


EXAMPLES = _examples()


def test_the_readme_has_lookup_examples_for_both_services() -> None:
    expanded = [p for _, p in EXAMPLES if "$expand=" in p]
    assert {s for s, _ in EXAMPLES} == {"dv", "bc"} and len(expanded) >= 5


def _records(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body.get("value", [body])


@pytest.mark.parametrize(("service", "path"), EXAMPLES, ids=[p.split("?")[0] for _, p in EXAMPLES])
def test_readme_example_returns_data(sandbox, dv: requests.Session, bc: requests.Session, service: str,
                                     path: str) -> None:
    if service == "dv":
        resp = dv.get(f"{sandbox.api}/{path}")
    else:
        resp = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/{path}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    if "value" in body or "@odata.context" in body and "$entity" in body["@odata.context"]:
        records = _records(body)
        assert records, f"{path}: no rows"
        for item in parse_expand(unquote(query["$expand"])) if "$expand" in query else []:
            for record in records:  # every row shows what it expands: the seed links them all
                assert record.get(item.name), f"{path}: a row without {item.name}: {record}"
    else:  # a function's response
        assert any(v for k, v in body.items() if not k.startswith("@")), body
