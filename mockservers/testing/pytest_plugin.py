"""pytest plugin (entry point ``bc_dataverse_sandbox``): the sandbox as fixtures.

Fixtures, each giving a :class:`~mockservers.testing.RunningSandbox`:

- ``sandbox_inprocess``: a fresh in-process sandbox for this test (its own SQLite files, seeded by
  copying a template made once per session, so a fresh database costs a file copy);
- ``sandbox_inprocess_module``: one in-process sandbox per module, shared by its tests;
- ``sandbox_live``: one live sandbox per module on free ports of 127.0.0.1 (HTTPS with a sandbox CA by
  default: ``ca_bundle`` names it);
- ``sandbox_factory``: ``sandbox_factory(mode="live", tls=False, fixture=None, ...)`` for anything
  else; every sandbox it made is stopped after the test.

The shared ones are cleaned before each test: journals, faults and limit windows emptied (data and
clock kept). Options come from the ``sandbox`` marker on the test, its class or module (for the
shared ones, on the module only)::

    pytestmark = pytest.mark.sandbox(fixture=None, data={"dataverse": {"accounts": [{"name": "A"}]}},
                                     tls=False, passthrough=["http://localhost:8080"], reset="data")

``fixture`` names the fixture set to seed (None: system rows only); ``data`` adds records as Python
data (``{"dataverse": {...}, "bc": {...}}``, see ``RunningSandbox.seed``); ``reset="data"`` resets
and re-seeds a shared sandbox before each test (``"none"`` leaves even the journal alone);
``passthrough`` lets an in-process sandbox pass other URLs to the network (default: refused).
Any other keyword is a ``SandboxConfig`` field (``bc_max_page_size=50``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .running import RunningSandbox

MARKER = "sandbox"
_RESETS = ("journal", "data", "none")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(fixture='default', data=None, tls=True, passthrough=False, reset='journal', **config): "
        "options of the bc-dataverse-sandbox fixtures (sandbox_inprocess, sandbox_live, ...)")


class SandboxTemplates:
    """Seeded data dirs, one per fixture set and fixture directories, made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[tuple[str | None, tuple[str, ...]], Path] = {}

    def get(self, fixture: str | None, fixtures_dirs: tuple[str, ...] = ()) -> Path:
        from .running import build_template

        key = (fixture, fixtures_dirs)
        if key not in self._made:
            self._made[key] = build_template(self.root / f"template-{len(self._made)}", fixture=fixture,
                                             fixtures_dirs=fixtures_dirs)
        return self._made[key]


def _shared_options(request: pytest.FixtureRequest, fixture_name: str) -> dict[str, Any]:
    """The options of a module's shared sandbox: from the module's marker only (a test's own marker would
    have to change a sandbox other tests use)."""
    own = request.node.get_closest_marker(MARKER)
    module = request.node.getparent(pytest.Module)
    if own is not None and (module is None or own not in list(module.iter_markers(MARKER))):
        raise pytest.UsageError(f"{fixture_name} is shared by the module: put @pytest.mark.{MARKER}(...) on the module "
                                f"(pytestmark), or use sandbox_inprocess / sandbox_factory for options of one test")
    return _options(module if module is not None else request.node)


def _options(node: Any) -> dict[str, Any]:
    marker = node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only, e.g. fixture='default'")
    reset = options.setdefault("reset", "journal")
    if reset not in _RESETS:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}(reset=...) must be one of {', '.join(_RESETS)}; got {reset!r}")
    return options


def _start(mode: str, directory: Path, templates: SandboxTemplates, options: dict[str, Any]) -> RunningSandbox:
    from .running import start_sandbox

    options = {k: v for k, v in options.items() if k != "reset"}
    data = options.pop("data", None)
    fixture = options.pop("fixture", "default")
    dirs = tuple(str(d) for d in options.get("fixtures_dirs", ()))
    on_sqlite = not (options.get("db_url") or options.get("bc_db_url"))
    template = templates.get(fixture, dirs) if on_sqlite else None
    running = start_sandbox(directory, mode=mode, fixture=fixture, template=template, **options)  # type: ignore[arg-type]
    try:
        if data:
            _seed_data(running, data)
    except BaseException:
        running.stop()
        raise
    return running


@contextmanager
def _started(mode: str, directory: Path, templates: SandboxTemplates, options: dict[str, Any]) -> Iterator[RunningSandbox]:
    running = _start(mode, directory, templates, options)
    try:
        yield running
    finally:
        running.stop()


def _seed_data(running: RunningSandbox, data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - {"dataverse", "bc"})
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}(data=...) takes 'dataverse' and 'bc'; got {', '.join(unknown)}")
    running.seed(dataverse=data.get("dataverse"), bc=data.get("bc"))


def _before_test(running: RunningSandbox, options: dict[str, Any]) -> None:
    if options["reset"] == "data":
        running.reset(options.get("fixture", "default"))
        if options.get("data"):
            _seed_data(running, options["data"])
    elif options["reset"] == "journal":
        running.clean()


@pytest.fixture(scope="session")
def sandbox_templates(tmp_path_factory: pytest.TempPathFactory) -> SandboxTemplates:
    """Seeded data dirs the fixtures copy from (one seeding run per fixture set and session)."""
    return SandboxTemplates(tmp_path_factory.mktemp("sandbox-templates"))


@pytest.fixture
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory,
                    sandbox_templates: SandboxTemplates) -> Iterator[Callable[..., RunningSandbox]]:
    """``sandbox_factory(mode="inprocess"|"live", fixture=..., data=..., tls=..., ...)``: sandboxes
    stopped (and their data dirs removed) after the test."""
    made: list[RunningSandbox] = []

    def make(mode: str = "inprocess", **options: Any) -> RunningSandbox:
        options.setdefault("reset", "journal")
        running = _start(mode, tmp_path_factory.mktemp("sandbox"), sandbox_templates, options)
        made.append(running)
        return running

    yield make
    for running in reversed(made):
        running.stop()


@pytest.fixture
def sandbox_inprocess(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      sandbox_templates: SandboxTemplates) -> Iterator[RunningSandbox]:
    """A fresh in-process sandbox for this test: its own database, no sockets."""
    with _started("inprocess", tmp_path_factory.mktemp("sandbox"), sandbox_templates, _options(request.node)) as running:
        yield running


@pytest.fixture(scope="module")
def _sandbox_inprocess_shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                              sandbox_templates: SandboxTemplates) -> Iterator[RunningSandbox]:
    with _started("inprocess", tmp_path_factory.mktemp("sandbox"), sandbox_templates, _options(request.node)) as running:
        assert running.router is not None
        running.router.stop(allow_assert=False)  # it answers during the tests that ask for it, not between
        yield running


@pytest.fixture
def sandbox_inprocess_module(request: pytest.FixtureRequest,
                             _sandbox_inprocess_shared: RunningSandbox) -> Iterator[RunningSandbox]:
    """The module's in-process sandbox, answering requests during this test and cleaned before it (see
    the ``reset`` marker option)."""
    router = _sandbox_inprocess_shared.router
    assert router is not None
    router.start()
    try:
        _before_test(_sandbox_inprocess_shared, _shared_options(request, "sandbox_inprocess_module"))
        yield _sandbox_inprocess_shared
    finally:
        router.stop(allow_assert=False)


@pytest.fixture(scope="module")
def _sandbox_live_shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                         sandbox_templates: SandboxTemplates) -> Iterator[RunningSandbox]:
    with _started("live", tmp_path_factory.mktemp("sandbox"), sandbox_templates, _options(request.node)) as running:
        yield running


@pytest.fixture
def sandbox_live(request: pytest.FixtureRequest, _sandbox_live_shared: RunningSandbox) -> RunningSandbox:
    """The module's live sandbox (real sockets, HTTPS unless ``tls=False``), cleaned before this test."""
    _before_test(_sandbox_live_shared, _shared_options(request, "sandbox_live"))
    return _sandbox_live_shared
