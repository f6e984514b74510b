"""The /_sandbox control API: admin token, reset, seed, journal, faults, limits, counters, health.

The README's "Control API" (reset, seed, journal, faults, limits, counters; own admin token); bad
input gets a clear 4xx, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask, Response, g, jsonify, request

from mockservers.sandbox.control import control_blueprint
from mockservers.sandbox.hooks import install_sandbox_hooks, sandbox_admit
from mockservers.sandbox.limits import DATAVERSE_MESSAGES, ServiceProtection
from mockservers.sandbox.services import SandboxServices, is_control_path
from tests.servers import serve

TOKEN = "control-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class FakeService:
    """Stands in for a service's data layer: remembers reset and seed calls."""

    def __init__(self) -> None:
        self.resets = 0
        self.seeded: list[str] = []
        self.rows = 0

    def reset(self) -> None:
        self.resets += 1
        self.rows = 0

    def seed(self, fixture: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
        if document is not None:
            self.rows += len(document.get("rows", []))
            return {"fixture": "inline", "created": {"accounts": len(document.get("rows", []))}}
        if fixture == "broken":
            raise ValueError("row 3 has no name")
        if fixture not in ("default", "large"):
            raise KeyError(f"no fixture set named {fixture}")
        self.seeded.append(fixture)
        self.rows += 10
        return {"fixture": fixture, "created": {"accounts": 10}}

    def counters(self) -> dict[str, Any]:
        return {"rows": self.rows}


def render_error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def build_app(sandbox: SandboxServices, service: FakeService) -> Flask:
    app = Flask("control-test")
    install_sandbox_hooks(app, sandbox, service="testsvc", principal=lambda: g.get("user"),
                          render_error=render_error)
    app.register_blueprint(control_blueprint(sandbox, reset=service.reset, seed=service.seed,
                                             counters=service.counters))

    @app.before_request
    def authenticate() -> Response | None:
        if is_control_path(request.path):
            return None
        g.user = request.headers.get("X-User", "anonymous")
        sandbox_admit()
        return None

    @app.route("/api/items", methods=["GET", "POST"])
    def items() -> Response:
        return jsonify(value=[])

    return app


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def sandbox() -> SandboxServices:
    return SandboxServices(admin_token=TOKEN, limits=ServiceProtection(messages=DATAVERSE_MESSAGES))


@pytest.fixture
def base(sandbox: SandboxServices, service: FakeService) -> Iterator[str]:
    with serve(build_app(sandbox, service)) as url:
        yield url


def call(method: str, url: str, **kw: Any) -> requests.Response:
    kw.setdefault("headers", BEARER)
    return requests.request(method, url, timeout=10, **kw)


PROTECTED = [
    ("POST", "/_sandbox/reset"),
    ("POST", "/_sandbox/seed"),
    ("GET", "/_sandbox/journal"),
    ("DELETE", "/_sandbox/journal"),
    ("GET", "/_sandbox/faults"),
    ("PUT", "/_sandbox/faults"),
    ("DELETE", "/_sandbox/faults"),
    ("GET", "/_sandbox/limits"),
    ("PUT", "/_sandbox/limits"),
    ("POST", "/_sandbox/limits/reset"),
    ("GET", "/_sandbox/counters"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-Sandbox-Admin-Token": "wrong"}],
    ids=["none", "wrong-bearer", "no-scheme", "wrong-header"],
)
def test_every_control_call_needs_the_admin_token(
    base: str, service: FakeService, method: str, path: str, headers: dict[str, str]
) -> None:
    response = call(method, base + path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "Unauthorized" and "admin token" in error["message"]
    assert service.resets == 0 and service.seeded == []


@pytest.mark.parametrize("headers", [BEARER, {"X-Sandbox-Admin-Token": TOKEN}, {"authorization": f"bearer {TOKEN}"}])
def test_both_token_forms_are_accepted(base: str, headers: dict[str, str]) -> None:
    assert call("GET", f"{base}/_sandbox/counters", headers=headers).status_code == 200


def test_health_needs_no_token(base: str) -> None:
    response = requests.get(f"{base}/_sandbox/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_reset_clears_data_journal_faults_and_limits(base: str, service: FakeService, sandbox: SandboxServices) -> None:
    requests.get(f"{base}/api/items")
    sandbox.faults.configure(latency_ms=1)
    sandbox.limits.configure(max_requests=3)
    response = call("POST", f"{base}/_sandbox/reset")
    assert response.status_code == 200 and response.json() == {"status": "reset"}
    assert service.resets == 1
    assert sandbox.journal.entries() == [] and sandbox.journal.counters()["total"] == 0
    assert sandbox.faults.state()["active"] is False
    assert sandbox.limits.config.max_requests == 6000 and sandbox.limits.usage() == {}


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"fixture": "large"}, 200, {"fixture": "large", "created": {"accounts": 10}}),
        (None, 200, {"fixture": "default", "created": {"accounts": 10}}),
        ({"fixture": "nope"}, 404, {"code": "FixtureNotFound", "message": "Unknown fixture: no fixture set named nope"}),
        ({"fixture": "broken"}, 400, {"code": "BadRequest", "message": "Fixture 'broken' could not be loaded: row 3 has no name"}),
        ({"fixture": 5}, 400, {"code": "BadRequest", "message": "'fixture' must be a non-empty string naming a fixture set."}),
    ],
)
def test_seed(base: str, body: dict | None, status: int, expected: dict) -> None:
    response = call("POST", f"{base}/_sandbox/seed", json=body) if body is not None else call(
        "POST", f"{base}/_sandbox/seed")
    assert response.status_code == status
    payload = response.json()
    assert (payload if status == 200 else payload["error"]) == expected


def test_journal_query_parameters(base: str) -> None:
    requests.get(f"{base}/api/items?$top=1")
    requests.post(f"{base}/api/items", data=b"abc")
    requests.get(f"{base}/nothing-here")
    requests.get(f"{base}/api/items")

    def ids(query: str) -> list[int]:
        response = call("GET", f"{base}/_sandbox/journal{query}")
        assert response.status_code == 200
        return [e["id"] for e in response.json()["value"]]

    assert ids("") == [1, 2, 3, 4]
    assert ids("?method=get") == [1, 3, 4]
    assert ids("?path=/api/") == [1, 2, 4]
    assert ids("?status=404") == [3]
    assert ids("?status=2xx&method=POST") == [2]
    assert ids("?since=2") == [3, 4]
    assert ids("?limit=1") == [4]
    assert ids("?since=1&limit=2") == [2, 3]

    first = call("GET", f"{base}/_sandbox/journal?limit=4").json()["value"][0]
    assert {k: first[k] for k in ("method", "path", "query", "status", "request_bytes", "service")} == {
        "method": "GET", "path": "/api/items", "query": "$top=1", "status": 200, "request_bytes": 0,
        "service": "testsvc"}
    assert isinstance(first["duration_ms"], float) and first["response_bytes"] > 0


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("?since=abc", "'since' must be an integer"),
        ("?limit=-1", "'limit' must not be negative"),
        ("?status=9xx", "status must be an HTTP status code"),
        ("?status=ok", "status must be an HTTP status code"),
    ],
)
def test_bad_journal_queries_are_400(base: str, query: str, fragment: str) -> None:
    response = call("GET", f"{base}/_sandbox/journal{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert fragment in response.json()["error"]["message"]


def test_delete_journal(base: str, sandbox: SandboxServices) -> None:
    requests.get(f"{base}/api/items")
    response = call("DELETE", f"{base}/_sandbox/journal")
    assert response.status_code == 204 and response.content == b""
    assert call("GET", f"{base}/_sandbox/journal").json() == {"value": []}


def test_faults_get_put_delete(base: str, sandbox: SandboxServices) -> None:
    initial = call("GET", f"{base}/_sandbox/faults").json()
    assert initial["active"] is False and initial["error_status"] == 503

    put = call("PUT", f"{base}/_sandbox/faults",
               json={"error_rate": 0.5, "error_status": 500, "paths": ["/api/"], "methods": ["get"], "count": 3})
    assert put.status_code == 200
    state = put.json()
    assert (state["error_rate"], state["error_status"], state["paths"], state["methods"], state["remaining"]) == (
        0.5, 500, ["/api/"], ["GET"], 3)
    assert call("GET", f"{base}/_sandbox/faults").json() == state

    replaced = call("PUT", f"{base}/_sandbox/faults", json={"latency_ms": 5}).json()
    assert replaced["error_rate"] == 0 and replaced["latency_ms"] == 5  # PUT replaces the whole config

    assert call("DELETE", f"{base}/_sandbox/faults").status_code == 204
    assert sandbox.faults.state()["active"] is False


@pytest.mark.parametrize(
    ("path", "data", "fragment"),
    [
        ("/_sandbox/faults", b"{not json", "not valid JSON"),
        ("/_sandbox/faults", b"[1, 2]", "must be a JSON object"),
        ("/_sandbox/faults", b"", "A JSON object body is required"),
        ("/_sandbox/faults", b'{"error_rate": 2}', "error_rate must be between 0 and 1"),
        ("/_sandbox/faults", b'{"explode": true}', "Unknown fault field(s) 'explode'"),
        ("/_sandbox/limits", b"\xff\xfe", "not valid JSON"),
        ("/_sandbox/limits", b'{"max_requests": -5}', "max_requests must be an integer of at least 1"),
        ("/_sandbox/limits", b'{"max_requests": null}', "max_requests must be an integer"),
        ("/_sandbox/limits", b'"x"', "must be a JSON object"),
    ],
)
def test_bad_put_bodies_are_400_not_500(base: str, path: str, data: bytes, fragment: str) -> None:
    response = call("PUT", base + path, data=data, headers={**BEARER, "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest" and fragment in error["message"]


def test_bad_seed_json_is_400(base: str) -> None:
    response = call("POST", f"{base}/_sandbox/seed", data=b"{", headers={**BEARER, "Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_limits_get_put_and_reset(base: str, sandbox: SandboxServices) -> None:
    state = call("GET", f"{base}/_sandbox/limits").json()
    assert {k: state[k] for k in ("enabled", "window_seconds", "max_requests", "max_execution_ms", "max_concurrent")} == {
        "enabled": True, "window_seconds": 300, "max_requests": 6000, "max_execution_ms": 1_200_000,
        "max_concurrent": 52}
    assert state["principals"] == {}

    updated = call("PUT", f"{base}/_sandbox/limits", json={"max_requests": 5, "window_seconds": 60}).json()
    assert (updated["max_requests"], updated["window_seconds"], updated["max_concurrent"]) == (5, 60, 52)

    requests.get(f"{base}/api/items", headers={"X-User": "alice"})
    principals = call("GET", f"{base}/_sandbox/limits").json()["principals"]
    assert principals["alice"]["requests"] == 1 and principals["alice"]["in_flight"] == 0

    assert call("POST", f"{base}/_sandbox/limits/reset").json()["principals"] == {}
    assert sandbox.limits.config.max_requests == 5  # reset clears windows, not settings


def test_counters(base: str, sandbox: SandboxServices, service: FakeService) -> None:
    call("POST", f"{base}/_sandbox/seed", json={"fixture": "default"})
    call("PUT", f"{base}/_sandbox/limits", json={"max_requests": 2})
    for _ in range(3):
        requests.get(f"{base}/api/items", headers={"X-User": "alice"})
    requests.post(f"{base}/api/items", headers={"X-User": "bob"})
    counters = call("GET", f"{base}/_sandbox/counters").json()
    assert counters["requests"]["total"] == 4
    assert counters["requests"]["by_method"] == {"GET": 3, "POST": 1}
    assert counters["requests"]["by_status_class"] == {"2xx": 3, "4xx": 1}
    assert counters["requests"]["by_template"] == {"GET /api/items": 3, "POST /api/items": 1}
    assert counters["requests"]["rejected"] == {"requests": 1}
    assert counters["throttled"] == {"requests": 1}
    assert counters["service"] == {"rows": 10}
