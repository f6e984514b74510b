"""CreateMultiple and UpsertMultiple write many rows per statement, and must still answer exactly as the
same targets written one by one would (https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations):
each scenario runs once as a bulk action and once as single requests in one changeset, and the two
must agree on the outcome (success, or the same error) and on the rows left behind.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from tests.test_dataverse_crud import batch_responses, changeset, http_part, post_batch

pytestmark = pytest.mark.storage  # on SQLite and on PostgreSQL (citext keys, multi-row RETURNING)

KIND = "Microsoft.Dynamics.CRM.account"

# Each scenario: rows written before (plain POSTs), then the targets. "{t}" is replaced by a tag per run,
# "{id0}".."{id2}" by ids per run, so the bulk run and the one-by-one run never meet.
CREATE_SCENARIOS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "plain rows": ([], [{"name": "A {t}", "accountnumber": "A{t}"}, {"name": "B {t}"}, {"name": "C {t}"}]),
    "alternate key held by a stored row, in other letter case": (
        [{"name": "Old {t}", "accountnumber": "K{t}"}],
        [{"name": "New {t}", "accountnumber": "N{t}"}, {"name": "Clash {t}", "accountnumber": "k{t}"}]),
    "alternate key repeated within the request": (
        [], [{"name": "One {t}", "accountnumber": "R{t}"}, {"name": "Two {t}", "accountnumber": "r{t}"}]),
    "id repeated within the request": (
        [], [{"accountid": "{id0}", "name": "One {t}"}, {"accountid": "{id0}", "name": "Two {t}"}]),
    "id held by a stored row": ([{"accountid": "{id1}", "name": "Stored {t}"}], [{"accountid": "{id1}", "name": "New {t}"}]),
    "a row binds to one created just before it": (
        [], [{"accountid": "{id0}", "name": "Parent {t}"},
             {"name": "Child {t}", "parentaccountid@odata.bind": "/accounts({id0})"}]),
    "the first refused row decides the error (key first)": (
        [], [{"name": "Ok {t}", "accountnumber": "F{t}"}, {"name": "Dup {t}", "accountnumber": "F{t}"},
             {"name": "x" * 161}]),
    "the first refused row decides the error (length first)": (
        [], [{"name": "Ok {t}", "accountnumber": "G{t}"}, {"name": "x" * 161},
             {"name": "Dup {t}", "accountnumber": "G{t}"}]),
}

# Upserts address rows by id; "exists": the rows written before.
UPSERT_SCENARIOS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "the same id twice: created, then updated": (
        [], [{"accountid": "{id0}", "name": "First {t}"}, {"accountid": "{id0}", "name": "Second {t}"}]),
    "an update gives up a number that a later new row takes": (
        [{"accountid": "{id0}", "name": "Held {t}", "accountnumber": "H{t}"}],
        [{"accountid": "{id0}", "accountnumber": "H2{t}"}, {"accountid": "{id1}", "name": "Taker {t}", "accountnumber": "H{t}"}]),
    "a new row takes a number that a later update wants": (
        [{"accountid": "{id0}", "name": "Stored {t}", "accountnumber": "S{t}"}],
        [{"accountid": "{id1}", "name": "New {t}", "accountnumber": "W{t}"}, {"accountid": "{id0}", "accountnumber": "w{t}"}]),
    "an update binds to a row created just before it": (
        [{"accountid": "{id0}", "name": "Stored {t}"}],
        [{"accountid": "{id1}", "name": "New parent {t}"},
         {"accountid": "{id0}", "parentaccountid@odata.bind": "/accounts({id1})"}]),
    "existing and new rows in turn": (
        [{"accountid": "{id0}", "name": "Stored {t}"}],
        [{"accountid": "{id1}", "name": "New {t}"}, {"accountid": "{id0}", "name": "Renamed {t}"},
         {"accountid": "{id2}", "name": "Newer {t}"}]),
}


def fill(value: Any, tag: str, ids: list[str]) -> Any:
    text = json.dumps(value).replace("{t}", tag)
    for i, key in enumerate(ids):
        text = text.replace(f"{{id{i}}}", key)
    return json.loads(text)


def error_of(body: Any) -> tuple[str, str] | None:
    return (body["error"]["code"], body["error"]["message"]) if isinstance(body, dict) and "error" in body else None


def rows_left(dv: requests.Session, api: str, tag: str, ids: list[str]) -> list[tuple]:
    """The rows a run left: by name tag or by its ids, with the tag and ids written back as placeholders."""
    id_filter = " or ".join(f"accountid eq {key}" for key in ids)
    resp = dv.get(f"{api}/accounts", params={
        "$filter": f"contains(name, '{tag}') or {id_filter}",
        "$select": "name,accountnumber,_parentaccountid_value", "$orderby": "name"})
    assert resp.status_code == 200, resp.text
    placeholders = {tag: "{t}", **{key: f"{{id{i}}}" for i, key in enumerate(ids)}}

    def plain(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for real, mark in placeholders.items():
            value = value.replace(real, mark)
        return value

    known = {row["accountid"]: f"{{row {row['name']}}}" for row in resp.json()["value"]}
    return [(plain(row["name"]), plain(row["accountnumber"]),
             plain(known.get(row["_parentaccountid_value"], row["_parentaccountid_value"])))
            for row in resp.json()["value"]]


def run(dv: requests.Session, api: str, before: list[dict[str, Any]], targets: list[dict[str, Any]], *,
        bulk: bool, upsert: bool) -> tuple[tuple[str, str] | None, list[tuple], list[Any]]:
    tag, ids = uuid.uuid4().hex[:8], [str(uuid.uuid4()) for _ in range(3)]
    for row in fill(before, tag, ids):
        assert dv.post(f"{api}/accounts", json=row).status_code == 204
    targets = fill(targets, tag, ids)
    if bulk:
        action = "UpsertMultiple" if upsert else "CreateMultiple"
        resp = dv.post(f"{api}/accounts/Microsoft.Dynamics.CRM.{action}",
                       json={"Targets": [{"@odata.type": KIND, **t} for t in targets]})
        body = resp.json()
        error = error_of(body)
        assert (resp.status_code == 200) == (error is None), resp.text
        outcome = [] if error else [r["RecordCreated"] for r in body.get("Results", [])]
    else:
        parts = [http_part(f"PATCH {api}/accounts({t['accountid']})", {k: v for k, v in t.items() if k != "accountid"},
                           content_id=str(n + 1)) if upsert else
                 http_part(f"POST {api}/accounts", t, content_id=str(n + 1)) for n, t in enumerate(targets)]
        resp = post_batch(dv, api, [changeset(parts, f"changeset_{uuid.uuid4()}")])
        answers = batch_responses(resp)
        failed = [a for a in answers if a["status"] >= 400]
        error = error_of(json.loads(failed[0]["body"])) if failed else None
        outcome = []  # a single upsert answers 204 whether it created or updated
    return error, rows_left(dv, api, tag, ids), outcome


def both_ways(dv: requests.Session, api: str, before: list[dict[str, Any]], targets: list[dict[str, Any]], *,
              upsert: bool) -> tuple[tuple[str, str] | None, list[tuple], list[Any]]:
    """The bulk run's outcome, once it is shown to match the one-by-one run's."""
    bulk = run(dv, api, before, targets, bulk=True, upsert=upsert)
    single_error, single_rows, _ = run(dv, api, before, targets, bulk=False, upsert=upsert)
    assert (bulk[0], bulk[1]) == (single_error, single_rows)
    return bulk


@pytest.mark.parametrize("name", list(CREATE_SCENARIOS))
def test_create_multiple_answers_as_one_by_one_creates(sandbox, dv: requests.Session, name: str) -> None:
    before, targets = CREATE_SCENARIOS[name]
    bulk_error, bulk_rows, _ = both_ways(dv, sandbox.api, before, targets, upsert=False)
    if bulk_error is None:  # every target is there
        assert len(bulk_rows) == len(before) + len(targets)
    else:  # and a refused request leaves only what was there before
        assert len(bulk_rows) == len(before)


@pytest.mark.parametrize("name", list(UPSERT_SCENARIOS))
def test_upsert_multiple_answers_as_one_by_one_upserts(sandbox, dv: requests.Session, name: str) -> None:
    before, targets = UPSERT_SCENARIOS[name]
    bulk_error, _, created = both_ways(dv, sandbox.api, before, targets, upsert=True)
    stored = {t["accountid"] for t in before}
    if bulk_error is None:  # RecordCreated says, target by target, whether the id was new at that point
        seen: set[str] = set()
        expected = []
        for target in targets:
            expected.append(target["accountid"] not in stored and target["accountid"] not in seen)
            seen.add(target["accountid"])
        assert created == expected


def test_bulk_rows_get_versions_that_change_tracking_sees(sandbox, dv: requests.Session) -> None:
    """Versions drawn a block at a time still grow row by row, and a delta link sees every write."""
    tracked = dv.get(f"{sandbox.api}/accounts", params={"$select": "name"},
                     headers={"Prefer": "odata.track-changes"}).json()["@odata.deltaLink"]
    tag = uuid.uuid4().hex[:8]
    created = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [
        {"@odata.type": KIND, "name": f"V {tag} {i:02d}"} for i in range(40)]}).json()["Ids"]
    upserted = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [
        {"@odata.type": KIND, "accountid": key, "name": f"V {tag} {i:02d} again"} for i, key in enumerate(created[:20])]})
    assert upserted.status_code == 200
    rows = dv.get(f"{sandbox.api}/accounts", params={"$filter": f"startswith(name, 'V {tag}')",
                                                      "$select": "versionnumber,name"}).json()["value"]
    by_id = {row["accountid"]: int(row["versionnumber"]) for row in rows}
    versions = [by_id[key] for key in created[20:]] + [by_id[key] for key in created[:20]]
    assert versions == sorted(versions) and len(set(versions)) == 40  # in write order, each its own
    changes = dv.get(tracked).json()["value"]
    assert {c["accountid"] for c in changes} >= set(created)
    later = dv.post(f"{sandbox.api}/accounts", json={"name": f"V {tag} later"}, headers={"Prefer": "return=representation"})
    assert int(later.json()["versionnumber"]) > max(versions)
    after = dv.get(f"{sandbox.api}/accounts", params={"$select": "name"},
                   headers={"Prefer": "odata.track-changes"}).json()["@odata.deltaLink"]
    assert dv.get(after).json()["value"] == []  # the token covers every version handed out


def test_a_failed_batch_request_leaves_nothing_of_its_own(sandbox, dv: requests.Session) -> None:
    """Requests outside changesets share the batch's transaction, each in a savepoint: a deep insert whose
    parent is refused after its nested contact was written leaves no contact behind; a failed changeset
    takes back only its own writes; the requests around them keep theirs."""
    tag = uuid.uuid4().hex[:8]
    api = sandbox.api
    parts = [
        http_part(f"POST {api}/accounts", {"name": f"Before {tag}"}),
        http_part(f"POST {api}/accounts", {"primarycontactid": {"lastname": f"Orphan {tag}"},
                                           "name": "x" * 161}),
        changeset([http_part(f"POST {api}/accounts", {"name": f"In changeset {tag}"}, content_id="1"),
                   http_part(f"POST {api}/contacts", {"lastname": "y" * 300}, content_id="2")],
                  f"changeset_{uuid.uuid4()}"),
        http_part(f"POST {api}/accounts", {"name": f"After {tag}"}),
    ]
    answers = batch_responses(post_batch(dv, api, parts, prefer="odata.continue-on-error"))
    assert [a["status"] for a in answers] == [204, 400, 400, 204]
    names = {r["name"] for r in dv.get(f"{api}/accounts", params={
        "$filter": f"contains(name, '{tag}')", "$select": "name"}).json()["value"]}
    assert names == {f"Before {tag}", f"After {tag}"}
    assert dv.get(f"{api}/contacts", params={"$filter": f"lastname eq 'Orphan {tag}'"}).json()["value"] == []
