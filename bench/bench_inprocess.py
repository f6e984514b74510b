"""In-process mode against live sockets: the same work, timed in each mode.

Two scenarios, each against a fresh unseeded sandbox per mode (``mockservers.testing.start_sandbox``;
live = HTTPS on free ports), with the client in this process in both modes, so the figures differ
only by how requests travel:

- **Synchronize Now** of N customers: BC gets N customers, a connector with the default mappings
  couples them (Create in Dataverse), BC changes every customer, then ``connector sync CUSTOMER
  <keys> --direction to-dataverse`` is timed (``--repeat`` times, a change before each). It makes a
  handful of large requests (reads by key chunk, one ``$batch`` per 500 writes).
- **Record by record**: what a plain client does, one GET and one PATCH per account, N times.

Printed: the median seconds per mode, the ratio, the requests each service journaled, and whether the
journals (method, path, status) agree between the modes.

    .venv/bin/python bench/bench_inprocess.py --customers 500 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connector.cli import main as connector_main  # noqa: E402
from mockservers.testing import RunningSandbox, start_sandbox  # noqa: E402

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def connector(config: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(connector_main, ["--config", str(config), *args, "--json"], catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"connector {' '.join(args[:3])} failed: {result.output[-500:]}")
    return dict(json.loads(result.stdout))


def bc_batch(sb: RunningSandbox, operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    session = sb.bc_session()
    answers: list[dict[str, Any]] = []
    for start in range(0, len(operations), 100):
        chunk = [{"id": str(i), **op} for i, op in enumerate(operations[start:start + 100])]
        resp = session.post(f"{sb.bc_api}/$batch", json={"requests": chunk}, timeout=300)
        resp.raise_for_status()
        answers += sorted(resp.json()["responses"], key=lambda r: int(r["id"]))
    return answers


def scenario(mode: str, customers: int, repeat: int, workdir: Path) -> tuple[list[float], list[tuple[str, str, str, int]]]:
    sb = start_sandbox(workdir / f"sandbox-{mode}", mode=mode, fixture=None)  # type: ignore[arg-type]
    try:
        config = workdir / f"connector-{mode}.toml"
        connector(config, "init", "--sandbox", str(sb.data_dir))
        connector(config, "setup", "defaults")
        url = f"companies({sb.companies[0]})/customers"
        created = bc_batch(sb, [{"method": "POST", "url": url, "headers": {"Content-Type": "application/json"},
                                 "body": {"displayName": f"Bench {i:05d}"}} for i in range(customers)])
        records = [r["body"] for r in created]
        numbers = [r["number"] for r in records]
        connector(config, "create-in-dataverse", "CUSTOMER", *numbers)
        times: list[float] = []
        journal: list[tuple[str, str, str, int]] = []
        for round_ in range(repeat):
            bc_batch(sb, [{"method": "PATCH", "url": f"{url}({r['id']})", "body": {"city": f"City {round_}"},
                           "headers": {"If-Match": "*", "Content-Type": "application/json"}} for r in records])
            connector(config, "test-connection")  # tokens and the company row, outside the timed part
            sb.journal.clear()
            started = time.perf_counter()
            out = connector(config, "sync", "CUSTOMER", *numbers, "--direction", "to-dataverse")
            times.append(time.perf_counter() - started)
            assert out["jobs"][0]["modified"] == customers, out["jobs"][0]
            journal = [(r.service, r.method, GUID.sub("<id>", r.path), r.status) for r in sb.journal.requests()]
        return times, journal
    finally:
        sb.stop()


def record_by_record(mode: str, count: int, workdir: Path) -> tuple[float, list[tuple[str, str, str, int]]]:
    sb = start_sandbox(workdir / f"chatty-{mode}", mode=mode, fixture=None)  # type: ignore[arg-type]
    try:
        dv = sb.session()
        made = dv.post(f"{sb.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [
            {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"Chatty {i:05d}"} for i in range(count)]})
        made.raise_for_status()
        ids = made.json()["Ids"]
        sb.journal.clear()
        started = time.perf_counter()
        for account_id in ids:
            row = dv.get(f"{sb.api}/accounts({account_id})", params={"$select": "name"}).json()
            dv.patch(f"{sb.api}/accounts({account_id})", json={"name": row["name"] + " ok"},
                     headers={"If-Match": row["@odata.etag"]}).raise_for_status()
        seconds = time.perf_counter() - started
        return seconds, [(r.service, r.method, GUID.sub("<id>", r.path), r.status) for r in sb.journal.requests()]
    finally:
        sb.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("live", "inprocess"):
            times, journal = scenario(mode, args.customers, args.repeat, Path(tmp))
            results[mode] = {"median_s": statistics.median(times), "runs": times, "journal": journal}
        chatty = {mode: record_by_record(mode, args.customers, Path(tmp)) for mode in ("live", "inprocess")}
    figures: dict[str, Any] = {"customers": args.customers}
    for title, key, timed in (
            (f"Synchronize Now of {args.customers} customers (median of {args.repeat})", "synchronize_now",
             {mode: (results[mode]["median_s"], results[mode]["journal"]) for mode in results}),
            (f"Record by record: GET + PATCH of {args.customers} accounts", "record_by_record", chatty)):
        (live_s, live_journal), (inproc_s, inproc_journal) = timed["live"], timed["inprocess"]
        same = live_journal == inproc_journal
        print(f"{title}:")
        print(f"  {'mode':<10} {'seconds':>8} {'requests':>9}")
        print(f"  {'live':<10} {live_s:>8.3f} {len(live_journal):>9}")
        print(f"  {'inprocess':<10} {inproc_s:>8.3f} {len(inproc_journal):>9}")
        print(f"  in-process is {live_s / inproc_s:.1f}x faster; journals (method, path, status) "
              f"{'identical' if same else 'DIFFER'}")
        figures[key] = {"live_s": live_s, "inprocess_s": inproc_s, "speedup": live_s / inproc_s,
                        "requests": len(live_journal), "journals_identical": same}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
