"""Rows a transaction read by key are remembered until it writes their table or ends (``Store.get``): a
batch that binds every row to one company reads the company once. What is remembered is never what
another read would not see."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mockservers.odata.schema import AlternateKey, Edm, EntityType, Property, Schema
from mockservers.odata.storage import Store
from mockservers.testing import RunningSandbox
from tests.conftest import POSTGRES_ENV, empty_database

KEY, OTHER = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"


@pytest.fixture(params=["sqlite", "memory", *(["postgresql"] if os.environ.get(POSTGRES_ENV) else [])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, EntityType]]:
    """A store with one row: in a SQLite file or PostgreSQL (a connection per transaction), or in memory
    (one connection that every transaction reuses, so nothing may outlive a transaction on it)."""
    item = EntityType("item", "items", "id", [Property("id", Edm.Guid), Property("name", Edm.String, 50),
                                               Property("code", Edm.String, 20), Property("note", Edm.String, 50),
                                               Property("version", Edm.Int64)],
                      version_property="version", alternate_keys=[AlternateKey("code", ("code",))])
    with ExitStack() as stack:
        url = "sqlite://" if request.param == "memory" else stack.enter_context(
            empty_database(request.param, tmp_path, "dataverse"))
        made = _store(item, url)
        yield made
        made[0].engine.dispose()


def _store(item: EntityType, url: str) -> tuple[Store, EntityType]:
    store = Store(Schema("Test", [item]), url)
    with store.write() as conn:
        store.insert(conn, item, {"id": KEY, "name": "first"})
    return store, item


def _selects(store: Store) -> list[str]:
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT item."):
            seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", capture)
    return seen


def test_a_row_read_twice_in_one_transaction_is_read_once(db: tuple[Store, EntityType]) -> None:
    store, item = db
    seen = _selects(store)
    with store.read() as conn:
        first = store.get(conn, item, KEY)
        again = store.get(conn, item, KEY)
    assert first == again and first is not None and first["name"] == "first"
    assert len(seen) == 1


def test_the_caller_gets_its_own_copy(db: tuple[Store, EntityType]) -> None:
    store, item = db
    with store.read() as conn:
        for _ in range(2):  # the row as read, then as remembered
            row = store.get(conn, item, KEY)
            assert row is not None and row["name"] == "first"
            row["name"] = "changed by the caller"
        assert store.get(conn, item, KEY) == {**row, "name": "first"}


@pytest.mark.parametrize("write", ["update", "delete", "insert another row"])
def test_a_write_to_the_table_forgets_what_was_read(db: tuple[Store, EntityType], write: str) -> None:
    store, item = db
    with store.write() as conn:
        assert store.get(conn, item, KEY) is not None
        if write == "update":
            store.update(conn, item, KEY, {"name": "second"})
        elif write == "delete":
            store.delete(conn, item, KEY)
        else:
            store.insert(conn, item, {"id": OTHER, "name": "other"})
        seen = _selects(store)
        after = store.get(conn, item, KEY)
    assert len(seen) == 1  # asked the database again
    expected = {"update": "second", "delete": None, "insert another row": "first"}[write]
    assert (after["name"] if after else None) == expected


def test_a_savepoint_rolled_back_forgets_the_rows_read_inside(db: tuple[Store, EntityType]) -> None:
    store, item = db
    with store.write() as conn:
        with pytest.raises(RuntimeError), store.savepoint(conn):
            store.update(conn, item, KEY, {"name": "inside"})
            inside = store.get(conn, item, KEY)
            assert inside is not None and inside["name"] == "inside"
            raise RuntimeError("the operation fails alone")
        after = store.get(conn, item, KEY)
    assert after is not None and after["name"] == "first"


def test_the_next_transaction_reads_afresh(db: tuple[Store, EntityType]) -> None:
    store, item = db
    with store.read() as conn:
        assert store.get(conn, item, KEY)["name"] == "first"  # type: ignore[index]
    with store.engine.begin() as conn:  # written past the store (as a start-up insert is)
        conn.execute(store.table(item).update().values(name="outside"))
    with store.read() as conn:
        assert store.get(conn, item, KEY)["name"] == "outside"  # type: ignore[index]


def test_a_row_not_found_is_asked_again(db: tuple[Store, EntityType]) -> None:
    store, item = db
    with store.write() as conn:
        assert store.get(conn, item, OTHER) is None
        conn.execute(store.table(item).insert().values(id=OTHER, name="inserted past the store", version=1))
        found = store.get(conn, item, OTHER)
    assert found is not None and found["name"] == "inserted past the store"


def test_rows_updated_together_are_written_as_one_by_one(db: tuple[Store, EntityType]) -> None:
    """``update_rows``: consecutive versions in the order given, the rows back as stored; a change of an
    alternate key, or one row twice, is refused before anything is written."""
    store, item = db
    with store.write() as conn:
        other = store.insert(conn, item, {"id": OTHER, "name": "other", "code": "B"})
        first = store.get(conn, item, KEY)
        assert first is not None
        written = store.update_rows(conn, item, [(OTHER, {"name": "other 2"}, other), (KEY, {"name": "first 2"}, first)])
    assert [(r["id"], r["name"]) for r in written] == [(OTHER, "other 2"), (KEY, "first 2")]
    assert written[1]["version"] == written[0]["version"] + 1 > other["version"]
    with store.read() as conn:
        assert store.get(conn, item, KEY) == written[1]
    for refused in ([(KEY, {"code": "B"}, written[1])],
                    [(KEY, {"name": "x"}, written[1]), (KEY, {"name": "y"}, written[1])]):
        with pytest.raises(ValueError), store.write() as conn:
            store.update_rows(conn, item, refused)
    with store.read() as conn:
        assert store.get(conn, item, KEY) == written[1]


@pytest.mark.parametrize("together", [False, True])
def test_an_update_writes_only_the_columns_it_changes(db: tuple[Store, EntityType], together: bool) -> None:
    """A column set to the value it holds is left out of the UPDATE (SQLite would rewrite each index on it);
    the row still gets a new version, and a column that changes is written."""
    store, item = db
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("UPDATE item"):
            statements.append(statement)

    with store.write() as conn:
        before = store.get(conn, item, KEY)
        assert before is not None
        sa.event.listen(store.engine, "before_cursor_execute", capture)
        try:
            values = {"name": "first", "note": "A"}  # the name it has, a note it has not
            after = (store.update_rows(conn, item, [(KEY, values, before)])[0] if together
                     else store.update(conn, item, KEY, values, current=before))
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", capture)
    [update] = statements
    assigned = update.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    assert "note" in assigned and "name" not in assigned
    assert (after["name"], after["note"]) == ("first", "A") and after["version"] > before["version"]
    with store.read() as conn:
        assert store.get(conn, item, KEY) == after


# -- through the service: a changeset that changes a row, then uses it -------------------------------


def test_a_changeset_prices_with_the_exchange_rate_it_just_set(sandbox_inprocess: RunningSandbox) -> None:
    """The currency is read (and remembered) by the first account, updated, then read again by the
    second: the second account's base amount uses the new rate, as the real service's would."""
    sb = sandbox_inprocess
    dv = sb.session()
    currency = dv.post(f"{sb.api}/transactioncurrencies", headers={"Prefer": "return=representation"}, json={
        "isocurrencycode": "ISK", "currencyname": "Icelandic krona", "currencysymbol": "kr",
        "currencyprecision": 0, "exchangerate": 100}).json()["transactioncurrencyid"]
    bind = f"/transactioncurrencies({currency})"
    ops = [
        ("POST", "accounts", {"name": "Before", "revenue": 1000, "transactioncurrencyid@odata.bind": bind}),
        ("PATCH", f"transactioncurrencies({currency})", {"exchangerate": 200}),
        ("POST", "accounts", {"name": "After", "revenue": 1000, "transactioncurrencyid@odata.bind": bind}),
    ]
    body = _changeset(sb.api, ops)
    answer = dv.post(f"{sb.api}/$batch", data=body.encode(), headers={
        "Content-Type": "multipart/mixed; boundary=batch_x"})
    assert answer.status_code == 200, answer.text
    rows = dv.get(f"{sb.api}/accounts?$select=name,revenue_base&$filter=name eq 'Before' or name eq 'After'").json()
    base = {r["name"]: r["revenue_base"] for r in rows["value"]}
    assert base == {"Before": 10, "After": 5}


def test_a_changeset_cannot_bind_to_a_row_it_deleted(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dv = sb.session()
    parent = dv.post(f"{sb.api}/accounts", headers={"Prefer": "return=representation"},
                     json={"name": "Parent"}).json()["accountid"]
    bind = f"/accounts({parent})"
    ops = [
        ("POST", "contacts", {"lastname": "First", "parentcustomerid_account@odata.bind": bind}),
        ("DELETE", f"accounts({parent})", None),
        ("POST", "contacts", {"lastname": "Second", "parentcustomerid_account@odata.bind": bind}),
    ]
    answer = dv.post(f"{sb.api}/$batch", data=_changeset(sb.api, ops).encode(), headers={
        "Content-Type": "multipart/mixed; boundary=batch_x"})
    # the third operation is refused (the batch answers with its status) and the changeset rolls back
    assert answer.status_code == 404 and "HTTP/1.1 404" in answer.text
    assert dv.get(f"{sb.api}/accounts({parent})").status_code == 200
    assert dv.get(f"{sb.api}/contacts?$filter=lastname eq 'First'").json()["value"] == []


def _changeset(api: str, ops: list[tuple[str, str, dict[str, Any] | None]]) -> str:
    import json

    parts = []
    for n, (method, path, payload) in enumerate(ops, 1):
        head = (f"--changeset_y\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {n}\r\n\r\n{method} {api}/{path} HTTP/1.1\r\n")
        if payload is None:
            parts.append(head + "\r\n")
        else:
            parts.append(head + f"Content-Type: application/json\r\n\r\n{json.dumps(payload)}\r\n")
    return ("--batch_x\r\nContent-Type: multipart/mixed; boundary=changeset_y\r\n\r\n" + "".join(parts)
            + "--changeset_y--\r\n--batch_x--\r\n")
