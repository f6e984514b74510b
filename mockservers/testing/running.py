"""A sandbox under test: started live (sockets, optional TLS) or in process, used the same way.

:func:`start_sandbox` builds identity, Dataverse and BC on a data dir (SQLite files by default) and
returns a :class:`RunningSandbox`: its ``sandbox.json`` facts, authenticated sessions, the control
API of each service (journal, faults, limits, clock, reset and seeding) and, in process, the router
that answers its URLs. :func:`sandbox` is the same as a context manager.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import requests

from .. import generate as generator
from ..server import Sandbox, SandboxConfig
from .control import ControlClient
from .inprocess import SandboxRouter
from .journal import JournalView

Mode = Literal["inprocess", "live"]
MODES: tuple[Mode, ...] = ("inprocess", "live")
SERVICES = ("dataverse", "bc")
IN_PROCESS_HOST = "sandbox.localhost"


class ClockControl:
    """The sandbox's clock (identity and both services read it), moved through the control API."""

    def __init__(self, control: ControlClient) -> None:
        self._control = control

    def now(self) -> datetime:
        return _instant(self._control.clock()["now"])

    @property
    def frozen(self) -> bool:
        return bool(self._control.clock()["frozen"])

    def freeze(self, at: datetime | str | None = None) -> datetime:
        """Stop the clock, at ``at`` (not earlier than now) or where it stands."""
        return _instant(self._control.set_clock(now=at, frozen=True)["now"])

    def advance(self, delta: timedelta | float = 0.0, *, seconds: float = 0.0, minutes: float = 0.0,
                hours: float = 0.0, days: float = 0.0) -> datetime:
        """Move the clock forward (frozen or running) by ``delta`` plus the named parts."""
        step = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        step += seconds + 60 * minutes + 3600 * hours + 86400 * days
        return _instant(self._control.set_clock(advance_seconds=step)["now"])

    def set(self, at: datetime | str) -> datetime:
        """Move the clock forward to ``at``."""
        return _instant(self._control.set_clock(now=at)["now"])

    def resume(self) -> datetime:
        """Let a frozen clock run on from where it stands."""
        return _instant(self._control.set_clock(frozen=False)["now"])


class _PinnedSession(requests.Session):
    """A session that verifies TLS against the sandbox CA even where ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` is set (requests lets those override a session's ``verify``)."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)  # (Python 3.11 reads the Z suffix)


@dataclass
class RunningSandbox:
    """A started sandbox, live or in process; everything a test needs to drive and inspect it."""

    sandbox: Sandbox
    mode: Mode
    router: SandboxRouter | None = None  # in process: answers the sandbox's URLs (and your own mocks)
    _owned_dir: Path | None = field(default=None, repr=False)

    # -- facts (sandbox.json) ---------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """The content of ``sandbox.json``: URLs, tenant, app registration, companies, admin token."""
        return self.sandbox.info

    @property
    def data_dir(self) -> Path:
        return self.sandbox.config.data_dir

    @property
    def ca_bundle(self) -> str | None:
        """The sandbox CA (PEM) a live TLS sandbox serves with; None in process or over plain HTTP."""
        return self.info["ca_bundle"]

    @property
    def verify(self) -> bool | str:
        """What to pass as ``requests``' ``verify=``."""
        return self.ca_bundle or True

    @property
    def api(self) -> str:
        """The Dataverse Web API root (``…/api/data/v9.2``)."""
        return str(self.info["dataverse"]["api_root"])

    @property
    def bc_api(self) -> str:
        """The BC API v2.0 root (``…/v2.0/<tenant>/<environment>/api/v2.0``)."""
        return str(self.info["bc"]["api_root"])

    @property
    def companies(self) -> list[str]:
        """BC company ids, in the fixture's order."""
        return [c["id"] for c in self.info["bc"]["companies"]]

    # -- calling the services ---------------------------------------------------------------------
    def token(self, scope: str | None = None, client_id: str | None = None, secret: str | None = None) -> str:
        """An access token from the mock Entra ID (client credentials); Dataverse's scope by default."""
        resp = requests.post(
            f"{self.info['identity']['authority']}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials",
                  "client_id": client_id or self.info["app"]["client_id"],
                  "client_secret": secret or self.info["app"]["client_secret"],
                  "scope": scope or self.info["dataverse"]["scope"]},
            verify=self.verify, timeout=30,
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def bc_token(self) -> str:
        return self.token(scope=self.info["bc"]["scope"])

    def session(self, token: str | None = None) -> requests.Session:
        """A session for the Dataverse Web API, authenticated as the integration app."""
        s = _PinnedSession()
        s.verify = self.verify
        s.headers.update({"Authorization": f"Bearer {token or self.token()}", "Accept": "application/json",
                          "OData-MaxVersion": "4.0", "OData-Version": "4.0"})
        return s

    def bc_session(self, token: str | None = None) -> requests.Session:
        """A session for the BC API, authenticated as the integration app."""
        s = _PinnedSession()
        s.verify = self.verify
        s.headers.update({"Authorization": f"Bearer {token or self.bc_token()}", "Accept": "application/json"})
        return s

    def generate(self, scale: generator.Scale | None = None, *, company: str | None = None, progress: bool = False,
                 **kwargs: Any) -> generator.LoadReport:
        """Load synthetic data (``mockservers.generate``) through the bulk paths: ``generate(customers=500,
        accounts=400, overlap=0.6)`` or ``generate(Scale(...))``; into ``company`` (the first by default)."""
        if scale is not None and kwargs:
            raise TypeError("pass a Scale or its fields as keywords, not both")
        dataset = generator.generate(scale if scale is not None else generator.Scale(**kwargs))
        return generator.load(dataset, dataverse=self.session(), dataverse_api=self.api, bc=self.bc_session(),
                              bc_api=self.bc_api, company_id=company or self.companies[0], progress=progress)

    # -- the control API --------------------------------------------------------------------------
    @functools.cached_property
    def controls(self) -> dict[str, ControlClient]:
        """Each service's control API (``/_sandbox``)."""
        return {name: ControlClient(self.info[name]["url"], self.info["admin_token"], verify=self.verify)
                for name in SERVICES}

    def control(self, method: str, path: str, service: str = "dataverse", **kwargs: Any) -> requests.Response:
        """A raw control call (the response as it came), for tests of the control API itself."""
        url = f"{self.info[service]['url']}/_sandbox/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.info['admin_token']}"}
        return requests.request(method, url, headers=headers, verify=self.verify, timeout=60, **kwargs)

    @property
    def journal(self) -> JournalView:
        """What the services were sent: ``requests(...)``, ``assert_requests(n, ...)``, ``clear()``."""
        return JournalView(self.controls)

    @property
    def clock(self) -> ClockControl:
        """The sandbox's clock: ``now()``, ``freeze()``, ``advance(hours=1)``, ``resume()``."""
        return ClockControl(self.controls["dataverse"])

    def reset(self, fixture: str | None = "default") -> None:
        """Both services back to empty (system rows stay), journals, faults and limit windows cleared;
        then seeded with ``fixture`` unless it is None."""
        for name in SERVICES:
            self.controls[name].reset()
            if fixture is not None:
                self.controls[name].seed(fixture)

    def seed(self, fixture: str | None = None, *, dataverse: Mapping[str, Any] | None = None,
             bc: Mapping[str, Any] | None = None, company: str | None = None) -> dict[str, dict[str, int]]:
        """Load a fixture set by name into both services, or records given as Python data.

        ``dataverse`` maps entity sets to records in Web API create shape (``{"accounts": [{...}]}``),
        or is a whole fixture document (``{"tables": [...]}``); ``bc`` maps entity sets to records in
        API v2.0 shape for ``company`` (the first company by default), or is a fixture document
        (``{"companies": [...]}``). Each service loads its part in one transaction.
        """
        if fixture is not None:
            if dataverse is not None or bc is not None:
                raise ValueError("seed a fixture set by name, or records as data, not both")
            return {name: self.controls[name].seed(fixture) for name in SERVICES}
        result: dict[str, dict[str, int]] = {}
        if dataverse is not None:
            document = dict(dataverse) if "tables" in dataverse else {
                "tables": [{"set": name, "records": list(records)} for name, records in dataverse.items()]}
            result["dataverse"] = self.controls["dataverse"].seed(data=document)
        if bc is not None:
            if "companies" in bc:
                document = dict(bc)
            else:
                chosen = company or self.companies[0]
                names = {c["id"]: c["name"] for c in self.info["bc"]["companies"]}
                if chosen not in names:
                    raise ValueError(f"unknown BC company {chosen!r}; the sandbox has {', '.join(names)}")
                document = {"companies": [{"id": chosen, "name": names[chosen], "tables": [
                    {"set": name, "records": list(records)} for name, records in bc.items()]}]}
            result["bc"] = self.controls["bc"].seed(data=document)
        return result

    @contextlib.contextmanager
    def faults(self, service: str | None = None, **config: Any) -> Iterator[None]:
        """Faults on one service (both when None) for the ``with`` block, e.g.
        ``faults("dataverse", throttle_rate=1.0, count=2, retry_after=1)``."""
        names = (service,) if service else SERVICES
        for name in names:
            self.controls[name].set_faults(**config)
        try:
            yield
        finally:
            for name in names:
                self.controls[name].clear_faults()

    @contextlib.contextmanager
    def limits(self, service: str | None = None, **config: Any) -> Iterator[None]:
        """Service-protection limits changed for the ``with`` block (``max_requests=10``), then the
        defaults back with empty windows."""
        names = (service,) if service else SERVICES
        saved = {name: self.controls[name].limits() for name in names}
        for name in names:
            self.controls[name].set_limits(**config)
        try:
            yield
        finally:
            for name in names:
                self.controls[name].set_limits(**{k: v for k, v in saved[name].items() if k != "principals"})
                self.controls[name].reset_limits()

    def clean(self) -> None:
        """Journals, faults and limit windows cleared; data and clock kept (between tests)."""
        for name in SERVICES:
            control = self.controls[name]
            control.clear_journal()
            control.clear_faults()
            control.reset_limits()

    # -- lifecycle --------------------------------------------------------------------------------
    def stop_services(self) -> None:
        """Stop serving and release the data dir, keeping its files."""
        try:
            if self.router is not None:
                self.router.stop(allow_assert=False)
        finally:
            self.sandbox.stop()

    def stop(self) -> None:
        """Stop serving; a data dir the sandbox made for itself is removed."""
        try:
            self.stop_services()
        finally:
            if self._owned_dir is not None:
                shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# What a data dir holds that a copy of a seeded one can reuse: the SQLite databases (with any
# write-ahead log), the signing key and the TLS certificates (made once, slow to make).
TEMPLATE_FILES = ("dataverse.db", "dataverse.db-wal", "bc.db", "bc.db-wal", "identity-key.pem", "admin-token", "tls")


def build_template(directory: str | Path, *, fixture: str | None = "default",
                   fixtures_dirs: Sequence[str | Path] = ()) -> Path:
    """A data dir seeded once, for :func:`start_sandbox` (``template=``) to copy per sandbox: a fresh,
    seeded database costs a file copy instead of a seeding run."""
    start_sandbox(directory, mode="inprocess", fixture=fixture, fixtures_dirs=fixtures_dirs).stop_services()
    return Path(directory)


def start_sandbox(data_dir: str | Path | None = None, *, mode: Mode = "inprocess", fixture: str | None = "default",
                  tls: bool = True, passthrough: bool | Sequence[str] = False,
                  db_url: str | None = None, bc_db_url: str | None = None,
                  fixtures_dirs: Sequence[str | Path] = (), template: str | Path | None = None,
                  **config: Any) -> RunningSandbox:
    """Start a sandbox; ``fixture`` None leaves it unseeded (system rows only).

    ``mode="inprocess"`` binds no socket: while it runs, ``requests`` calls to its URLs
    (``https://identity.sandbox.localhost``, ``https://dataverse.…``, ``https://bc.…``) are answered by
    the apps; other URLs are refused unless ``passthrough`` is True or lists URL prefixes.
    ``mode="live"`` serves on free ports of 127.0.0.1, with TLS and a sandbox CA unless ``tls`` is False.
    Without ``data_dir`` the state lives in a temporary directory removed by :meth:`RunningSandbox.stop`.
    ``template`` (from :func:`build_template`, SQLite only) is copied into the data dir instead of
    seeding: the data is the template's, ``fixture`` only names the set for later resets.
    Other keywords are :class:`~mockservers.server.SandboxConfig` fields.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    owned = Path(tempfile.mkdtemp(prefix="bcdv-sandbox-")) if data_dir is None else None
    directory = Path(data_dir) if data_dir is not None else owned
    assert directory is not None
    if template is not None:
        if db_url or bc_db_url:
            raise ValueError("a template holds SQLite files; it cannot seed a database given by URL")
        _copy_template(Path(template), directory)
    settings: dict[str, Any] = {"webhook_delay_seconds": 0.2, **config}
    cfg = SandboxConfig(
        data_dir=directory, identity_port=0, dataverse_port=0, bc_port=0, tls=tls and mode == "live",
        seed=fixture is not None and template is None, fixture=fixture or "default", db_url=db_url,
        bc_db_url=bc_db_url,
        fixtures_dirs=tuple(Path(d) for d in fixtures_dirs),
        in_process_host=IN_PROCESS_HOST if mode == "inprocess" else None, **settings,
    )
    server = Sandbox(cfg)
    router: SandboxRouter | None = None
    try:
        if mode == "inprocess":  # claim the router first: a second in-process sandbox fails before building
            router = SandboxRouter({}, passthrough=passthrough)
            router.start()
        server.start()
        if router is not None:
            router.mount({server.urls[name]: server.apps[name] for name in server.urls})
    except BaseException:
        if router is not None:
            router.stop(allow_assert=False)
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    return RunningSandbox(server, mode, router, owned)


def _copy_template(template: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        source = template / name
        if source.is_dir():
            shutil.copytree(source, directory / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, directory / name)


@contextlib.contextmanager
def sandbox(data_dir: str | Path | None = None, **options: Any) -> Iterator[RunningSandbox]:
    """:func:`start_sandbox` as a context manager: ``with sandbox(mode="inprocess") as sb: ...``."""
    running = start_sandbox(data_dir, **options)
    try:
        yield running
    finally:
        running.stop()
