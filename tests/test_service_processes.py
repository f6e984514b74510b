"""`mockservers serve` serves BC from a process of its own (``--service-processes``, the default), so
the two services answer on two cores. What a client sees must not change: one sandbox clock across
the processes (a time moved through one service is the time of the other, of token lifetimes and of
the rows both stamp), each service's own journal, and a stop (SIGTERM, Ctrl+C, or the parent killed)
that leaves no process and no port behind.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from tests.test_sandbox_serve import STOP_TIMEOUT, Served, free_ports

COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").is_file() else ""
        found += [int(x) for x in text.split()]
    return found


def gone(pid: int, within: float = STOP_TIMEOUT) -> bool:
    """``pid`` has exited (reaped, or a zombie no one waited for yet) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stands(state: dict[str, object]) -> tuple[datetime, object]:
    """Where a clock stands and whether it is frozen (its offset from real time grows while frozen)."""
    return instant(str(state["now"])), state["frozen"]


ServedT = TypeVar("ServedT", bound=Served)


def serving(served: ServedT) -> Iterator[ServedT]:
    """``served`` for a test, and afterwards no process of it left: the sandbox is killed, and its
    children (which follow their parent) are killed too should one not follow."""
    try:
        yield served
    finally:
        running = served.process is not None and served.process.poll() is None
        orphans = children(served.process.pid) if running and served.process is not None else []
        served.kill()
        for pid in orphans:
            if not gone(pid, within=5):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def split(tmp_path: Path) -> Iterator[Served]:
    yield from serving(Served(tmp_path / "data", free_ports(3), tls=False))


def test_bc_answers_from_a_process_of_its_own(split: Served) -> None:
    split.start()
    assert split.process is not None
    (child,) = children(split.process.pid)
    bc_port = split.ports[2]
    owners = {int(p.parent.parent.name) for p in Path("/proc").glob("[0-9]*/fd/*")
              if _is_listening_socket_of(p, bc_port)}
    assert owners == {child}, "only the child holds BC's port"

    resp = split.session("bc").get(f"{split.info['bc']['api_root']}/companies({COMPANY})/customers?$top=1")
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["value"]) == 1
    assert split.session().get(f"{split.info['dataverse']['api_root']}/accounts?$top=1").status_code == 200


def _is_listening_socket_of(fd: Path, port: int) -> bool:
    """Whether the descriptor ``fd`` (a /proc/<pid>/fd entry) is the TCP socket listening on ``port``."""
    try:
        target = os.readlink(fd)
    except OSError:
        return False
    if not target.startswith("socket:["):
        return False
    inode = target[len("socket:["):-1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] == inode and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def test_one_clock_across_the_processes(split: Served) -> None:
    """The clock moved through the Dataverse control API (identity and Dataverse's process) is BC's
    clock too: a token issued at the new time is valid at BC (not 'not yet valid'), BC stamps its rows
    with that time, and BC's control API reports it; moved through BC, Dataverse follows."""
    split.start()
    ahead = datetime.now(UTC) + timedelta(days=400)
    moved = split.control("PUT", "clock", service="dataverse", json={"now": ahead.isoformat(), "frozen": True})
    assert moved.status_code == 200, moved.text
    assert stands(split.control("GET", "clock", service="bc").json()) == stands(moved.json())

    bc = split.session("bc")  # issued on the moved clock
    created = bc.post(f"{split.info['bc']['api_root']}/companies({COMPANY})/customers", json={"displayName": "Ahead"})
    assert created.status_code == 201, created.text
    assert instant(created.json()["lastModifiedDateTime"]) == instant(moved.json()["now"])

    again = split.control("PUT", "clock", service="bc", json={"advance_seconds": 3600})
    assert again.status_code == 200, again.text
    assert instant(again.json()["now"]) == instant(moved.json()["now"]) + timedelta(hours=1)
    assert stands(split.control("GET", "clock", service="dataverse").json()) == stands(again.json())
    account = split.session().post(f"{split.info['dataverse']['api_root']}/accounts", json={"name": "Ahead"},
                                   headers={"Prefer": "return=representation"})
    assert account.status_code == 201, account.text
    # Dataverse writes whole seconds
    assert instant(account.json()["modifiedon"]) == instant(again.json()["now"]).replace(microsecond=0)


def test_each_service_journals_its_own_requests(split: Served) -> None:
    split.start()
    for service in ("dataverse", "bc"):
        assert split.control("DELETE", "journal", service=service).status_code in (200, 204)
    bc = split.session("bc")
    for _ in range(3):
        assert bc.get(f"{split.info['bc']['api_root']}/companies({COMPANY})/customers?$top=1").status_code == 200
    bc_entries = split.control("GET", "journal", service="bc").json()["value"]
    dv_entries = split.control("GET", "journal", service="dataverse").json()["value"]
    assert [e["method"] for e in bc_entries if "/customers" in e["path"]] == ["GET"] * 3
    assert not [e for e in dv_entries if "/customers" in e["path"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_a_stop_ends_both_processes_and_frees_every_port(split: Served, signum: int) -> None:
    split.start()
    assert split.process is not None
    (child,) = children(split.process.pid)
    assert split.stop(signum) == 0, split.output()
    assert gone(child), "the BC process outlived the sandbox"
    assert all(port_free(port) for port in split.ports)
    assert "Traceback" not in split.output()


def test_the_bc_process_stops_when_the_sandbox_is_killed(split: Served) -> None:
    """kill -9 gives the parent no chance to stop its child: the child notices its parent is gone and
    stops, so the next `serve` on the same ports and data dir starts."""
    split.start()
    assert split.process is not None
    (child,) = children(split.process.pid)
    split.process.send_signal(signal.SIGKILL)
    split.process.wait(timeout=STOP_TIMEOUT)
    assert gone(child), "an orphaned BC process kept serving"
    assert port_free(split.ports[2])
    split.start()
    assert split.session("bc").get(f"{split.info['bc']['api_root']}/companies").status_code == 200
    assert split.stop() == 0


def test_one_process_serves_everything_when_asked(tmp_path: Path) -> None:
    served = OneProcess(tmp_path / "data", free_ports(3), tls=False)
    try:
        served.start()
        assert served.process is not None
        assert children(served.process.pid) == []
        assert served.session("bc").get(f"{served.info['bc']['api_root']}/companies").status_code == 200
        assert served.stop() == 0
    finally:
        served.kill()


class OneProcess(Served):
    def args(self) -> list[str]:
        return [*super().args(), "--one-process"]


def test_the_testing_kit_serves_bc_apart_when_asked(tmp_path: Path) -> None:
    """``start_sandbox(mode="live", service_processes=True)``, as the benchmark serves its sandbox:
    the kit's clock, journal and reset reach BC in its own process, and stop leaves no process."""
    from mockservers.testing import start_sandbox

    sandbox = start_sandbox(tmp_path / "kit", mode="live", tls=False, service_processes=True)
    try:
        (child,) = [process.pid for process in sandbox.sandbox.children.values()]
        assert child in children(os.getpid())
        frozen = sandbox.clock.freeze()
        bc = sandbox.bc_session()
        created = bc.post(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers",
                          json={"displayName": "Kit"})
        assert created.status_code == 201, created.text
        assert instant(created.json()["lastModifiedDateTime"]) == frozen
        assert [r.method for r in sandbox.journal.requests("bc", path_prefix="/v2.0/") if "/customers" in r.path] \
            == ["POST"]
        sandbox.reset(fixture=None)
        assert bc.get(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/customers").json()["value"] == []
    finally:
        sandbox.stop()
    assert gone(child)

