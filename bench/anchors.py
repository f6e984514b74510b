"""What the mock services' throughput is read against (P5), and the load that measures it.

- **Load**: ``wrk -t2 -c16 -dNs`` with the Authorization header set by a Lua script in the scratch
  folder, which also prints wrk's summary as one JSON line. Without ``wrk`` on the PATH, a thread pool
  of 16 ``requests`` sessions in this process does the same job, slower, and every figure measured
  that way says so.
- **Bare Flask**: a Flask app answering a keyed GET with a small JSON body from a dict, served by the
  services' own server class (``ServiceServer``, same worker threads): the ceiling for a Flask service
  on this server.
- **json-server** (``json-server@0.17.4``, installed with npm into a scratch folder once and reused),
  fed a ``db.json`` holding the same rows as the sandbox: a one-row ``?field=value`` query scans them in
  JavaScript, a plain in-memory baseline for an OData ``$filter``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

JSON_SERVER_VERSION = "0.17.4"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bc-dataverse-sandbox"
THREADS, CONNECTIONS = 2, 16


@dataclass(frozen=True)
class Load:
    """What one load run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers, connection errors and timeouts
    tool: str  # "wrk", or the Python fallback's label


class LoadGenerator:
    """Keyed-up HTTP load for ``seconds`` on one URL: wrk if installed, else a Python thread pool."""

    def __init__(self, scratch: Path, seconds: float) -> None:
        self.scratch = scratch
        self.seconds = seconds
        self.wrk = shutil.which("wrk")
        self.tool = (f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds:g}s" if self.wrk else
                     f"Python load generator ({CONNECTIONS} threads; wrk not found)")
        self._scripts = 0

    def run(self, url: str, token: str | None = None) -> Load:
        return self._wrk(url, token) if self.wrk else self._threads(url, token)

    def _script(self, token: str | None) -> Path:
        self._scripts += 1
        path = self.scratch / f"load-{self._scripts}.lua"
        header = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
        path.write_text(header + 'wrk.headers["Accept"] = "application/json"\n' + """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""", encoding="utf-8")
        return path

    def _wrk(self, url: str, token: str | None) -> Load:
        assert self.wrk is not None
        command = [self.wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{self.seconds:g}s", "--latency",
                   "-s", str(self._script(token)), url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.seconds + 60)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed on {url}: {done.stderr or done.stdout}")
        summary = json.loads(line[len("BENCH "):])
        return Load(summary["requests"] / (summary["duration_us"] / 1e6), summary["p50_us"] / 1000,
                    summary["p99_us"] / 1000, summary["requests"], summary["errors"], "wrk")

    def _threads(self, url: str, token: str | None) -> Load:
        headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        deadline = time.perf_counter() + self.seconds
        lock = threading.Lock()
        latencies: list[float] = []
        errors = [0]

        def worker() -> None:
            session = requests.Session()
            mine: list[float] = []
            failed = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = session.get(url, headers=headers, timeout=30).status_code < 400
                except requests.RequestException:
                    ok = False
                mine.append(time.perf_counter() - t0)
                failed += not ok
            with lock:
                latencies.extend(mine)
                errors[0] += failed

        started = time.perf_counter()
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            for _ in range(CONNECTIONS):
                pool.submit(worker)
        elapsed = time.perf_counter() - started
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return Load(len(latencies) / elapsed, statistics.median(latencies) * 1000 if latencies else 0.0,
                    p99 * 1000, len(latencies), errors[0], "python")


# -- bare Flask on the services' server ---------------------------------------------------------------


@contextmanager
def bare_flask(rows: int = 1000) -> Iterator[str]:
    """A bare Flask app on ``ServiceServer`` (same worker threads as the services, plain HTTP) in a
    process of its own, as each service answers from processes of their own; yields the URL of one
    keyed row (``…/rows/<key>``). In this process its speed would hang on what else this process
    holds (the benchmark's data, its threads)."""
    process = subprocess.Popen([sys.executable, "-c", f"from bench.anchors import serve_bare_flask; serve_bare_flask({rows})"],
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/rows/{rows // 2:08d}"
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the anchor stops at the end of its input
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_bare_flask(rows: int) -> None:
    """The anchor's process: print the port, serve until its input ends."""
    from flask import Flask, abort, jsonify

    from mockservers.server.wsgi import WORKER_THREADS, ServiceServer

    table = {f"{i:08d}": {"id": f"{i:08d}", "name": f"Row {i}", "city": "Reykjavik"} for i in range(rows)}
    app = Flask("anchor")

    @app.get("/rows/<key>")
    def row(key: str) -> Any:
        found = table.get(key)
        if found is None:
            abort(404)
        return jsonify(found)

    server = ServiceServer("127.0.0.1", 0, app, threads=WORKER_THREADS)
    thread = threading.Thread(target=server.serve_forever, name="anchor-flask", daemon=True)
    thread.start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()
    thread.join(5)


# -- json-server ---------------------------------------------------------------------------------------


def install_json_server(cache: Path = CACHE) -> tuple[Path | None, str]:
    """json-server's CLI script, installed with npm into ``cache`` when not there yet; or None and why."""
    folder = cache / f"json-server-{JSON_SERVER_VERSION}"
    script = folder / "node_modules" / "json-server" / "lib" / "cli" / "bin.js"
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, f"{'node' if node is None else 'npm'} not found"
    if not script.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error",
                               f"json-server@{JSON_SERVER_VERSION}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not script.is_file():
            return None, f"npm install json-server@{JSON_SERVER_VERSION} failed: {(done.stderr or done.stdout)[-200:]}"
    return script, f"json-server {JSON_SERVER_VERSION}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def json_server(script: Path, db: dict[str, list[dict[str, Any]]], scratch: Path) -> Iterator[str]:
    """json-server over ``db`` (collections of rows, each with an ``id``); yields its base URL."""
    path = scratch / "db.json"
    path.write_text(json.dumps(db), encoding="utf-8")
    port = _free_port()
    node = shutil.which("node") or "node"
    process = subprocess.Popen([node, str(script), str(path), "--port", str(port), "--host", "127.0.0.1", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=scratch)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/__ready__", timeout=5)  # any answer (404) will do
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"json-server did not start: {process.stderr.read().decode()[-300:]}"  # type: ignore[union-attr]
                                       ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
