"""Match-based coupling at scale: N BC customers against N Dataverse accounts, half of them matching.

Prints wall time, the child's peak RSS and the requests each service saw next to the lower bound
(the pages of both sides, at the connector's page size):

    .venv/bin/python bench/bench_matching.py --size 10000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_connector import create_customers, journal_count, run_connector  # noqa: E402
from tests.conftest import start_sandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = start_sandbox(Path(tmp) / "sandbox", seed=False)
        try:
            config = Path(tmp) / "connector.toml"
            for command in (["init", "--sandbox", str(sandbox.data_dir)], ["setup", "defaults"],
                            ["mappings", "field", "CUSTOMER", "displayName", "--match"]):
                run_connector(config, *command)
            started = time.perf_counter()
            create_customers(sandbox, sandbox.bc_session(), sandbox.companies[0], n, 0)
            dv = sandbox.session()
            for start in range(0, n, 1000):  # every other name matches a customer ("Scale 000000", ...)
                targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "customertypecode": 3,
                            "name": f"Scale {i:06d}" if i % 2 == 0 else f"Prospect {i:06d}"}
                           for i in range(start, min(n, start + 1000))]
                resp = dv.post(f"{sandbox.api}/accounts/Microsoft.Dynamics.CRM.CreateMultiple",
                               json={"Targets": targets}, timeout=600)
                resp.raise_for_status()
            setup = time.perf_counter() - started
            for service in ("dataverse", "bc"):
                sandbox.control("DELETE", "journal", service=service)
            seconds, peak_kib, out = run_connector(config, "match-couple", "CUSTOMER", "--no-create-new")
            job = out["jobs"][0]
            dataverse, bc = journal_count(sandbox, "dataverse"), journal_count(sandbox, "bc")
            bound = math.ceil(n / 500) * 2
            print(f"match-based coupling of {n} customers against {n} accounts: coupled {job['coupled']}, "
                  f"unmatched {job['failed']}")
            print(f"  {seconds:.1f} s, peak RSS {peak_kib / 1024:.0f} MB, requests: Dataverse {dataverse}, "
                  f"BC {bc} (lower bound {bound} pages of 500); setup {setup:.0f} s")
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
