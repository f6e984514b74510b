"""One connector scenario, live and in process: the services see the same requests with the same
answers, so a test written against one mode says the same thing about the other. (Their interleaving
is up to timing in both modes: a chunk's batch is on the wire while the next chunk is read.)"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from connector import config as config_module
from connector.runtime import Connector
from connector.store import Direction
from connector.sync import synchronize_now
from mockservers.testing import RunningSandbox
from tests.conftest import start_connector

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def scenario(sb: RunningSandbox, workdir: Path) -> list[tuple[str, str, str, int]]:
    """Create 120 customers, Create in Dataverse, change them, Synchronize Now: the requests it made."""
    env = start_connector(sb, workdir)
    env.set_sync(page_size=50, dataverse_batch_size=40, bc_batch_size=40)
    customers = env.create_customers(sb.bc_session(), [f"Parity {i:03d}" for i in range(120)], city="Before")
    numbers = [c["number"] for c in customers]
    env.run("test-connection")
    sb.journal.clear()
    assert env.run("create-in-dataverse", "CUSTOMER", *numbers)["jobs"][0]["inserted"] == 120
    env.bc_batch(sb.bc_session(), [{"method": "PATCH", "url": f"companies({env.company_id})/customers({c['id']})",
                                    "headers": {"If-Match": "*", "Content-Type": "application/json"},
                                    "body": {"city": "After"}} for c in customers])
    assert env.run("sync", "CUSTOMER", *numbers, "--direction", "to-dataverse")["jobs"][0]["modified"] == 120
    return [(r.service, r.method, GUID.sub("<id>", r.path), r.status) for r in sb.journal.requests()]


def test_the_same_scenario_makes_the_same_requests_in_both_modes(sandbox_factory: Callable[..., RunningSandbox],
                                                                 tmp_path: Path) -> None:
    journals = {}
    for mode in ("live", "inprocess"):  # one after the other: each its own sandbox and connector
        sb = sandbox_factory(mode=mode, fixture="default")
        journals[mode] = scenario(sb, tmp_path / mode)
        sb.stop()
    assert Counter(journals["live"]) == Counter(journals["inprocess"])
    methods = {(service, method) for service, method, _, _ in journals["live"]}
    assert {("bc", "GET"), ("bc", "POST"), ("dataverse", "POST"), ("dataverse", "GET")} <= methods  # both services, reads and batches
    assert len(journals["live"]) >= 10 and {status for *_, status in journals["live"]} <= {200, 201, 204}


@pytest.mark.parametrize("mode", ["inprocess", "live"])
def test_the_connector_gets_a_new_token_when_the_clock_passes_its_expiry(
        sandbox_factory: Callable[..., RunningSandbox], tmp_path: Path, mode: str) -> None:
    """Token refresh, tested without waiting an hour: a running connector's cached tokens expire when
    the sandbox's clock moves past them; its first request meets a 401, and it drops its cached tokens
    (both services'), repeats that request with a new one and carries on."""
    sb = sandbox_factory(mode=mode)
    env = start_connector(sb, tmp_path)
    customer = env.create_customers(sb.bc_session(), ["Token Refresh"])[0]
    env.run("create-in-dataverse", "CUSTOMER", customer["number"])
    cx = Connector.open(config_module.load(env.config_path))
    try:
        mapping = cx.mapping("CUSTOMER")
        synchronize_now(cx, mapping, [customer["number"]], Direction.TO_INTEGRATION)  # tokens cached now
        sb.journal.clear()
        sb.clock.advance(timedelta(hours=1, minutes=1))
        outcome = synchronize_now(cx, mapping, [customer["number"]], Direction.TO_INTEGRATION)
    finally:
        cx.close()
    assert outcome.jobs[0].snapshot()["modified"] == 1
    sent = sb.journal.requests()
    first, second = sent[:2]
    assert [r.status for r in sent] == [401] + [200] * (len(sent) - 1)
    assert (first.service, first.method, first.path, first.query) == (
        second.service, second.method, second.path, second.query)  # the refused request, repeated
    assert {r.service for r in sent} == {"dataverse", "bc"}
