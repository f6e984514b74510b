"""The sandbox's clock (``/_sandbox/clock``): one clock for identity and both services, frozen or moved
forward on demand, read by everything that tells time: row timestamps, token lifetimes, the
service-protection window, the Dataverse date functions, webhook expiry and the journal."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from mockservers.testing import RunningSandbox

COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
CUSTOMER = "c5010000-0000-4000-8000-000000000001"
Factory = Callable[..., RunningSandbox]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def time_of(sb: RunningSandbox) -> tuple[str, bool]:
    """The clock's time and whether it is frozen, as the Dataverse control API reports it."""
    state = sb.controls["dataverse"].clock()
    return state["now"], state["frozen"]


def test_frozen_clock_stamps_rows_of_both_services_with_its_time(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    at = datetime(2031, 5, 17, 9, 30, 12, tzinfo=UTC)
    assert sb.clock.freeze(at) == at and sb.clock.frozen
    account = sb.session().post(f"{sb.api}/accounts", json={"name": "Frozen"},
                                headers={"Prefer": "return=representation"}).json()
    customer = sb.bc_session().post(f"{sb.bc_api}/companies({COMPANY})/customers", json={"displayName": "Frozen"}).json()
    assert instant(account["createdon"]) == instant(account["modifiedon"]) == at
    assert instant(customer["lastModifiedDateTime"]) == at
    assert sb.clock.now() == at  # still frozen after the writes
    assert {r.time for r in sb.journal.requests()} == {at}

    later = sb.clock.advance(minutes=10)
    assert later == at + timedelta(minutes=10)
    patched = sb.session().patch(f"{sb.api}/accounts({account['accountid']})", json={"name": "Later"},
                                 headers={"Prefer": "return=representation", "If-Match": "*"}).json()
    assert instant(patched["modifiedon"]) == later and instant(patched["createdon"]) == at


def test_the_date_header_is_the_sandbox_clocks_second(sandbox_inprocess: RunningSandbox) -> None:
    """Each answer's Date is the clock's time in whole seconds, moved or frozen, a second on when the
    clock is (the text of one second is reused within it)."""
    sb = sandbox_inprocess
    at = datetime(2031, 5, 17, 9, 30, 12, 600_000, tzinfo=UTC)
    sb.clock.freeze(at)
    dates = []
    for step in (0, 0.3, 0.2, 1, 3600):
        sb.clock.advance(seconds=step)
        dates.append(parsedate_to_datetime(sb.session().get(f"{sb.api}/WhoAmI").headers["Date"]))
        dates.append(parsedate_to_datetime(sb.bc_session().get(f"{sb.bc_api}/companies").headers["Date"]))
    whole = at.replace(microsecond=0)
    second = timedelta(seconds=1)
    assert dates == [whole] * 4 + [whole + second] * 2 + [whole + 2 * second] * 2 + [whole + 3602 * second] * 2


def test_resume_runs_on_from_the_frozen_time(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    at = (datetime.now(UTC) + timedelta(days=400)).replace(microsecond=0)
    sb.clock.freeze(at)
    resumed = sb.clock.resume()
    assert not sb.clock.frozen
    assert at <= resumed < at + timedelta(seconds=5)
    assert resumed <= sb.clock.now() < at + timedelta(seconds=5)


@pytest.mark.parametrize("mode", ["inprocess", "live"])
def test_moving_the_clock_past_a_tokens_lifetime_expires_it_on_both_services(sandbox_factory: Factory,
                                                                             mode: str) -> None:
    sb = sandbox_factory(mode=mode)
    dataverse, bc = sb.session(), sb.bc_session()
    assert dataverse.get(f"{sb.api}/WhoAmI").status_code == 200
    assert bc.get(f"{sb.bc_api}/companies").status_code == 200

    sb.clock.advance(seconds=3599 + 31)  # the tokens' lifetime, plus the services' 30 s of clock skew
    expired = dataverse.get(f"{sb.api}/WhoAmI")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    assert expired.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    refused = bc.get(f"{sb.bc_api}/companies")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "Authentication_InvalidCredentials"
    # tokens issued now carry the moved clock's iat/exp and are good again
    assert sb.session().get(f"{sb.api}/WhoAmI").status_code == 200
    assert sb.bc_session().get(f"{sb.bc_api}/companies").status_code == 200


def test_the_service_protection_window_slides_with_the_clock(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    dataverse = sb.session()
    with sb.limits("dataverse", max_requests=3):
        assert [dataverse.get(f"{sb.api}/WhoAmI").status_code for _ in range(4)] == [200, 200, 200, 429]
        sb.clock.freeze()
        assert dataverse.get(f"{sb.api}/WhoAmI").status_code == 429
        sb.clock.advance(seconds=300)  # the 5-minute window has passed
        assert dataverse.get(f"{sb.api}/WhoAmI").status_code == 200


def test_dataverse_date_functions_read_the_sandbox_clock(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    sb.clock.freeze()
    made = sb.session().post(f"{sb.api}/accounts", json={"name": "Dated"}, headers={"Prefer": "return=representation"})
    account_id = made.json()["accountid"]

    def recent(hours: int) -> set[str]:
        query = (f"accounts?$select=name&$filter=Microsoft.Dynamics.CRM.LastXHours(PropertyName='createdon',"
                 f"PropertyValue={hours}) and name eq 'Dated'")
        return {r["accountid"] for r in sb.session().get(f"{sb.api}/{query}").json()["value"]}

    assert recent(1) == {account_id}
    sb.clock.advance(hours=5)
    assert recent(1) == set() and recent(6) == {account_id}


def test_bc_webhook_subscriptions_expire_on_the_clock(sandbox_factory: Factory) -> None:
    sb = sandbox_factory(mode="inprocess", passthrough=True)
    bc = sb.bc_session()
    sb.router.add_callback("POST", "https://receiver.example/hook",  # type: ignore[union-attr]
                           callback=lambda request: (200, {"Content-Type": "text/plain"},
                                                     request.params.get("validationToken", "")))
    made = bc.post(f"{sb.bc_api}/subscriptions", json={
        "notificationUrl": "https://receiver.example/hook", "resource": f"api/v2.0/companies({COMPANY})/customers",
        "clientState": "state"})
    assert made.status_code == 201, made.text
    expires = instant(made.json()["expirationDateTime"])
    assert expires - sb.clock.now() > timedelta(days=2, hours=23)
    sb.clock.advance(days=3, minutes=1)
    bc = sb.bc_session()  # a new token: the old one expired three days ago
    changed = bc.patch(f"{sb.bc_api}/companies({COMPANY})/customers({CUSTOMER})", json={"city": "Nowhere"},
                       headers={"If-Match": "*"})
    assert changed.status_code == 200
    assert sb.sandbox.webhooks.pending() == 0  # an expired subscription is told nothing
    deadline = time.monotonic() + 5  # BC's job deletes expired subscriptions on its next round (every second)
    while bc.get(f"{sb.bc_api}/subscriptions").json()["value"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bc.get(f"{sb.bc_api}/subscriptions").json()["value"] == []


@pytest.mark.parametrize(("body", "says"), [
    ({"now": "2020-01-01T00:00:00Z"}, "does not run backwards"),
    ({"advance_seconds": -1}, "does not run backwards"),
    ({"advance_seconds": "an hour"}, "must be a number"),
    ({"advance_seconds": 1e300}, "cannot go past 9999"),
    ({"now": "2031-01-01T00:00:00"}, "needs a time zone"),
    ({"now": "soon"}, "not an ISO 8601"),
    ({"now": "2031-01-01T00:00:00Z", "advance_seconds": 5}, "not both"),
    ({"frozen": "yes"}, "true or false"),
    ({"speed": 2}, "Unknown clock field"),
])
def test_a_refused_clock_change_is_400_and_changes_nothing(sandbox_inprocess: RunningSandbox, body: dict[str, Any],
                                                           says: str) -> None:
    sb = sandbox_inprocess
    sb.clock.freeze()
    before = time_of(sb)
    resp = sb.control("PUT", "clock", service="bc", json=body)
    assert resp.status_code == 400
    assert says in resp.json()["error"]["message"]
    assert time_of(sb) == before  # still frozen, at the same time


def test_one_clock_for_the_whole_sandbox(sandbox_inprocess: RunningSandbox) -> None:
    sb = sandbox_inprocess
    moved = sb.controls["bc"].set_clock(advance_seconds=86400, frozen=True)
    assert time_of(sb) == (moved["now"], True)
    assert moved["offset_seconds"] >= 86399
    assert requests.get(f"{sb.info['dataverse']['url']}/_sandbox/clock", headers={"Authorization": "Bearer wrong"},
                        verify=sb.verify).status_code == 401


def test_a_shared_clock_keeps_its_state_and_moves_for_every_process() -> None:
    """``Clock.share`` (a sandbox serving BC from a forked process): the state it had stays, and a
    change made in a forked process is what this one reads next."""
    import os

    from mockservers.clock import Clock

    clock = Clock()
    clock.adjust(advance_seconds=86_400, frozen=True)
    before = clock.state()
    clock.share()
    assert clock.state().now == before.now and clock.frozen

    pid = os.fork()
    if pid == 0:  # the child moves the clock and leaves at once
        try:
            clock.adjust(advance_seconds=60)
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert clock.state().now == before.now + timedelta(seconds=60)
    clock.resume()
    assert not clock.frozen and clock.time() >= before.now.timestamp() + 60
