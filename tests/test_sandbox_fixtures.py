"""`POST /_sandbox/seed` reads fixture sets by name only (issue 6, item 6, "The control API").

Names are looked up in the built-in `fixtures/` and in the directories the operator allowed at start
(`mockservers serve --fixtures-dir`); a path, `..` or a set outside those directories is unknown.
Errors never print an absolute server path. `sandbox.json` (it holds the admin token) is 0600.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mockservers.sandbox.fixtures import BUILTIN_DIR
from mockservers.testing import start_sandbox
from tests.conftest import RunningSandbox

ACCOUNT = {"accountid": "f1000000-0000-4000-8000-000000000001", "name": "From The Operator's Set"}
CUSTOMER = {"id": "f1000000-0000-4000-8000-0000000000c1", "displayName": "Operator Customer"}


def write_set(directory: Path, *, account: dict, customer: dict) -> None:
    directory.mkdir(parents=True)
    (directory / "dataverse.json").write_text(json.dumps({"tables": [{"set": "accounts", "records": [account]}]}))
    (directory / "bc.json").write_text(json.dumps({"companies": [
        {"id": "b2a3c4d5-1111-4a2b-9c3d-000000000001", "name": "CRONUS USA, Inc.",
         "tables": [{"set": "customers", "records": [customer]}]}]}))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("operator-fixtures")
    write_set(root / "sets" / "extra", account=ACCOUNT, customer=CUSTOMER)
    write_set(root / "single-set", account={**ACCOUNT, "accountid": "f1000000-0000-4000-8000-000000000002"},
              customer={**CUSTOMER, "id": "f1000000-0000-4000-8000-0000000000c2"})
    (root / "sets" / "listed").mkdir()
    (root / "sets" / "listed" / "dataverse.json").write_text("[1, 2, 3]")
    (root / "sets" / "listed" / "bc.json").write_text('{"companies": {"not": "a list"}}')
    (root / "sets" / "refused").mkdir()
    (root / "sets" / "refused" / "dataverse.json").write_text(json.dumps(
        {"tables": [{"set": "accounts", "records": [{"name": "x", "nosuchcolumn": 1}]}]}))
    write_set(root / "not-allowed" / "secret", account=ACCOUNT, customer=CUSTOMER)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, library: Path) -> Iterator[RunningSandbox]:
    running = start_sandbox(tmp_path_factory.mktemp("fixtures-sandbox"), mode="live", fixture=None,
                            fixtures_dirs=(library / "sets", library / "single-set"))
    try:
        yield running
    finally:
        running.stop()


def seed(served: RunningSandbox, service: str, fixture: object) -> requests.Response:
    return served.control("POST", "seed", service=service, json={"fixture": fixture})


def no_server_paths(text: str, *roots: Path) -> None:
    for root in (BUILTIN_DIR, Path.cwd(), *roots):
        assert str(root) not in text, text
    assert "/tmp/" not in text and "/work/" not in text and "/home/" not in text, text


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_seed_by_name_from_the_operators_directory(served: RunningSandbox, service: str) -> None:
    resp = seed(served, service, "extra")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"seeded": {"accounts": 1}} if service == "dataverse" else {"seeded": {"customers": 1}}
    if service == "dataverse":
        got = served.session().get(f"{served.api}/accounts({ACCOUNT['accountid']})")
        assert got.status_code == 200 and got.json()["name"] == ACCOUNT["name"]
    else:
        got = served.bc_session().get(f"{served.bc_api}/companies({served.companies[0]})/customers({CUSTOMER['id']})")
        assert got.status_code == 200 and got.json()["displayName"] == CUSTOMER["displayName"]


def test_an_allowed_directory_that_is_itself_a_set_is_named_after_it(served: RunningSandbox) -> None:
    resp = seed(served, "dataverse", "single-set")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"seeded": {"accounts": 1}}


@pytest.mark.parametrize("service", ["dataverse", "bc"])
@pytest.mark.parametrize("fixture", [
    "/etc", "../../../etc", "..", "default/../default", "fixtures/default", "secret", "not-allowed/secret",
    str(BUILTIN_DIR / "default"), "nosuch", "default\x00", "x" * 500,
])
def test_only_names_of_allowed_sets_are_read(served: RunningSandbox, library: Path, service: str, fixture: str) -> None:
    resp = seed(served, service, fixture)

    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert error["code"] == "FixtureNotFound"
    assert "default" in error["message"] and "extra" in error["message"], "the message lists the known names"
    no_server_paths(resp.text, library, served.data_dir)
    assert len(resp.text) < 1_000


@pytest.mark.parametrize(("service", "says"), [
    ("dataverse", "listed/dataverse.json must hold a JSON object, not a list"),
    ("bc", "listed/bc.json: 'companies' must be a list"),
])
def test_a_fixture_that_is_not_an_object_is_400(served: RunningSandbox, library: Path, service: str, says: str) -> None:
    resp = seed(served, service, "listed")

    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "BadRequest" and says in resp.json()["error"]["message"]
    no_server_paths(resp.text, library, served.data_dir)


def test_a_fixture_record_the_service_refuses_is_400_and_writes_nothing(served: RunningSandbox) -> None:
    before = served.session().get(f"{served.api}/accounts/$count").content
    resp = seed(served, "dataverse", "refused")

    assert resp.status_code == 400, resp.text
    assert "a record was refused" in resp.json()["error"]["message"]
    assert "nosuchcolumn" in resp.json()["error"]["message"]
    assert served.session().get(f"{served.api}/accounts/$count").content == before


@pytest.mark.parametrize("fixture", [None, 7, ["default"], {"a": 1}, ""])
def test_the_fixture_must_be_a_name(served: RunningSandbox, fixture: object) -> None:
    resp = seed(served, "dataverse", fixture)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "BadRequest"


@pytest.mark.parametrize("name", ["sandbox.json", "admin-token"])
def test_files_with_the_admin_token_are_private(served: RunningSandbox, name: str) -> None:
    mode = stat.S_IMODE((served.data_dir / name).stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert served.info["admin_token"] in (served.data_dir / name).read_text()


def test_records_sent_inline_are_seeded_through_the_write_path(served: RunningSandbox) -> None:
    company = served.companies[0]
    counts = served.seed(dataverse={"accounts": [{"name": "Inline One", "accountnumber": "IN-1"},
                                                 {"name": "Inline Two", "accountnumber": "IN-2"}]},
                         bc={"customers": [{"displayName": "Inline Customer", "city": "Bergen"}]})
    assert counts == {"dataverse": {"accounts": 2}, "bc": {"customers": 1}}
    rows = served.session().get(f"{served.api}/accounts?$select=name&$filter=startswith(accountnumber,'IN-')"
                                "&$orderby=accountnumber").json()["value"]
    assert [r["name"] for r in rows] == ["Inline One", "Inline Two"]
    customer = served.bc_session().get(f"{served.bc_api}/companies({company})/customers"
                                       "?$filter=displayName eq 'Inline Customer'").json()["value"]
    assert [(c["city"], c["number"][:1]) for c in customer] == [("Bergen", "C")]  # numbered by the series


@pytest.mark.parametrize(("service", "body", "says"), [
    ("dataverse", {"data": {"tables": [{"set": "accounts", "records": [{"name": "Kept Out"}, {"nosuchcolumn": 1}]}]}},
     "a record was refused"),
    ("dataverse", {"data": {"tables": [{"set": "nosuchset", "records": [{"name": "x"}]}]}}, "unknown entity set"),
    ("dataverse", {"data": [1, 2]}, "must be a JSON object"),
    ("dataverse", {"data": {"tables": "accounts"}}, "'tables' must be a list"),
    ("dataverse", {"fixture": "default", "data": {}}, "not both"),
    ("dataverse", {"records": []}, "Unknown seed field"),
    ("bc", {"data": {"companies": {"id": "x"}}}, "'companies' must be a list"),
    ("bc", {"data": {"companies": [{"id": "b2a3c4d5-1111-4a2b-9c3d-000000000001", "name": "CRONUS USA, Inc.",
                                    "tables": [{"set": "customers", "records": [{"displayName": "Kept Out"},
                                                                                {"colour": "red"}]}]}]}},
     "a record was refused"),
])
def test_inline_records_the_service_refuses_are_400_and_write_nothing(served: RunningSandbox, service: str,
                                                                       body: dict[str, object], says: str) -> None:
    resp = served.control("POST", "seed", service=service, json=body)
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["error"]["message"]
    accounts = served.session().get(f"{served.api}/accounts?$filter=name eq 'Kept Out'").json()["value"]
    customers = served.bc_session().get(f"{served.bc_api}/companies({served.companies[0]})/customers"
                                        "?$filter=displayName eq 'Kept Out'").json()["value"]
    assert accounts == customers == []
