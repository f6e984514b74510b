"""The engine's multi-row insert refuses exactly what inserting the rows one by one would refuse, and
its block of versions leaves no gap a change-tracking token could fall into."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from mockservers.odata.errors import AlreadyExists, KeyViolation
from mockservers.odata.schema import AlternateKey, Edm, EntityType, Property, Schema
from mockservers.odata.storage import DrawnKey, Store, drawn_key


def store(tmp_path: Path | None) -> tuple[Store, EntityType]:
    """A store in a file under ``tmp_path``, or in memory (one connection) for None."""
    if tmp_path is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)
    line = EntityType(
        "line", "lines", "id",
        [Property("id", Edm.Guid), Property("company", Edm.Guid, hidden=True), Property("code", Edm.String, 20),
         Property("doc", Edm.String, 20), Property("no", Edm.Int32), Property("version", Edm.Int64)],
        alternate_keys=[AlternateKey("code", ("code",)), AlternateKey("doc_line", ("doc", "no"))],
        version_property="version", scope_property="company")
    url = f"sqlite:///{tmp_path / 'lines.db'}" if tmp_path is not None else "sqlite://"
    return Store(Schema("Test", [line]), url), line


def guid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


A, B = guid(900), guid(901)  # two scopes (companies)

# rows, then the error one-by-one inserts would raise (None: all written)
CASES = {
    "distinct rows": ([{"id": guid(1), "code": "X"}, {"id": guid(2), "code": "Y"}], None),
    "a one-column key repeated in other letter case": ([{"id": guid(1), "code": "X"}, {"id": guid(2), "code": "x"}],
                                                       KeyViolation),
    "a two-column key repeated": ([{"id": guid(1), "doc": "D", "no": 1}, {"id": guid(2), "doc": "d", "no": 1}],
                                  KeyViolation),
    "a two-column key with one part different": ([{"id": guid(1), "doc": "D", "no": 1}, {"id": guid(2), "doc": "D", "no": 2}],
                                                 None),
    "NULL key values never collide": ([{"id": guid(1)}, {"id": guid(2)}], None),
    "an id repeated": ([{"id": guid(1), "code": "X"}, {"id": guid(1), "code": "Y"}], AlreadyExists),
    "a key held by a stored row": ([{"id": guid(3), "code": "STORED"}], KeyViolation),
    "a two-column key held by a stored row": ([{"id": guid(3), "doc": "SD", "no": 7}], KeyViolation),
    "an id held by a stored row": ([{"id": guid(100), "code": "Z"}], AlreadyExists),
}


@pytest.mark.parametrize("name", list(CASES))
def test_insert_rows_refuses_what_one_by_one_inserts_refuse(tmp_path: Path, name: str) -> None:
    rows, expected = CASES[name]
    for bulk in (True, False):
        db, line = store(tmp_path / ("bulk" if bulk else "single"))
        with db.write() as conn:
            db.insert(conn, line, {"id": guid(100), "code": "stored", "doc": "sd", "no": 7}, A)
        outcome: type[Exception] | None = None
        try:
            with db.write() as conn:
                if bulk:
                    db.insert_rows(conn, line, rows, A)
                else:
                    for row in rows:
                        db.insert(conn, line, row, A)
        except (AlreadyExists, KeyViolation) as error:
            outcome = type(error)
        assert outcome is expected, (name, bulk)
        with db.read() as conn:
            assert db.count(conn, line, A) == (1 if expected else 1 + len(rows))  # all or nothing


def test_keys_are_per_scope(tmp_path: Path) -> None:
    db, line = store(tmp_path)
    with db.write() as conn:
        db.insert_rows(conn, line, [{"id": guid(1), "code": "X", "doc": "D", "no": 1}], A)
        db.insert_rows(conn, line, [{"id": guid(1), "code": "X", "doc": "D", "no": 1}], B)
        with pytest.raises(KeyViolation):
            db.insert_rows(conn, line, [{"id": guid(2), "code": "x"}], B)


def test_rows_come_back_in_the_order_given_with_versions_in_that_order(tmp_path: Path) -> None:
    db, line = store(tmp_path)
    ids = [guid(n) for n in (7, 3, 9, 1, 5)]
    with db.write() as conn:
        rows = db.insert_rows(conn, line, [{"id": key, "code": f"C{key[-2:]}"} for key in ids], A)
        single = db.insert(conn, line, {"id": guid(50)}, A)
    assert [row["id"] for row in rows] == ids
    versions = [row["version"] for row in rows]
    assert versions == list(range(versions[0], versions[0] + 5)) and single["version"] > versions[-1]
    with db.read() as conn:
        assert db.current_version(conn) >= single["version"]


def test_a_version_block_ends_with_its_transaction() -> None:
    """Versions held for a transaction that ends are never handed out again: a later transaction on the
    same connection draws anew, past what the database counted."""
    db, line = store(None)  # one shared connection: the later transaction reuses it
    with db.write() as conn:
        for n in range(5):  # enough writes for a block larger than what they use
            db.insert(conn, line, {"id": guid(n)}, A)
    with db.read() as conn:
        held = db.current_version(conn)
    with pytest.raises(RuntimeError), db.write() as conn:
        for n in range(10, 16):  # blocks drawn here are rolled back with the rows
            db.insert(conn, line, {"id": guid(n)}, A)
        raise RuntimeError("rolled back")
    with db.write() as conn:
        row = db.insert(conn, line, {"id": guid(12)}, A)
    assert row["version"] > held
    with db.read() as conn:
        assert db.current_version(conn) >= row["version"]


def _key_lookups(db: Store, write: Callable[[], None]) -> int:
    """How many SELECTs of the id column the store ran while ``write`` ran."""
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", capture)
    try:
        write()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", capture)
    return sum(1 for s in seen if s.lstrip().startswith("SELECT line.id"))


def test_a_key_the_service_drew_is_not_looked_up(tmp_path: Path) -> None:
    db, line = store(tmp_path)

    def insert(key: str) -> Callable[[], None]:
        def run() -> None:
            with db.write() as conn:
                db.insert_rows(conn, line, [{"id": key}], A)
        return run

    assert _key_lookups(db, insert(guid(1))) == 1  # an id from the client may be taken
    assert _key_lookups(db, insert(drawn_key())) == 0  # a new random GUID cannot be
    with db.read() as conn:
        assert db.count(conn, line, A) == 2


def test_a_drawn_key_that_collides_is_still_refused_whole(tmp_path: Path) -> None:
    """Not something a random GUID does; forced here. The database's unique key refuses it, and the
    rows of the same insert are not written either."""
    db, line = store(tmp_path)
    with db.write() as conn:
        db.insert_rows(conn, line, [{"id": guid(1)}], A)
    with pytest.raises(AlreadyExists), db.write() as conn:
        db.insert_rows(conn, line, [{"id": guid(2)}, {"id": DrawnKey(guid(1))}], A)
    with db.read() as conn:
        assert db.count(conn, line, A) == 1

