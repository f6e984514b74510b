"""Written as a user of the kit writes tests: only the pytest plugin's public fixtures and marker, no
helper from this repository's tests. The code under test is a small one-way copy of BC customers into
Dataverse accounts, the kind of integration code the kit is for."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"  # CRONUS USA, Inc. in the sandbox's default data


# -- the code under test -------------------------------------------------------------------------
def resilient(session: requests.Session) -> requests.Session:
    """Retry throttling and transient failures the way Microsoft asks clients to."""
    retry = Retry(total=5, status_forcelist=[429, 503], allowed_methods=None, backoff_factor=0.1,
                  respect_retry_after_header=True)
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def copy_customers(bc: requests.Session, bc_api: str, dv: requests.Session, dv_api: str, city: str) -> list[str]:
    """Create an account for each BC customer of ``city``, keyed by the customer number; returns the numbers."""
    customers = bc.get(f"{bc_api}/companies({COMPANY})/customers",
                       params={"$filter": f"city eq '{city}'", "$select": "number,displayName,city"}).json()["value"]
    for customer in customers:
        resp = dv.patch(f"{dv_api}/accounts(accountnumber='{customer['number']}')",
                        json={"name": customer["displayName"], "address1_city": customer["city"]})
        resp.raise_for_status()
    return [c["number"] for c in customers]


# -- the tests -----------------------------------------------------------------------------------
CUSTOMERS = {"customers": [{"displayName": "Kit Alpha", "city": "Kitstown"},
                           {"displayName": "Kit Beta", "city": "Kitstown"},
                           {"displayName": "Kit Gamma", "city": "Elsewhere"}]}


def run_copy(sandbox: Any) -> list[str]:
    return copy_customers(resilient(sandbox.bc_session()), sandbox.bc_api, resilient(sandbox.session()),
                          sandbox.api, "Kitstown")


@pytest.mark.sandbox(fixture=None, data={"bc": CUSTOMERS})
def test_copies_each_customer_once_by_alternate_key(sandbox_inprocess: Any) -> None:
    numbers = run_copy(sandbox_inprocess)

    assert len(numbers) == 2
    journal = sandbox_inprocess.journal
    journal.assert_requests(1, "bc", method="GET", path="*/customers", query={"$filter": "city eq 'Kitstown'"})
    upserts = journal.assert_requests(2, "dataverse", method="PATCH", path="/api/data/v9.2/accounts(accountnumber=*)")
    assert [r.json()["name"] for r in upserts] == ["Kit Alpha", "Kit Beta"]
    journal.assert_no_requests("dataverse", method="PATCH", headers={"If-Match": True})  # upserts, not updates
    rows = sandbox_inprocess.session().get(f"{sandbox_inprocess.api}/accounts",
                                           params={"$select": "name,accountnumber",
                                                   "$filter": "address1_city eq 'Kitstown'"}).json()["value"]
    assert sorted((r["accountnumber"], r["name"]) for r in rows) == sorted(zip(numbers, ["Kit Alpha", "Kit Beta"],
                                                                                strict=True))


@pytest.mark.sandbox(fixture=None, data={"bc": CUSTOMERS})
def test_rides_out_throttling_and_outages(sandbox_inprocess: Any) -> None:
    started = time.monotonic()
    with sandbox_inprocess.faults("dataverse", throttle_rate=1.0, retry_after=1, count=1), \
            sandbox_inprocess.faults("bc", error_rate=1.0, error_status=503, count=2):
        numbers = run_copy(sandbox_inprocess)

    assert len(numbers) == 2
    assert time.monotonic() - started >= 1  # the Retry-After of the 429 was honoured
    statuses = [r.status for r in sandbox_inprocess.journal.requests()]
    assert statuses.count(503) == 2 and statuses.count(429) == 1
    sandbox_inprocess.journal.assert_requests(2, "dataverse", method="PATCH", status=204)


def test_the_same_copy_against_a_live_sandbox(sandbox_factory: Any) -> None:
    live = sandbox_factory(mode="live", fixture=None, data={"bc": CUSTOMERS})
    assert live.ca_bundle and live.api.startswith("https://127.0.0.1:")  # real sockets, real TLS
    numbers = run_copy(live)

    assert len(numbers) == 2
    live.journal.assert_requests(2, "dataverse", method="PATCH", status=204)


@pytest.mark.sandbox(fixture=None, data={"bc": CUSTOMERS})
def test_an_expired_token_is_refused(sandbox_inprocess: Any) -> None:
    bc = sandbox_inprocess.bc_session()
    assert bc.get(f"{sandbox_inprocess.bc_api}/companies").status_code == 200
    sandbox_inprocess.clock.advance(hours=2)  # past the token's hour, without waiting an hour

    assert bc.get(f"{sandbox_inprocess.bc_api}/companies").status_code == 401
    sandbox_inprocess.journal.assert_requests(1, "bc", status=401)
