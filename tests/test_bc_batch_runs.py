"""BC JSON `$batch`: a run of creates written together answers exactly as the same creates one by one.

Outside `Isolation: snapshot`, consecutive POSTs to one entity set of one company are written in one
block (one savepoint, one multi-row INSERT). Each scenario runs the same batch on two fresh sandboxes
from the same seed and clock, one writing runs together and one writing every request alone, and
compares every answer (status, headers, body; the ids the services drew are replaced by their order)
and the rows left behind.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from mockservers.bc.serializer import parse_bc_etag
from mockservers.testing import RunningSandbox
from tests.conftest import POSTGRES_ENV, twin_sandboxes

COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
FROZEN = datetime(2031, 5, 4, 9, 30, tzinfo=UTC)
ETAG = re.compile(r'W/\\"[^"\\]+\\"')  # as it appears inside JSON text
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])
Factory = Callable[..., RunningSandbox]


def post(n: int, body: dict[str, Any], entity_set: str = "customers") -> dict[str, Any]:
    return {"id": str(n), "method": "POST", "url": f"companies({COMPANY})/{entity_set}",
            "headers": {"Content-Type": "application/json"}, "body": body}


def get(n: int, query: str) -> dict[str, Any]:
    return {"id": str(n), "method": "GET", "url": f"companies({COMPANY})/customers?{query}"}


# name -> the batch's requests
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "a run of creates": [post(i, {"displayName": f"Run {i}", "city": "Atlanta"}) for i in range(1, 8)],
    "a refused create inside the run: the others are written": [
        post(1, {"displayName": "Before"}), post(2, {"displayName": "Bad", "noSuchField": 1}),
        post(3, {"displayName": "After"}), post(4, {"displayName": "After too", "currencyCode": "ZZZ"}),
        post(5, {"displayName": "Last"})],
    "an own number moves the series for the creates after it": [
        post(1, {"displayName": "Drawn"}), post(2, {"displayName": "Own", "number": "C99990"}),
        post(3, {"displayName": "Drawn after"}), post(4, {"displayName": "Drawn last"})],
    "an own number taken twice": [
        post(1, {"displayName": "Drawn"}), post(2, {"displayName": "Own", "number": "C99990"}),
        post(3, {"displayName": "Drawn after"}), post(4, {"displayName": "Taken", "number": "C99990"}),
        post(5, {"displayName": "Drawn last"})],
    "runs broken by reads, other sets and a malformed request": [
        post(1, {"displayName": "First"}), post(2, {"displayName": "Second"}),
        get(3, "$filter=startswith(displayName,'Fi') or startswith(displayName,'Se')&$select=number,displayName"),
        post(4, {"displayName": "Item", "type": "Inventory"}, "items"), post(5, {"displayName": "Third"}),
        {"id": "6", "method": "POST"}, post(7, {"displayName": "Fourth"}), post(8, {"displayName": "Fifth"}),
        {"id": "9", "method": "POST", "url": f"companies({COMPANY})/customers", "body": ["not", "an", "object"]},
        post(10, {"displayName": "Sixth"})],
    "a display name too long for the table": [
        post(1, {"displayName": "Fits"}), post(2, {"displayName": "x" * 200}), post(3, {"displayName": "Fits too"})],
}


@pytest.fixture(params=DATABASES)
def pair(request: pytest.FixtureRequest, sandbox_factory: Factory) -> Iterator[tuple[RunningSandbox, RunningSandbox]]:
    """Two fresh sandboxes on the same seed and clock: creates together, creates alone."""
    with twin_sandboxes(request.param, sandbox_factory, FROZEN) as (grouped, alone):
        alone.sandbox.apps["bc"].extensions["bc"]["service"].group_writes = False
        yield grouped, alone


def run_batch(sandbox: RunningSandbox, requests_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = sandbox.bc_session().post(f"{sandbox.bc_api}/$batch", json={"requests": requests_})
    assert response.status_code == 200, response.text
    return list(response.json()["responses"])


def customers(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    session: requests.Session = sandbox.bc_session()
    body = session.get(f"{sandbox.bc_api}/companies({COMPANY})/customers?$orderby=number").json()
    return list(body["value"])


def comparable(sandbox: RunningSandbox, value: Any, drawn: list[str]) -> Any:
    """The value with the ids drawn in this run as ``<id n>`` (n: the order they first appeared), the
    sandbox's own address as ``<bc>``, ETags as ``<etag>`` and each answer's own request id left out.
    (Row versions are drawn in blocks: a block of creates and the same creates one by one take other
    numbers, each unique and rising in the order the rows were written, which is checked apart.)"""
    origin = "/".join(sandbox.bc_api.split("/")[:3])
    text = ETAG.sub("<etag>", json.dumps(value, sort_keys=True).replace(origin, "<bc>"))
    for found in GUID.findall(text):
        if found != COMPANY and found not in drawn:
            drawn.append(found)
    for n, found in enumerate(drawn):
        text = text.replace(found, f"<id {n}>")
    parsed = json.loads(text)
    if isinstance(parsed, list):
        for item in parsed:
            if isinstance(item, dict):
                item.get("headers", {}).pop("request-id", None)
    return parsed


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_creates_together_answer_as_creates_alone(pair: tuple[RunningSandbox, RunningSandbox], name: str) -> None:
    grouped, alone = pair
    assert grouped.sandbox.apps["bc"].extensions["bc"]["service"].group_writes
    requests_ = SCENARIOS[name]
    known = {c["id"] for c in customers(grouped)}
    assert known == {c["id"] for c in customers(alone)}  # the same seed
    seeded = sorted(known)
    answers = [comparable(sandbox, run_batch(sandbox, requests_), list(seeded)) for sandbox in (grouped, alone)]
    assert answers[0] == answers[1]
    left = [comparable(sandbox, [c for c in customers(sandbox) if c["id"] not in known], list(seeded))
            for sandbox in (grouped, alone)]  # the rows the batch wrote (seeded ones carry their seeding time)
    assert left[0] == left[1]
    statuses = [a["status"] for a in answers[0]]
    assert 201 in statuses  # every scenario writes something
    versions = [parse_bc_etag(c["@odata.etag"]) for c in sorted(customers(grouped), key=lambda c: c["number"])
                if c["id"] not in known and c["number"].startswith("C0")]  # the series' numbers: write order
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


# -- other operations: run in one savepoint while each succeeds --------------------------------------

Rows = list[tuple[str, str]]  # (id, ETag) of the six customers a scenario starts from, then of a payment term


def patch(n: int, row: tuple[str, str], body: dict[str, Any], etag: str | None = None) -> dict[str, Any]:
    return {"id": str(n), "method": "PATCH", "url": f"companies({COMPANY})/customers({row[0]})",
            "headers": {"Content-Type": "application/json", "If-Match": etag or row[1]}, "body": body}


def delete(n: int, row: tuple[str, str], entity_set: str = "customers") -> dict[str, Any]:
    return {"id": str(n), "method": "DELETE", "url": f"companies({COMPANY})/{entity_set}({row[0]})",
            "headers": {"If-Match": "*"}}


UPDATE_SCENARIOS: dict[str, Callable[[Rows], list[dict[str, Any]]]] = {
    "a run of updates": lambda rows: [patch(i, row, {"phoneNumber": f"555-010{i}"}) for i, row in enumerate(rows)],
    "refused updates inside the run: the others are written": lambda rows: [
        patch(1, rows[0], {"phoneNumber": "555-0201"}), patch(2, rows[1], {"noSuchField": 1}),
        patch(3, rows[2], {"phoneNumber": "555-0203"}, etag=rows[0][1]), patch(4, rows[3], {"displayName": "x" * 200}),
        patch(5, rows[4], {"displayName": "Renamed"}), delete(6, rows[5]),
        get(7, "$filter=displayName eq 'Renamed'&$select=number,displayName")],
    "an ETag gone stale within the run": lambda rows: [
        patch(1, rows[0], {"phoneNumber": "555-0301"}), patch(2, rows[0], {"phoneNumber": "555-0302"}),
        patch(3, rows[1], {"phoneNumber": "555-0303"})],
    "own numbers, deletes and a create between": lambda rows: [
        patch(1, rows[0], {"number": "C99991"}), patch(2, rows[1], {"number": "C99991"}), delete(3, rows[2]),
        patch(4, rows[2], {"phoneNumber": "555-0404"}), post(5, {"displayName": "Created between"}),
        patch(6, rows[3], {"number": "C99992"}), delete(7, rows[4]), post(8, {"displayName": "Created last"})],
    "a create checked against what the operations before it wrote": lambda rows: [
        patch(1, rows[0], {"number": "C99995"}), post(2, {"displayName": "Number taken", "number": "C99995"}),
        patch(3, rows[1], {"phoneNumber": "555-0503"}), delete(4, rows[6], "paymentTerms"),
        post(5, {"displayName": "Terms gone", "paymentTermsId": rows[6][0]}),
        post(6, {"displayName": "Terms gone too", "paymentTermsId": rows[6][0]}),
        patch(7, rows[2], {"phoneNumber": "555-0507"})],
}


@pytest.mark.parametrize("name", list(UPDATE_SCENARIOS))
def test_updates_together_answer_as_updates_alone(pair: tuple[RunningSandbox, RunningSandbox], name: str) -> None:
    grouped, alone = pair
    known = {c["id"] for c in customers(grouped)}
    seeded = sorted(known)
    answers, left = [], []
    for sandbox in (grouped, alone):
        drawn = list(seeded)
        made = run_batch(sandbox, [post(i, {"displayName": f"Start {i}"}) for i in range(6)] + [
            post(6, {"code": "NET7", "displayName": "Net 7 days", "dueDateCalculation": "7D"}, "paymentTerms")])
        assert [m["status"] for m in made] == [201] * 7
        rows = [(m["body"]["id"], m["body"]["@odata.etag"]) for m in made]
        comparable(sandbox, made, drawn)  # the rows started from, numbered alike in both
        answers.append(comparable(sandbox, run_batch(sandbox, UPDATE_SCENARIOS[name](rows)), drawn))
        left.append(comparable(sandbox, [c for c in customers(sandbox) if c["id"] not in known], drawn))
    assert answers[0] == answers[1]
    assert left[0] == left[1]
    assert any(a["status"] in (200, 204) for a in answers[0])  # every scenario writes something


def test_a_run_of_updates_is_one_update(sandbox_factory: Factory) -> None:
    """The grouping happens: 50 PATCHes of distinct customers, each with the ETag it read, write with one
    UPDATE, and each answers with its own row."""
    import sqlalchemy as sa

    sandbox = sandbox_factory(mode="live", tls=False)
    made = run_batch(sandbox, [post(i, {"displayName": f"Grouped {i}"}) for i in range(50)])
    assert {m["status"] for m in made} == {201}
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE customer "):
            seen.append(statement)

    engine = sandbox.sandbox.backends["bc"].store.engine
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        answers = run_batch(sandbox, [patch(i, (m["body"]["id"], m["body"]["@odata.etag"]),
                                            {"phoneNumber": f"555-{i:04d}"}) for i, m in enumerate(made)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert [(a["status"], a["body"]["id"], a["body"]["phoneNumber"]) for a in answers] == [
        (200, m["body"]["id"], f"555-{i:04d}") for i, m in enumerate(made)]
    assert len(seen) == 1
    versions = [parse_bc_etag(a["body"]["@odata.etag"]) for a in answers]
    assert versions == sorted(versions) and len(set(versions)) == 50
    phones = {c["id"]: c["phoneNumber"] for c in customers(sandbox)}
    assert all(phones[m["body"]["id"]] == f"555-{i:04d}" for i, m in enumerate(made))
