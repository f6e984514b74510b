"""Scheduled runs against a sandbox whose clock is frozen or moved: watermark logic tested without
sleeping, and a connector whose clock differs from the services' keeping its watermarks on theirs.

Each test has a sandbox of its own (the clock only moves forward, so a moved clock is not shared)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mockservers.testing import RunningSandbox
from tests.conftest import ConnectorEnv, start_connector

SALES_USER = "5e000000-0000-4000-8000-000000000004"  # a licensed user the integration app may act for
Factory = Callable[..., RunningSandbox]


def runs(env: ConnectorEnv) -> dict[str, dict[str, int]]:
    out = env.run("run", "--mapping", "CUSTOMER")
    return {j["direction"]: {k: v for k, v in j.items() if k in ("inserted", "modified", "failed") and v}
            for j in out["jobs"]}


def coupled(env: ConnectorEnv, names: list[str]) -> list[tuple[dict[str, Any], str]]:
    for name in ("CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD"):
        env.run("run", "--mapping", name)
    records = env.create_customers(env.sandbox.bc_session(), names)
    env.run("create-in-dataverse", "CUSTOMER", *[r["number"] for r in records])
    accounts = {c.bc_id: c.dataverse_id for c in env.couplings("customers")}
    return [(r, accounts[r["id"]]) for r in records]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("mode", ["inprocess", "live"])
def test_with_the_clock_frozen_a_run_picks_up_exactly_the_changes_without_waiting(
        sandbox_factory: Factory, tmp_path: Path, mode: str) -> None:
    """Dataverse's modifiedon has whole seconds; with the clock frozen and moved by hand, no test has to
    sleep into the next second, and every timestamp, watermarks included, is known in advance."""
    sb = sandbox_factory(mode=mode)
    env = start_connector(sb, tmp_path)
    (first, _), (_, second_account) = coupled(env, ["Frozen A", "Frozen B"])
    frozen_at = sb.clock.freeze()
    runs(env)  # catch up with everything before the changes

    changed_at = sb.clock.advance(seconds=1)
    assert sb.bc_session().patch(f"{env.bc_company_api}/customers({first['id']})", json={"city": "Frozenburg"},
                                 headers={"If-Match": "*"}).status_code == 200
    assert sb.session().patch(f"{sb.api}/accounts({second_account})", json={"telephone1": "+1 555 0142"},
                              headers={"MSCRMCallerID": SALES_USER}).status_code == 204
    assert runs(env) == {"ToIntegrationTable": {"modified": 1}, "FromIntegrationTable": {"modified": 1}}
    shown = env.run("mappings", "show", "CUSTOMER")  # past the catch-up, at most the change's own time
    assert frozen_at < instant(shown["bc_watermark"]) <= changed_at
    assert frozen_at < instant(shown["dataverse_watermark"]) <= changed_at

    sb.clock.advance(seconds=1)
    assert runs(env) == {"ToIntegrationTable": {}, "FromIntegrationTable": {}}


def test_watermarks_follow_the_services_clock_not_the_connectors(sandbox_factory: Factory, tmp_path: Path) -> None:
    """The services' clock an hour ahead of the connector's (as a skewed server's would be): a pass caps
    its watermark at its start on the source's clock (the Date header), not on the connector's, so a
    change stamped by the service is not read again by every run."""
    sb = sandbox_factory(mode="inprocess")
    env = start_connector(sb, tmp_path)
    (record, _), *_ = coupled(env, [f"Skewed {i}" for i in range(3)])
    sb.clock.advance(hours=1)
    changed = sb.bc_session().patch(f"{env.bc_company_api}/customers({record['id']})", json={"city": "Later"},
                                    headers={"If-Match": "*"}).json()
    assert runs(env)["ToIntegrationTable"] == {"modified": 1}
    bc_watermark = instant(env.run("mappings", "show", "CUSTOMER")["bc_watermark"])
    assert instant(changed["lastModifiedDateTime"]) - timedelta(seconds=1) < bc_watermark  # the services' hour
    assert bc_watermark > datetime.now(UTC) + timedelta(minutes=59)

    sb.clock.advance(seconds=2)
    sb.journal.clear()
    out = env.run("run", "--mapping", "CUSTOMER")
    to_pass = next(j for j in out["jobs"] if j["direction"] == "ToIntegrationTable")
    # nothing written; at most the change itself read again (Date has whole seconds: the cap may be up to
    # a second early), where a cap on the connector's clock would read every change of the last hour
    assert to_pass["modified"] == 0 and to_pass["unchanged"] <= 1
    reads = sb.journal.requests("bc", method="GET", path="*/customers")
    assert len(reads) == 1 and "lastModifiedDateTime gt" in reads[0].query_options["$filter"]
