"""How the connector reads the services' timestamps (``modifiedon``, ``lastModifiedDateTime``) into the
naive UTC its state keeps: every form the services send, read to the same instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from connector.sync import compare_times, parse_time

CASES = [
    ("2026-03-01T10:20:30Z", datetime(2026, 3, 1, 10, 20, 30)),  # Dataverse: whole seconds
    ("2026-03-01T10:20:30.123Z", datetime(2026, 3, 1, 10, 20, 30, 123000)),  # BC: milliseconds
    ("2026-03-01T10:20:30.1234567Z", datetime(2026, 3, 1, 10, 20, 30, 123456)),  # .NET's seven digits
    ("2026-03-01T12:20:30+02:00", datetime(2026, 3, 1, 10, 20, 30)),  # an offset: brought to UTC
    ("2026-03-01T10:20:30", datetime(2026, 3, 1, 10, 20, 30)),  # no zone: taken as UTC already
    ("20260301T102030Z", datetime(2026, 3, 1, 10, 20, 30)),  # the basic form
    (datetime(2026, 3, 1, 11, 20, 30, tzinfo=timezone(timedelta(hours=1))), datetime(2026, 3, 1, 10, 20, 30)),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("value", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_a_service_timestamp_reads_as_naive_utc(value: object, expected: datetime | None) -> None:
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed is None or parsed.tzinfo is None


def test_two_forms_of_one_instant_compare_equal() -> None:
    instant = datetime(2026, 3, 1, 10, 20, 30, 5000, tzinfo=UTC)
    assert compare_times(parse_time(instant.isoformat()), parse_time("2026-03-01T10:20:30.005Z")) == 0
