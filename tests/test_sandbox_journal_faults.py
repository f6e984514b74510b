"""Request journal and fault injection, over real HTTP on a threaded werkzeug server.

The README's "Control API" (journal: method, path, query, status, duration, body size; faults:
latency, error rate, 429 with Retry-After, connection drop), in the manner of WireMock's request
journal and fault simulation (https://wiremock.org/docs/simulating-faults/).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, g, jsonify, request

from mockservers.sandbox.control import control_blueprint
from mockservers.sandbox.faults import FaultConfig, FaultConfigError, FaultInjector
from mockservers.sandbox.hooks import install_sandbox_hooks, note_batch_operations, sandbox_admit
from mockservers.sandbox.journal import Journal, JournalEntry
from mockservers.sandbox.limits import DATAVERSE_MESSAGES, ServiceProtection
from mockservers.sandbox.services import SandboxServices, is_control_path
from tests.servers import serve

TOKEN = "journal-faults-admin-token"


def render_error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def build_app(sandbox: SandboxServices) -> Flask:
    """A tiny service: 'authenticates' from X-User, then asks for admission like a real app."""
    app = Flask("journal-faults-test")
    install_sandbox_hooks(app, sandbox, service="testsvc", principal=lambda: g.get("user"),
                          render_error=render_error)
    app.register_blueprint(control_blueprint(sandbox, reset=lambda: None, seed=lambda name, document: {"fixture": name}))

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

    @app.route("/api/items", methods=["GET", "POST"])
    def items() -> Response | tuple[Response, int]:
        if request.method == "POST":
            return jsonify(received=len(request.get_data())), 201
        return jsonify(value=[{"id": 1}, {"id": 2}])

    @app.get("/api/items/<int:item_id>")
    def item(item_id: int) -> Response:
        return jsonify(id=item_id)

    @app.post("/api/$batch")
    def batch() -> Response:
        note_batch_operations(len(request.get_json()["requests"]))
        return jsonify(responses=[])

    return app


@pytest.fixture
def sandbox() -> SandboxServices:
    return SandboxServices(admin_token=TOKEN, limits=ServiceProtection(messages=DATAVERSE_MESSAGES))


@pytest.fixture
def base(sandbox: SandboxServices) -> Iterator[str]:
    with serve(build_app(sandbox)) as url:
        yield url


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["X-User"] = "user-a"
        yield session


ADMIN = {"X-Sandbox-Admin-Token": TOKEN}


# -- journal over HTTP ---------------------------------------------------------------------------


def test_journal_records_what_the_client_sent(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    body = b'{"name":"Contoso"}'
    created = http.post(f"{base}/api/items?$select=name&$filter=name eq 'A B'", data=body,
                        headers={"x-ms-client-request-id": "req-42", "Content-Type": "application/json"})
    listed = http.get(f"{base}/api/items/7")
    assert (created.status_code, listed.status_code) == (201, 200)

    post, get = sandbox.journal.entries()
    assert (post.id, get.id) == (1, 2)
    assert (post.service, post.method, post.path) == ("testsvc", "POST", "/api/items")
    assert post.query == "$select=name&$filter=name eq 'A B'"
    assert post.status == 201
    assert post.request_bytes == len(body)
    assert post.response_bytes == len(created.content)
    assert post.principal == "user-a"
    assert post.client_request_id == "req-42"
    assert post.duration_ms >= 0
    assert post.time.endswith("Z")
    assert (get.method, get.path, get.query, get.template) == ("GET", "/api/items/7", "", "/api/items/<int:item_id>")
    assert get.response_bytes == len(listed.content)
    assert get.client_request_id is None


def test_unauthenticated_and_unknown_routes_are_journaled_too(base: str, sandbox: SandboxServices) -> None:
    assert requests.get(f"{base}/api/items").status_code == 401
    assert requests.get(f"{base}/nowhere", headers={"X-User": "u"}).status_code == 404
    denied, missing = sandbox.journal.entries()
    assert (denied.status, denied.principal) == (401, None)
    assert (missing.status, missing.path, missing.template) == (404, "/nowhere", None)


def test_batch_operation_count_is_journaled(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    http.post(f"{base}/api/$batch", json={"requests": [{"id": "1"}, {"id": "2"}, {"id": "3"}]})
    entry = sandbox.journal.last()
    assert entry is not None and entry.batch_operations == 3
    assert sandbox.journal.counters()["batch_operations"] == 3


def test_control_calls_are_not_journaled(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    http.get(f"{base}/api/items")
    assert requests.get(f"{base}/_sandbox/journal", headers=ADMIN).status_code == 200
    assert requests.get(f"{base}/_sandbox/health").status_code == 200
    assert [e.path for e in sandbox.journal.entries()] == ["/api/items"]


# -- journal as a unit ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def make_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Journal]:
    """``Journal(**kw)`` kept in memory or in a SQLite file: the journal behaves the same with either."""
    def make(**kw: Any) -> Journal:
        return Journal(**kw) if request.param == "memory" else Journal(path=tmp_path / "journal.db", **kw)
    return make


def _entry(method: str, path: str, status: int) -> JournalEntry:
    return JournalEntry(service="s", method=method, path=path, status=status)


@pytest.fixture
def filled(make_journal: Callable[..., Journal]) -> Journal:
    journal = make_journal()
    for method, path, status in [
        ("GET", "/api/accounts", 200),
        ("POST", "/api/accounts", 201),
        ("GET", "/api/contacts", 404),
        ("PATCH", "/api/accounts(1)", 412),
        ("GET", "/api/accounts", 429),
        ("GET", "/api/accounts", 0),
    ]:
        journal.record(_entry(method, path, status))
    return journal


@pytest.mark.parametrize(
    ("kwargs", "ids"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"method": "get"}, [1, 3, 5, 6]),
        ({"path_prefix": "/api/accounts"}, [1, 2, 4, 5, 6]),
        ({"status": 429}, [5]),
        ({"status": "4xx"}, [3, 4, 5]),
        ({"status": "dropped"}, [6]),
        ({"status": "2xx", "method": "POST"}, [2]),
        ({"since_id": 4}, [5, 6]),
        ({"limit": 2}, [5, 6]),  # newest two
        ({"since_id": 1, "limit": 2}, [2, 3]),  # paging forward
        ({"limit": 0}, []),
    ],
)
def test_journal_filters(filled: Journal, kwargs: dict, ids: list[int]) -> None:
    assert [e.id for e in filled.entries(**kwargs)] == ids


def test_journal_counters_outlive_the_bounded_deque(make_journal: Callable[..., Journal]) -> None:
    journal = make_journal(maxlen=3)
    for n in range(5):
        journal.record(_entry("GET" if n % 2 else "POST", "/x", 200 if n < 4 else 503))
    assert [e.id for e in journal.entries()] == [3, 4, 5]
    counters = journal.counters()
    assert counters["total"] == 5
    assert counters["by_method"] == {"POST": 3, "GET": 2}
    assert counters["by_status_class"] == {"2xx": 4, "5xx": 1}
    assert counters["retained"] == 3
    journal.clear()
    assert journal.counters()["total"] == 0
    assert journal.record(_entry("GET", "/x", 200)).id == 1


def test_journal_is_thread_safe(make_journal: Callable[..., Journal]) -> None:
    journal = make_journal()

    def worker() -> None:
        for _ in range(500):
            journal.record(_entry("GET", "/x", 200))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [e.id for e in journal.entries()]
    assert ids == list(range(1, 4001))
    assert journal.counters()["total"] == 4000


# -- faults over HTTP ----------------------------------------------------------------------------


def test_latency_fault_delays_the_answer(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    sandbox.faults.configure(latency_ms=150)
    started = time.perf_counter()
    response = http.get(f"{base}/api/items")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed >= 0.15
    entry = sandbox.journal.last()
    assert entry is not None and entry.fault == "latency" and entry.duration_ms >= 150


@pytest.mark.parametrize(("config", "status"), [({}, 503), ({"error_status": 500}, 500), ({"error_status": 502}, 502)])
def test_error_fault_answers_the_configured_status(
    base: str, http: requests.Session, sandbox: SandboxServices, config: dict, status: int
) -> None:
    sandbox.faults.configure(error_rate=1.0, **config)
    response = http.get(f"{base}/api/items")
    assert response.status_code == status
    assert response.json() == {"error": {"code": "", "message": "Injected fault"}}
    entry = sandbox.journal.last()
    assert entry is not None and (entry.status, entry.fault) == (status, "error")


def test_throttle_fault_answers_429_with_retry_after(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    sandbox.faults.configure(throttle_rate=1.0, retry_after=7)
    response = http.get(f"{base}/api/items")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"] == {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    }
    entry = sandbox.journal.last()
    assert entry is not None and entry.fault == "throttle"


def test_drop_fault_closes_the_connection_without_a_response(
    base: str, http: requests.Session, sandbox: SandboxServices
) -> None:
    assert http.get(f"{base}/api/items").status_code == 200  # a kept-alive connection gets cut too
    sandbox.faults.configure(drop_rate=1.0, count=1)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{base}/api/items")
    assert http.get(f"{base}/api/items").status_code == 200  # the server itself is fine
    dropped = sandbox.journal.entries(status="dropped")
    assert len(dropped) == 1 and dropped[0].fault == "drop" and dropped[0].response_bytes == 0


def test_count_limits_the_fault_to_the_next_n_matching_requests(
    base: str, http: requests.Session, sandbox: SandboxServices
) -> None:
    sandbox.faults.configure(error_rate=1.0, count=2, paths=["/api/items"], methods=["GET"])
    assert http.post(f"{base}/api/items", data=b"x").status_code == 201  # method does not match: not counted
    statuses = [http.get(f"{base}/api/items").status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert sandbox.faults.state()["active"] is False


def test_paths_restrict_where_faults_apply(base: str, http: requests.Session, sandbox: SandboxServices) -> None:
    sandbox.faults.configure(error_rate=1.0, paths=["/api/items/"])
    assert http.get(f"{base}/api/items").status_code == 200
    assert http.get(f"{base}/api/items/3").status_code == 503


def test_faults_never_touch_the_control_api(base: str, sandbox: SandboxServices) -> None:
    sandbox.faults.configure(drop_rate=1.0)
    response = requests.delete(f"{base}/_sandbox/faults", headers=ADMIN)
    assert response.status_code == 204
    assert sandbox.faults.state()["active"] is False


def test_faults_switched_on_through_the_control_api(base: str, http: requests.Session) -> None:
    put = requests.put(f"{base}/_sandbox/faults", json={"throttle_rate": 1, "retry_after": 3, "count": 1},
                       headers=ADMIN)
    assert put.status_code == 200 and put.json()["remaining"] == 1
    first, second = http.get(f"{base}/api/items"), http.get(f"{base}/api/items")
    assert (first.status_code, first.headers["Retry-After"], second.status_code) == (429, "3", 200)


# -- fault decisions as a unit -------------------------------------------------------------------


def test_seeded_decisions_are_reproducible_and_follow_the_rates() -> None:
    def run() -> list[str]:
        injector = FaultInjector()
        injector.configure(error_rate=0.2, throttle_rate=0.3, drop_rate=0.1, seed=1234)
        return [injector.decide("GET", "/x").kind for _ in range(2000)]

    first, second = run(), run()
    assert first == second
    shares = {kind: first.count(kind) / len(first) for kind in ("error", "throttle", "drop", "none")}
    assert shares["error"] == pytest.approx(0.2, abs=0.04)
    assert shares["throttle"] == pytest.approx(0.3, abs=0.04)
    assert shares["drop"] == pytest.approx(0.1, abs=0.04)
    assert shares["none"] == pytest.approx(0.4, abs=0.04)


def test_jitter_stays_within_its_range() -> None:
    injector = FaultInjector(seed=7)
    injector.configure(latency_ms=100, latency_jitter_ms=50)
    delays = {injector.decide("GET", "/x").delay_ms for _ in range(300)}
    assert min(delays) >= 100 and max(delays) <= 150 and len(delays) > 10


def test_decision_combines_latency_with_the_drawn_fault() -> None:
    injector = FaultInjector()
    injector.configure(latency_ms=20, error_rate=1.0, error_status=504)
    decision = injector.decide("PATCH", "/x")
    assert (decision.kind, decision.delay_ms, decision.status) == ("error", 20, 504)
    injector.clear()
    assert injector.decide("PATCH", "/x").kind == "none"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"throttle_rate": "often"}, "throttle_rate must be a number"),
        ({"error_rate": 0.6, "drop_rate": 0.6}, "must not exceed 1"),
        ({"error_status": 200}, "error_status must be at least 400"),
        ({"latency_ms": -1}, "latency_ms must be at least 0"),
        ({"latency_ms": 1.5}, "latency_ms must be an integer"),
        ({"count": 0}, "count must be at least 1"),
        ({"paths": ["api"]}, "starting with '/'"),
        ({"methods": [1]}, "methods must be a list"),
        ({"latency": 5}, "Unknown fault field(s) 'latency'"),
        ({"retry_after": True}, "retry_after must be an integer"),
    ],
)
def test_fault_config_validation(values: dict, fragment: str) -> None:
    with pytest.raises(FaultConfigError) as info:
        FaultConfig.from_mapping(values)
    assert fragment in str(info.value)


def test_hooks_wrap_app_hooks_registered_before_install() -> None:
    """Faults and timing run before, and the journal after, hooks the app registered earlier."""
    sandbox = SandboxServices(admin_token=TOKEN)
    app = Flask("order-test")
    seen: list[bool] = []

    @app.before_request
    def early() -> None:
        seen.append(g.get("sandbox_request") is not None)

    @app.after_request
    def pad(response: Response) -> Response:
        response.set_data(response.get_data() + b"    ")
        return response

    @app.get("/x")
    def x() -> Response:
        return jsonify(ok=True)

    install_sandbox_hooks(app, sandbox, service="s", principal=lambda: None, render_error=render_error)
    with serve(app) as url:
        response = requests.get(f"{url}/x")
    assert seen == [True]
    entry = sandbox.journal.last()
    assert entry is not None and entry.response_bytes == len(response.content)
