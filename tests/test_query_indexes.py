"""Query indexes and prepared `$filter` expressions (issue #10, filtered queries).

- Each table has the indexes its declaration calls for (``mockservers.odata.indexes``): the primary
  name, the state, lookups and the modified-on stamp (each after the scope), alternate keys (unique),
  also in a data dir written before they were declared.
- The SQL a service runs for an ``eq`` on each of those columns searches by the index (SQLite's
  ``EXPLAIN QUERY PLAN``; PostgreSQL's ``EXPLAIN`` with sequential scans off, when the leg runs).
- An index never changes a result: the same queries give the same rows in the same order with the
  indexes and without them, and that order is the one computed here in Python from the rows.
- Prepared expressions are cached per text, entity, service, dialect options and parameter aliases,
  never when they read the clock or the caller, and errors are never cached.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cmp_to_key
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from odata_query import ast

from mockservers.bc.filters import BCFilters
from mockservers.bc.tables import build_schema as build_bc_schema
from mockservers.dataverse.query_functions import DataverseFilters
from mockservers.dataverse.tables import build_schema as build_dataverse_schema
from mockservers.dataverse.tables import load_customizations
from mockservers.odata import indexes
from mockservers.odata.errors import QuerySyntaxError
from mockservers.odata.filter import FilterDialect
from mockservers.odata.filter_syntax import CACHED_TEXT_LENGTH, parse_filter
from mockservers.odata.schema import Edm, EntityType, Option, OptionSet, Property, Schema
from mockservers.odata.storage import Store
from mockservers.testing import RunningSandbox, start_sandbox
from tests.conftest import POSTGRES_ENV, empty_database, postgres_databases

CUSTOMIZATIONS = Path(__file__).resolve().parents[1] / "fixtures" / "default" / "dataverse-customizations.json"
DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])
Factory = Callable[..., RunningSandbox]


def dataverse_schema() -> Schema:
    return build_dataverse_schema(load_customizations(CUSTOMIZATIONS))


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or (PostgreSQL leg) a PostgreSQL database."""
    with empty_database(request.param, tmp_path, "dataverse") as url:
        yield url


def reflected(engine: sa.Engine, table: str) -> dict[str, tuple[list[str], bool]]:
    return {ix["name"]: (list(ix["column_names"]), bool(ix["unique"])) for ix in sa.inspect(engine).get_indexes(table)
            if ix["name"]}


# -- (a) the indexes each kind of column gets ------------------------------------------------------
# (service, table, index, columns, unique, what the column is)
INDEXES = [
    ("dataverse", "account", "ix_account_name", ["name", "accountid"], False, "primary name"),
    ("dataverse", "contact", "ix_contact_fullname", ["fullname", "contactid"], False, "primary name"),
    ("dataverse", "account", "ix_account_statecode", ["statecode", "accountid"], False, "state"),
    ("dataverse", "account", "ix_account__parentaccountid_value", ["_parentaccountid_value"], False, "lookup"),
    ("dataverse", "contact", "ix_contact__parentcustomerid_value", ["_parentcustomerid_value"], False,
     "polymorphic lookup"),
    ("dataverse", "account", "ix_account_modifiedon", ["modifiedon", "accountid"], False, "modified-on"),
    ("dataverse", "account", "ux_account_sbx_accountnumber_key", ["accountnumber"], True, "alternate key"),
    ("dataverse", "account", "ix_account_versionnumber", ["versionnumber"], False, "row version"),
    ("bc", "customer", "ix_customer_displayName", ["companyId", "displayName", "id"], False, "primary name, scoped"),
    ("bc", "customer", "ux_customer_number", ["companyId", "number"], True, "alternate key, scoped"),
    ("bc", "currency", "ux_currency_code", ["companyId", "code"], True, "alternate key, scoped"),
    ("bc", "customer", "ix_customer_lastModifiedDateTime", ["companyId", "lastModifiedDateTime", "id"], False,
     "modified-on, scoped"),
    ("bc", "customer", "ix_customer_currencyId", ["companyId", "currencyId"], False, "lookup, scoped"),
    ("bc", "customer", "ix_customer_scope", ["companyId"], False, "scope"),
    ("bc", "company", "ix_company_name", ["name", "id"], False, "primary name, unscoped"),
]
# Columns no index is declared for: not a common filter target, or a unique index covers them already.
UNINDEXED = [
    ("dataverse", "account", "emailaddress1"),
    ("dataverse", "account", "accountnumber"),  # its alternate key's unique index serves it
    ("bc", "customer", "number"),
    ("bc", "customer", "email"),
]


def build_store(service: str, url: str) -> Store:
    return Store(dataverse_schema() if service == "dataverse" else build_bc_schema(), url)


@pytest.mark.parametrize(("service", "table", "name", "columns", "unique", "kind"), INDEXES,
                         ids=[f"{row[0]}-{row[5]}" for row in INDEXES])
def test_each_kind_of_column_gets_its_index(db_url: str, service: str, table: str, name: str, columns: list[str],
                                            unique: bool, kind: str) -> None:
    store = build_store(service, db_url)
    try:
        assert reflected(store.engine, table).get(name) == (columns, unique)
    finally:
        store.engine.dispose()


@pytest.mark.parametrize(("service", "table", "column"), UNINDEXED)
def test_other_columns_get_no_query_index(service: str, table: str, column: str) -> None:
    store = build_store(service, "sqlite://")
    assert f"ix_{table}_{column}" not in reflected(store.engine, table)


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_every_declared_index_exists_in_the_database(db_url: str, service: str) -> None:
    store = build_store(service, db_url)
    try:
        for table in store.metadata.sorted_tables:
            declared = {ix.name: ([c.name for c in ix.columns], bool(ix.unique)) for ix in table.indexes}
            assert reflected(store.engine, table.name) == declared, table.name
    finally:
        store.engine.dispose()


def test_a_data_dir_written_before_gets_the_declared_indexes(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """An older data dir: some indexes missing, one of an older shape, one no declaration names any
    more, and rows that break an alternate key declared since. Opening it brings the indexes in step
    and keeps every row."""
    store = build_store("dataverse", db_url)
    account = store.schema.entity("account")
    assert account is not None
    with store.write() as conn:
        for name in ("ix_account_name", "ix_account_statecode", "ix_account_modifiedon", "ux_account_sbx_accountnumber_key"):
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("CREATE INDEX ix_account_modifiedon ON account (modifiedon)")  # older shapes
        conn.exec_driver_sql("DROP INDEX ix_account__parentaccountid_value")
        conn.exec_driver_sql("CREATE INDEX ix_account__parentaccountid_value ON account (_parentaccountid_value, accountid)")
        conn.exec_driver_sql("CREATE INDEX ix_account_retired ON account (telephone1)")
        rows = [{"accountid": str(uuid.uuid4()), "name": f"Old {i}", "accountnumber": "DUP", "statecode": 0,
                 "statuscode": 1} for i in range(2)]
        conn.execute(store.table(account).insert(), rows)
    store.engine.dispose()

    with caplog.at_level(logging.WARNING, logger=indexes.__name__):
        reopened = build_store("dataverse", db_url)
    try:
        found = reflected(reopened.engine, "account")
        assert found["ix_account_name"] == (["name", "accountid"], False)
        assert found["ix_account_statecode"] == (["statecode", "accountid"], False)
        assert found["ix_account__parentaccountid_value"] == (["_parentaccountid_value"], False)
        assert found["ix_account_modifiedon"] == (["modifiedon", "accountid"], False)
        assert "ix_account_retired" not in found
        # The duplicate account numbers keep the unique index out, with a warning instead of a failed start.
        assert "ux_account_sbx_accountnumber_key" not in found
        assert "ux_account_sbx_accountnumber_key" in caplog.text
        with reopened.read() as conn:
            assert reopened.count(conn, account) == 2
    finally:
        reopened.engine.dispose()


# -- (b) an eq filter on each indexed column searches by its index -----------------------------------
COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
GUID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"  # upper case: GUIDs are compared lower-case
# (service, entity set, $filter, table, index the search must use)
PLANS = [
    ("dataverse", "accounts", "name eq 'Contoso'", "account", "ix_account_name"),
    ("dataverse", "accounts", "'CONTOSO' eq name", "account", "ix_account_name"),
    ("dataverse", "accounts", "accountnumber eq 'N042'", "account", "ux_account_sbx_accountnumber_key"),
    ("dataverse", "accounts", "statecode eq 1", "account", "ix_account_statecode"),
    ("dataverse", "accounts", f"_parentaccountid_value eq {GUID}", "account", "ix_account__parentaccountid_value"),
    ("dataverse", "accounts", f"_ownerid_value eq {GUID}", "account", "ix_account__ownerid_value"),
    ("dataverse", "accounts", "modifiedon eq 2030-01-01T00:00:00Z", "account", "ix_account_modifiedon"),
    ("dataverse", "contacts", "fullname eq 'Yvonne McKay'", "contact", "ix_contact_fullname"),
    ("dataverse", "contacts", f"_parentcustomerid_value eq {GUID}", "contact", "ix_contact__parentcustomerid_value"),
    # With the state too, the more selective index is searched (the state's index would read every active row).
    ("dataverse", "accounts", "statecode eq 0 and name eq 'Contoso'", "account", "ix_account_name"),
    ("dataverse", "accounts", "name eq 'Contoso' and statecode eq 0", "account", "ix_account_name"),
    ("dataverse", "accounts", "statecode eq 0 and accountnumber eq 'N042'", "account",
     "ux_account_sbx_accountnumber_key"),
    ("bc", "customers", "number eq '10000'", "customer", "ux_customer_number"),
    ("bc", "customers", "displayName eq 'adatum corporation'", "customer", "ix_customer_displayName"),
    ("bc", "customers", "lastModifiedDateTime eq 2030-01-01T00:00:00Z", "customer", "ix_customer_lastModifiedDateTime"),
    ("bc", "customers", f"currencyId eq {GUID}", "customer", "ix_customer_currencyId"),
    ("bc", "items", "displayName eq 'ATHENS Desk'", "item", "ix_item_displayName"),
    ("bc", "currencies", "code eq 'EUR'", "currency", "ux_currency_code"),
]


@pytest.fixture(scope="module", params=DATABASES)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """A seeded live sandbox (plain HTTP) on SQLite files, or on PostgreSQL databases."""
    directory = tmp_path_factory.mktemp("sandbox")
    if request.param == "sqlite":
        running = start_sandbox(directory, mode="live", tls=False)
        yield running
        running.stop()
        return
    with postgres_databases(os.environ[POSTGRES_ENV]) as created:
        running = start_sandbox(directory, mode="live", tls=False, db_url=created.dataverse, bc_db_url=created.bc)
        yield running
        running.stop()


def list_statement(sb: RunningSandbox, service: str, url: str, session: requests.Session,
                   table: str, headers: dict[str, str] | None = None) -> tuple[str, Any]:
    """The SELECT the service runs for a collection GET (statement and parameters as sent to the driver)."""
    engine = sb.sandbox.backends[service].store.engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        response = session.get(url, headers=headers)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert response.status_code == 200, response.text
    selects = [(s, p) for s, p in seen if s.lstrip().startswith("SELECT") and f"\nFROM {table} " in f"{s} "
               and "WHERE" in s and "ORDER BY" in s]
    assert selects, seen
    return selects[0]


def query_plan(store: Store, statement: str, parameters: Any, table: str, index: str) -> str:
    """SQLite: the plan its planner picks. PostgreSQL: whether the statement can search by ``index`` at
    all (its planner's pick among a table's indexes is arbitrary while the tables are this small): the
    table's other indexes dropped and sequential scans off, in a transaction rolled back afterwards."""
    with store.engine.connect() as conn:
        if store.is_sqlite:
            return "\n".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        transaction = conn.begin()
        try:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            for other in store.metadata.tables[table].indexes:
                if other.name != index:
                    conn.exec_driver_sql(f"DROP INDEX {conn.dialect.identifier_preparer.quote(str(other.name))}")
            plan = [row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]
        finally:
            transaction.rollback()
        return "\n".join(plan).replace('"', "")


@pytest.mark.parametrize(("service", "entity_set", "text", "table", "index"), PLANS,
                         ids=[f"{row[0]}-{row[2]}" for row in PLANS])
def test_an_eq_filter_searches_by_the_index(served: RunningSandbox, service: str, entity_set: str, text: str,
                                            table: str, index: str) -> None:
    if service == "dataverse":
        url, session = f"{served.api}/{entity_set}?$filter={text}", served.session()
    else:
        url, session = f"{served.bc_api}/companies({COMPANY})/{entity_set}?$filter={text}", served.bc_session()
    statement, parameters = list_statement(served, service, url, session, table)
    store = served.sandbox.backends[service].store
    plan = query_plan(store, statement, parameters, table, index)
    if store.is_sqlite:
        assert f"SEARCH {table} USING INDEX {index} (" in plan or f"USING COVERING INDEX {index} (" in plan, plan
    else:
        assert f" using {index} on {table}" in plan or f" on {index}" in plan, plan


def test_a_filter_on_many_ids_seeks_each_id(served: RunningSandbox) -> None:
    """``id eq a or id eq b …`` (how the connector reads back the records it was told about) looks up
    each id by the key. Without a row-count hint on BC's alternate keys, SQLite's planner took the
    (company, number) index for a cheap way to read the rows in number order and walked every
    customer of the company for each such query."""
    ids = " or ".join(f"id eq {uuid.UUID(int=n)}" for n in range(1, 31))
    url = f"{served.bc_api}/companies({COMPANY})/customers?$filter={ids}"
    statement, parameters = list_statement(served, "bc", url, served.bc_session(), "customer")
    store = served.sandbox.backends["bc"].store
    key_index = "sqlite_autoindex_customer_1" if store.is_sqlite else "customer_pkey"
    plan = query_plan(store, statement, parameters, "customer", key_index)
    if store.is_sqlite:
        assert f"SEARCH customer USING INDEX {key_index} (id=? AND companyId=?)" in plan, plan
        assert "ux_customer_number" not in plan, plan
    else:
        assert key_index in plan, plan


# -- (b2) a page after the first is read in order, not sorted whole ---------------------------------
COMPANY_OR_NONE = f"(_bcbi_companyid_value eq {GUID} or _bcbi_companyid_value eq null)"
# (service, entity set, query, table): pages the connector and common clients read one after another
NEXT_PAGES = [
    ("bc", "customers", "$select=number", "customer"),  # BC's own order: by number, then the id
    ("bc", "customers", "$orderby=displayName", "customer"),
    ("dataverse", "accounts", "$select=name", "account"),  # key order
    ("dataverse", "accounts", "$orderby=name", "account"),
    ("dataverse", "accounts", "$filter=_parentaccountid_value eq null", "account"),  # most rows: no parent
    ("dataverse", "accounts", f"$filter=customertypecode eq 3 and statecode eq 0 and {COMPANY_OR_NONE}",
     "account"),  # the CUSTOMER mapping's filter
]


@pytest.mark.parametrize(("service", "entity_set", "query", "table"), NEXT_PAGES,
                         ids=[f"{row[0]}-{row[2]}" for row in NEXT_PAGES])
def test_a_next_page_is_read_in_order(served: RunningSandbox, service: str, entity_set: str, query: str,
                                      table: str) -> None:
    """A page after the first continues after the last row it showed. The query reads the rows in
    order through an index from there, so each page costs the same however many rows follow; a
    condition that no index serves in order made SQLite sort every later row for every page (a run
    through 100k rows quadratic). Where two rows can tie (a text column), the ties alone are sorted.
    SQLite's plan; PostgreSQL's planner weighs its own statistics."""
    if service == "dataverse":
        url, session = f"{served.api}/{entity_set}?{query}", served.session()
    else:
        url, session = f"{served.bc_api}/companies({COMPANY})/{entity_set}?{query}", served.bc_session()
    headers = {"Prefer": "odata.maxpagesize=1"}
    first = session.get(url, headers=headers)
    assert first.status_code == 200, first.text
    next_link = first.json().get("@odata.nextLink")
    assert next_link, "the seeded rows fill more than one page"
    statement, parameters = list_statement(served, service, next_link, session, table, headers)
    store = served.sandbox.backends[service].store
    if store.is_sqlite:
        plan = query_plan(store, statement, parameters, table, "")
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:  # the same rows either way: the statement at least runs and answers the page
        assert session.get(next_link, headers=headers).json()["value"]


# -- (c) an index never changes a result's order ---------------------------------------------------
NAMES = ["Alpha", "alpha", "ALPHA", "Beta", "beta", None, None, "Ärger", "ärger", "Zulu", "zulu", "Mid"]


def expected_order(rows: list[dict[str, Any]], orderby: list[tuple[str, bool]], key: str) -> list[str]:
    """Keys in the order OData asks for, computed in Python: the order-by columns (text ignoring case,
    NULLs first ascending and last descending), then the key."""
    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for column, desc in orderby:
            x, y = a[column], b[column]
            if isinstance(x, str) and isinstance(y, str):
                x, y = x.lower(), y.lower()
            if x == y:
                continue
            if x is None or y is None:
                first = -1 if x is None else 1
                return -first if desc else first
            result = -1 if x < y else 1
            return -result if desc else result
        return -1 if a[key] < b[key] else 1 if a[key] > b[key] else 0
    return [row[key] for row in sorted(rows, key=cmp_to_key(compare))]


def all_pages(session: requests.Session, url: str, page_size: int | None = None) -> list[dict[str, Any]]:
    headers = {"Prefer": f"odata.maxpagesize={page_size}"} if page_size else {}
    rows: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = session.get(next_url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        rows.extend(body["value"])
        next_url = body.get("@odata.nextLink")
    return rows


def drop_query_indexes(store: Store) -> None:
    with store.write() as conn:
        for table in store.metadata.sorted_tables:
            for index in table.indexes:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {conn.dialect.identifier_preparer.quote(str(index.name))}")


# (label, $filter or None, $orderby as (column, descending) pairs, which rows match, $top)
DATAVERSE_QUERIES: list[tuple[str, str | None, list[tuple[str, bool]], Callable[[dict[str, Any]], bool], int | None]] = [
    ("key order", None, [], lambda r: True, None),
    ("by name", None, [("name", False)], lambda r: True, None),
    ("by name desc", None, [("name", True)], lambda r: True, None),
    ("by state desc then name", None, [("statecode", True), ("name", False)], lambda r: True, None),
    ("by modified-on (all tied)", None, [("modifiedon", False)], lambda r: True, None),
    ("eq on a case variant", "name eq 'aLpHa'", [], lambda r: (r["name"] or "").lower() == "alpha", None),
    ("eq on a case variant, by name", "name eq 'ALPHA'", [("name", False)],
     lambda r: (r["name"] or "").lower() == "alpha", None),
    ("eq non-ASCII", "name eq 'ÄRGER'", [("name", True)], lambda r: (r["name"] or "").lower() == "ärger", None),
    ("eq null", "name eq null", [], lambda r: r["name"] is None, None),
    ("state", "statecode eq 0", [("name", True)], lambda r: r["statecode"] == 0, None),
    ("state and name", "statecode eq 1 and name eq 'beta'", [],
     lambda r: r["statecode"] == 1 and (r["name"] or "").lower() == "beta", None),
    ("top, by name", None, [("name", False)], lambda r: True, 5),
    ("top, state by name desc", "statecode eq 0", [("name", True)], lambda r: r["statecode"] == 0, 4),
    # a lookup's index ends with its value, not the key: the matches are sorted after they are read
    ("lookup eq", "_parentaccountid_value eq {parent}", [], lambda r: r["parent"] is not None, None),
    ("lookup eq, by name desc", "_parentaccountid_value eq {parent}", [("name", True)],
     lambda r: r["parent"] is not None, None),
    ("lookup eq null", "_parentaccountid_value eq null", [], lambda r: r["parent"] is None, None),
    ("lookup eq null, top", "_parentaccountid_value eq null", [], lambda r: r["parent"] is None, 3),
]


def orderby_text(orderby: list[tuple[str, bool]]) -> str:
    return ",".join(f"{column} desc" if desc else column for column, desc in orderby)


def test_dataverse_results_are_the_same_with_and_without_indexes(sandbox_factory: Factory) -> None:
    sb = sandbox_factory(fixture=None)
    sb.clock.freeze(datetime(2031, 3, 1, 12, 0, tzinfo=UTC))  # every row has the same modifiedon: ties
    dv = sb.session()
    rows = []
    for index, name in enumerate(NAMES):
        record = {"accountid": str(uuid.uuid4()), "accountnumber": f"ORD{index}"}
        if name is not None:
            record["name"] = name
        assert dv.post(f"{sb.api}/accounts", json=record).status_code == 204
        state = index % 3 == 0
        if state:
            assert dv.patch(f"{sb.api}/accounts({record['accountid']})", json={"statecode": 1, "statuscode": 2},
                            headers={"If-Match": "*"}).status_code == 204
        rows.append({"accountid": record["accountid"], "name": name, "statecode": int(state),
                     "modifiedon": "2031-03-01T12:00:00Z", "parent": None})
    parent = rows[-1]["accountid"]
    for row in rows[:-1:2]:  # every other account (ties by name among them) gets the last one as its parent
        assert dv.patch(f"{sb.api}/accounts({row['accountid']})", headers={"If-Match": "*"},
                        json={"parentaccountid@odata.bind": f"/accounts({parent})"}).status_code == 204
        row["parent"] = parent

    def run() -> dict[str, list[list[str]]]:
        results = {}
        for label, text, orderby, _matches, top in DATAVERSE_QUERIES:
            query = "$select=name"
            query += f"&$filter={text.format(parent=parent)}" if text else ""
            query += f"&$orderby={orderby_text(orderby)}" if orderby else ""
            query += f"&$top={top}" if top else ""
            url = f"{sb.api}/accounts?{query}"
            # whole, and in pages of 2 (keyset paging continues after ties)
            results[label] = [[r["accountid"] for r in all_pages(dv, url, size)] for size in (None, 2)]
        return results

    with_indexes = run()
    drop_query_indexes(sb.sandbox.backends["dataverse"].store)
    without = run()
    for label, _text, orderby, matches, top in DATAVERSE_QUERIES:
        expected = expected_order([r for r in rows if matches(r)], orderby, "accountid")
        # Dataverse ignores $top when odata.maxpagesize is given (the paged reading gets every row).
        assert with_indexes[label] == [expected[:top], expected], label
        assert without[label] == [expected[:top], expected], label


BC_NAMES = ["Alpha", "alpha", "ALPHA", "Beta", "beta", "Ärger", "ärger", "Zulu", "Mid"]
# (label, $filter or None, $orderby, which rows match); without $orderby BC sorts by the number (its key)
BC_QUERIES: list[tuple[str, str | None, list[tuple[str, bool]], Callable[[dict[str, Any]], bool]]] = [
    ("number order", None, [], lambda r: True),
    ("by displayName", None, [("displayName", False)], lambda r: True),
    ("by displayName desc", None, [("displayName", True)], lambda r: True),
    ("by number desc", None, [("number", True)], lambda r: True),
    ("eq on a case variant", "displayName eq 'alpha'", [], lambda r: r["displayName"].lower() == "alpha"),
    ("eq on a case variant, by number", "displayName eq 'ALPHA'", [("number", False)],
     lambda r: r["displayName"].lower() == "alpha"),
]


def test_bc_results_and_pages_are_the_same_with_and_without_indexes(sandbox_factory: Factory) -> None:
    sb = sandbox_factory(fixture=None)
    bc = sb.bc_session()
    base = f"{sb.bc_api}/companies({sb.companies[0]})/customers"
    rows = []
    for index, name in enumerate(BC_NAMES):
        created = bc.post(base, json={"displayName": name, "number": f"ORD{(7 * index) % 10}{index}"})
        assert created.status_code == 201, created.text
        rows.append({key: created.json()[key] for key in ("id", "displayName", "number")})

    def run() -> dict[str, list[list[str]]]:
        results = {}
        for label, text, orderby, _ in BC_QUERIES:
            query = "$select=id"
            query += f"&$filter={text}" if text else ""
            query += f"&$orderby={orderby_text(orderby)}" if orderby else ""
            whole = [r["id"] for r in all_pages(bc, f"{base}?{query}")]
            paged = [r["id"] for skip in range(0, len(rows), 2)
                     for r in all_pages(bc, f"{base}?{query}&$top=2&$skip={skip}")]
            results[label] = [whole, paged]
        return results

    with_indexes = run()
    drop_query_indexes(sb.sandbox.backends["bc"].store)
    without = run()
    for label, _text, orderby, matches in BC_QUERIES:
        expected = expected_order([r for r in rows if matches(r)], orderby or [("number", False)], "id")
        assert with_indexes[label] == [expected, expected], label
        assert without[label] == [expected, expected], label


# -- (d) the cache of parsed and prepared `$filter` expressions ---------------------------------------
def test_a_parsed_tree_is_shared_by_repeats_of_a_short_text() -> None:
    text = "name eq 'Contoso' and statecode eq 0"
    assert parse_filter(text) is parse_filter(text)
    long_text = " or ".join(f"name eq '{i:04d}'" for i in range(CACHED_TEXT_LENGTH // 10))
    assert len(long_text) > CACHED_TEXT_LENGTH
    assert parse_filter(long_text) is not parse_filter(long_text)
    assert parse_filter(long_text) == parse_filter(long_text)


def thing_schema(size: Edm, kind: str | None = None) -> Schema:
    options = OptionSet("Kind", (Option(0, "Small"), Option(1, "Large")))
    return Schema("Test", [EntityType("thing", "things", "id", [
        Property("id", Edm.Guid), Property("size", size),
        Property("kind", Edm.String, kind="Enum", options=options)])])


def test_a_prepared_expression_belongs_to_its_schema_and_dialect() -> None:
    numbers, texts = thing_schema(Edm.Int32), thing_schema(Edm.String)
    number_thing, text_thing = numbers.entity("thing"), texts.entity("thing")
    assert number_thing is not None and text_thing is not None
    first = FilterDialect(numbers).prepare("size eq 5", number_thing)
    assert FilterDialect(numbers).prepare("size eq 5", number_thing) is first  # cached
    with pytest.raises(QuerySyntaxError, match="'Edm.String' and 'Edm.Int32'"):
        FilterDialect(texts).prepare("size eq 5", text_thing)  # same text and entity name, other schema
    # BC reads a string as an enum member; standard OData refuses it, however often it was prepared by BC.
    assert BCFilters(numbers).prepare("kind eq 'Large'", number_thing).tree == ast.Compare(
        ast.Eq(), ast.Identifier("kind"), ast.String("Large"))
    with pytest.raises(QuerySyntaxError, match="incompatible types"):
        FilterDialect(numbers).prepare("kind eq 'Large'", number_thing)
    # Dataverse's query functions are its own: standard OData does not know them, Dataverse prepared them or not.
    in_function = 'Microsoft.Dynamics.CRM.In(PropertyName=\'size\',PropertyValues=["1","2"])'
    dataverse = DataverseFilters(numbers, now=lambda: datetime.now(UTC), user_id=None, business_unit_id=None)
    assert dataverse.prepare(in_function, number_thing) is dataverse.prepare(in_function, number_thing)
    with pytest.raises(QuerySyntaxError, match="unknown function"):
        FilterDialect(numbers).prepare(in_function, number_thing)
    # A dialect option (BC's $schemaversion) is part of the key.
    assert BCFilters(numbers, "2.1").prepare("size in (1,2)", number_thing) is not None
    with pytest.raises(Exception, match="schemaversion=2.1"):
        BCFilters(numbers, "2.0").prepare("size in (1,2)", number_thing)


def test_the_same_text_on_two_entities_and_two_services(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dv, bc = sb.session(), sb.bc_session()
    tag = uuid.uuid4().hex[:8]
    account = dv.post(f"{sb.api}/accounts", json={"name": f"{tag} A", "telephone1": tag},
                      headers={"Prefer": "return=representation"}).json()
    contact = dv.post(f"{sb.api}/contacts", json={"lastname": f"{tag} C", "telephone1": tag},
                      headers={"Prefer": "return=representation"}).json()
    text = f"telephone1 eq '{tag}'"
    for _ in range(2):
        assert [r["accountid"] for r in dv.get(f"{sb.api}/accounts?$filter={text}").json()["value"]] == [
            account["accountid"]]
        assert [r["contactid"] for r in dv.get(f"{sb.api}/contacts?$filter={text}").json()["value"]] == [
            contact["contactid"]]
        # A text valid for one entity only is refused by the other, cached or not.
        refused = dv.get(f"{sb.api}/contacts?$filter=accountnumber eq '{tag}'")
        assert refused.status_code == 400 and "accountnumber" in refused.json()["error"]["message"]
        assert dv.get(f"{sb.api}/accounts?$filter=accountnumber eq '{tag}'").status_code == 200

    company = sb.info["bc"]["companies"][0]["name"]
    named = dv.post(f"{sb.api}/accounts", json={"name": company}, headers={"Prefer": "return=representation"}).json()
    text = f"name eq '{company}'"
    for _ in range(2):
        dataverse_rows = dv.get(f"{sb.api}/accounts?$filter={text}").json()["value"]
        assert [r["accountid"] for r in dataverse_rows] == [named["accountid"]]
        companies = bc.get(f"{sb.bc_api}/companies?$filter={text}").json()["value"]
        assert [c["id"] for c in companies] == [sb.companies[0]]


def test_clock_dependent_filters_follow_the_sandbox_clock(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    at = (datetime.now(UTC) + timedelta(days=400)).replace(hour=12, minute=0, second=0, microsecond=0)
    sb.clock.freeze(at)
    sessions = [sb.session(), sb.bc_session()]  # tokens issued at the sandbox's time
    dv, bc = sessions
    account = dv.post(f"{sb.api}/accounts", json={"name": "Clocked"},
                      headers={"Prefer": "return=representation"}).json()["accountid"]
    customer = bc.post(f"{sb.bc_api}/companies({COMPANY})/customers", json={"displayName": "Clocked"}).json()["id"]

    def dataverse(text: str) -> set[str]:
        response = sessions[0].get(f"{sb.api}/accounts?$select=name&$filter={text}")
        assert response.status_code == 200, response.text
        return {r["accountid"] for r in response.json()["value"]}

    def business_central(text: str) -> set[str]:
        response = sessions[1].get(f"{sb.bc_api}/companies({COMPANY})/customers?$select=id&$filter={text}")
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()["value"]}

    today = "Microsoft.Dynamics.CRM.Today(PropertyName='createdon')"
    yesterday = "Microsoft.Dynamics.CRM.Yesterday(PropertyName='createdon')"
    assert account in dataverse(today) and account not in dataverse(yesterday)
    assert account not in dataverse("createdon lt now()")  # created at the frozen now: not before it
    assert account in dataverse("createdon le now()")
    assert customer not in business_central("lastModifiedDateTime lt now()")

    sb.clock.advance(days=1)
    sessions[:] = [sb.session(), sb.bc_session()]  # the old tokens expired meanwhile
    assert account not in dataverse(today) and account in dataverse(yesterday)
    assert account in dataverse("createdon lt now()")
    assert customer in business_central("lastModifiedDateTime lt now()")


def test_parameter_aliases_are_part_of_the_key(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dv, bc = sb.session(), sb.bc_session()
    tag = uuid.uuid4().hex[:8]
    ids = {name: dv.post(f"{sb.api}/accounts", json={"name": f"{tag} {name}"},
                         headers={"Prefer": "return=representation"}).json()["accountid"] for name in ("A", "B")}
    for _ in range(2):
        for name, account in ids.items():
            rows = dv.get(f"{sb.api}/accounts?$filter=name eq @n&@n='{tag} {name}'").json()["value"]
            assert [r["accountid"] for r in rows] == [account]
    base = f"{sb.bc_api}/companies({COMPANY})/customers"
    numbers = {c["number"] for c in bc.get(f"{base}?$select=number&$top=2").json()["value"]}
    for _ in range(2):
        for number in sorted(numbers):
            rows = bc.get(f"{base}?$filter=number eq @n&@n='{number}'").json()["value"]
            assert [r["number"] for r in rows] == [number]


# (service, $filter, status, error text)
BAD_FILTERS = [
    ("dataverse", "name eq", 400, "Syntax error"),
    ("dataverse", "nosuchcolumn eq 1", 400, "nosuchcolumn"),
    ("dataverse", "name eq 5", 400, "incompatible types"),
    ("dataverse", "not Microsoft.Dynamics.CRM.Today(PropertyName='createdon')", 400, "Not operator"),
    ("bc", "number eq '1' or displayName eq 'x'", 400, "'OR' operator"),
    ("bc", "number in ('1','2')", 400, "schemaversion=2.1"),
]


@pytest.mark.parametrize(("service", "text", "status", "message"), BAD_FILTERS)
def test_a_bad_filter_gives_the_same_error_every_time(sandbox_inprocess: RunningSandbox, service: str, text: str,
                                                      status: int, message: str) -> None:
    sb = sandbox_inprocess
    if service == "dataverse":
        session, url = sb.session(), f"{sb.api}/accounts?$filter={text}"
    else:
        session, url = sb.bc_session(), f"{sb.bc_api}/companies({COMPANY})/customers?$filter={text}"
    answers = [session.get(url) for _ in range(3)]
    errors = {(a.status_code, a.json()["error"]["code"], a.json()["error"]["message"].split("  CorrelationId:")[0])
              for a in answers}  # BC adds a correlation id of its own to each answer
    assert len(errors) == 1
    assert {e[0] for e in errors} == {status} and message in answers[0].json()["error"]["message"]
