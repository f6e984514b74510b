"""Shared fixtures: a real sandbox (HTTPS, real JWTs, SQLite files) on free ports, built with the
project's own contract-testing kit (``mockservers.testing``).

Modules marked ``pytestmark = pytest.mark.storage`` (the ones that exercise the store: CRUD, queries,
paging, batches, concurrency, change tracking) run twice when ``SANDBOX_TEST_POSTGRES_URL`` names a
PostgreSQL server (a role that may create databases, e.g.
``postgresql+psycopg://sandbox:sandbox@127.0.0.1/sandbox``): once on SQLite files, once on two fresh
PostgreSQL databases of their own. Modules marked ``both_modes`` run once more with the sandbox in
process (no sockets; ``requests`` answered by the apps), on SQLite.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from mockservers.testing import RunningSandbox
from mockservers.testing import start_sandbox as start_kit_sandbox

POSTGRES_ENV = "SANDBOX_TEST_POSTGRES_URL"


@dataclass
class Databases:
    """Where one sandbox keeps its state (None: the default SQLite files in its data dir), and whether
    it serves on sockets (``live``) or in process."""

    name: str
    dataverse: str | None = None
    bc: str | None = None
    connector: str | None = None  # the connector's state, for modules that run one
    mode: str = "live"


def start_sandbox(data_dir: Path, *, seed: bool = True, databases: Databases | None = None) -> RunningSandbox:
    databases = databases or Databases("sqlite")
    return start_kit_sandbox(data_dir, mode=databases.mode, fixture="default" if seed else None, tls=True,  # type: ignore[arg-type]
                             db_url=databases.dataverse, bc_db_url=databases.bc)


@pytest.fixture(scope="session", autouse=True)
def _no_foreign_ca_bundle() -> Iterator[None]:
    """requests lets these variables override `verify=`; tests must use the sandbox CA they pass.

    Session-scoped so that module-scoped fixtures (which start sandboxes) run without them too.
    """
    saved = {name: os.environ.pop(name) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "storage: runs on SQLite and, with SANDBOX_TEST_POSTGRES_URL, on PostgreSQL")
    config.addinivalue_line("markers", "both_modes: runs against a live sandbox and against one in process")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "databases" in metafunc.fixturenames:
        legs = ["sqlite"]
        if metafunc.definition.get_closest_marker("storage") and os.environ.get(POSTGRES_ENV):
            legs.append("postgresql")
        if metafunc.definition.get_closest_marker("both_modes"):
            legs.append("inprocess")
        metafunc.parametrize("databases", legs, indirect=True, scope="module")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not os.environ.get(POSTGRES_ENV) and not hasattr(terminalreporter.config, "workerinput"):
        terminalreporter.write_line(f"PostgreSQL leg not run: set {POSTGRES_ENV} to run the storage tests on "
                                    "PostgreSQL too (.ci/run does).")


@contextmanager
def postgres_databases(admin_url: str) -> Iterator[Databases]:
    """Fresh databases (Dataverse, BC, the connector's state) owned by the URL's role, dropped afterwards."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    names = [f"sbx_{uuid.uuid4().hex[:12]}_{service}" for service in ("dataverse", "bc", "connector")]

    def run(statement: str) -> None:
        for attempt in range(10):
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(statement)
                return
            except sa.exc.DBAPIError:  # busy template, or an autovacuum worker the role may not end
                if attempt == 9:
                    raise
                time.sleep(0.5)

    try:
        for name in names:
            run(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
                "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'")
        url = sa.make_url(admin_url)
        yield Databases("postgresql", *(url.set(database=name).render_as_string(hide_password=False)
                                        for name in names))
    finally:
        for name in names:
            run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def empty_database(leg: str, tmp_path: Path, which: str) -> Iterator[str]:
    """The URL of a fresh, empty database: a SQLite file under ``tmp_path``, or (``leg``
    "postgresql") the PostgreSQL database ``which`` ("dataverse", "bc", "connector") of a new set."""
    if leg == "sqlite":
        yield f"sqlite:///{tmp_path / f'{which}.db'}"
        return
    with postgres_databases(os.environ[POSTGRES_ENV]) as created:
        url = getattr(created, which)
        assert url is not None
        yield url


@contextmanager
def twin_sandboxes(database: str, sandbox_factory: Callable[..., RunningSandbox],
                   frozen_at: datetime) -> Iterator[tuple[RunningSandbox, RunningSandbox]]:
    """Two fresh live sandboxes (plain HTTP) on the same seed, their clocks frozen at the same instant:
    the same requests sent to both must answer alike. ``database``: "sqlite" or "postgresql"."""
    with ExitStack() as stack:
        made = []
        for _ in range(2):
            options: dict[str, Any] = {"mode": "live", "tls": False}
            if database == "postgresql":
                created = stack.enter_context(postgres_databases(os.environ[POSTGRES_ENV]))
                options.update(db_url=created.dataverse, bc_db_url=created.bc)
            sandbox = sandbox_factory(**options)
            sandbox.clock.freeze(frozen_at)
            made.append(sandbox)
        try:
            yield made[0], made[1]
        finally:
            for sandbox in made:
                sandbox.stop()


@pytest.fixture(scope="module")
def databases(request: pytest.FixtureRequest) -> Iterator[Databases]:
    """The databases of the module's sandbox: SQLite files, or (storage modules' second leg) PostgreSQL."""
    leg = getattr(request, "param", "sqlite")
    if leg in ("sqlite", "inprocess"):
        yield Databases("sqlite", mode="inprocess" if leg == "inprocess" else "live")
        return
    with postgres_databases(os.environ[POSTGRES_ENV]) as created:
        yield created


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[RunningSandbox]:
    """One seeded sandbox per test module (tests that change data use their own records)."""
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), databases=databases)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def dv(sandbox: RunningSandbox) -> requests.Session:
    """An authenticated session for the Dataverse Web API of the module's sandbox."""
    return sandbox.session()


@pytest.fixture(scope="module")
def bc(sandbox: RunningSandbox) -> requests.Session:
    """An authenticated session for the BC API of the module's sandbox."""
    return sandbox.bc_session()


# -- the connector against a live sandbox ---------------------------------------------------------


@dataclass
class ConnectorEnv:
    """A sandbox plus a connector config for one of its BC companies, driven through the real CLI."""

    sandbox: RunningSandbox
    config_path: Path
    company_index: int = 0

    def invoke(self, *args: str) -> Any:
        from click.testing import CliRunner

        from connector.cli import main as connector_main

        return CliRunner().invoke(connector_main, ["--config", str(self.config_path), *args],
                                  catch_exceptions=False)

    def run(self, *args: str) -> Any:
        """Run a command with --json; fail the test on a non-zero exit."""
        result = self.invoke(*args, "--json")
        assert result.exit_code == 0, f"connector {' '.join(args)} failed: {result.output}"
        import json

        return json.loads(result.stdout)

    def fail(self, *args: str) -> str:
        """Run a command that must be refused; returns its one-line message."""
        result = self.invoke(*args)
        assert result.exit_code != 0, f"connector {' '.join(args)} unexpectedly succeeded: {result.output}"
        assert "Traceback" not in result.output
        return result.output.strip()

    @property
    def company_id(self) -> str:
        return self.sandbox.companies[self.company_index]

    def set_section(self, section: str, **values: Any) -> None:
        """Change one section of the config file."""
        import tomllib

        import tomli_w

        document = tomllib.loads(self.config_path.read_text())
        document.setdefault(section, {}).update(values)
        self.config_path.write_text(tomli_w.dumps(document))

    def set_sync(self, **values: int) -> None:
        """Change the [sync] section of the config file (page and batch sizes, retries)."""
        self.set_section("sync", **values)

    def accounts(self, prefix: str, select: str = "name") -> list[dict[str, Any]]:
        """Every Dataverse account whose name starts with ``prefix``, read page by page."""
        dv = self.sandbox.session()
        rows: list[dict[str, Any]] = []
        url: str | None = f"{self.sandbox.api}/accounts?$select={select}&$filter=startswith(name,'{prefix}')"
        while url:
            body = dv.get(url, headers={"Prefer": "odata.maxpagesize=5000"}).json()
            rows += body["value"]
            url = body.get("@odata.nextLink")
        return rows

    def account_names(self, prefix: str) -> Counter[str]:
        return Counter(r["name"] for r in self.accounts(prefix))

    def journal(self, service: str) -> list[dict[str, Any]]:
        resp = self.sandbox.control("GET", "journal", service=service)
        assert resp.status_code == 200, resp.text
        return resp.json()["value"]

    def clear_journals(self) -> None:
        for service in ("dataverse", "bc"):
            assert self.sandbox.control("DELETE", "journal", service=service).status_code == 204

    @property
    def bc_company_api(self) -> str:
        return f"{self.sandbox.bc_api}/companies({self.company_id})"

    def state(self) -> Any:
        from connector import config as config_module
        from connector.store import State

        return State(config_module.load(self.config_path).state_url)

    def couplings(self, bc_entity: str) -> list[Any]:
        from sqlalchemy import select

        from connector.store import Coupling

        state = self.state()
        try:
            with state.session() as session:
                return list(session.scalars(select(Coupling).where(Coupling.bc_entity == bc_entity)))
        finally:
            state.close()

    def bc_batch(self, session: requests.Session, requests_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run BC operations through JSON $batch, 100 at a time; returns the responses in order."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(requests_), 100):
            chunk = [{"id": str(i), **r} for i, r in enumerate(requests_[start:start + 100])]
            resp = session.post(f"{self.sandbox.bc_api}/$batch", json={"requests": chunk})
            assert resp.status_code == 200, resp.text
            by_id = {r["id"]: r for r in resp.json()["responses"]}
            out += [by_id[str(i)] for i in range(len(chunk))]
        return out

    def create_customers(self, session: requests.Session, names: list[str], **fields: Any) -> list[dict[str, Any]]:
        """BC customers without payment terms or shipment method (those need option couplings)."""
        url = f"companies({self.company_id})/customers"
        responses = self.bc_batch(session, [{"method": "POST", "url": url, "headers": {"Content-Type": "application/json"},
                                             "body": {"displayName": name, **fields}} for name in names])
        assert all(r["status"] == 201 for r in responses), responses[:3]
        return [r["body"] for r in responses]


def start_connector(sandbox: RunningSandbox, directory: Path, company_index: int = 0,
                    state_url: str | None = None) -> ConnectorEnv:
    env = ConnectorEnv(sandbox, directory / "connector.toml", company_index)
    env.run("init", "--sandbox", str(sandbox.data_dir), "--company", sandbox.companies[company_index])
    if state_url:
        env.set_section("state", url=state_url)
    env.run("setup", "defaults")
    return env


@pytest.fixture(scope="module")
def connector_env(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory,
                  databases: Databases) -> ConnectorEnv:
    """A connector for CRONUS USA with the default mappings, against the module's sandbox (its state on
    PostgreSQL too in the storage modules' PostgreSQL leg)."""
    return start_connector(sandbox, tmp_path_factory.mktemp("connector"), state_url=databases.connector)


@pytest.fixture(scope="module")
def own_connector(tmp_path_factory: pytest.TempPathFactory, databases: Databases) -> Iterator[ConnectorEnv]:
    """A connector with a sandbox of its own, for modules whose data must not meet other modules'."""
    sandbox = start_sandbox(tmp_path_factory.mktemp("sandbox"), databases=databases)
    try:
        yield start_connector(sandbox, tmp_path_factory.mktemp("connector"), state_url=databases.connector)
    finally:
        sandbox.stop()
