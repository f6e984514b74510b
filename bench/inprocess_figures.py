"""P6: in-process mode against live sockets, the same work in each.

Each mode gets a sandbox of its own from the same template (N uncoupled BC customers), with the
connector in this process in both (an in-process sandbox answers only this process), so the figures
differ only by how requests travel:

- **full run**: P1's scenario, the CUSTOMER mapping's full run creating and coupling all N;
- **record by record**: what a plain client does, one GET and one PATCH per account, for up to
  ``chatty`` of the accounts the full run created.

Printed per scenario: the seconds in each mode, the speed-up, and whether the services' journals
(method, path, status) agree between the modes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.bounds import FULL_RUN, FULL_RUN_SETUP
from bench.report import Figure
from bench.workbench import Template, Workbench

GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
Journal = list[tuple[str, str, str, int]]


def _journal(bench: Workbench) -> Journal:
    return sorted((r.service, r.method, GUID.sub("<id>", r.path), r.status) for r in bench.sandbox.journal.requests()
                  if not r.path.startswith("/_sandbox"))


def _mode(directory: Path, template: Template, mode: str, chatty: int) -> dict[str, tuple[float, Journal]]:
    with Workbench.start(directory / mode, template=template, mode=mode, in_process=True) as bench:
        bench.connector(*FULL_RUN_SETUP, measure=False)
        run = bench.connector(*FULL_RUN)
        results = {"full run": (run.seconds, _journal(bench))}
        dv = bench.sandbox.session()
        api = bench.sandbox.api
        ids = [r["accountid"] for r in dv.get(f"{api}/accounts", params={"$select": "accountid", "$top": str(chatty)},
                                              timeout=600).json()["value"]]
        bench.clear_journals()
        started = time.perf_counter()
        for account_id in ids:
            row = dv.get(f"{api}/accounts({account_id})", params={"$select": "name"}).json()
            dv.patch(f"{api}/accounts({account_id})", json={"name": row["name"] + " ok"},
                     headers={"If-Match": row["@odata.etag"]}).raise_for_status()
        results[f"record by record ({len(ids):,} GET + PATCH)"] = (time.perf_counter() - started, _journal(bench))
        return results


def in_process_vs_live(directory: Path, template: Template, *, chatty: int = 500) -> list[Figure]:
    n = template.customers
    live = _mode(directory, template, "live", chatty)
    inprocess = _mode(directory, template, "inprocess", chatty)
    figures: list[Figure] = []
    for scenario, (live_s, live_journal) in live.items():
        inproc_s, inproc_journal = inprocess[scenario]
        same = live_journal == inproc_journal
        agree = f"journals {'identical' if same else 'DIFFER'} ({len(live_journal):,} requests)"
        figures += [
            Figure("P6", f"{scenario}: live sockets (HTTPS)", n, live_s, "s", note=agree),
            Figure("P6", f"{scenario}: in process", n, inproc_s, "s", "faster than live",
                   met=inproc_s <= live_s and same, ratio=live_s / inproc_s,
                   note=f"speed-up {live_s / inproc_s:.2f}×; {agree}",
                   detail={"live_s": live_s, "inprocess_s": inproc_s, "journals_identical": same}),
        ]
    return figures
