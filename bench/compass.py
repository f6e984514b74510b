"""The benchmark: every figure of the performance compass, side by side for each N, in one run.

    make bench                                    # the quick size, N = 1,000
    make bench ARGS="--size 100000"               # the full one
    .venv/bin/python bench/compass.py --sizes 1000,10000 --only P1,P5 --no-anchors

P1  a full run's requests (journal) against the lower bound ⌈N/page⌉ reads + ⌈N/bulk⌉ writes
P2  initial coupling + sync of N customers against N accounts (match, create the rest, couple)
P3  an incremental run after 1% changes on each side: requests ∝ changes, time against P2's
P4  match-based coupling N × N
P5  the mock services' throughput, each figure against its anchor (bare Flask, json-server)
P6  in-process mode against live sockets, the same scenario
P7  the connector's peak RSS (child processes), and its growth with N

Prints a table and writes the figures as JSON (``--json``, default bench/results/latest.json).
A benchmark prints figures; it asserts nothing about time (the tests hold P1 to its bound).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ and the packages are imported from the checkout
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from bench import connector_figures, inprocess_figures, services_figures  # noqa: E402
from bench.report import Figure, print_report, write_json  # noqa: E402
from bench.workbench import ConnectorRun, Template, build_template, clean_environment  # noqa: E402

FIGURES = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")
QUICK = 1000
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
console = Console(stderr=True)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s.replace("_", "").replace("k", "000")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are whole numbers (1000,10000 or 1k,10k), got {text!r}") from None
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError("each size is at least 100")
    return sizes


def _figures(text: str) -> set[str]:
    chosen = {s.strip().upper() for s in text.split(",") if s.strip()}
    unknown = chosen - set(FIGURES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(FIGURES)}; got {text!r}")
    return chosen


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="figures: " + "; ".join(line.strip() for line in __doc__.splitlines()
                                                                    if line[:1] == "P"))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=_sizes, dest="sizes", help=f"N (default {QUICK:,}, the quick size)")
    size.add_argument("--sizes", type=_sizes, dest="sizes", help="several N side by side: 1000,10000,100000")
    parser.add_argument("--only", type=_figures, default=set(FIGURES), help="figures to measure: P1,P5 (default all)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where the JSON goes (default {DEFAULT_JSON})")
    parser.add_argument("--anchors", action=argparse.BooleanOptionalAction, default=True,
                        help="measure json-server (installed with npm into ~/.cache) as P5's query anchor")
    parser.add_argument("--seconds", type=float, default=3.0, help="load time per throughput figure (P5)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data dirs here (default: a temporary dir)")
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes or [QUICK]))
    return args


class Step:
    """Runs one piece of the benchmark with a line of progress on stderr."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, label: str, work: Callable[[], Any]) -> Any:
        console.log(f"N={self.n:,}: {label} …")
        started = time.perf_counter()
        result = work()
        console.log(f"N={self.n:,}: {label} done in {time.perf_counter() - started:.1f} s")
        return result


def measure_size(n: int, only: set[str], workdir: Path, args: argparse.Namespace) -> list[Figure]:
    step = Step(n)
    figures: list[Figure] = []
    runs: list[ConnectorRun] = []
    templates: dict[str, Template] = {}

    def template(kind: str) -> Template:
        if kind not in templates:
            accounts = n if kind == "overlap" else 0
            what = f"{n:,} BC customers" + (f" and {accounts:,} Dataverse accounts" if accounts else "")
            templates[kind] = step(f"loading {what}", lambda: build_template(workdir / f"template-{kind}", n,
                                                                             accounts=accounts))
        return templates[kind]

    if only & {"P1", "P7"}:
        made, ran = step("P1 full run", lambda: connector_figures.full_run(workdir / "p1", template("customers")))
        figures += made if "P1" in only else []
        runs += ran
    if only & {"P2", "P3"}:
        made, ran = step("P2 initial coupling + P3 incremental run", lambda: connector_figures.initial_and_incremental(
            workdir / "p2", template("overlap"), incremental="P3" in only))
        figures += [f for f in made if f.figure in only]
        runs += ran
    if "P4" in only:
        made, ran = step("P4 match-based coupling", lambda: connector_figures.match_coupling(workdir / "p4",
                                                                                            template("overlap")))
        figures += made
        runs += ran
    if "P5" in only:
        figures += step("P5 service throughput", lambda: services_figures.service_throughput(
            workdir / "p5", template("overlap"), seconds=args.seconds, anchors=args.anchors))
    if "P6" in only:
        figures += step("P6 in process vs live", lambda: inprocess_figures.in_process_vs_live(
            workdir / "p6", template("customers")))
    if "P7" in only:
        figures += connector_figures.peak_memory(n, runs)
    for t in templates.values():
        figures.append(Figure("load", f"data set: {t.customers:,} customers, {t.accounts:,} accounts", n,
                              t.load_seconds, "s", note=f"{t.load_requests:,} requests (setup, not a figure)"))
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    clean_environment()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    started = time.perf_counter()
    figures: list[Figure] = []
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bcdv-bench-", dir=args.workdir) as tmp:
        for n in args.sizes:
            figures += measure_size(n, args.only, Path(tmp) / f"n{n}", args)
    if "P7" in args.only:
        figures += connector_figures.memory_flatness(
            {f.n: f.value for f in figures if f.figure == "P7" and f.value is not None and f.unit == "MB"})
    seconds = time.perf_counter() - started
    print_report(figures, args.sizes)
    write_json(args.json, figures, args.sizes, seconds)
    Console().print(f"figures as JSON: {args.json} ({seconds:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
