"""Connector at scale: peak memory, time and HTTP requests of Create in Dataverse over N customers.

Starts an unseeded sandbox in a temporary directory, creates N customers in BC through JSON
``$batch``, then runs ``connector create-in-dataverse CUSTOMER --all`` in a child process and prints,
per N: wall time, records per second, the child's peak RSS, and the requests each service saw
(from its journal) next to the lower bound ⌈N/page⌉ reads + ⌈N/batch⌉ writes.

    .venv/bin/python bench/bench_connector.py --sizes 5000,50000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_sandbox  # noqa: E402  (the benchmark reuses the tests' sandbox starter)


def create_customers(sandbox: Any, session: requests.Session, company: str, count: int, offset: int) -> None:
    url = f"companies({company})/customers"
    for start in range(0, count, 100):
        batch = [{"id": str(i), "method": "POST", "url": url, "headers": {"Content-Type": "application/json"},
                  "body": {"displayName": f"Scale {offset + start + i:06d}", "city": "Reykjavik"}}
                 for i in range(min(100, count - start))]
        resp = session.post(f"{sandbox.bc_api}/$batch", json={"requests": batch}, timeout=300)
        resp.raise_for_status()
        assert all(r["status"] == 201 for r in resp.json()["responses"])


def journal_count(sandbox: Any, service: str) -> int:
    entries = sandbox.control("GET", "journal", service=service, params={"limit": 1_000_000}).json()["value"]
    return sum(1 for e in entries if not e["path"].startswith("/_sandbox"))


def run_connector(config: Path, *args: str) -> tuple[float, int, dict[str, Any]]:
    """(seconds, peak RSS in KiB, parsed --json output) of one connector command in a child process.

    The child is reaped with ``os.wait4``, which reports that child's own peak RSS; its output is
    small (counters and at most 20 errors), so it fits the pipe while we wait.
    """
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "connector.cli", "--config", str(config), *args, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"connector {' '.join(args)} failed: {err.decode()[-500:]}")
    return seconds, usage.ru_maxrss, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000", help="comma-separated record counts")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would let them override the sandbox CA
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = start_sandbox(Path(tmp) / "sandbox", seed=False)
        try:
            config = Path(tmp) / "connector.toml"
            for command in (["init", "--sandbox", str(sandbox.data_dir)], ["setup", "defaults"]):
                subprocess.run([sys.executable, "-m", "connector.cli", "--config", str(config), *command],
                               check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            bc = sandbox.bc_session()
            company = sandbox.companies[0]
            made = 0
            print(f"{'N':>7} {'seconds':>8} {'records/s':>10} {'peak RSS':>9} {'DV req':>7} {'BC req':>7} "
                  f"{'lower bound':>12}")
            for size in sizes:
                started = time.perf_counter()
                create_customers(sandbox, bc, company, size - made, made)
                made = size
                setup_seconds = time.perf_counter() - started
                for service in ("dataverse", "bc"):
                    sandbox.control("DELETE", "journal", service=service)
                # each size runs against fresh couplings: remove the previous size's first
                run_connector(config, "uncouple", "CUSTOMER", "--all")
                for service in ("dataverse", "bc"):
                    sandbox.control("DELETE", "journal", service=service)
                seconds, peak_kib, out = run_connector(config, "create-in-dataverse", "CUSTOMER", "--all")
                job = out["jobs"][0]
                assert job["inserted"] + job["skipped"] == size, job
                dv, bc_requests = journal_count(sandbox, "dataverse"), journal_count(sandbox, "bc")
                bound = math.ceil(size / 500) + math.ceil(size / 500)
                print(f"{size:>7} {seconds:>8.1f} {size / seconds:>10.0f} {peak_kib / 1024:>7.0f}MB "
                      f"{dv:>7} {bc_requests:>7} {bound:>12}   (BC setup {setup_seconds:.0f} s)", flush=True)
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
