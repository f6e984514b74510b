"""What every benchmark figure stands on: a sandbox built from a loaded data set, a connector configured
for it, and connector commands run and counted.

- :func:`build_template` loads N generated BC customers (and, optionally, N Dataverse accounts that
  overlap them) into a data dir once; each scenario then starts a sandbox of its own from a copy of
  it (``start_sandbox(template=...)``), so the data is loaded once per N, not once per figure.
- :class:`Workbench` is one such sandbox plus a connector config and state of its own. Its
  :meth:`~Workbench.connector` runs one ``connector`` command, by default in a child process (so the
  child's peak RSS is the connector's own, P7), else in this process (P6, in-process mode), and
  counts the requests each service journaled while it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from mockservers.server import freeze_startup_heap
from mockservers.testing import RunningSandbox, start_sandbox

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("dataverse", "bc")
MATCH_FIELD = "displayName"  # the CUSTOMER mapping's field the data set's overlap is on (name ↔ displayName)


# The connector's command line, run as a child that reports its own peak RSS (kB, /proc's VmHWM: the
# high-water mark of this process image only) into the file PEAK_FILE names as it exits.
PEAK_FILE = "BENCH_CONNECTOR_PEAK_FILE"
CHILD = f"""
import os
from connector.cli import main
try:
    main(prog_name="connector")
finally:
    try:
        with open("/proc/self/status") as status:
            peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        with open(os.environ["{PEAK_FILE}"], "w") as out:
            out.write(peak)
    except (OSError, StopIteration, KeyError):
        pass
"""


def clean_environment() -> None:
    """requests lets these override ``verify=``; the sandbox's own CA must be the one used."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)


# -- the data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A data dir holding a loaded data set, for sandboxes to start from."""

    directory: Path
    customers: int
    accounts: int
    matching: int  # BC customers with a Dataverse account of the same name (match-based coupling's work)
    load_seconds: float
    load_requests: int


def build_template(directory: Path, customers: int, *, accounts: int = 0, overlap: float = 0.5,
                   seed: int = 1, progress: bool = False) -> Template:
    """Generate ``customers`` BC customers and ``accounts`` Dataverse accounts (``overlap`` of the
    customers have an account of the same name, some in other letter case) and load them into a
    sandbox in ``directory``, which is then stopped and left as a template."""
    from mockservers.generate import Scale, generate, load

    dataset = generate(Scale(customers=customers, accounts=accounts, overlap=overlap if accounts else 0.0, seed=seed))
    sandbox = start_sandbox(directory, mode="inprocess", fixture=None)
    try:
        report = load(dataset, dataverse=sandbox.session(), dataverse_api=sandbox.api, bc=sandbox.bc_session(),
                      bc_api=sandbox.bc_api, company_id=sandbox.companies[0], progress=progress)
    finally:
        sandbox.stop_services()
    return Template(directory, customers, accounts, dataset.matching, report.seconds, report.requests)


WORKERS = 2  # processes per service in a live sandbox: one per core of the machine the goals are set on


def sandbox_from(template: Template | None, directory: Path, *, mode: str = "live", tls: bool = True,
                 limits: bool = True) -> RunningSandbox:
    """A sandbox in ``directory``/sandbox holding ``template``'s data (empty without one).
    ``limits=False`` switches service protection off (throughput figures measure the services, not
    their 429s)."""
    directory.mkdir(parents=True, exist_ok=True)
    live = mode == "live"  # served as `mockservers serve --workers 2` serves it (the benchmark's process is ours)
    sandbox = start_sandbox(directory / "sandbox", mode=mode, fixture=None, tls=tls,  # type: ignore[arg-type]
                            template=template.directory if template else None, service_processes=live,
                            workers=WORKERS if live else 1, limits=limits)
    if live:
        freeze_startup_heap()
    return sandbox


# -- a sandbox with a connector ----------------------------------------------------------------------


@dataclass
class ConnectorRun:
    """One connector command: its wall time, the child's peak RSS (None in process), its ``--json``
    output and the requests each service journaled while it ran."""

    args: tuple[str, ...]
    seconds: float
    peak_rss_mb: float | None
    output: Any
    requests: dict[str, int] = field(default_factory=dict)
    label: str = ""  # what the run stands for in the figures ("P1 full run")
    served_seconds: float = 0.0  # the services' own time on its requests (journal durations, summed)

    @property
    def name(self) -> str:
        return self.label or " ".join(self.args[:2])

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return list(self.output.get("jobs", [])) if isinstance(self.output, dict) else []

    def job(self, direction: str | None = None) -> dict[str, Any]:
        """The job (of ``direction``, if given) the command logged."""
        for job in self.jobs:
            if direction is None or job["direction"] == direction:
                return job
        raise LookupError(f"connector {' '.join(self.args)} logged no {direction or ''} job: {self.output}")


class Workbench:
    """A started sandbox and a connector (default mappings) configured for its first BC company."""

    def __init__(self, sandbox: RunningSandbox, directory: Path, *, in_process: bool = False) -> None:
        if sandbox.mode == "inprocess" and not in_process:
            raise ValueError("an in-process sandbox answers only this process: run the connector in process")
        self.sandbox = sandbox
        self.directory = directory
        self.in_process = in_process
        self.config = directory / "connector.toml"
        self.connector("init", "--sandbox", str(sandbox.data_dir), measure=False)
        self.connector("setup", "defaults", measure=False)

    @classmethod
    def start(cls, directory: Path, *, template: Template | None = None, mode: str = "live", tls: bool = True,
              in_process: bool = False, limits: bool = True) -> Workbench:
        """A sandbox (:func:`sandbox_from`) with a connector; ``in_process`` runs the connector in this
        process (required for an in-process sandbox)."""
        sandbox = sandbox_from(template, directory, mode=mode, tls=tls, limits=limits)
        try:
            return cls(sandbox, directory, in_process=in_process or mode == "inprocess")
        except BaseException:
            sandbox.stop()
            raise

    def stop(self) -> None:
        self.sandbox.stop()

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- configuration ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text(encoding="utf-8"))

    def sync_settings(self) -> dict[str, int]:
        """page_size, dataverse_batch_size, bc_batch_size as the connector will read them."""
        from connector.config import load

        config = load(self.config)
        return {"page_size": config.page_size, "dataverse_batch_size": config.dataverse_batch_size,
                "bc_batch_size": config.bc_batch_size}

    def set_sync(self, **values: int) -> None:
        """Change the connector's [sync] section (page and batch sizes, retries)."""
        document = self.settings()
        document.setdefault("sync", {}).update(values)
        self.config.write_text(tomli_w.dumps(document), encoding="utf-8")

    @property
    def state_url(self) -> str:
        from connector.config import load

        return load(self.config).state_url

    # -- running the connector -----------------------------------------------------------------------
    def clear_journals(self) -> None:
        self.sandbox.journal.clear()

    def _service_requests(self) -> list[Any]:
        return [r for r in self.sandbox.journal.requests() if not r.path.startswith("/_sandbox")]

    def requests_made(self) -> dict[str, int]:
        """Requests per service since the journals were last cleared (the control API's own excluded)."""
        counts = Counter(r.service for r in self._service_requests())
        return {name: counts.get(name, 0) for name in SERVICES}

    def served_seconds(self) -> float:
        """The time the services spent answering those requests, from the journals' durations: what is left
        of a run's wall time went to the connector and the transport."""
        return sum(r.duration_ms for r in self._service_requests()) / 1000.0

    def connector(self, *args: str, measure: bool = True, label: str = "") -> ConnectorRun:
        """Run ``connector --config … ARGS --json``; with ``measure``, the journals are cleared first
        and the requests it made counted after. Exits with the command's message if it fails."""
        if measure:
            self.clear_journals()
        if self.in_process:
            seconds, peak, output = self._in_process(args)
        else:
            seconds, peak, output = self._child(args)
        return ConnectorRun(tuple(args), seconds, peak, output, self.requests_made() if measure else {}, label,
                            self.served_seconds() if measure else 0.0)

    def _child(self, args: tuple[str, ...]) -> tuple[float, float, Any]:
        """The command in a child process; its output goes to files, so a long answer cannot fill a
        pipe while we wait.

        The peak RSS is the child's own ``VmHWM``, which it writes as it exits (:data:`CHILD`): the
        ``ru_maxrss`` that ``wait4`` reports would be at least this process's RSS, because Linux
        carries the high-water mark of the image a child replaces at ``exec`` (here, the benchmark
        with the mock servers and their data) into the child's. Where /proc is missing, that
        ``ru_maxrss`` is what is left."""
        command = [sys.executable, "-c", CHILD, "--config", str(self.config), *args, "--json"]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.NamedTemporaryFile(suffix=".peak") as peak_file:
            env = {**os.environ, "PYTHONPATH": str(ROOT), PEAK_FILE: peak_file.name}
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
            reported = Path(peak_file.name).read_text().strip()
        if process.returncode != 0:
            raise SystemExit(f"connector {' '.join(args)} failed ({process.returncode}): {(stderr or stdout)[-800:]}")
        return seconds, (int(reported) if reported else usage.ru_maxrss) / 1024, _json(stdout)

    def _in_process(self, args: tuple[str, ...]) -> tuple[float, None, Any]:
        from click.testing import CliRunner

        from connector.cli import main as connector_main

        started = time.perf_counter()
        result = CliRunner().invoke(connector_main, ["--config", str(self.config), *args, "--json"],
                                    catch_exceptions=False)
        seconds = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"connector {' '.join(args)} failed: {result.output[-800:]}")
        return seconds, None, _json(result.stdout)

    # -- changing data as a person would -------------------------------------------------------------
    def bc_batch(self, operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """BC operations through JSON ``$batch``, 100 a request; the answers in order."""
        session = self.sandbox.bc_session()
        answers: list[dict[str, Any]] = []
        for start in range(0, len(operations), 100):
            chunk = [{"id": str(i), **op} for i, op in enumerate(operations[start:start + 100])]
            resp = session.post(f"{self.sandbox.bc_api}/$batch", json={"requests": chunk}, timeout=600)
            resp.raise_for_status()
            answers += sorted(resp.json()["responses"], key=lambda r: int(r["id"]))
        return answers


def _json(text: str) -> Any:
    return json.loads(text) if text.strip() else {}
