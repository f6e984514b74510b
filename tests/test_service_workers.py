"""`mockservers serve --workers 2`: Dataverse and BC each answered by two processes on one port. A
client must not be able to tell: one journal per service, faults counted across the workers, one set
of service-protection windows per user, a change of the caller's application user or of a choice
column's options seen by every worker on the next request, a reset seen by all, and a stop that
leaves no process and no port behind.

Which worker accepts a new connection is the kernel's choice; each check below sends its requests
on fresh connections (a new TCP connection per request), many enough that both workers answer some
(the first test shows they do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.test_sandbox_serve import EXECUTABLE, STOP_TIMEOUT, Served, free_ports
from tests.test_service_processes import children, gone, port_free, serving

APP_USER = "5e000000-0000-4000-8000-000000000002"  # the integration app's application user
COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
FRESH = 24  # requests on fresh connections per check: all on one worker by chance is 2 ** -23


class Workers(Served):
    def args(self) -> list[str]:
        return [*super().args(), "--workers", "2"]

    def token(self, service: str = "dataverse") -> str:
        return str(self.session(service).headers["Authorization"])

    def fresh(self, method: str, url: str, token: str, **kwargs: Any) -> requests.Response:
        """One request on a connection of its own."""
        headers = {"Authorization": token, "Accept": "application/json", **kwargs.pop("headers", {})}
        return requests.request(method, url, headers=headers, verify=self.verify, timeout=10, **kwargs)

    def api(self, service: str = "dataverse") -> str:
        return str(self.info[service]["api_root"])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    yield from serving(Workers(tmp_path / "data", free_ports(3), tls=False))


def _connections(pid: int, port: int) -> int:
    """Established TCP connections process ``pid`` holds on local port ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_each_service_is_answered_by_two_processes_on_its_port(workers: Workers) -> None:
    workers.start()
    assert workers.process is not None
    pids = children(workers.process.pid)
    assert len(pids) == 4, "two Dataverse workers and two BC workers"
    for service, port in (("dataverse", workers.ports[1]), ("bc", workers.ports[2])):
        url = f"{workers.api(service)}/WhoAmI" if service == "dataverse" else f"{workers.api(service)}/companies"
        sessions = [workers.session(service) for _ in range(FRESH)]
        for session in sessions:  # each keeps its connection open to the worker that accepted it
            assert session.get(url).status_code == 200
        holding = [pid for pid in pids if _connections(pid, port)]
        assert len(holding) == 2, f"both {service} workers hold some of the {FRESH} connections"
        for session in sessions:
            session.close()


def test_one_journal_per_service_across_the_workers(workers: Workers) -> None:
    workers.start()
    for service in ("dataverse", "bc"):
        assert workers.control("DELETE", "journal", service=service).status_code == 204
    token = workers.token("bc")
    url = f"{workers.api('bc')}/companies({COMPANY})/customers?$top=1"
    for _ in range(FRESH):
        assert workers.fresh("GET", url, token).status_code == 200
    entries = workers.control("GET", "journal", service="bc").json()["value"]
    mine = [e for e in entries if e["path"].endswith("/customers")]
    assert len(mine) == FRESH
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    counters = workers.control("GET", "counters", service="bc").json()["requests"]
    assert counters["total"] == len(entries)
    assert not [e for e in workers.control("GET", "journal", service="dataverse").json()["value"]
                if e["path"].endswith("/customers")]


def test_a_fault_count_holds_across_the_workers(workers: Workers) -> None:
    workers.start()
    token = workers.token()
    armed = workers.control("PUT", "faults", json={"error_rate": 1.0, "error_status": 503, "count": 5,
                                                    "paths": ["/api/data/v9.2/WhoAmI"]})
    assert armed.status_code == 200, armed.text
    statuses = [workers.fresh("GET", f"{workers.api()}/WhoAmI", token).status_code for _ in range(FRESH)]
    assert statuses.count(503) == 5 and statuses.count(200) == FRESH - 5
    assert statuses[:5] == [503] * 5, "the next five matching requests, whichever worker answers them"
    assert workers.control("GET", "faults").json()["active"] is False


def test_a_removed_application_user_is_refused_by_every_worker(workers: Workers) -> None:
    workers.start()
    token = workers.token()
    for _ in range(FRESH):  # every worker remembers the caller now
        assert workers.fresh("GET", f"{workers.api()}/WhoAmI", token).status_code == 200
    removed = workers.fresh("PATCH", f"{workers.api()}/systemusers({APP_USER})", token,
                            headers={"If-Match": "*"}, json={"applicationid": None, "azureactivedirectoryobjectid": None})
    assert removed.status_code == 204, removed.text
    refused = [workers.fresh("GET", f"{workers.api()}/WhoAmI", token) for _ in range(FRESH)]
    assert {r.status_code for r in refused} == {403}
    assert {r.json()["error"]["code"] for r in refused} == {"0x80072560"}


def test_an_added_option_is_known_to_every_worker(workers: Workers) -> None:
    workers.start()
    token = workers.token()
    for _ in range(FRESH):  # every worker has read the org's options by now
        assert workers.fresh("GET", f"{workers.api()}/WhoAmI", token).status_code == 200
    added = workers.fresh("POST", f"{workers.api()}/InsertOptionValue", token, json={
        "EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode", "Value": 100000077,
        "Label": {"LocalizedLabels": [{"Label": "Worker test", "LanguageCode": 1033}]}})
    assert added.status_code == 200, added.text
    for i in range(FRESH):
        created = workers.fresh("POST", f"{workers.api()}/accounts", token,
                                json={"name": f"Option {i}", "paymenttermscode": 100000077})
        assert created.status_code == 204, created.text


def test_a_reset_is_seen_by_every_worker(workers: Workers) -> None:
    workers.start()
    token = workers.token("bc")
    url = f"{workers.api('bc')}/companies({COMPANY})/customers"
    assert workers.fresh("GET", url, token).json()["value"], "seeded"
    assert workers.control("POST", "reset", service="bc").status_code == 200
    for _ in range(FRESH):
        assert workers.fresh("GET", url, token).json()["value"] == []


def test_an_option_added_before_a_reset_is_gone_on_every_worker(workers: Workers) -> None:
    """Options added at run time go with the data: after a reset answered by one worker, every worker
    refuses the value (each reads the org's settings again)."""
    workers.start()
    token = workers.token()
    added = workers.fresh("POST", f"{workers.api()}/InsertOptionValue", token, json={
        "EntityLogicalName": "account", "AttributeLogicalName": "paymenttermscode", "Value": 100000078,
        "Label": {"LocalizedLabels": [{"Label": "Before reset", "LanguageCode": 1033}]}})
    assert added.status_code == 200, added.text
    for _ in range(FRESH):  # every worker knows the option now
        known = workers.fresh("POST", f"{workers.api()}/accounts", token,
                              json={"name": "Known", "paymenttermscode": 100000078})
        assert known.status_code == 204, known.text
    assert workers.control("POST", "reset").status_code == 200
    token = workers.token()
    refused = [workers.fresh("POST", f"{workers.api()}/accounts", token,
                             json={"name": "Gone", "paymenttermscode": 100000078}) for _ in range(FRESH)]
    assert {r.status_code for r in refused} == {400}, [r.text for r in refused if r.status_code != 400]


def test_one_set_of_limits_per_user_across_the_workers(workers: Workers) -> None:
    """Ten requests in the window, counted together whichever worker answers: the eleventh gets
    Dataverse's 429 (its code, Retry-After), on every worker."""
    workers.start()
    assert workers.control("PUT", "limits", json={"max_requests": 10}).status_code == 200
    token = workers.token()
    answers = [workers.fresh("GET", f"{workers.api()}/WhoAmI", token) for _ in range(FRESH)]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * (FRESH - 10)
    assert {a.json()["error"]["code"] for a in answers[10:]} == {"0x80072322"}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers[10:])
    state = workers.control("GET", "limits").json()
    assert [p["requests"] for p in state["principals"].values()] == [10]
    assert workers.control("GET", "counters").json()["throttled"] == {"requests": FRESH - 10}
    assert workers.control("POST", "limits/reset").status_code == 200
    assert workers.fresh("GET", f"{workers.api()}/WhoAmI", token).status_code == 200


def test_the_testing_kit_serves_workers_when_asked(tmp_path: Path) -> None:
    """``start_sandbox(mode="live", workers=2)``, as the benchmark serves its sandbox: the kit's clock,
    journal and reset reach every worker, and stop leaves no process."""
    from mockservers.testing import start_sandbox

    sandbox = start_sandbox(tmp_path / "kit", mode="live", tls=False, service_processes=True, workers=2)
    try:
        pids = [process.pid for process in sandbox.sandbox.children.values()]
        assert len(pids) == 4
        frozen = sandbox.clock.freeze()
        token = f"Bearer {sandbox.bc_token()}"
        customers = f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers"
        for i in range(FRESH // 4):
            created = requests.post(customers, json={"displayName": f"Kit {i}"}, timeout=10,
                                    headers={"Authorization": token})
            assert created.status_code == 201, created.text
            assert created.json()["lastModifiedDateTime"].startswith(frozen.strftime("%Y-%m-%dT%H:%M:%S"))
        posts = [r for r in sandbox.journal.requests("bc", path_prefix="/v2.0/") if r.method == "POST"]
        assert len(posts) == FRESH // 4
        sandbox.reset(fixture=None)
        assert requests.get(customers, headers={"Authorization": token}, timeout=10).json()["value"] == []
    finally:
        sandbox.stop()
    assert all(gone(pid) for pid in pids)


def test_limits_held_off_stay_off_on_every_worker(tmp_path: Path) -> None:
    served = NoLimits(tmp_path / "data", free_ports(3), tls=False)
    try:
        served.start()
        refused = served.control("PUT", "limits", json={"enabled": True})
        assert refused.status_code == 409
        assert "--no-limits" in refused.json()["error"]["message"]
        assert served.control("POST", "reset").status_code == 200
        assert served.control("GET", "limits").json()["enabled"] is False, "a reset keeps them off"
        token = served.token()
        assert all(served.fresh("GET", f"{served.api()}/WhoAmI", token).status_code == 200 for _ in range(FRESH))
        assert served.control("GET", "limits").json()["principals"] == {}
        assert served.stop() == 0
    finally:
        served.kill()


class NoLimits(Workers):
    def args(self) -> list[str]:
        return [*super().args(), "--no-limits"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_a_stop_ends_every_worker_and_frees_every_port(workers: Workers, signum: int) -> None:
    workers.start()
    assert workers.process is not None
    pids = children(workers.process.pid)
    assert workers.stop(signum) == 0, workers.output()
    assert all(gone(pid) for pid in pids)
    assert all(port_free(port) for port in workers.ports)
    assert "Traceback" not in workers.output()


@pytest.mark.parametrize(("extra", "message"), [
    (["--workers", "2", "--one-process"], "drop --one-process"),
    (["--workers", "0"], "--workers"),
])
def test_workers_that_cannot_be_served_are_refused_in_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    identity, dataverse, bc = free_ports(3)
    result = subprocess.run([str(EXECUTABLE), "serve", "--data-dir", str(tmp_path / "d"), "--identity-port",
                             str(identity), "--dataverse-port", str(dataverse), "--bc-port", str(bc), *extra],
                            capture_output=True, text=True, timeout=STOP_TIMEOUT)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


class QuickHooks(Workers):
    def args(self) -> list[str]:
        return [*super().args(), "--webhook-delay", "1.5"]


def test_changes_made_on_either_worker_collapse_into_one_notification(tmp_path: Path) -> None:
    """BC's outbox is one: a subscription made through one worker is known to the other, and changes
    to one record answered by both workers within BC's delay leave as one notification item."""
    from tests.test_bc_webhooks import Receiver

    receiver = Receiver()
    served = QuickHooks(tmp_path / "data", free_ports(3), tls=False)
    try:
        served.start()
        token = served.token("bc")
        customers = f"{served.api('bc')}/companies({COMPANY})/customers"
        subscribed = served.fresh("POST", f"{served.api('bc')}/subscriptions", token, json={
            "notificationUrl": receiver.url(), "resource": f"api/v2.0/companies({COMPANY})/customers",
            "clientState": "workers"})
        assert subscribed.status_code == 201, subscribed.text
        listed = [served.fresh("GET", f"{served.api('bc')}/subscriptions", token).json()["value"] for _ in range(FRESH)]
        assert {len(value) for value in listed} == {1}
        customer = served.fresh("GET", f"{customers}?$top=1", token).json()["value"][0]
        for i in range(FRESH):
            changed = served.fresh("PATCH", f"{customers}({customer['id']})", token, headers={"If-Match": "*"},
                                   json={"displayName": f"Changed {i}"})
            assert changed.status_code == 200, changed.text
        deadline = time.monotonic() + 15
        while not receiver.notifications and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # a second notification, were the outbox split, would have left by now
        bodies = receiver.bodies()
        assert len(bodies) == 1, bodies
        (item,) = bodies[0]
        assert item["changeType"] == "updated" and item["clientState"] == "workers"
        assert item["resource"].endswith(f"customers({customer['id']})")
        assert served.stop() == 0
    finally:
        served.kill()
        receiver.close()
