"""The benchmark's P1, held in a test: a full run makes no more than 1.05 × the fewest requests it could.

The benchmark (``make bench``) prints P1 at N = 1k to 100k with the default page and batch sizes,
where the lower bound ⌈N/page⌉ reads + ⌈N/bulk⌉ writes is 400 requests at 100k. Here the same full run
(``bench.bounds.FULL_RUN``) and the same bound (``bench.bounds.lower_bound``) at N = 2,000 with pages
and batches of 25, so the bound (160) is as large against the run's few fixed requests (the
currency, the company row, WhoAmI, the From pass's one empty page) as it is at 100k. The count comes
from the services' journals; nothing here is timed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bounds import FULL_RUN, FULL_RUN_SETUP, lower_bound
from tests.conftest import ConnectorEnv, start_connector, start_sandbox

N = 2000
PAGE = 25
BULK = 25
GOAL = 1.05


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectorEnv]:
    """An unseeded sandbox (nothing but N generated customers to synchronize) and a connector."""
    sandbox = start_sandbox(tmp_path_factory.mktemp("sandbox"), seed=False)
    try:
        yield start_connector(sandbox, Path(tmp_path_factory.mktemp("connector")))
    finally:
        sandbox.stop()


def test_a_full_run_of_2000_customers_makes_at_most_1_05_times_the_lower_bound(env: ConnectorEnv) -> None:
    loaded = env.sandbox.generate(customers=N, accounts=0, overlap=0.0)
    assert loaded.counts["bc/customers"] == N
    env.set_sync(page_size=PAGE, dataverse_batch_size=BULK, bc_batch_size=BULK)
    env.run(*FULL_RUN_SETUP)
    env.clear_journals()

    out = env.run(*FULL_RUN)

    jobs = {j["direction"]: j for j in out["jobs"]}
    assert jobs["ToIntegrationTable"]["inserted"] == N and jobs["ToIntegrationTable"]["failed"] == 0, jobs
    made = [(service, e["method"], e["path"].rsplit("/", 1)[-1]) for service in ("dataverse", "bc")
            for e in env.journal(service) if not e["path"].startswith("/_sandbox")]
    bound = lower_bound(N, PAGE, BULK)
    assert bound == 160
    assert len(made) <= GOAL * bound, (f"{len(made)} requests for a bound of {bound}: "
                                       f"{Counter(made).most_common()}")
    # and the bound is met where it is made: every BC page read once, every Dataverse batch full
    assert Counter(made)[("bc", "GET", "customers")] == N // PAGE
    assert Counter(made)[("dataverse", "POST", "$batch")] == N // BULK
