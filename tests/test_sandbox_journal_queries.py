"""Request verification: the journal keeps what was sent (headers with credentials masked, query options,
the start of the body) and answers queries by method, path pattern, query option, header and body,
through the control API, the Python helpers and the ``mockservers journal`` command."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mockservers.cli import main as mockservers_main
from mockservers.sandbox.journal import Journal, JournalEntry, JournalQuery, body_text
from mockservers.testing import RunningSandbox

ACCOUNT = "a0000000-0000-4000-8000-000000000006"


@pytest.fixture
def traffic(sandbox_inprocess_module: RunningSandbox) -> RunningSandbox:
    """Four Dataverse requests and one to BC, on an empty journal."""
    sb = sandbox_inprocess_module
    dv = sb.session()
    dv.get(f"{sb.api}/accounts", params={"$select": "name", "$filter": "modifiedon gt 2020-01-01T00:00:00Z"})
    dv.patch(f"{sb.api}/accounts({ACCOUNT})", json={"telephone1": "555-0110"}, headers={"If-Match": "*"})
    dv.patch(f"{sb.api}/accounts({ACCOUNT})", json={"telephone1": "555-0111"})
    dv.post(f"{sb.api}/accounts", data=json.dumps({"name": "Ünïcode & Co"}, ensure_ascii=False).encode(),
            headers={"Prefer": "return=representation", "Content-Type": "application/json"})
    sb.bc_session().get(f"{sb.bc_api}/companies")
    return sb


# (conditions, the requests they select as (method, short path))
QUERIES: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
    ({"method": "PATCH"}, [("PATCH", "accounts()"), ("PATCH", "accounts()")]),
    ({"path": "/api/data/v9.2/accounts(*)"}, [("PATCH", "accounts()"), ("PATCH", "accounts()")]),
    ({"path": re.compile(r"/accounts$")}, [("GET", "accounts"), ("POST", "accounts")]),
    ({"path_prefix": "/v2.0/"}, [("GET", "companies")]),
    ({"headers": {"If-Match": "*"}}, [("PATCH", "accounts()")]),
    ({"headers": {"if-match": True}}, [("PATCH", "accounts()")]),
    ({"method": "PATCH", "headers": {"If-Match": False}}, [("PATCH", "accounts()")]),
    ({"headers": {"Prefer": re.compile("representation")}}, [("POST", "accounts")]),
    ({"query": {"$filter": re.compile(r"modifiedon gt")}}, [("GET", "accounts")]),
    ({"query": {"$select": "name"}}, [("GET", "accounts")]),
    ({"query": {"$top": True}}, []),
    ({"body": "555-0111"}, [("PATCH", "accounts()")]),
    ({"body": re.compile(r"ünïcode", re.IGNORECASE)}, [("POST", "accounts")]),
    ({"status": "2xx", "method": "POST"}, [("POST", "accounts")]),
]


def short(path: str) -> str:
    return re.sub(r"\(.*\)", "()", path.rsplit("/", 1)[-1])


@pytest.mark.parametrize(("conditions", "expected"), QUERIES, ids=[str(q)[:60] for q, _ in QUERIES])
def test_journal_queries_select_what_they_say(traffic: RunningSandbox, conditions: dict[str, Any],
                                              expected: list[tuple[str, str]]) -> None:
    found = traffic.journal.requests(**conditions)
    assert [(r.method, short(r.path)) for r in found] == expected


def test_an_entry_keeps_what_was_sent_with_credentials_masked(traffic: RunningSandbox) -> None:
    post = traffic.journal.assert_requests(1, "dataverse", method="POST")[0]
    assert post.json() == {"name": "Ünïcode & Co"}
    assert post.headers["Authorization"] == "Bearer ***"
    assert post.headers["content-type"] == "application/json"
    assert post.status == 201 and post.principal
    get = traffic.journal.requests("dataverse", method="GET")[0]
    assert get.query_options == {"$select": "name", "$filter": "modifiedon gt 2020-01-01T00:00:00Z"}
    assert get.body is None


def test_assert_requests_says_what_was_sent_instead(traffic: RunningSandbox) -> None:
    with pytest.raises(AssertionError) as failure:
        traffic.journal.assert_requests(2, "dataverse", method="PATCH", headers={"If-Match": "*"})
    message = str(failure.value)
    assert "expected 2 request(s) to dataverse matching PATCH, header If-Match=*; found 1" in message
    assert "dataverse POST /api/data/v9.2/accounts -> 201" in message


@pytest.mark.parametrize(("params", "says"), [
    ({"header": "If-Match~("}, "Not a regular expression"),
    ({"query": "=x"}, "needs a name"),
    ({"status": "teapot"}, "status must be"),
    ({"limit": "-1"}, "must not be negative"),
    ({"since": "soon"}, "must be an integer"),
    ({"colour": "red"}, "Unknown journal filter"),
    ({"path_regex": "[unclosed"}, "Not a regular expression"),
])
def test_a_bad_journal_query_is_400(traffic: RunningSandbox, params: dict[str, str], says: str) -> None:
    resp = traffic.control("GET", "journal", params=params)
    assert resp.status_code == 400
    assert says in resp.json()["error"]["message"]


@pytest.fixture(params=["memory", "sqlite"])
def make_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Journal]:
    """``Journal(**kw)`` kept in memory or in a SQLite file: the journal behaves the same with either."""
    def make(**kw: Any) -> Journal:
        return Journal(**kw) if request.param == "memory" else Journal(path=tmp_path / "journal.db", **kw)
    return make


def test_bodies_are_cut_at_the_limit() -> None:
    assert body_text(b"0123456789abc", 10) == ("0123456789", True)
    assert body_text(b"0123", 10) == ("0123", False) and body_text(b"", 10) == (None, False)


def test_old_entries_make_room_for_new_bodies(make_journal: Callable[..., Journal]) -> None:
    journal = make_journal(maxlen=100, body_limit=10, body_budget=25)
    for index in range(4):
        entry = JournalEntry(service="s", method="POST", path=f"/p{index}")
        entry.body, entry.body_truncated = "0123456789", index == 0
        journal.record(entry)
    kept = journal.select(JournalQuery())
    assert [e.path for e in kept] == ["/p2", "/p3"]  # 40 body bytes over a budget of 25: the oldest go
    assert journal.counters()["total"] == 4  # counted all the same


def test_mockservers_journal_command(sandbox_live: RunningSandbox) -> None:
    sb = sandbox_live
    sb.session().patch(f"{sb.api}/accounts({ACCOUNT})", json={"telephone1": "555-0199"}, headers={"If-Match": "*"})
    sb.bc_session().get(f"{sb.bc_api}/companies", params={"$top": "1"})
    runner = CliRunner()
    data_dir = str(sb.data_dir)

    text = runner.invoke(mockservers_main, ["journal", "--data-dir", data_dir])
    assert text.exit_code == 0, text.output
    lines = text.output.strip().splitlines()
    assert len(lines) == 2
    assert " dataverse PATCH  /api/data/v9.2/accounts(" in lines[0] and lines[0].split()[-3] == "204"
    assert " bc        GET    /v2.0/" in lines[1] and "companies?$top=1 200" in lines[1]

    chosen = runner.invoke(mockservers_main, ["journal", "--data-dir", data_dir, "--service", "dataverse",
                                              "--header", "If-Match=*", "--body", "555-0199", "--json"])
    entries = json.loads(chosen.output)
    assert [(e["method"], e["status"], e["headers"]["Authorization"]) for e in entries] == [("PATCH", 204, "Bearer ***")]

    none = runner.invoke(mockservers_main, ["journal", "--data-dir", data_dir, "--query", "$filter", "--json"])
    assert json.loads(none.output) == []
    cleared = runner.invoke(mockservers_main, ["journal", "--data-dir", data_dir, "--clear"])
    assert cleared.exit_code == 0 and sb.journal.requests() == []


@pytest.mark.parametrize(("args", "says"), [
    (["--header", "If-Match~("], "Not a regular expression"),
    (["--status", "teapot"], "status must be"),
])
def test_mockservers_journal_refuses_bad_input_in_one_line(sandbox_live: RunningSandbox, args: list[str],
                                                           says: str) -> None:
    result = CliRunner().invoke(mockservers_main, ["journal", "--data-dir", str(sandbox_live.data_dir), *args])
    assert result.exit_code != 0
    assert says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_mockservers_journal_without_a_running_sandbox(tmp_path: Any) -> None:
    result = CliRunner().invoke(mockservers_main, ["journal", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "sandbox.json not found" in result.output
    (tmp_path / "sandbox.json").write_text(json.dumps({
        "admin_token": "t", "ca_bundle": None, "dataverse": {"url": "http://127.0.0.1:9"}, "bc": {"url": "http://127.0.0.1:9"}}))
    gone = CliRunner().invoke(mockservers_main, ["journal", "--data-dir", str(tmp_path)])
    assert gone.exit_code != 0 and "cannot reach the sandbox" in gone.output
    assert len(gone.output.strip().splitlines()) == 1 and "Traceback" not in gone.output
