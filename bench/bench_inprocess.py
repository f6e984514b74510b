"""In-process mode against live sockets: the same connector scenario, timed in each mode.

For each mode, a fresh unseeded sandbox (``mockservers.testing.start_sandbox``; live = HTTPS on free
ports) gets N BC customers, a connector with the default mappings couples them (Create in Dataverse),
BC changes every customer, and then **Synchronize Now** of all N records (``connector sync CUSTOMER
<keys> --direction to-dataverse``) is timed, repeated ``--repeat`` times with a change before each.
The connector runs in this process in both modes (its CLI through click's runner), so the figures
differ only by how requests travel. Printed: the median seconds per mode, the ratio, and the
requests each service journaled (method, path, status must agree between the modes).

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
    live, inproc = results["live"], results["inprocess"]
    same = live["journal"] == inproc["journal"]
    print(f"Synchronize Now of {args.customers} customers, median of {args.repeat}:")
    print(f"  {'mode':<10} {'seconds':>8} {'requests':>9}")
    for mode in ("live", "inprocess"):
        print(f"  {mode:<10} {results[mode]['median_s']:>8.3f} {len(results[mode]['journal']):>9}")
    print(f"  in-process is {live['median_s'] / inproc['median_s']:.1f}x faster; "
          f"journals (method, path, status) {'identical' if same else 'DIFFER'}")
    print(json.dumps({"customers": args.customers, "live_s": live["median_s"], "inprocess_s": inproc["median_s"],
                      "speedup": live["median_s"] / inproc["median_s"], "journals_identical": same}))


if __name__ == "__main__":
    main()
