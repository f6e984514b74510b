"""Bulk-insert and couple: export BC records, import the file into Dataverse, match them."""

from __future__ import annotations

import csv
import uuid
from collections import Counter
from pathlib import Path

import openpyxl
import pytest

from tests.conftest import ConnectorEnv

pytestmark = pytest.mark.both_modes  # against a live sandbox, and in process


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    connector = own_connector
    connector.run("mappings", "field", "CUSTOMER", "displayName", "--match")
    return connector


COLUMNS = "name,customertypecode,_bcbi_companyid_value"


def test_a_file_with_one_bad_row_imports_nothing_and_names_the_row(env: ConnectorEnv, tmp_path: Path) -> None:
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Bad File {tag} {i}" for i in range(3)])
    path = tmp_path / "customers.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "number", "displayName", "city", "creditLimit"])
        writer.writeheader()
        for index, record in enumerate(records):
            writer.writerow({"id": record["id"], "number": record["number"], "city": "Turku",
                             "displayName": record["displayName"] + (" x" * 100 if index == 1 else ""),
                             "creditLimit": "1000" if index != 2 else "lots"})
    message = env.fail("import", "CUSTOMER", str(path))
    assert "nothing imported, 2 bad row(s)" in message
    assert "line 3: name is" in message and "Dataverse allows 160" in message
    assert "line 4: 'lots' is not a number" in message
    assert env.accounts(f"Bad File {tag}", select=COLUMNS) == []
    assert [c for c in env.couplings("customers") if c.bc_id in {r["id"] for r in records}] == []


def test_export_then_import_300_customers_couples_every_one(env: ConnectorEnv, tmp_path: Path) -> None:
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Imported {tag} {i:03d}" for i in range(300)], city="Espoo",
                                   creditLimit=2500)
    exported = tmp_path / "all.xlsx"
    out = env.run("export", "CUSTOMER", str(exported))
    assert out["records"] >= 300
    book = openpyxl.load_workbook(exported)
    sheet = book.worksheets[0]
    header = [c.value for c in sheet[1]]
    assert header[:2] == ["id", "number"] and {"displayName", "city", "creditLimit"} <= set(header)
    ours = [row for row in sheet.iter_rows(min_row=2, values_only=True)
            if str(row[header.index("displayName")]).startswith(f"Imported {tag}")]
    assert len(ours) == 300
    chosen = tmp_path / "ours.xlsx"
    selection = openpyxl.Workbook()
    selection.active.append(header)
    for row in ours:
        selection.active.append(list(row))
    selection.save(chosen)

    result = env.run("import", "CUSTOMER", str(chosen))
    inserted, coupling = result["jobs"]
    assert inserted["inserted"] == 300 and coupling["coupled"] == 300 and coupling["failed"] == 0
    rows = env.accounts(f"Imported {tag}", select=COLUMNS)
    assert len(rows) == 300
    company = env.run("test-connection")["bcbi_company"]
    assert Counter((r["customertypecode"], r["_bcbi_companyid_value"]) for r in rows) == Counter({(3, company): 300})
    couplings = [c for c in env.couplings("customers") if c.bc_id in {r["id"] for r in records}]
    assert len(couplings) == 300 and {c.dataverse_id for c in couplings} == {r["accountid"] for r in rows}

    again = env.run("import", "CUSTOMER", str(chosen))  # the same file again: the same rows, not new ones
    assert again["jobs"][1]["coupled"] == 0 and len(env.accounts(f"Imported {tag}", select=COLUMNS)) == 300


def test_dry_runs_of_import_and_match_based_coupling_change_nothing(env: ConnectorEnv, tmp_path: Path) -> None:
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Dry Import {tag} {i}" for i in range(3)])
    path = tmp_path / "dry.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "number", "displayName"])
        writer.writeheader()
        writer.writerows({"id": r["id"], "number": r["number"], "displayName": r["displayName"]} for r in records)
    env.clear_journals()
    out = env.run("import", "CUSTOMER", str(path), "--dry-run")
    inserted, coupling = out["jobs"]
    assert inserted["dry_run"] and inserted["inserted"] == 3
    assert [line for line in inserted["plan"]] == [f"insert account {r['displayName']}" for r in records]
    assert coupling["dry_run"] and coupling["failed"] == 3  # nothing was inserted, so nothing matches
    matched = env.run("match-couple", "CUSTOMER", records[0]["number"], "--create-new", "--dry-run")["jobs"][0]
    assert matched["plan"] == [f"no unique match for Customer {records[0]['number']}",
                               f"create Customer {records[0]['number']} in Dataverse"]
    writes = [e for s in ("dataverse", "bc") for e in env.journal(s)
              if e["method"] != "GET" and not e["path"].startswith("/_sandbox")]
    assert writes == [] and env.accounts(f"Dry Import {tag}", select=COLUMNS) == []
    assert [c for c in env.couplings("customers") if c.bc_id in {r["id"] for r in records}] == []
