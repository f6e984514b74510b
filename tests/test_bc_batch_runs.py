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
        alone.sandbox.apps["bc"].extensions["bc"]["service"].group_creates = False
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
    assert grouped.sandbox.apps["bc"].extensions["bc"]["service"].group_creates
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
