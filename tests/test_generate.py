"""The synthetic data generator (`mockservers generate`): deterministic data, the overlap shares asked
for, bodies both services accept, loading through the bulk paths only, and the command's output."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from connector.matching import Matcher
from mockservers.bc.tables import build_schema as bc_schema
from mockservers.cli import main as mockservers_main
from mockservers.dataverse.tables import build_schema as dataverse_schema
from mockservers.generate import (
    Dataset,
    LoadError,
    Scale,
    _Companies,
    case_variant,
    generate,
    load,
    vocabulary,
)
from mockservers.testing import RunningSandbox

SMALL = Scale(customers=300, accounts=300, contacts=50, items=50, overlap=0.5, case_variants=0.2, duplicates=0.1,
              seed=11)


# -- generating (pure) --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data() -> None:
    scale = Scale(customers=200, accounts=150, contacts=20, items=20, seed=7)
    first, again = generate(scale), generate(scale)
    assert first == again
    other = generate(Scale(customers=200, accounts=150, contacts=20, items=20, seed=8))
    for service in ("bc", "dataverse"):
        for name, rows in getattr(first, service).items():
            assert rows != getattr(other, service)[name], f"{service}/{name} did not change with the seed"
    # each kind of record draws from its own stream: more contacts leave the customers as they were
    assert generate(Scale(customers=200, accounts=150, contacts=40, seed=7)).bc["customers"] == first.bc["customers"]


def overlap_counts(dataset: Dataset) -> dict[str, int]:
    """What match-based coupling on the name (ignoring case) would see, counted from the bodies."""
    accounts: dict[str, list[str]] = defaultdict(list)
    for row in dataset.dataverse["accounts"]:
        accounts[row["name"].casefold()].append(row["name"])
    names = [c["displayName"] for c in dataset.bc["customers"]]
    found = [(name, accounts.get(name.casefold(), [])) for name in names]
    return {
        "customers": len(names),
        "distinct customer names": len({n.casefold() for n in names}),
        "accounts": len(dataset.dataverse["accounts"]),
        "overlapping": sum(1 for _, rows in found if rows),
        "duplicated": sum(1 for _, rows in found if len(rows) == 2),
        "more than two": sum(1 for _, rows in found if len(rows) > 2),
        "matching": sum(1 for _, rows in found if len(rows) == 1),
        "case variants": sum(1 for name, rows in found if len(rows) == 1 and rows[0] != name),
        "accounts of no customer": len(dataset.dataverse["accounts"]) - sum(len(rows) for _, rows in found),
        "distinct names of those": len(set(accounts) - {n.casefold() for n in names}),
    }


@pytest.mark.parametrize("scale", [
    Scale(customers=1000, accounts=1200, overlap=0.3, case_variants=0.25, duplicates=0.1, seed=3),
    Scale(customers=500, overlap=1.0, case_variants=1.0, duplicates=0.0),
    Scale(customers=400, accounts=900, overlap=0.5, case_variants=0.0, duplicates=1.0),
    Scale(customers=300, accounts=50, overlap=0.0),
], ids=["mixed", "all-match-all-case", "all-duplicated", "no-overlap"])
def test_the_overlap_shares_are_the_ones_asked_for(scale: Scale) -> None:
    dataset = generate(scale)
    overlapping = round(scale.overlap * scale.customers)
    duplicated = round(scale.duplicates * overlapping)
    matching = overlapping - duplicated
    accounts = scale.account_count
    assert overlap_counts(dataset) == {
        "customers": scale.customers, "distinct customer names": scale.customers, "accounts": accounts,
        "overlapping": overlapping, "duplicated": duplicated, "more than two": 0, "matching": matching,
        "case variants": round(scale.case_variants * matching),
        "accounts of no customer": accounts - matching - 2 * duplicated,
        "distinct names of those": accounts - matching - 2 * duplicated,
    }
    assert dataset.matching == matching


def test_every_body_fits_the_declared_tables() -> None:
    """Field names exist, are writable and their text fits the declared length (the services' own
    declarations), at a size where every word list is used."""
    dataset = generate(Scale(customers=2000, accounts=2000, contacts=500, items=500, seed=5))
    bc, dataverse = bc_schema(), dataverse_schema()
    sets = [(bc, name, rows) for name, rows in dataset.bc.items()]
    sets += [(dataverse, name, rows) for name, rows in dataset.dataverse.items()]
    sets += [(bc, name, rows) for name, rows in dataset.reference["bc"].items()]
    sets += [(dataverse, name, rows) for name, rows in dataset.reference["dataverse"].items()]
    checked = 0
    for schema, name, rows in sets:
        entity = schema.by_set(name)
        assert entity is not None, name
        for row in rows:
            for field, value in row.items():
                if field.startswith("@odata."):
                    continue
                prop = entity.property(field)
                assert prop is not None and not prop.read_only and not prop.hidden, f"{name}.{field}"
                if isinstance(value, str) and prop.max_length:
                    assert len(value) <= prop.max_length, f"{name}.{field} = {value!r}"
                if prop.options is not None and isinstance(value, str):
                    assert value in [o.label for o in prop.options.options], f"{name}.{field} = {value!r}"
                checked += 1
    assert checked > 30_000
    assert {r["code"] for r in dataset.reference["bc"]["countriesRegions"]} == {
        r["country"] for r in [*dataset.bc["customers"], *dataset.bc["contacts"]]}


def test_company_names_stay_distinct_past_the_word_combinations() -> None:
    words = {**vocabulary(), "company": {"prefixes": ["Alder", "Birch"], "cores": ["Mills"], "suffixes": ["", "Ltd"],
                                         "mailboxes": ["info"]}}
    names = _Companies(words, random.Random(1)).names(11)
    assert len({n.casefold() for n in names}) == 11
    assert sorted(names)[:5] == ["Alder Mills", "Alder Mills 2", "Alder Mills 3", "Alder Mills Ltd", "Alder Mills Ltd 2"]


@pytest.mark.parametrize("name", ["Harbor Textiles Ltd", "Ørsund Mills A/S", "Élan Foods 2", "x"])
def test_a_case_variant_differs_in_letter_case_only(name: str) -> None:
    rng = random.Random(4)
    for _ in range(20):
        variant = case_variant(name, rng)
        assert variant != name and variant.casefold() == name.casefold()


@pytest.mark.parametrize(("fields", "says"), [
    ({"customers": -1}, "customers must be a whole number of 0 or more"),
    ({"items": 2.5}, "items must be a whole number"),
    ({"overlap": 1.5}, "overlap must be a share between 0 and 1"),
    ({"case_variants": -0.1}, "case-variants must be a share between 0 and 1"),
    ({"duplicates": 2}, "duplicates must be a share between 0 and 1"),
    ({"customers": 100, "accounts": 10}, "needs 50 accounts; there are 10"),
    ({"customers": 100, "accounts": 55, "duplicates": 0.2}, "needs 60 accounts; there are 55"),
])
def test_a_scale_refuses_what_cannot_be_generated(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Scale(**fields)


# -- loading into a sandbox ---------------------------------------------------------------------


def rows(session: requests.Session, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        resp = session.get(next_url, params=params if next_url == url else None)
        assert resp.status_code == 200, resp.text
        found += resp.json()["value"]
        next_url = resp.json().get("@odata.nextLink")
    return found


def count(session: requests.Session, url: str) -> int:
    resp = session.get(f"{url}/$count")
    assert resp.status_code == 200, resp.text
    return int(resp.content.decode("utf-8-sig"))


@pytest.mark.sandbox(fixture=None)
def test_a_small_scale_loads_through_the_bulk_paths_only(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    company = sb.companies[0]
    dataset = generate(SMALL)
    report = sb.generate(SMALL)

    # only bulk writes: a BC batch of each kind of reference row, then 100 records a batch, one
    # CreateMultiple a Dataverse set; besides them one keyed read (is this seed loaded already?), a read
    # per reference set, and the products' unit group made once (an empty org has none), its base unit read
    journal = sb.journal
    writes = [(r.service, r.method, r.path.rsplit("/", 1)[-1], r.batch_operations)
              for r in journal.requests() if r.method != "GET"]
    assert [w for w in writes if w[0] == "bc"] == [
        ("bc", "POST", "$batch", n) for n in (len(dataset.reference["bc"]["countriesRegions"]), 2, 100, 100, 100, 50, 50)]
    assert [w[:3] for w in writes if w[0] == "dataverse"] == [
        ("dataverse", "POST", "uomschedules"), *[("dataverse", "POST", "Microsoft.Dynamics.CRM.CreateMultiple")] * 3]
    reads = [(r.service, r.path.rsplit("/", 1)[-1]) for r in journal.requests(method="GET")]
    assert reads == [("dataverse", "accounts"), ("bc", "countriesRegions"), ("bc", "unitsOfMeasure"),
                     ("dataverse", "uomschedules"), ("dataverse", "uoms")]
    assert all(200 <= r.status < 300 for r in journal.requests())
    assert report.requests == len(journal.requests()) == 16

    bc, dv = sb.bc_session(), sb.session()
    in_company = f"{sb.bc_api}/companies({company})"
    assert {name: count(bc, f"{in_company}/{name}") for name in dataset.bc} == {"customers": 300, "contacts": 50,
                                                                                 "items": 50}
    assert {name: count(dv, f"{sb.api}/{name}") for name in dataset.dataverse} == {"accounts": 300, "contacts": 50,
                                                                                   "products": 50}
    assert report.counts == {"bc/countriesRegions": len(dataset.reference["bc"]["countriesRegions"]),
                             "bc/unitsOfMeasure": 2, "bc/customers": 300, "bc/contacts": 50, "bc/items": 50,
                             "dataverse/uomschedules": 1, "dataverse/accounts": 300, "dataverse/contacts": 50,
                             "dataverse/products": 50}

    # the connector's match rule (name, ignoring case, within the CUSTOMER mapping's accounts) finds
    # `matching` unique pairs
    customers = rows(bc, f"{in_company}/customers", {"$select": "id,displayName"})
    accounts = rows(dv, f"{sb.api}/accounts", {"$select": "accountid,name",
                                               "$filter": "customertypecode eq 3 and statecode eq 0"})
    matcher = Matcher(accounts, "accountid")
    by_name = SimpleNamespace(dataverse_field="name", case_sensitive=False)
    found = [len(matcher.matches([(by_name, c["displayName"])])) for c in customers]
    assert found.count(1) == dataset.matching == 135
    assert found.count(2) == 15
    # and the service agrees: a case variant is found by the customer's own spelling
    variants = {row["name"].casefold(): row["name"] for row in dataset.dataverse["accounts"]}
    differing = [c["displayName"] for c in customers if variants.get(c["displayName"].casefold(), c["displayName"])
                 != c["displayName"]]
    assert len(differing) == round(0.2 * 135)
    for name in differing[:5]:
        quoted = name.replace("'", "''")
        hits = rows(dv, f"{sb.api}/accounts", {"$select": "name", "$filter": f"name eq '{quoted}'"})
        assert [h["name"] for h in hits] == [variants[name.casefold()]]


@pytest.mark.sandbox(fixture=None)
def test_a_refused_record_is_named_with_the_services_message(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    company = sb.companies[0]
    dataset = generate(Scale(customers=30, accounts=30, seed=2))
    dataset.bc["customers"][6]["country"] = "ZZ"
    args: dict[str, Any] = {"dataverse": sb.session(), "dataverse_api": sb.api, "bc": sb.bc_session(),
                            "bc_api": sb.bc_api, "company_id": company}
    with pytest.raises(LoadError) as refused:
        load(dataset, **args)
    name = dataset.bc["customers"][6]["displayName"]
    assert str(refused.value).startswith(f"Business Central refused customers record 7 ({name!r}): 400 "
                                         "Application_DialogException: The field country of table Customer contains "
                                         "a value (ZZ) that cannot be found")
    # the batch is atomic: none of its 30 customers stayed
    assert count(sb.bc_session(), f"{sb.bc_api}/companies({company})/customers") == 0

    dataset = generate(Scale(customers=0, accounts=30, overlap=0, seed=2))
    dataset.dataverse["accounts"][4]["name"] = "N" * 161
    with pytest.raises(LoadError) as refused:
        load(dataset, **args)
    first = dataset.dataverse["accounts"][0]["name"]
    assert str(refused.value) == (
        f"Dataverse refused accounts records 1-30 (the first {first!r}): 400 0x80044331: A validation error occurred.  "
        "The length of the 'name' attribute of the 'account' entity exceeded the maximum allowed length of '160'.")
    assert count(sb.session(), f"{sb.api}/accounts") == 0


@pytest.mark.sandbox(fixture=None)
def test_the_same_seed_is_not_loaded_twice(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    scale = Scale(customers=20, accounts=20, seed=9)
    sb.generate(scale)
    with pytest.raises(LoadError, match=r"^Dataverse already has an account numbered [A-Z]{4}-000001: this seed was "
                                        r"loaded into the sandbox before; generate with another seed"):
        sb.generate(scale)
    assert count(sb.bc_session(), f"{sb.bc_api}/companies({sb.companies[0]})/customers") == 20
    assert sb.generate(Scale(customers=20, accounts=20, seed=10)).counts["bc/customers"] == 20


# -- the command --------------------------------------------------------------------------------


def test_mockservers_generate_loads_a_running_sandbox(sandbox_live: RunningSandbox) -> None:
    sb = sandbox_live
    assert sb.ca_bundle  # the command reaches the sandbox over TLS with its CA
    first, second = sb.companies[:2]
    bc, dv = sb.bc_session(), sb.session()
    before = (count(bc, f"{sb.bc_api}/companies({first})/customers"), count(dv, f"{sb.api}/accounts"))
    result = CliRunner().invoke(mockservers_main, [
        "generate", "--customers", "150", "--accounts", "120", "--contacts", "10", "--items", "10",
        "--overlap", "0.4", "--case-variants", "0.5", "--duplicates", "0.25", "--seed", "3",
        "--data-dir", str(sb.data_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("loaded ") and "150 bc/customers, 10 bc/contacts, 10 bc/items" in lines[0]
    assert "120 dataverse/accounts, 10 dataverse/contacts, 10 dataverse/products in " in lines[0]
    assert lines[0].endswith("; 45 customers match exactly one account by name") and " records/s, " in lines[0]
    assert (count(bc, f"{sb.bc_api}/companies({first})/customers"), count(dv, f"{sb.api}/accounts")) == (
        before[0] + 150, before[1] + 120)

    name = next(c["name"] for c in sb.info["bc"]["companies"] if c["id"] == second)
    in_second = count(bc, f"{sb.bc_api}/companies({second})/customers")
    out = CliRunner().invoke(mockservers_main, ["generate", "--customers", "20", "--seed", "4", "--company", name,
                                                "--json", "--data-dir", str(sb.data_dir)])
    assert out.exit_code == 0, out.output
    outcome = json.loads(out.output)
    assert outcome["counts"]["bc/customers"] == 20 and outcome["counts"]["dataverse/accounts"] == 20
    assert outcome["company"] == second and outcome["matching"] == 10 and outcome["requests"] >= 2
    assert count(bc, f"{sb.bc_api}/companies({second})/customers") == in_second + 20


@pytest.mark.parametrize(("args", "says"), [
    (["--customers", "-5"], "Error: customers must be a whole number of 0 or more; got -5"),
    (["--overlap", "1.5"], "Error: overlap must be a share between 0 and 1; got 1.5"),
    (["--case-variants", "-0.1"], "Error: case-variants must be a share between 0 and 1"),
    (["--customers", "100", "--accounts", "10"], "needs 50 accounts; there are 10"),
    ([], "sandbox.json not found; start the sandbox with `mockservers serve` first"),
])
def test_mockservers_generate_refuses_bad_input_in_one_line(tmp_path: Any, args: list[str], says: str) -> None:
    result = CliRunner().invoke(mockservers_main, ["generate", *args, "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_mockservers_generate_names_an_unknown_company(sandbox_live: RunningSandbox) -> None:
    result = CliRunner().invoke(mockservers_main, ["generate", "--customers", "1", "--company", "Nowhere Inc",
                                                   "--data-dir", str(sandbox_live.data_dir)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.startswith("Error: no BC company 'Nowhere Inc' in this sandbox; it has CRONUS USA, Inc. (")
    assert len(result.output.strip().splitlines()) == 1
