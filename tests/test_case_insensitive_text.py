"""Text compares case-insensitively, the same way on SQLite and on PostgreSQL.

Both services filter on a case-insensitive SQL collation: `eq`, `ne`, `in`, `contains`, `startswith`,
`endswith` and `$orderby` ignore the case of every letter (not only ASCII) and still tell accents apart.
The table runs on both databases of the storage legs (see conftest) and must give the same rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.storage

NAMES = ["Äpfel GmbH", "apfel", "Contoso Ltd", "École", "ecole"]

CASES = [
    ("eq, ASCII letters", "name eq '{tag} CONTOSO LTD'", {"Contoso Ltd"}),
    ("eq, non-ASCII letters", "name eq '{tag} äPFEL gmbh'", {"Äpfel GmbH"}),
    ("eq, literal first", "'{tag} contoso ltd' eq name", {"Contoso Ltd"}),
    ("eq tells accents apart", "name eq '{tag} ECOLE'", {"ecole"}),
    ("eq, accented capital", "name eq '{tag} éCOLE'", {"École"}),
    ("ne", "name ne '{tag} APFEL'", set(NAMES) - {"apfel"}),
    ("in", "name in ('{tag} APFEL','{tag} contoso LTD')", {"apfel", "Contoso Ltd"}),
    ("contains, ASCII", "contains(name,'TOSO')", {"Contoso Ltd"}),
    ("contains, non-ASCII", "contains(name,'äPF')", {"Äpfel GmbH"}),
    ("startswith", "startswith(name,'{TAG} CON')", {"Contoso Ltd"}),
    ("startswith, non-ASCII", "startswith(name,'{TAG} éC')", {"École"}),
    ("endswith", "endswith(name,'GMBH')", {"Äpfel GmbH"}),
    ("endswith across accents", "endswith(name,'COLE')", {"École", "ecole"}),
]


def names(values: list[dict[str, Any]], field: str, tag: str) -> list[str]:
    return [v[field].removeprefix(f"{tag} ") for v in values]


@pytest.fixture(scope="module")
def dataverse_rows(sandbox: Any, dv: requests.Session) -> str:
    tag = f"ci{uuid.uuid4().hex[:8]}"
    for name in NAMES:
        assert dv.post(f"{sandbox.api}/accounts", json={"name": f"{tag} {name}"}).status_code == 204
    return tag


@pytest.fixture(scope="module")
def bc_rows(sandbox: Any, bc: requests.Session) -> str:
    tag = f"ci{uuid.uuid4().hex[:8]}"
    company = f"{sandbox.bc_api}/companies({sandbox.companies[0]})"
    for name in NAMES:
        assert bc.post(f"{company}/customers", json={"displayName": f"{tag} {name}"}).status_code == 201
    return tag


@pytest.mark.parametrize("label, condition, expected", CASES, ids=[c[0] for c in CASES])
def test_dataverse_filter(sandbox: Any, dv: requests.Session, dataverse_rows: str, label: str, condition: str,
                          expected: set[str]) -> None:
    tag = dataverse_rows
    text = condition.format(tag=tag, TAG=tag.upper())
    resp = dv.get(f"{sandbox.api}/accounts",
                  params={"$select": "name", "$filter": f"startswith(name,'{tag}') and ({text})"})
    assert resp.status_code == 200, resp.text
    assert set(names(resp.json()["value"], "name", tag)) == expected


@pytest.mark.parametrize("label, condition, expected", CASES, ids=[c[0] for c in CASES])
def test_bc_filter(sandbox: Any, bc: requests.Session, bc_rows: str, label: str, condition: str,
                   expected: set[str]) -> None:
    tag = bc_rows
    text = condition.format(tag=tag, TAG=tag.upper()).replace("name", "displayName")
    resp = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers",
                  params={"$select": "displayName", "$filter": f"startswith(displayName,'{tag}') and ({text})",
                          "$schemaversion": "2.1"})  # BC accepts `in` from schema version 2.1 on
    assert resp.status_code == 200, resp.text
    assert set(names(resp.json()["value"], "displayName", tag)) == expected


def test_orderby_ignores_case(sandbox: Any, dv: requests.Session, bc: requests.Session) -> None:
    tag = f"ord{uuid.uuid4().hex[:8]}"
    company = f"{sandbox.bc_api}/companies({sandbox.companies[0]})"
    for name in ("banana", "Apple", "cherry", "Banana split"):
        assert dv.post(f"{sandbox.api}/accounts", json={"name": f"{tag} {name}"}).status_code == 204
        assert bc.post(f"{company}/customers", json={"displayName": f"{tag} {name}"}).status_code == 201
    expected = ["Apple", "banana", "Banana split", "cherry"]
    accounts = dv.get(f"{sandbox.api}/accounts", params={
        "$select": "name", "$filter": f"startswith(name,'{tag}')", "$orderby": "name"}).json()["value"]
    assert names(accounts, "name", tag) == expected
    customers = bc.get(f"{company}/customers", params={
        "$filter": f"startswith(displayName,'{tag}')", "$orderby": "displayName"}).json()["value"]
    assert names(customers, "displayName", tag) == expected


@pytest.mark.parametrize("needle, position", [("TOSO", 3), ("ltd", 8), ("XYZ", -1)])
def test_bc_indexof_ignores_case(sandbox: Any, bc: requests.Session, bc_rows: str, needle: str, position: int) -> None:
    tag = bc_rows
    offset = len(tag) + 1 if position >= 0 else 0
    resp = bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers", params={
        "$select": "displayName",
        "$filter": f"startswith(displayName,'{tag} Contoso') and indexof(displayName,'{needle}') eq {position + offset}"})
    assert resp.status_code == 200, resp.text
    assert names(resp.json()["value"], "displayName", tag) == ["Contoso Ltd"]  # -1: not found
