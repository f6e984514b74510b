"""Service protection, the request journal and fault injection on the running Dataverse sandbox.

Service protection limits (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits): per user, 6000 requests in a 300 s sliding window, then 429 with
``Retry-After`` and error code ``0x80072322``; ``x-ms-ratelimit-burst-remaining-xrm-requests`` tells the
caller what is left; a ``$batch`` counts as one request. Everything here goes over real HTTPS with real
tokens; only the control API (``/_sandbox``) is used to lower limits, read the journal and switch faults.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mockservers.sandbox.limits import ServiceProtection
from tests.conftest import RunningSandbox

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "default"
REQUESTS_CODE = "0x80072322"
REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
DEFAULTS = {"enabled": True, "window_seconds": 300, "max_requests": 6000, "max_execution_ms": 1_200_000,
            "max_concurrent": 52}


@pytest.fixture(autouse=True)
def fresh(sandbox: RunningSandbox) -> Iterator[None]:
    """Real limits, empty windows, no faults and an empty journal around every test."""

    def restore() -> None:
        assert sandbox.control("PUT", "limits", json=DEFAULTS).status_code == 200
        assert sandbox.control("POST", "limits/reset").status_code == 200
        assert sandbox.control("DELETE", "faults").status_code == 204
        assert sandbox.control("DELETE", "journal").status_code == 204

    restore()
    yield
    restore()


def set_limits(sandbox: RunningSandbox, **limits: Any) -> dict[str, Any]:
    resp = sandbox.control("PUT", "limits", json=limits)
    assert resp.status_code == 200, resp.text
    for name, value in limits.items():
        assert resp.json()[name] == value
    return resp.json()


def probe(dv: requests.Session, sandbox: RunningSandbox) -> requests.Response:
    """One cheap, always-valid Web API request."""
    return dv.get(f"{sandbox.api}/accounts", params={"$select": "name", "$top": "1"})


def usage(sandbox: RunningSandbox) -> dict[str, dict[str, Any]]:
    resp = sandbox.control("GET", "limits")
    assert resp.status_code == 200
    return resp.json()["principals"]


def assert_throttled(resp: requests.Response, limit: int) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["OData-Version"] == "4.0"
    assert resp.json() == {"error": {
        "code": REQUESTS_CODE,
        "message": f"Number of requests exceeded the limit of {limit} over time window of 300 seconds.",
    }}
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 300


def reporting_app() -> dict[str, str]:
    """The second app registration of the default fixture (it has its own application user)."""
    apps = json.loads((FIXTURES / "identity.json").read_text())["apps"]
    return next(a for a in apps if a["display_name"] == "Read-only Reporting")


def limiter_of(sandbox: RunningSandbox) -> ServiceProtection:
    """The running Dataverse app's limiter, reached in-process to pre-fill a window cheaply."""
    return sandbox.sandbox.apps["dataverse"].extensions["dataverse"]["sandbox"].limits


def test_request_beyond_the_limit_gets_429(dv: requests.Session, sandbox: RunningSandbox) -> None:
    set_limits(sandbox, max_requests=5)

    answered = [probe(dv, sandbox) for _ in range(5)]
    sixth = probe(dv, sandbox)
    name = f"Throttled {uuid.uuid4().hex[:8]}"
    write = dv.post(f"{sandbox.api}/accounts", json={"name": name})

    assert [r.status_code for r in answered] == [200] * 5
    assert [r.headers[REMAINING] for r in answered] == ["4", "3", "2", "1", "0"]
    assert_throttled(sixth, 5)
    assert_throttled(write, 5)  # rejected requests are not counted, and change nothing
    assert sandbox.control("GET", "counters").json()["throttled"] == {"requests": 2}
    assert [u["requests"] for u in usage(sandbox).values()] == [5]
    assert sandbox.control("POST", "limits/reset").status_code == 200
    assert dv.get(f"{sandbox.api}/accounts", params={"$filter": f"name eq '{name}'"}).json()["value"] == []


def test_6001st_request_with_the_real_limit(dv: requests.Session, sandbox: RunningSandbox) -> None:
    assert sandbox.control("GET", "limits").json()["max_requests"] == 6000
    first = probe(dv, sandbox)
    assert first.status_code == 200 and first.headers[REMAINING] == "5999"
    [principal] = usage(sandbox)
    limiter = limiter_of(sandbox)
    for _ in range(5998):  # requests 2..5999, counted exactly as the HTTP path counts them
        limiter.admit(principal).release(0.0)

    six_thousandth = probe(dv, sandbox)
    six_thousand_and_first = probe(dv, sandbox)

    assert six_thousandth.status_code == 200
    assert six_thousandth.headers[REMAINING] == "0"
    assert_throttled(six_thousand_and_first, 6000)
    assert usage(sandbox)[principal]["requests"] == 6000


def batch_body(api: str, boundary: str, gets: int) -> str:
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"GET {api}/accounts?$select=name&$top=1 HTTP/1.1\r\nAccept: application/json\r\n\r\n"
        for _ in range(gets)
    ]
    return "".join(parts) + f"--{boundary}--\r\n"


def test_batch_counts_as_one_request(dv: requests.Session, sandbox: RunningSandbox) -> None:
    set_limits(sandbox, max_requests=3)
    boundary = f"batch_{uuid.uuid4()}"

    batch = dv.post(f"{sandbox.api}/$batch", data=batch_body(sandbox.api, boundary, 5).encode(),
                    headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})

    assert batch.status_code == 200, batch.text
    assert batch.text.count("HTTP/1.1 200 OK") == 5
    assert batch.headers[REMAINING] == "2"
    assert [u["requests"] for u in usage(sandbox).values()] == [1]
    assert [probe(dv, sandbox).status_code for _ in range(2)] == [200, 200]
    assert_throttled(probe(dv, sandbox), 3)
    journal = sandbox.control("GET", "journal", params={"path": "/api/data/v9.2/$batch"}).json()["value"]
    assert [(e["status"], e["batch_operations"]) for e in journal] == [(200, 5)]


def test_another_app_is_not_throttled_by_the_first(dv: requests.Session, sandbox: RunningSandbox) -> None:
    integration_user = dv.get(f"{sandbox.api}/WhoAmI").json()["UserId"]
    assert sandbox.control("POST", "limits/reset").status_code == 200
    set_limits(sandbox, max_requests=2)
    app = reporting_app()
    reporting = sandbox.session(sandbox.token(client_id=app["client_id"], secret=app["client_secret"]))

    assert [probe(dv, sandbox).status_code for _ in range(2)] == [200, 200]
    assert_throttled(probe(dv, sandbox), 2)
    other = probe(reporting, sandbox)

    assert other.status_code == 200, other.text
    assert other.headers[REMAINING] == "1"
    whoami = reporting.get(f"{sandbox.api}/WhoAmI")
    assert whoami.status_code == 200
    assert whoami.json()["UserId"] != integration_user  # its own application user
    assert_throttled(probe(reporting, sandbox), 2)  # now the reporting app has used its own two
    assert_throttled(probe(dv, sandbox), 2)  # and the first app is still over its limit
    assert sorted(u["requests"] for u in usage(sandbox).values()) == [2, 2]


def test_limits_reset_restores_service(dv: requests.Session, sandbox: RunningSandbox) -> None:
    set_limits(sandbox, max_requests=1)
    assert probe(dv, sandbox).status_code == 200
    assert_throttled(probe(dv, sandbox), 1)

    reset = sandbox.control("POST", "limits/reset")

    assert reset.status_code == 200
    assert reset.json()["principals"] == {}
    assert reset.json()["max_requests"] == 1  # the window is emptied, the configured limit stays
    again = probe(dv, sandbox)
    assert again.status_code == 200 and again.headers[REMAINING] == "0"


def test_limits_can_be_switched_off(dv: requests.Session, sandbox: RunningSandbox) -> None:
    set_limits(sandbox, max_requests=1, enabled=False)

    answers = [probe(dv, sandbox) for _ in range(4)]

    assert [r.status_code for r in answers] == [200] * 4
    assert all(REMAINING not in r.headers for r in answers)


def test_bad_limit_settings_are_refused(sandbox: RunningSandbox) -> None:
    for body in ({"max_requests": 0}, {"max_requests": "ten"}, {"no_such_limit": 1}):
        resp = sandbox.control("PUT", "limits", json=body)
        assert resp.status_code == 400, body
        assert resp.json()["error"]["code"] == "BadRequest"
    assert sandbox.control("GET", "limits").json()["max_requests"] == 6000


def test_journal_records_each_request(dv: requests.Session, sandbox: RunningSandbox) -> None:
    missing = uuid.uuid4()
    assert probe(dv, sandbox).status_code == 200
    assert dv.get(f"{sandbox.api}/accounts({missing})").status_code == 404
    assert dv.post(f"{sandbox.api}/accounts", json={"nosuchcolumn": 1}).status_code == 400
    sandbox.control("GET", "limits")  # control calls are not part of the emulated surface

    entries = sandbox.control("GET", "journal").json()["value"]

    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("GET", "/api/data/v9.2/accounts", 200),
        ("GET", f"/api/data/v9.2/accounts({missing})", 404),
        ("POST", "/api/data/v9.2/accounts", 400),
    ]
    assert "$top=1" in entries[0]["query"]
    assert len({e["principal"] for e in entries}) == 1 and entries[0]["principal"]
    assert all(e["duration_ms"] >= 0 for e in entries)
    assert entries[2]["request_bytes"] == len(json.dumps({"nosuchcolumn": 1}))
    only_404 = sandbox.control("GET", "journal", params={"status": "404"}).json()["value"]
    assert [e["path"] for e in only_404] == [f"/api/data/v9.2/accounts({missing})"]


def test_injected_throttle_fault(dv: requests.Session, sandbox: RunningSandbox) -> None:
    resp = sandbox.control("PUT", "faults", json={"throttle_rate": 1.0, "retry_after": 7, "count": 1,
                                                  "paths": ["/api/data/v9.2/accounts"]})
    assert resp.status_code == 200 and resp.json()["active"]

    throttled = probe(dv, sandbox)
    after = probe(dv, sandbox)

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == REQUESTS_CODE
    assert after.status_code == 200  # count=1: the fault switched itself off
    faults = [e.get("fault") for e in sandbox.control("GET", "journal").json()["value"]]
    assert faults == ["throttle", None]


def test_injected_503_fault_uses_the_dataverse_envelope(dv: requests.Session, sandbox: RunningSandbox) -> None:
    assert sandbox.control("PUT", "faults", json={"error_rate": 1.0, "error_status": 503, "count": 2}).status_code == 200
    name = f"Fault {uuid.uuid4().hex[:8]}"

    read = probe(dv, sandbox)
    write = dv.post(f"{sandbox.api}/accounts", json={"name": name})
    healthy = dv.get(f"{sandbox.api}/accounts", params={"$filter": f"name eq '{name}'"})

    for resp in (read, write):
        assert resp.status_code == 503
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["OData-Version"] == "4.0"
        error = resp.json()["error"]
        assert set(error) == {"code", "message"} and isinstance(error["code"], str) and error["message"]
    assert healthy.status_code == 200
    assert healthy.json()["value"] == [], "a request answered by a fault must not reach the data"


@pytest.mark.parametrize("service", ["dataverse", "bc"])
def test_injected_drop_closes_the_connection(sandbox: RunningSandbox, service: str) -> None:
    """A dropped connection reaches the client as a connection error (over TLS, on a kept-alive session)."""
    session = sandbox.session() if service == "dataverse" else sandbox.bc_session()
    url = f"{sandbox.api}/WhoAmI" if service == "dataverse" else f"{sandbox.bc_api}/companies"
    assert session.get(url).status_code == 200  # the session now holds an open connection
    assert sandbox.control("PUT", "faults", service=service, json={"drop_rate": 1.0, "count": 1}).status_code == 200
    with pytest.raises(requests.ConnectionError):
        session.get(url)
    assert session.get(url).status_code == 200  # count=1: the next request is served again
    dropped = sandbox.control("GET", "journal", service=service, params={"status": "dropped"}).json()["value"]
    assert dropped and dropped[-1]["status"] == 0
