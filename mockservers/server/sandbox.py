"""Run the emulated services in one process (one thread per service) and publish sandbox.json.

Sockets are bound first so that port 0 works (tests) and every public URL is known before the
apps are built: the Dataverse org URL is also the token audience. An in-process sandbox
(``SandboxConfig.in_process_host``) builds the same apps on the same data dir but binds nothing: its
URLs are ``https://<service>.<host>`` and the testing kit routes requests to them into the apps.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bc.app import create_app as create_bc_app
from ..bc.app import new_sandbox_services as bc_sandbox
from ..bc.webhooks import HOSTED_CALLS as WEBHOOK_CALLS
from ..bc.webhooks import RemoteWebhooks, WebhookConfig
from ..clock import Clock
from ..dataverse.app import create_app as create_dataverse_app
from ..dataverse.app import new_sandbox_services as dataverse_sandbox
from ..identity import BUSINESS_CENTRAL_RESOURCE, TokenIssuer, load_default_directory, load_signing_key
from ..identity import create_app as create_identity_app
from ..rpc import Host
from ..sandbox.fixtures import FixtureLibrary
from ..sandbox.journal import Journal
from ..sandbox.shared_limits import HostedLimits, RemoteProtection
from .lock import DataDirLock
from .processes import ServiceProcess
from .tls import TlsFiles, ensure_certificates
from .wsgi import AccessLog, ServiceServer, bind

ADMIN_TOKEN_FILE = "admin-token"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a secret), atomically via a temporary name."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)  # an older file of that name may have been created with wider rights
    os.replace(tmp, path)


def _entries(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _remove_new(root: Path, before: set[Path], created_root: bool) -> None:
    """Undo a failed start: remove what it created (deepest first), and the data dir if it made it."""
    for path in sorted(_entries(root) - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    if created_root:
        with contextlib.suppress(OSError):
            root.rmdir()


class _AppSlot:
    """WSGI callable bound to a socket before its Flask app exists."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@dataclass
class SandboxConfig:
    data_dir: Path = Path(".sandbox")
    host: str = "127.0.0.1"
    identity_port: int = 5000
    dataverse_port: int = 5001
    bc_port: int = 5002
    tls: bool = False
    seed: bool = False
    fixture: str = "default"
    db_url: str | None = None  # SQLAlchemy URL for Dataverse; default: SQLite file in data_dir
    bc_db_url: str | None = None  # SQLAlchemy URL for BC; default: SQLite file in data_dir
    webhook_delay_seconds: float = 30.0
    bc_max_page_size: int = 20_000  # BC online serves at most 20,000 entities a page
    access_log: bool = False  # one log line per request on the "mockservers.access" logger
    fixtures_dirs: tuple[Path, ...] = ()  # operator-allowed fixture directories (beside the built-in sets)
    auth: bool = True
    in_process_host: str | None = None  # set: serve no sockets; the URLs are https://<service>.<this host>
    # Serve BC from a process of its own (forked once the apps are built), so the two services answer
    # on two cores; `mockservers serve` does. A sandbox inside someone else's process (the testing
    # kit's default) stays in that process. A BC database in memory stays too (a fork cannot share it).
    service_processes: bool = False
    # Processes per service (Dataverse and BC) answering on one port, so one service answers on every
    # core. Above 1 the processes share the journal, faults, clock, write generations and the
    # service-protection windows (kept in this process, see mockservers.sandbox.shared_limits).
    workers: int = 1
    limits: bool = True  # service protection (off: held off, the control API cannot switch it on)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SandboxConfigError(f"workers must be at least 1; got {self.workers}")
        if self.workers > 1 and (not self.service_processes or self.in_process_host):
            raise SandboxConfigError("worker processes need service processes (a sandbox served from sockets)")


class SandboxConfigError(ValueError):
    """Settings of a sandbox that do not go together; the message says which."""


SERVICES = ("identity", "dataverse", "bc")


@dataclass
class Sandbox:
    config: SandboxConfig
    servers: dict[str, ServiceServer] = field(default_factory=dict)
    apps: dict[str, Any] = field(default_factory=dict)  # the Flask app of each service, for in-process access
    urls: dict[str, str] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    tls_files: TlsFiles | None = None
    info: dict[str, Any] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)  # the one clock of identity and both services
    children: dict[str, ServiceProcess] = field(default_factory=dict)  # services served from processes of their own
    _released: list[ServiceServer] = field(default_factory=list, init=False, repr=False)  # ports children serve
    _host: Host | None = field(default=None, init=False, repr=False)  # answers the workers (their limits)
    _lock: DataDirLock | None = field(default=None, init=False, repr=False)  # held while started

    def start(self) -> dict[str, Any]:
        """Lock the data dir, bind, build and serve every service.

        On any failure everything already bound is released and every file this start created is
        removed again, so a failed start leaves the data dir as it found it (and no sandbox.json).
        """
        cfg = self.config
        created_dir = not cfg.data_dir.exists()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        before = _entries(cfg.data_dir)
        lock = DataDirLock(cfg.data_dir)
        try:
            lock.acquire()
        except BaseException:
            _remove_new(cfg.data_dir, before, created_dir)
            raise
        self._lock = lock
        try:
            return self._start()
        except BaseException:
            self.stop()
            _remove_new(cfg.data_dir, before, created_dir)
            raise

    def _start(self) -> dict[str, Any]:
        cfg = self.config
        slots: dict[str, _AppSlot] = {name: _AppSlot() for name in SERVICES}
        if cfg.in_process_host:
            self.urls = {name: f"https://{name}.{cfg.in_process_host}" for name in SERVICES}
        else:
            self._bind(slots)

        directory = load_default_directory()
        dataverse_url = self.urls["dataverse"]
        directory.add_resource(dataverse_url)
        directory.add_resource(BUSINESS_CENTRAL_RESOURCE)
        issuer = TokenIssuer(load_signing_key(cfg.data_dir), public_url=self.urls["identity"], clock=self.clock)
        slots["identity"].app = create_identity_app(directory, issuer)

        fixtures = FixtureLibrary.with_dirs(cfg.fixtures_dirs)
        db_url = cfg.db_url or f"sqlite:///{(cfg.data_dir / 'dataverse.db').resolve()}"
        admin_token = self._admin_token()
        sandbox = dataverse_sandbox(self.clock)
        sandbox.admin_token = admin_token
        slots["dataverse"].app = create_dataverse_app(
            database_url=db_url,
            fixture=cfg.fixture,
            fixtures=fixtures,
            public_url=dataverse_url,
            validator=issuer.validator(directory.tenant_id) if cfg.auth else None,
            identity_url=self.urls["identity"],
            tenant_id=directory.tenant_id,
            sandbox=sandbox,
        )
        backend = slots["dataverse"].app.extensions["dataverse"]["backend"]
        if cfg.seed:
            backend.seed(cfg.fixture)
        bc_db_url = cfg.bc_db_url or f"sqlite:///{(cfg.data_dir / 'bc.db').resolve()}"
        verify: bool | str = str(self.tls_files.ca_bundle) if self.tls_files else True
        bc_services = bc_sandbox(self.clock)
        bc_services.admin_token = admin_token
        slots["bc"].app = create_bc_app(
            database_url=bc_db_url,
            fixture=cfg.fixture,
            fixtures=fixtures,
            validator=issuer.validator(directory.tenant_id) if cfg.auth else None,
            tenant_aliases={directory.tenant_id, *directory.domains},
            sandbox=bc_services,
            webhook_config=WebhookConfig(delay_seconds=cfg.webhook_delay_seconds, verify=verify),
            max_page_size=cfg.bc_max_page_size,
        )
        bc_backend = slots["bc"].app.extensions["bc"]["backend"]
        if cfg.seed:
            bc_backend.seed(cfg.fixture)
        self.services = {"dataverse": sandbox, "bc": bc_services}
        if not cfg.limits:
            for services in self.services.values():
                services.limits.hold_off("the sandbox was started without service protection (--no-limits)")
        self.webhooks = slots["bc"].app.extensions["bc"]["webhooks"]
        self.backends = {"dataverse": backend, "bc": bc_backend}
        app = directory.integration_app
        bc_url = self.urls["bc"]
        self.info = {
            "tenant_id": directory.tenant_id,
            "identity": {"url": self.urls["identity"],
                         "authority": f"{self.urls['identity']}/{directory.tenant_id}"},
            "dataverse": {"url": dataverse_url, "api_root": f"{dataverse_url}/api/data/v9.2",
                          "scope": f"{dataverse_url}/.default",
                          "organization_id": backend.organization.organization_id},
            "bc": {"url": bc_url,
                   "api_root": f"{bc_url}/v2.0/{directory.tenant_id}/{bc_backend.environment}/api/v2.0",
                   "environment": bc_backend.environment,
                   "scope": f"{BUSINESS_CENTRAL_RESOURCE}/.default",
                   "companies": [{"id": c.id, "name": c.name} for c in bc_backend.companies.values()]},
            "app": {"client_id": app.client_id, "client_secret": app.client_secret},
            "admin_token": admin_token,
            "ca_bundle": str(self.tls_files.ca_bundle.resolve()) if self.tls_files else None,
        }
        self.apps = {name: slot.app for name, slot in slots.items()}
        if cfg.workers > 1:
            if _in_memory(backend.store.engine) or _in_memory(bc_backend.store.engine):
                raise SandboxConfigError("worker processes need databases in files or on a server, not in memory")
            self._host = Host()  # what the workers of a service share that must exist once
            self._serve_apart("dataverse", cfg.workers)
            self._serve_apart("bc", cfg.workers)
            self._host.start()
            self.webhooks.start()  # BC's outbox is this process's, whichever worker made a change
        elif cfg.service_processes and self.servers and not _in_memory(bc_backend.store.engine):
            self._serve_apart("bc")
        else:
            self.webhooks.start()
        for name, server in self.servers.items():
            server.prepare()  # here, not in the thread: a stop right after start finds it serving
            thread = threading.Thread(target=server.serve_forever, name=f"sandbox-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        # Last, so that a sandbox.json always describes a sandbox that did start; it holds the admin token.
        write_private(cfg.data_dir / "sandbox.json", json.dumps(self.info, indent=2) + "\n")
        return self.info

    def _serve_apart(self, name: str, workers: int = 1) -> None:
        """Fork ``workers`` processes that serve ``name`` on its one port (BC's with their webhook
        senders); this one lets the port go and forgets the app. Nothing of ours runs a thread yet, and
        no database connection crosses the fork."""
        for backend in self.backends.values():
            backend.store.engine.dispose()
        self.clock.share()
        server, backend = self.servers.pop(name), self.backends.pop(name)
        webhooks = self.webhooks if name == "bc" and workers == 1 else None  # else sent from here
        if workers > 1:
            self._share_state(name, backend)
        others, lock, host = [*self.servers.values(), *self._released], self._lock, self._host

        def start(worker: int) -> Callable[[], None]:
            for other in others:
                other.release()
            if worker:
                server.listen_again()
            if lock is not None:
                lock.forget()
            if host is not None:
                host.forget()
            if webhooks is not None:
                webhooks.start()
            server.prepare()
            thread = threading.Thread(target=server.serve_forever, name=f"sandbox-{name}", daemon=True)
            thread.start()
            freeze_startup_heap()  # this process is the sandbox's own

            def stop() -> None:
                server.shutdown()
                thread.join(timeout=5)
                if webhooks is not None:
                    webhooks.stop()
                backend.store.engine.dispose()
            return stop

        try:
            for worker in range(workers):
                self.children[name if worker == 0 else f"{name}-{worker + 1}"] = ServiceProcess.fork(
                    functools.partial(start, worker))
        finally:  # served by the children now, or by no one when a fork failed (the start then fails)
            server.release()
            self._released.append(server)
        del self.apps[name]
        if webhooks is not None:
            self.webhooks = None

    def _share_state(self, name: str, backend: Any) -> None:
        """What the workers of one service must see alike: the journal in a file of the data dir, the
        faults and the write generations (and Dataverse's settings) in shared memory."""
        services = self.services[name]
        path = self.config.data_dir / f"journal-{name}.db"
        services.journal = Journal(clock=services.clock, path=path)
        services.journal.clear()  # a journal starts empty with the sandbox, as it does in memory
        services.faults.share()
        assert self._host is not None
        hosted = HostedLimits(services.limits)
        hosted.serve_on(self._host, f"limits-{name}")
        services.limits = RemoteProtection(self._host, f"limits-{name}", hosted)  # type: ignore[assignment]
        backend.share()
        extensions = self.apps[name].extensions[name]
        if extensions.get("webhooks") is not None:
            hooks = extensions["webhooks"]
            hooks.share()
            self._host.serve("webhooks", hooks, WEBHOOK_CALLS)
            extensions["service"].webhooks = extensions["webhooks"] = RemoteWebhooks(self._host, "webhooks", hooks)

    def _bind(self, slots: dict[str, _AppSlot]) -> None:
        cfg = self.config
        scheme = "https" if cfg.tls else "http"
        public_host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
        ports = {"identity": cfg.identity_port, "dataverse": cfg.dataverse_port, "bc": cfg.bc_port}
        for name in SERVICES:
            served = AccessLog(slots[name], name) if cfg.access_log else slots[name]
            server = bind(name, cfg.host, ports[name], served, reuse_port=cfg.workers > 1 and name != "identity")
            self.servers[name] = server
            self.urls[name] = f"{scheme}://{public_host}:{server.port}"
        if cfg.tls:  # after binding: a port in use must not cost a certificate re-issue
            self.tls_files = ensure_certificates(cfg.data_dir)
            for server in self.servers.values():
                server.use_tls(self.tls_files)

    def _admin_token(self) -> str:
        path = self.config.data_dir / ADMIN_TOKEN_FILE
        if path.is_file():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        write_private(path, token)
        return token

    def stop(self) -> None:
        for child in self.children.values():
            child.hang_up()
        stoppers = [threading.Thread(target=server.shutdown) for server in self.servers.values()]
        for stopper in stoppers:  # in parallel: each waits for its worker threads to finish
            stopper.start()
        for stopper in stoppers:
            stopper.join(timeout=10)
        for thread in self.threads:
            thread.join(timeout=5)
        for child in self.children.values():
            child.stop()
        self.children.clear()
        if self._host is not None:
            self._host.stop()
            self._host = None
        if getattr(self, "webhooks", None) is not None:
            self.webhooks.stop()
        for backend in getattr(self, "backends", {}).values():
            backend.store.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _in_memory(engine: Any) -> bool:
    return engine.url.get_backend_name() == "sqlite" and engine.url.database in (None, "", ":memory:")


def freeze_startup_heap() -> None:
    """For a process that only serves the sandbox (``mockservers serve``): what exists once it has
    started (schemas, tables, compiled statements, the apps; about 190,000 objects) lives as long as
    the process, so the cyclic garbage collector stops walking it on every full collection. Measured
    on a BC ``$batch`` of 100 creates: 24 -> 20 ms. Not done for a sandbox inside someone else's
    process (in-process mode, tests), whose objects are not ours to freeze."""
    gc.collect()
    gc.freeze()
