"""Service-protection limits: sliding window per principal, execution time, concurrency, BC queue.

Reference: dataverse-webapi.md 5.4 (6000 requests / 300 s `0x80072322`, 1,200,000 ms `0x80072321`,
52 concurrent `0x80072326`, 429 + Retry-After, per user; burst/time-remaining headers),
bc-api-v2.md 7 (6000 / 5 min per user, 5 concurrent + queue, 429 with Retry-After).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from flask import Flask, Response, g, jsonify, request

from mockservers.sandbox.control import control_blueprint
from mockservers.sandbox.hooks import install_sandbox_hooks, sandbox_admit
from mockservers.sandbox.limits import (
    BC_LIMITS,
    BC_MESSAGES,
    DATAVERSE_MESSAGES,
    Budget,
    LimitConfig,
    LimitConfigError,
    Rejection,
    ServiceProtection,
    Ticket,
    dataverse_budget_headers,
)
from mockservers.sandbox.services import SandboxServices, is_control_path
from tests.servers import serve

TOKEN = "limits-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def dataverse_limiter(clock: FakeClock, **changes: object) -> ServiceProtection:
    return ServiceProtection(LimitConfig().with_changes(changes), messages=DATAVERSE_MESSAGES, clock=clock)


def admitted(admission: Ticket | Rejection) -> Ticket:
    assert isinstance(admission, Ticket), admission
    return admission


def rejected(admission: Ticket | Rejection) -> Rejection:
    assert isinstance(admission, Rejection), admission
    return admission


# -- the limiter as a unit -----------------------------------------------------------------------


def test_request_count_window_slides(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=5, window_seconds=300)
    for _ in range(3):
        admitted(limits.admit("u")).release()
    clock.advance(100)
    for _ in range(2):
        admitted(limits.admit("u")).release()
    clock.advance(50)  # t=150: five requests at t=0,0,0,100,100
    rejection = rejected(limits.admit("u"))
    assert rejection.status == 429
    assert rejection.measure == "requests"
    assert rejection.code == "0x80072322"
    assert rejection.message == "Number of requests exceeded the limit of 5 over time window of 300 seconds."
    assert rejection.retry_after_seconds == 150  # the first arrival leaves the window at t=300
    clock.advance(149.5)
    rejected(limits.admit("u"))
    clock.advance(0.5)
    admitted(limits.admit("u"))  # the three from t=0 are gone; one slot freed is enough
    assert limits.usage()["u"]["requests"] == 3


def test_lowering_the_limit_applies_to_the_collected_window(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock)
    for _ in range(10):
        admitted(limits.admit("u")).release()
        clock.advance(1)
    limits.configure(max_requests=4)
    rejection = rejected(limits.admit("u"))
    # 10 arrivals at t=0..9, now t=10; count drops below 4 once the arrival at t=6 has left.
    assert rejection.retry_after_seconds == 296
    assert "limit of 4 over time window of 300 seconds" in rejection.message


def test_retry_after_is_at_least_one_second(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=1, window_seconds=1)
    admitted(limits.admit("u")).release()
    clock.advance(0.999)
    assert rejected(limits.admit("u")).retry_after_seconds == 1


def test_rejected_requests_do_not_count(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=5)
    for _ in range(1000):
        limits.admit("u")
    assert limits.usage()["u"]["requests"] == 5  # memory per principal stays bounded
    assert limits.counters() == {"requests": 995}


def test_combined_execution_time_limit(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_execution_ms=1000)
    ticket = admitted(limits.admit("u"))
    clock.advance(0.6)
    ticket.release(elapsed_ms=600)
    clock.advance(10)
    admitted(limits.admit("u")).release(elapsed_ms=500)  # total 1100 ms, finished at t=10.6
    rejection = rejected(limits.admit("u"))
    assert rejection.code == "0x80072321"
    assert rejection.message.startswith(
        "Combined execution time of incoming requests exceeded limit of 1,000 milliseconds over time window of "
        "300 seconds."
    )
    assert rejection.retry_after_seconds == 290  # the 600 ms request (finished t=0.6) must leave
    clock.advance(290)
    admitted(limits.admit("u"))


def test_execution_time_is_real_time_whatever_the_window_clock_does(clock: FakeClock) -> None:
    """The window's clock may be frozen or moved by hours (the control API's clock); what a request
    costs is the real time it took."""
    limits = dataverse_limiter(clock, max_execution_ms=1000)
    ticket = admitted(limits.admit("u"))
    clock.advance(3600)  # the sandbox clock jumps an hour while the request runs
    time.sleep(0.05)
    ticket.release()
    spent = limits.usage()["u"]["execution_ms"]
    assert 40 <= spent < 1000


def test_default_execution_message_uses_the_documented_figures(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock)
    admitted(limits.admit("u")).release(elapsed_ms=1_200_000)
    message = rejected(limits.admit("u")).message
    assert "exceeded limit of 1,200,000 milliseconds over time window of 300 seconds" in message


def test_concurrency_limit_is_immediate(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_concurrent=2)
    first, second = admitted(limits.admit("u")), admitted(limits.admit("u"))
    rejection = rejected(limits.admit("u"))
    assert (rejection.code, rejection.retry_after_seconds) == ("0x80072326", 1)
    assert rejection.message == "Number of concurrent requests exceeded the limit of 2."
    first.release()
    first.release()  # a second release must not free another slot
    admitted(limits.admit("u"))
    rejected(limits.admit("u"))
    second.release()


def test_principals_are_isolated(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=2, max_concurrent=1)
    held = admitted(limits.admit("alice"))
    rejected(limits.admit("alice"))
    admitted(limits.admit("bob")).release()
    admitted(limits.admit("bob")).release()
    rejected(limits.admit("bob"))
    held.release()
    admitted(limits.admit("alice"))


def test_budget_reports_what_is_left(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=10, max_execution_ms=5000)
    admitted(limits.admit("u")).release(elapsed_ms=1500)
    ticket = admitted(limits.admit("u"))
    assert ticket.budget == Budget(requests_remaining=8, execution_ms_remaining=3500, concurrent_remaining=51,
                                   window_seconds=300)
    assert dataverse_budget_headers(ticket.budget) == {
        "x-ms-ratelimit-burst-remaining-xrm-requests": "8",
        "x-ms-ratelimit-time-remaining-xrm-requests": "3.50",
    }
    assert dataverse_budget_headers(Budget(5999, 1_200_000, 52, 300))[
        "x-ms-ratelimit-time-remaining-xrm-requests"] == "1,200.00"
    assert limits.budget("nobody").requests_remaining == 10


def test_disabled_limits_admit_everything(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_requests=1, enabled=False)
    for _ in range(5):
        admitted(limits.admit("u")).release()
    limits.configure(enabled=True)
    admitted(limits.admit("u"))


def test_reset_and_restore_defaults(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock)
    limits.configure(max_requests=1)
    in_flight = admitted(limits.admit("u"))
    rejected(limits.admit("u"))
    limits.reset()
    assert limits.usage() == {} and limits.counters() == {}
    fresh = admitted(limits.admit("u"))
    in_flight.release()  # a ticket from before the reset must not touch the new window
    assert limits.usage()["u"]["in_flight"] == 1
    fresh.release()
    limits.restore_defaults()
    assert limits.config.max_requests == 6000


def test_idle_principals_are_forgotten(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock)
    for n in range(1500):
        admitted(limits.admit(f"user-{n}")).release()
    clock.advance(301)
    for _ in range(1100):  # enough admissions to trigger a sweep
        admitted(limits.admit("busy")).release()
    assert set(limits.usage()) == {"busy"}


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"max_requests": 0}, "max_requests must be an integer of at least 1"),
        ({"max_requests": "5"}, "max_requests must be an integer"),
        ({"max_concurrent": 2.5}, "max_concurrent must be an integer"),
        ({"max_queued": -1}, "max_queued must be an integer of at least 0"),
        ({"window_seconds": 0}, "window_seconds must be a positive number"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"max_requets": 5}, "Unknown limit field(s) 'max_requets'"),
    ],
)
def test_limit_config_validation(values: dict, fragment: str) -> None:
    with pytest.raises(LimitConfigError) as info:
        LimitConfig().with_changes(values)
    assert fragment in str(info.value)


def test_max_execution_ms_none_switches_the_measure_off(clock: FakeClock) -> None:
    limits = dataverse_limiter(clock, max_execution_ms=None)
    admitted(limits.admit("u")).release(elapsed_ms=10**9)
    assert admitted(limits.admit("u")).budget.execution_ms_remaining is None


# -- Business Central: a small concurrency limit with a queue behind it --------------------------


def test_bc_queue_waits_for_a_slot_then_rejects_when_full(clock: FakeClock) -> None:
    limits = ServiceProtection(BC_LIMITS.with_changes({"max_concurrent": 1, "max_queued": 1}),
                               messages=BC_MESSAGES, clock=clock)
    first = admitted(limits.admit("u"))
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(limits.admit, "u")
        deadline = time.monotonic() + 2
        while limits.usage()["u"]["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not queued.done()
        full = rejected(limits.admit("u"))  # 1 processing + 1 queued: the third is refused
        assert (full.status, full.code) == (429, "Application_TooManyRequests")
        assert full.message == "Too many requests reached.  Actual (3).  Maximum (2)."
        first.release()
        second = admitted(queued.result(timeout=2))
    second.release()


def test_bc_queue_times_out_with_503(clock: FakeClock) -> None:
    limits = ServiceProtection(BC_LIMITS.with_changes({"max_concurrent": 1, "queue_timeout_seconds": 0.05}),
                               messages=BC_MESSAGES, clock=clock)
    held = admitted(limits.admit("u"))
    timeout = rejected(limits.admit("u"))
    assert (timeout.status, timeout.measure, timeout.code) == (503, "queue_timeout", "Application_ServiceUnavailable")
    held.release()


def test_bc_rate_limit_message(clock: FakeClock) -> None:
    limits = ServiceProtection(BC_LIMITS.with_changes({"max_requests": 1}), messages=BC_MESSAGES, clock=clock)
    admitted(limits.admit("u")).release()
    rejection = rejected(limits.admit("u"))
    assert rejection.message == "Number of requests exceeded the limit of 1 over the time window of 300 seconds."


# -- over HTTP -----------------------------------------------------------------------------------


def render_error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response


class Gate:
    """Lets a test hold requests inside the view until it opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()


def build_app(sandbox: SandboxServices, clock: FakeClock, gate: Gate) -> Flask:
    app = Flask("limits-test")
    install_sandbox_hooks(app, sandbox, service="testsvc", principal=lambda: g.get("user"),
                          render_error=render_error, budget_headers=dataverse_budget_headers)
    app.register_blueprint(control_blueprint(sandbox, reset=lambda: None, seed=lambda name, document: {}))

    @app.before_request
    def authenticate() -> Response | None:
        if is_control_path(request.path):
            return None
        user = request.headers.get("X-User")
        if not user:
            return render_error(401, "", "No user.", {})
        g.user = user
        sandbox_admit()
        return None

    @app.get("/api/ping")
    def ping() -> Response:
        return jsonify(ok=True)

    @app.get("/api/work")
    def work() -> Response:
        time.sleep(float(request.args["seconds"]))  # execution time is real time
        return jsonify(ok=True)

    @app.get("/api/block")
    def block() -> Response:
        gate.entered.release()
        gate.release.wait(5)
        return jsonify(ok=True)

    return app


@pytest.fixture
def sandbox(clock: FakeClock) -> SandboxServices:
    return SandboxServices(admin_token=TOKEN, limits=ServiceProtection(messages=DATAVERSE_MESSAGES, clock=clock))


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.release.set()


@pytest.fixture
def base(sandbox: SandboxServices, clock: FakeClock, gate: Gate) -> Iterator[str]:
    with serve(build_app(sandbox, clock, gate)) as url:
        yield url


def get(base: str, path: str, user: str = "alice") -> requests.Response:
    return requests.get(f"{base}{path}", headers={"X-User": user}, timeout=10)


def test_sixth_request_in_the_window_is_throttled(base: str, clock: FakeClock, sandbox: SandboxServices) -> None:
    put = requests.put(f"{base}/_sandbox/limits", json={"max_requests": 5}, headers=ADMIN)
    assert put.status_code == 200 and put.json()["max_requests"] == 5

    answers = [get(base, "/api/ping") for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] for a in answers] == ["4", "3", "2", "1", "0"]

    sixth = get(base, "/api/ping")
    assert sixth.status_code == 429
    assert int(sixth.headers["Retry-After"]) >= 1
    assert sixth.json() == {"error": {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 5 over time window of 300 seconds.",
    }}
    entry = sandbox.journal.last()
    assert entry is not None and (entry.status, entry.rejected_by, entry.principal) == (429, "requests", "alice")

    clock.advance(301)
    assert get(base, "/api/ping").status_code == 200


def test_one_throttled_user_does_not_throttle_another(base: str) -> None:
    requests.put(f"{base}/_sandbox/limits", json={"max_requests": 2}, headers=ADMIN)
    assert [get(base, "/api/ping", "alice").status_code for _ in range(3)] == [200, 200, 429]
    assert get(base, "/api/ping", "bob").status_code == 200


def test_unauthenticated_requests_are_not_counted(base: str) -> None:
    requests.put(f"{base}/_sandbox/limits", json={"max_requests": 1}, headers=ADMIN)
    for _ in range(3):
        assert requests.get(f"{base}/api/ping").status_code == 401
    assert get(base, "/api/ping").status_code == 200


def test_execution_time_limit_over_http(base: str, clock: FakeClock) -> None:
    requests.put(f"{base}/_sandbox/limits", json={"max_execution_ms": 200}, headers=ADMIN)
    assert get(base, "/api/work?seconds=0.25").status_code == 200
    throttled = get(base, "/api/ping")
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "0x80072321"
    assert "limit of 200 milliseconds" in throttled.json()["error"]["message"]
    assert int(throttled.headers["Retry-After"]) == 300
    state = requests.get(f"{base}/_sandbox/limits", headers=ADMIN).json()
    assert 250 <= state["principals"]["alice"]["execution_ms"] < 1000
    clock.advance(300)
    assert get(base, "/api/ping").status_code == 200


def test_concurrency_limit_over_http(base: str, gate: Gate) -> None:
    requests.put(f"{base}/_sandbox/limits", json={"max_concurrent": 2}, headers=ADMIN)
    with ThreadPoolExecutor(2) as pool:
        blocked = [pool.submit(get, base, "/api/block") for _ in range(2)]
        for _ in blocked:
            assert gate.entered.acquire(timeout=5)
        third = get(base, "/api/ping")
        other_user = get(base, "/api/ping", "bob")
        gate.release.set()
        assert [f.result().status_code for f in blocked] == [200, 200]
    assert third.status_code == 429
    assert third.json()["error"] == {"code": "0x80072326",
                                     "message": "Number of concurrent requests exceeded the limit of 2."}
    assert third.headers["Retry-After"] == "1"
    assert other_user.status_code == 200
    assert get(base, "/api/ping").status_code == 200  # slots were released in teardown


def test_limits_reset_over_http(base: str) -> None:
    requests.put(f"{base}/_sandbox/limits", json={"max_requests": 1}, headers=ADMIN)
    get(base, "/api/ping")
    assert get(base, "/api/ping").status_code == 429
    reset = requests.post(f"{base}/_sandbox/limits/reset", headers=ADMIN)
    assert reset.status_code == 200 and reset.json()["principals"] == {}
    assert get(base, "/api/ping").status_code == 200
