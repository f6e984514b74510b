"""The fewest HTTP requests a job can make: the figure the connector's request counts are held to.

A job that moves records reads them page by page and writes them in bulk, so it needs at least
⌈read/page⌉ requests per service it reads plus ⌈written/bulk⌉ per service it writes (DESIGN.md,
"Rules that keep it fast"); for the full run of N records that is ⌈N/page⌉ reads + ⌈N/bulk⌉ writes.
The benchmark (P1 to P4) and the test that holds a full run to it (``tests/test_bench_lower_bound.py``)
use these definitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

# What a "full run" is, for the benchmark's P1 and the test: the scheduled job of the CUSTOMER mapping
# with Synch. Only Coupled Records off, as BC's Run Full Synchronization does for an initial load, so
# that every uncoupled BC customer is read once and created (and coupled) in Dataverse.
FULL_RUN_MAPPING = "CUSTOMER"
FULL_RUN_SETUP = ("mappings", "set", FULL_RUN_MAPPING, "--no-sync-only-coupled")
FULL_RUN = ("run", "--mapping", FULL_RUN_MAPPING)

# A job's direction, and the service it writes to.
DESTINATION = {"ToIntegrationTable": "dataverse", "FromIntegrationTable": "bc"}


def lower_bound(records: int, page_size: int, bulk_size: int) -> int:
    """A full run of ``records`` records: ⌈records/page⌉ reads + ⌈records/bulk⌉ writes."""
    return passes_bound(read={"bc": records}, written={"dataverse": records}, page_size=page_size,
                        bulk_sizes={"dataverse": bulk_size})


def passes_bound(*, read: Mapping[str, int], written: Mapping[str, int], page_size: int,
                 bulk_sizes: Mapping[str, int]) -> int:
    """Σ ⌈rows read from a service/page⌉ + Σ ⌈rows written to a service/that service's bulk size⌉."""
    if page_size < 1 or any(size < 1 for size in bulk_sizes.values()):
        raise ValueError("page and bulk sizes are at least 1")
    return (sum(math.ceil(rows / page_size) for rows in read.values())
            + sum(math.ceil(rows / bulk_sizes[service]) for service, rows in written.items()))


def written(jobs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Rows the jobs inserted or modified, per destination service."""
    totals = {"dataverse": 0, "bc": 0}
    for job in jobs:
        if job.get("direction") in DESTINATION:
            totals[DESTINATION[job["direction"]]] += job["inserted"] + job["modified"]
    return totals
