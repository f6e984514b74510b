"""The record spool: what match-based coupling sets aside for its later steps comes back whole, in
order, as often as it is read, from memory while small and from a temporary file once large."""

from __future__ import annotations

from connector.spool import RecordSpool

RECORD = {"id": "5f1d0f5e-1111-4a2b-9c3d-000000000001", "number": "C00010", "displayName": "Adatum Corporation",
          "balanceDue": 1234.5, "creditLimit": 0, "blocked": " ", "taxLiable": True, "email": None,
          "address": {"city": "Atlanta", "lines": ["Station Road, 21", ""]}, "name": "Åsa Ödegård 北京"}


def test_records_come_back_whole_and_in_order() -> None:
    with RecordSpool() as spool:
        assert not spool and len(spool) == 0 and list(spool) == []
        for n in range(3):
            spool.append({**RECORD, "number": f"C{n:05d}"})
        assert spool and len(spool) == 3
        first = list(spool)
        assert first == [{**RECORD, "number": f"C{n:05d}"} for n in range(3)]
        assert list(spool) == first  # read again: the same


def test_a_record_set_aside_while_reading_comes_after_the_others() -> None:
    with RecordSpool() as spool:
        spool.append({"n": 1})
        spool.append({"n": 2})
        read = iter(spool)
        assert next(read) == {"n": 1}
        spool.append({"n": 3})
        assert [r["n"] for r in spool] == [1, 2, 3]


def test_a_large_spool_is_kept_on_disk_not_in_memory() -> None:
    with RecordSpool() as spool:
        for n in range(5000):  # about 1.5 MB of JSON: past what stays in memory
            spool.append({**RECORD, "number": f"C{n:05d}"})
        assert spool._file._rolled  # SpooledTemporaryFile moved on to a real file
        numbers = [r["number"] for r in spool]
        assert numbers == [f"C{n:05d}" for n in range(5000)]
