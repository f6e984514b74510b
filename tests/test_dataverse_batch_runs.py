"""Dataverse multipart `$batch`: a run of plain creates or upserts written together answers exactly as
the same writes one by one.

Outside change sets, consecutive POSTs of a JSON body to one table (no query options), or PATCHes of
one to ``set(id)`` (at most ``$select``, no If-Match or If-None-Match), with the same ``Prefer``, are
written in one block (``create_many`` / ``upsert_many``: one savepoint, one multi-row INSERT).
Each scenario runs the same batch on two fresh sandboxes from the same seed and clock, one writing runs
together and one writing every request alone, and compares the whole response (status, every part's
status line, headers and body; ids drawn by the service replaced by their order of appearance) and the
rows left behind.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from mockservers.testing import RunningSandbox
from tests.conftest import POSTGRES_ENV, twin_sandboxes

FROZEN = datetime(2031, 5, 4, 9, 30, tzinfo=UTC)
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ETAG = re.compile(r'W/\\?"\d+\\?"')
BOUNDARY = re.compile(r"(batchresponse|changesetresponse)_[0-9a-f-]{36}")
DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])
Factory = Callable[..., RunningSandbox]
CHOSEN = "7d0c3f9a-51b2-4c6e-8a41-5e2f0b9d1c37"  # an id the client picks for a row the batch creates
SEEDED, SEEDED_2 = "{seeded}", "{seeded 2}"  # replaced by seeded accounts' ids
ETAG_OF, ETAG_OF_2 = "{etag}", "{etag 2}"  # and by their ETags as each sandbox has them


def post(body: dict[str, Any], entity_set: str = "accounts", **headers: str) -> str:
    lines = [f"POST /api/data/v9.2/{entity_set} HTTP/1.1", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items()), "", json.dumps(body)]
    return "\r\n".join(lines)


def patch(key: str, body: dict[str, Any], query: str = "", **headers: str) -> str:
    lines = [f"PATCH /api/data/v9.2/accounts({key}){query} HTTP/1.1", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items()), "", json.dumps(body)]
    return "\r\n".join(lines)


def get(query: str) -> str:
    return f"GET /api/data/v9.2/accounts?{query.replace(' ', '%20')} HTTP/1.1\r\nAccept: application/json\r\n"


def changeset(*requests_: str) -> list[str]:
    return [f"changeset:{r}" for r in requests_]


# name -> (the batch's requests, Prefer: odata.continue-on-error)
SCENARIOS: dict[str, tuple[list[str], bool]] = {
    "a run of creates": ([post({"name": f"Run {i}", "customertypecode": 3}) for i in range(1, 8)], False),
    "a refused create inside the run, continuing on error": ([
        post({"name": "Before"}), post({"name": "Bad", "nosuchcolumn": 1}), post({"name": "After"}),
        post({"name": "After too", "accountcategorycode": 99}), post({"name": "Last"})], True),
    "a refused create inside the run: the batch stops there": ([
        post({"name": "Before"}), post({"name": "Before too"}), post({"name": "Bad", "nosuchcolumn": 1}),
        post({"name": "Never"})], False),
    "an alternate key twice in the run": ([
        post({"name": "First", "accountnumber": "DUP-1"}), post({"name": "Second", "accountnumber": "DUP-2"}),
        post({"name": "Again", "accountnumber": "dup-1"}), post({"name": "Fourth"})], True),
    "runs broken by a read, a change set, another table and other headers": ([
        post({"name": "One"}), post({"name": "Two"}), get("$filter=name eq 'One'&$select=name"),
        *changeset(post({"lastname": "In a change set"}, "contacts")), post({"lastname": "Alone"}, "contacts"),
        post({"name": "Three"}), post({"name": "Shown"}, Prefer="return=representation"),
        post({"name": "Four"}), post({"name": "Five"}), "POST /api/data/v9.2/accounts HTTP/1.1\r\n"
        "Content-Type: application/json\r\n\r\n{not json", post({"name": "Six"})], True),
    "binds to a seeded row and to a row of the run": ([
        post({"name": "Child of seeded", "parentaccountid@odata.bind": f"/accounts({SEEDED})"}),
        post({"name": "Chosen", "accountid": CHOSEN}),
        post({"name": "Child of chosen", "parentaccountid@odata.bind": f"/accounts({CHOSEN})"}),
        post({"name": "Chosen again", "accountid": CHOSEN}), post({"name": "After"})], True),
    "upserts that create, answered with their representation": ([
        patch(str(uuid.UUID(int=n)), {"name": f"Upserted {n}", "customertypecode": 3}, "?$select=name,accountnumber",
              Prefer="return=representation") for n in range(1, 7)], False),
    "upserts that update and create, one twice": ([
        patch(SEEDED, {"telephone1": "555-0101"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(CHOSEN, {"name": "New"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(str(uuid.UUID(int=5)), {"name": "Other"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(CHOSEN, {"telephone1": "555-0102"}, "?$select=name,telephone1", Prefer="return=representation")],
        False),
    "upserts that update and create, one refused, one twice": ([
        patch(SEEDED, {"telephone1": "555-0101"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(CHOSEN, {"name": "New"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(CHOSEN, {"telephone1": "555-0102"}, "?$select=name,telephone1", Prefer="return=representation"),
        patch(str(uuid.UUID(int=7)), {"name": "Bad", "nosuchcolumn": 1}, "?$select=name,telephone1",
              Prefer="return=representation"),
        patch(str(uuid.UUID(int=8)), {"name": "Last"}, "?$select=name,telephone1",
              Prefer="return=representation")], True),
    "upserts without a representation, by alternate key, and with If-Match": ([
        patch(str(uuid.UUID(int=1)), {"name": "Plain one"}), patch(str(uuid.UUID(int=2)), {"name": "Plain two"}),
        patch("accountnumber='ALT-1'", {"name": "By key"}), patch(str(uuid.UUID(int=3)), {"name": "Plain three"}),
        patch(SEEDED, {"name": "Matched"}, **{"If-Match": "*"}),
        patch(str(uuid.UUID(int=4)), {"name": "Not there"}, **{"If-Match": "*"}),
        patch(str(uuid.UUID(int=5)), {"name": "Plain five"}), patch(str(uuid.UUID(int=6)), {"name": "Plain six"}),
        post({"name": "A create between"}), patch(str(uuid.UUID(int=9)), {"name": "Plain nine"})], True),
    "updates, each with its own ETag": ([
        patch(SEEDED, {"telephone1": "555-0201"}, **{"If-Match": ETAG_OF}),
        patch(SEEDED_2, {"telephone1": "555-0202"}, **{"If-Match": ETAG_OF_2}),
        patch(str(uuid.UUID(int=3)), {"name": "Created between"}),
        patch(SEEDED, {"name": "Renamed"}, "?$select=name", **{"If-Match": "*"})], False),
    "an ETag gone stale within the run": ([
        patch(SEEDED, {"telephone1": "555-0301"}, **{"If-Match": ETAG_OF}),
        patch(SEEDED, {"telephone1": "555-0302"}, **{"If-Match": ETAG_OF}),
        patch(SEEDED_2, {"telephone1": "555-0303"}, **{"If-Match": ETAG_OF_2})], True),
    "updates of several rows, money and a representation among them": ([
        patch(SEEDED, {"revenue": 1000}, "?$select=revenue,revenue_base", Prefer="return=representation"),
        patch(SEEDED_2, {"revenue": 2500, "name": "Second"}, "?$select=name,revenue", Prefer="return=representation"),
        patch(SEEDED, {"telephone1": "555-0501"}),
        patch(SEEDED_2, {"telephone1": "555-0502"}, **{"If-Match": ETAG_OF_2})], True),
    "updates that change an alternate key, the second to the key the first took": ([
        patch(SEEDED, {"telephone1": "555-0601"}),
        patch(SEEDED, {"accountnumber": "TAKEN-1"}),
        patch(SEEDED_2, {"accountnumber": "TAKEN-1"}),
        patch(SEEDED_2, {"telephone1": "555-0602"})], True),
    "an If-Match on a row that is not there": ([
        patch(SEEDED, {"telephone1": "555-0401"}, **{"If-Match": ETAG_OF}),
        patch(str(uuid.UUID(int=4)), {"name": "Not there"}, **{"If-Match": "*"}),
        patch(SEEDED_2, {"telephone1": "555-0403"}, **{"If-Match": ETAG_OF_2})], True),
}


@pytest.fixture(params=DATABASES)
def pair(request: pytest.FixtureRequest, sandbox_factory: Factory) -> Iterator[tuple[RunningSandbox, RunningSandbox]]:
    """Two fresh sandboxes on the same seed and clock: writes together, writes alone."""
    with twin_sandboxes(request.param, sandbox_factory, FROZEN) as (grouped, alone):
        service(alone).group_creates = False
        yield grouped, alone


def service(sandbox: RunningSandbox) -> Any:
    return sandbox.sandbox.apps["dataverse"].extensions["dataverse"]["service"]


def body_of(requests_: list[str], values: dict[str, str]) -> bytes:
    parts: list[str] = []
    open_changeset = False
    for request_ in requests_:
        in_changeset = request_.startswith("changeset:")
        if in_changeset and not open_changeset:
            parts.append("--batch\r\nContent-Type: multipart/mixed; boundary=changeset\r\n\r\n")
        if open_changeset and not in_changeset:
            parts.append("--changeset--\r\n")
        open_changeset = in_changeset
        text = request_.removeprefix("changeset:")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        boundary = "changeset" if in_changeset else "batch"
        extra = f"Content-ID: {len(parts)}\r\n" if in_changeset else ""
        parts.append(f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                     f"{extra}\r\n{text}\r\n")
    if open_changeset:
        parts.append("--changeset--\r\n")
    return ("".join(parts) + "--batch--\r\n").encode()


def run_batch(sandbox: RunningSandbox, requests_: list[str], continue_on_error: bool,
              values: dict[str, str]) -> tuple[int, str]:
    headers = {"Content-Type": "multipart/mixed; boundary=batch"}
    if continue_on_error:
        headers["Prefer"] = "odata.continue-on-error"
    response = sandbox.session().post(f"{sandbox.api}/$batch", data=body_of(requests_, values), headers=headers)
    return response.status_code, response.text


def accounts(sandbox: RunningSandbox, since: set[str]) -> str:
    columns = "accountid,name,accountnumber,_parentaccountid_value,createdon,modifiedon,statecode"
    rows = sandbox.session().get(f"{sandbox.api}/accounts?$select={columns}&$orderby=name").json()["value"]
    return json.dumps([r for r in rows if r["accountid"] not in since], sort_keys=True)


def comparable(sandbox: RunningSandbox, text: str) -> str:
    """The text with the sandbox's address as ``<dv>``, boundaries, ETags and every GUID by its order
    of appearance (the same structure numbers them alike). Row versions are drawn in blocks, so a block
    of creates takes other numbers than the same creates one by one; each is unique and rising."""
    origin = "/".join(sandbox.api.split("/")[:3])
    text = ETAG.sub("<etag>", BOUNDARY.sub(r"\1", text.replace(origin, "<dv>")))
    seen: dict[str, str] = {}
    return GUID.sub(lambda m: seen.setdefault(m.group(0).lower(), f"<id {len(seen)}>"), text)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_writes_together_answer_as_writes_alone(pair: tuple[RunningSandbox, RunningSandbox], name: str) -> None:
    grouped, alone = pair
    assert service(grouped).group_creates
    requests_, continue_on_error = SCENARIOS[name]
    results, befores = [], []
    for sandbox in (grouped, alone):
        seeded = sandbox.session().get(f"{sandbox.api}/accounts?$select=accountid&$orderby=name").json()["value"]
        before = {r["accountid"] for r in seeded}
        values = {SEEDED: seeded[0]["accountid"], SEEDED_2: seeded[1]["accountid"],
                  ETAG_OF: seeded[0]["@odata.etag"], ETAG_OF_2: seeded[1]["@odata.etag"]}
        results.append(run_batch(sandbox, requests_, continue_on_error, values))
        befores.append(before)
    assert results[0][0] == results[1][0]
    assert comparable(grouped, results[0][1]) == comparable(alone, results[1][1])
    assert comparable(grouped, accounts(grouped, befores[0])) == comparable(alone, accounts(alone, befores[1]))
    assert re.search(r"HTTP/1\.1 20[14] ", results[0][1])  # every scenario writes something


@contextmanager
def statements(sandbox: RunningSandbox, prefix: str) -> Iterator[list[str]]:
    """The SQL statements starting with ``prefix`` that the Dataverse store runs inside the block."""
    import sqlalchemy as sa

    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(prefix):
            seen.append(statement)

    engine = sandbox.sandbox.backends["dataverse"].store.engine
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)


def test_a_run_of_updates_is_one_update(sandbox_factory: Factory) -> None:
    """A run of 50 plain updates of rows that exist (each with the ETag it read) writes them with one UPDATE."""
    sandbox = sandbox_factory(mode="live", tls=False)
    tag = uuid.uuid4().hex[:6]
    keys = [str(uuid.uuid4()) for _ in range(50)]
    status, _ = run_batch(sandbox, [patch(key, {"name": f"Row {tag} {i}"}) for i, key in enumerate(keys)], False, {})
    assert status == 200
    dv = sandbox.session()
    etags = {row["accountid"]: row["@odata.etag"] for row in dv.get(
        f"{sandbox.api}/accounts?$select=name&$filter=startswith(name,'Row {tag}')").json()["value"]}
    with statements(sandbox, "UPDATE account ") as updates:
        status, text = run_batch(sandbox, [patch(key, {"telephone1": f"555-{i:04d}"}, **{"If-Match": etags[key]})
                                           for i, key in enumerate(keys)], False, {})
    assert status == 200 and text.count("HTTP/1.1 204") == 50
    assert len(updates) == 1
    phones = {row["accountid"]: row["telephone1"] for row in dv.get(
        f"{sandbox.api}/accounts?$select=telephone1&$filter=startswith(name,'Row {tag}')").json()["value"]}
    assert phones == {key: f"555-{i:04d}" for i, key in enumerate(keys)}


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_run_is_one_insert(sandbox_factory: Factory, method: str) -> None:
    """The grouping happens: a run of 50 creates (or upserts that create) writes its rows with one INSERT."""
    sandbox = sandbox_factory(mode="live", tls=False)
    tag = uuid.uuid4().hex[:6]
    writes = ([post({"name": f"Row {tag} {i}"}) for i in range(50)] if method == "POST" else
              [patch(str(uuid.uuid4()), {"name": f"Row {tag} {i}"}) for i in range(50)])
    with statements(sandbox, "INSERT INTO account ") as inserts:
        status, text = run_batch(sandbox, writes, False, {})
    assert status == 200 and text.count("HTTP/1.1 204") == 50
    assert len(inserts) == 1
