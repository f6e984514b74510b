"""`mockservers serve` as users run it: the real console script in a subprocess on free ports.

Proves the lifecycle promises of the README ("sandbox.json") and issue 2: sandbox.json carries every
key of the public contract with the right types, `ca_bundle` is null without --tls, the data and the
admin token survive a restart on the same data dir (SQLite file in it; re-seeding adds no duplicates),
SIGTERM and Ctrl+C stop it cleanly, and bad input gives a readable error with a non-zero exit and no
Python traceback.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

EXECUTABLE = Path(sys.executable).parent / "mockservers"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_ports(count: int) -> list[int]:
    """Ports the OS considers free right now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _default_sigint() -> None:
    # A shell that starts jobs in the background ignores SIGINT in them, and Python then keeps it
    # ignored; restore the default so the child turns Ctrl+C into KeyboardInterrupt like a terminal run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Served:
    """One `mockservers serve` process and where to reach it."""

    data_dir: Path
    ports: list[int]
    tls: bool
    seed: bool = True
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None

    def args(self) -> list[str]:
        identity, dataverse, bc = self.ports
        return [str(EXECUTABLE), "serve", "--data-dir", str(self.data_dir),
                "--seed" if self.seed else "--no-seed", "--tls" if self.tls else "--no-tls",
                "--identity-port", str(identity), "--dataverse-port", str(dataverse), "--bc-port", str(bc)]

    def start(self) -> dict[str, Any]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sandbox_json = self.data_dir / "sandbox.json"
        with contextlib.suppress(FileNotFoundError):
            sandbox_json.unlink()  # so a stale file from the previous run cannot satisfy the wait
        self.log = self.data_dir.parent / f"{self.data_dir.name}-serve-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.data_dir.parent, preexec_fn=_default_sigint)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mockservers serve exited with {self.process.returncode}:\n{self.output()}")
            if sandbox_json.is_file():
                with contextlib.suppress(ValueError):
                    self.info = json.loads(sandbox_json.read_text())
                    if self.healthy():
                        return self.info
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"mockservers serve did not come up within {START_TIMEOUT} s:\n{self.output()}")

    @property
    def verify(self) -> str | bool:
        return self.info["ca_bundle"] or True

    def healthy(self) -> bool:
        try:
            resp = requests.get(f"{self.info['dataverse']['url']}/_sandbox/health", verify=self.verify, timeout=2)
        except (requests.ConnectionError, requests.Timeout, KeyError):
            return False
        return resp.status_code == 200 and resp.json() == {"status": "ok"}

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"mockservers serve ignored signal {signum} for {STOP_TIMEOUT} s:\n{self.output()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.is_file() else ""

    def session(self, service: str = "dataverse") -> requests.Session:
        """An authenticated session for ``service``'s API, token from the sandbox's own identity service."""
        resp = requests.post(
            f"{self.info['identity']['url']}/{self.info['tenant_id']}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": self.info["app"]["client_id"],
                  "client_secret": self.info["app"]["client_secret"], "scope": self.info[service]["scope"]},
            verify=self.verify, timeout=10,
        )
        assert resp.status_code == 200, resp.text
        s = requests.Session()
        s.verify = self.verify
        s.headers.update({"Authorization": f"Bearer {resp.json()['access_token']}", "Accept": "application/json"})
        return s

    def control(self, method: str, path: str, token: str | None = None, *, service: str = "dataverse",
                **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.info[service]['url']}/_sandbox/{path}", verify=self.verify,
                                headers={"Authorization": f"Bearer {token or self.info['admin_token']}"}, timeout=10,
                                **kwargs)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path / "data", free_ports(3), tls=True)
    try:
        yield server
    finally:
        server.kill()


def count_accounts(dv: requests.Session, api: str) -> int:
    resp = dv.get(f"{api}/accounts/$count")
    assert resp.status_code == 200, resp.text
    return int(resp.content.decode("utf-8-sig"))  # Dataverse sends the number after a byte-order mark


def assert_contract(info: dict[str, Any], *, tls: bool) -> None:
    """Every key the README promises in sandbox.json, with its type and shape."""
    scheme = "https://" if tls else "http://"
    assert isinstance(info["tenant_id"], str)
    uuid.UUID(info["tenant_id"])
    for service in ("identity", "dataverse", "bc"):
        assert isinstance(info[service]["url"], str) and info[service]["url"].startswith(scheme), service
    assert info["dataverse"]["api_root"] == f"{info['dataverse']['url']}/api/data/v9.2"
    assert isinstance(info["bc"]["api_root"], str)
    assert info["bc"]["api_root"].startswith(f"{info['bc']['url']}/v2.0/{info['tenant_id']}/")
    assert info["bc"]["api_root"].endswith("/api/v2.0")
    assert isinstance(info["bc"]["environment"], str) and info["bc"]["environment"]
    assert f"/{info['bc']['environment']}/" in info["bc"]["api_root"]
    companies = info["bc"]["companies"]
    assert isinstance(companies, list) and companies
    for company in companies:
        uuid.UUID(company["id"])
        assert isinstance(company["name"], str) and company["name"]
    assert isinstance(info["app"]["client_id"], str)
    uuid.UUID(info["app"]["client_id"])
    assert isinstance(info["app"]["client_secret"], str) and info["app"]["client_secret"]
    assert isinstance(info["admin_token"], str) and len(info["admin_token"]) >= 16
    if tls:
        assert isinstance(info["ca_bundle"], str)
        assert Path(info["ca_bundle"]).is_absolute() and Path(info["ca_bundle"]).is_file()
        assert "BEGIN CERTIFICATE" in Path(info["ca_bundle"]).read_text()
    else:
        assert info["ca_bundle"] is None


def test_sandbox_json_contract_with_tls(served: Served) -> None:
    info = served.start()

    assert_contract(info, tls=True)
    on_disk = json.loads((served.data_dir / "sandbox.json").read_text())
    assert on_disk == info
    # The CA bundle is what clients need: the Web API answers over HTTPS verified against it alone.
    ident, dataverse, bc = served.ports
    assert info["dataverse"]["url"] == f"https://127.0.0.1:{dataverse}"
    assert info["identity"]["url"] == f"https://127.0.0.1:{ident}"
    assert info["bc"]["url"] == f"https://127.0.0.1:{bc}"
    whoami = served.session().get(f"{info['dataverse']['api_root']}/WhoAmI")
    assert whoami.status_code == 200 and "UserId" in whoami.json()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{info['dataverse']['url']}/_sandbox/health", verify=requests.certs.where(), timeout=5)
    assert served.stop(signal.SIGTERM) == 0


def served_plainly(info: dict[str, Any]) -> bool:
    """Token over http from the identity service, then the Web API over http: curl-style exploration."""
    token = requests.post(
        f"{info['identity']['url']}/{info['tenant_id']}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": info["app"]["client_id"],
              "client_secret": info["app"]["client_secret"], "scope": f"{info['dataverse']['url']}/.default"},
        timeout=10,
    )
    assert token.status_code == 200, token.text
    whoami = requests.get(f"{info['dataverse']['api_root']}/WhoAmI", timeout=10,
                          headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    return whoami.status_code == 200 and "UserId" in whoami.json()


def test_ca_bundle_null_without_tls(tmp_path: Path) -> None:
    server = Served(tmp_path / "plain", free_ports(3), tls=False, seed=False)
    try:
        info = server.start()
        assert_contract(info, tls=False)
        assert not (server.data_dir / "tls").exists(), "no certificates are made without --tls"
        assert served_plainly(info)
        assert server.stop(signal.SIGINT) == 0  # Ctrl+C stops it cleanly too
    finally:
        server.kill()
    assert "Traceback" not in server.output()


def test_data_and_admin_token_survive_restart(served: Served) -> None:
    first = served.start()
    dv = served.session()
    api = first["dataverse"]["api_root"]
    accounts_before = count_accounts(dv, api)
    kept = dv.post(f"{api}/accounts", json={"name": f"Survivor {uuid.uuid4().hex[:8]}", "accountnumber": "RESTART-1"},
                   headers={"Prefer": "return=representation"})
    assert kept.status_code == 201, kept.text
    kept_id = kept.json()["accountid"]
    assert dv.patch(f"{api}/accounts({kept_id})", json={"telephone1": "555-0707"}).status_code == 204
    dropped = dv.post(f"{api}/accounts", json={"name": "Deleted before restart"},
                      headers={"Prefer": "return=representation"}).json()["accountid"]
    assert dv.delete(f"{api}/accounts({dropped})").status_code == 204
    before = dv.get(f"{api}/accounts({kept_id})").json()

    assert served.stop(signal.SIGTERM) == 0
    assert (served.data_dir / "dataverse.db").is_file(), "state lives in a SQLite file in the data dir"

    second = served.start()  # same data dir, same ports, --seed again
    dv = served.session()
    after = dv.get(f"{api}/accounts({kept_id})")
    assert after.status_code == 200, after.text
    assert {k: after.json()[k] for k in ("name", "accountnumber", "telephone1", "versionnumber", "createdon",
                                         "modifiedon", "@odata.etag")} == \
        {k: before[k] for k in ("name", "accountnumber", "telephone1", "versionnumber", "createdon",
                                "modifiedon", "@odata.etag")}
    assert dv.get(f"{api}/accounts(accountnumber='RESTART-1')").json()["accountid"] == kept_id
    assert dv.get(f"{api}/accounts({dropped})").status_code == 404
    assert count_accounts(dv, api) == accounts_before + 1, "re-seeding must not duplicate"

    assert second["admin_token"] == first["admin_token"]
    assert served.control("GET", "journal", token=first["admin_token"]).status_code == 200
    assert served.control("GET", "journal", token="not-the-admin-token").status_code == 401
    assert second["tenant_id"] == first["tenant_id"] and second["app"] == first["app"]
    assert served.stop(signal.SIGINT) == 0
    assert "Traceback" not in served.output()


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXECUTABLE), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "exit_code", "says"),
    [
        (["--bogus"], 2, "No such option '--bogus'"),
        (["--dataverse-port", "x"], 2, "'x' is not a valid integer"),
        (["--dataverse-port", "70000"], 2, "70000 is not in the range"),
        (["--identity-port", "-1"], 2, "-1 is not in the range"),
        (["--fixture", "no-such-fixture", "--seed"], 1, "no-such-fixture"),
    ],
    ids=["unknown-option", "port-not-a-number", "port-out-of-range", "negative-port", "unknown-fixture"],
)
def test_bad_input_gives_one_readable_line(tmp_path: Path, args: list[str], exit_code: int, says: str) -> None:
    identity, dataverse, bc = free_ports(3)
    result = run_cli(["serve", "--data-dir", str(tmp_path / "d"), "--identity-port", str(identity),
                      "--dataverse-port", str(dataverse), "--bc-port", str(bc), *args], tmp_path)

    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert not (tmp_path / ".sandbox").exists(), "nothing may land in the default data dir"


def test_port_in_use_is_reported_without_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        identity, bc = free_ports(2)
        result = run_cli(["serve", "--data-dir", str(tmp_path / "d"), "--identity-port", str(identity),
                          "--dataverse-port", str(taken), "--bc-port", str(bc)], tmp_path)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: port {taken} is in use: pass --dataverse-port"), result.stderr
    assert not (tmp_path / "d").exists(), "a failed start leaves no data dir behind"


def test_failed_start_in_an_existing_data_dir_writes_nothing(served: Served) -> None:
    """Nothing half-written: after a start that fails, the data dir holds what it held before, and in
    particular no sandbox.json that would describe a sandbox that never ran."""
    served.start()
    assert served.stop() == 0
    (served.data_dir / "sandbox.json").unlink()
    (served.data_dir / "tls" / "server.pem").unlink()  # would be re-issued by the next start
    before = {p: p.stat().st_mtime_ns for p in served.data_dir.rglob("*")}

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        identity, dataverse, _ = served.ports
        result = run_cli(["serve", "--data-dir", str(served.data_dir), "--tls", "--seed", "--identity-port",
                          str(identity), "--dataverse-port", str(dataverse), "--bc-port",
                          str(busy.getsockname()[1])], served.data_dir.parent)

    assert result.returncode == 1, result.stderr
    assert "pass --bc-port" in result.stderr.strip().splitlines()[-1]
    after = {p: p.stat().st_mtime_ns for p in served.data_dir.rglob("*")}
    assert set(after) == set(before), sorted(str(p) for p in set(after) ^ set(before))
    changed = [str(p) for p in after if p.is_file() and p.name != "sandbox.lock" and after[p] != before[p]]
    assert changed == [], changed


def test_a_second_serve_on_a_locked_data_dir_names_the_pid(served: Served, tmp_path: Path) -> None:
    first = served.start()
    assert served.process is not None
    identity, dataverse, bc = free_ports(3)
    result = run_cli(["serve", "--data-dir", str(served.data_dir), "--identity-port", str(identity),
                      "--dataverse-port", str(dataverse), "--bc-port", str(bc)], tmp_path)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert str(served.data_dir.resolve()) in errors[0] and f"PID {served.process.pid}" in errors[0], errors[0]
    assert json.loads((served.data_dir / "sandbox.json").read_text()) == first, "the refused start wrote nothing"
    assert served.healthy(), "the first sandbox keeps serving"
    assert served.stop() == 0


def test_a_stale_lock_after_kill_9_is_taken_over(served: Served) -> None:
    served.start()
    assert served.process is not None
    dead = served.process.pid
    served.process.send_signal(signal.SIGKILL)
    served.process.wait(timeout=STOP_TIMEOUT)
    lock = served.data_dir / "sandbox.lock"
    assert lock.read_text().strip() == str(dead), "kill -9 leaves the file with the dead PID in it"

    served.start()  # same data dir: the lock died with its process
    assert served.process.pid != dead
    assert lock.read_text().strip() == str(served.process.pid)
    assert served.stop() == 0
    assert lock.read_text() == "", "a clean stop releases the lock and leaves no PID behind"


def test_version() -> None:
    result = subprocess.run([str(EXECUTABLE), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"mockservers, version \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_info_without_a_sandbox_is_one_line(tmp_path: Path) -> None:
    result = run_cli(["info", "--data-dir", str(tmp_path / "none")], tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("Error:"), result.stderr
    assert "sandbox.json" in result.stderr


def test_a_sigterm_as_soon_as_the_services_answer_stops_cleanly(served: Served) -> None:
    """A supervisor (or a test) may stop the sandbox the moment it is up: the SIGTERM handler is in
    place before the services answer, so even then the sandbox stops itself, exit 0, lock released
    (it used to be installed after the startup banner, and such a SIGTERM killed the process)."""
    served.data_dir.mkdir(parents=True, exist_ok=True)
    sandbox_json = served.data_dir / "sandbox.json"
    served.log = served.data_dir.parent / "sigterm-serve.log"
    with served.log.open("wb") as log:
        served.process = subprocess.Popen(served.args(), stdout=log, stderr=subprocess.STDOUT,
                                          cwd=served.data_dir.parent, preexec_fn=_default_sigint)
    deadline = time.monotonic() + START_TIMEOUT
    while not sandbox_json.is_file():  # written once the services answer: stop it right then
        assert served.process.poll() is None and time.monotonic() < deadline, served.output()
        time.sleep(0.002)
    assert served.stop() == 0, served.output()
    assert (served.data_dir / "sandbox.lock").read_text() == ""
