"""`mockservers` command: run the sandbox services."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import requests
from requests.adapters import HTTPAdapter
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from urllib3.util.retry import Retry

from .sandbox.fixtures import FixtureError, UnknownFixture
from .server import Sandbox, SandboxConfig, freeze_startup_heap
from .server.lock import DataDirLocked
from .server.sandbox import SandboxConfigError
from .server.wsgi import BindError, access_logger

console = Console(stderr=True, soft_wrap=True)
# Out-of-range numbers would otherwise wrap around silently (70000 binds 4464).
PORT = click.IntRange(0, 65535)


@click.group()
@click.version_option(package_name="bc-dataverse-sandbox", prog_name="mockservers")
def main() -> None:
    """Local Dataverse Web API and Business Central API v2.0 mocks with a mock Entra ID."""


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"),
              show_default=True, help="Where state (SQLite files, keys, certificates, sandbox.json) lives.")
@click.option("--seed/--no-seed", default=False, show_default=True, help="Load the sample data set on start.")
@click.option("--fixture", default="default", show_default=True, help="Fixture set to seed from.")
@click.option("--fixtures-dir", "fixtures_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A directory of fixture sets (or one set) that --fixture and POST /_sandbox/seed may name; "
                   "repeatable. Without it only the built-in sets can be seeded.")
@click.option("--tls/--no-tls", default=False, show_default=True,
              help="Serve HTTPS with a local CA (needed by Microsoft's SDKs).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--identity-port", type=PORT, default=5000, show_default=True)
@click.option("--dataverse-port", type=PORT, default=5001, show_default=True)
@click.option("--bc-port", type=PORT, default=5002, show_default=True)
@click.option("--db-url", default=None,
              help="SQLAlchemy URL for the Dataverse store, e.g. postgresql+psycopg://user:pw@host/db "
                   "(default: SQLite in --data-dir).")
@click.option("--bc-db-url", default=None,
              help="SQLAlchemy URL for the BC store: a database of its own (default: SQLite in --data-dir).")
@click.option("--bc-max-page-size", type=click.IntRange(1, 20_000), default=20_000, show_default=True,
              help="Server page size of the BC API (BC online: 20,000).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Print one line per request (service, method, path, status, duration).")
@click.option("--webhook-delay", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds BC waits after a change before sending webhook notifications.")
@click.option("--service-processes/--one-process", default=True, show_default=True,
              help="Serve BC from a process of its own, so Dataverse and BC answer on two cores.")
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Processes serving each of Dataverse and BC on its one port, so each service answers on every core.")
@click.option("--limits/--no-limits", default=True, show_default=True,
              help="Service protection (429 over the per-user limits); off, the control API cannot switch it on.")
def serve(data_dir: Path, seed: bool, fixture: str, fixtures_dirs: tuple[Path, ...], tls: bool, host: str,
          identity_port: int, dataverse_port: int, bc_port: int, db_url: str | None, bc_db_url: str | None,
          bc_max_page_size: int, webhook_delay: float, access_log: bool, service_processes: bool,
          workers: int, limits: bool) -> None:
    """Run the sandbox in the foreground until Ctrl+C."""
    if workers > 1 and not service_processes:
        raise click.UsageError(f"--workers {workers} serves each service from processes of its own; drop --one-process")
    config = SandboxConfig(data_dir=data_dir, host=host, identity_port=identity_port,
                           dataverse_port=dataverse_port, bc_port=bc_port, tls=tls, seed=seed,
                           fixture=fixture, db_url=db_url, bc_db_url=bc_db_url,
                           bc_max_page_size=bc_max_page_size, webhook_delay_seconds=webhook_delay,
                           access_log=access_log, fixtures_dirs=fixtures_dirs,
                           service_processes=service_processes, workers=workers, limits=limits)
    if access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)
        access_logger.propagate = False
    # A plain list, not threading.Event: Event.set() from a signal handler deadlocks when the signal
    # lands while the main thread holds the Event's lock inside Event.wait() (the process then
    # ignores SIGTERM for good). Installed before the services answer: a SIGTERM that comes as soon
    # as they do (a supervisor, a test) still stops the sandbox cleanly, lock released.
    stop_signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_signals.append(signum))
    sandbox = Sandbox(config)
    try:
        info = sandbox.start()
    except BindError as error:
        fix = "pass --host" if error.reason.startswith("cannot listen on host") else f"pass --{error.service}-port"
        raise click.ClickException(f"{error.reason}: {fix} (the {error.service} service's port; 0 picks a free one)") \
            from None
    except DataDirLocked as error:
        raise click.ClickException(str(error)) from None
    except (UnknownFixture, FixtureError) as error:
        raise click.ClickException(f"fixture {fixture!r}: {error}") from None
    except PermissionError as error:
        where = error.filename or data_dir
        raise click.ClickException(f"cannot write to {where}: permission denied; pass another --data-dir") from None
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        raise click.ClickException(f"cannot start the sandbox: {error.strerror or error}{where}") from None
    except SandboxConfigError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot open the database: {str(error).splitlines()[0]}; check --db-url / "
                                   "--bc-db-url") from None
    # From here the services answer: a Ctrl+C at any point (even during the banner) stops them cleanly.
    try:
        freeze_startup_heap()
        _print_banner(info, data_dir)
        while not stop_signals:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()


def _print_banner(info: dict, data_dir: Path) -> None:
    console.print(f"[bold]bc-dataverse-sandbox[/bold] running (state in {data_dir.resolve()})")
    console.print(f"  identity   {info['identity']['url']}  tenant {info['tenant_id']}")
    console.print(f"  dataverse  {info['dataverse']['api_root']}")
    console.print(f"  bc         {info['bc']['api_root']}")
    for company in info["bc"]["companies"]:
        console.print(f"             company {company['id']}  {company['name']}")
    console.print(f"  app        client_id {info['app']['client_id']}")
    console.print(f"             client_secret {info['app']['client_secret']}")
    if info["ca_bundle"]:
        console.print(f"  export REQUESTS_CA_BUNDLE={info['ca_bundle']}")
    console.print(f"  details    {(data_dir / 'sandbox.json').resolve()}")
    console.print("Press Ctrl+C to stop.")


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"))
def info(data_dir: Path) -> None:
    """Print sandbox.json of a running (or last run) sandbox."""
    path = data_dir / "sandbox.json"
    if not path.is_file():
        raise click.ClickException(f"{path} not found; start the sandbox with `mockservers serve` first")
    click.echo(json.dumps(json.loads(path.read_text()), indent=2))


SERVICE_NAMES = ("dataverse", "bc")


def _running_sandbox(data_dir: Path) -> dict:
    path = data_dir / "sandbox.json"
    if not path.is_file():
        raise click.ClickException(f"{path} not found; start the sandbox with `mockservers serve` first "
                                   "(or pass --data-dir)")
    try:
        info = json.loads(path.read_text())
        complete = isinstance(info, dict) and "admin_token" in info and all(
            isinstance(info.get(name), dict) and "url" in info[name] for name in SERVICE_NAMES)
    except ValueError:
        complete = False
    if not complete:
        raise click.ClickException(f"{path} is not a sandbox.json written by `mockservers serve`")
    return dict(info)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"),
              show_default=True, help="The data dir of the running sandbox (its sandbox.json).")
@click.option("--service", type=click.Choice(["dataverse", "bc", "all"]), default="all", show_default=True)
@click.option("--method", default=None, help="Only this HTTP method.")
@click.option("--path", "path_pattern", default=None, help="Glob over the whole path: '/api/data/v9.2/accounts(*)'.")
@click.option("--path-prefix", default=None, help="Only paths starting with this.")
@click.option("--status", default=None, help="A status code, a class such as 4xx, or 'dropped'.")
@click.option("--header", "headers", multiple=True,
              help="Header condition, repeatable: NAME (present), !NAME (absent), NAME=VALUE, NAME~REGEX.")
@click.option("--query", "query", multiple=True, help="Query option condition, same forms: '$filter~modifiedon'.")
@click.option("--body", default=None, help="Text the request body contains.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the newest N entries.")
@click.option("--follow", is_flag=True, help="Keep printing new requests until Ctrl+C.")
@click.option("--clear", is_flag=True, help="Empty the journal(s) instead of printing.")
@click.option("--json", "as_json", is_flag=True, help="Entries as JSON (headers and bodies included).")
def journal(data_dir: Path, service: str, method: str | None, path_pattern: str | None, path_prefix: str | None,
            status: str | None, headers: tuple[str, ...], query: tuple[str, ...], body: str | None,
            limit: int | None, follow: bool, clear: bool, as_json: bool) -> None:
    """Show the requests a running sandbox's services received (its request journal)."""
    from .sandbox.journal import JournalQuery, JournalQueryError
    from .testing.control import ControlClient, ControlError

    info = _running_sandbox(data_dir)
    names = SERVICE_NAMES if service == "all" else (service,)
    verify = info.get("ca_bundle") or True
    controls = {name: ControlClient(info[name]["url"], info["admin_token"], verify=verify, timeout=10)
                for name in names}
    args: dict[str, str | list[str]] = {"header": list(headers), "query": list(query)}
    for name, value in (("method", method), ("path_pattern", path_pattern), ("path", path_prefix),
                        ("status", status), ("body", body)):
        if value is not None:
            args[name] = value
    try:
        selection = JournalQuery.from_args(args)
    except JournalQueryError as error:
        raise click.ClickException(str(error)) from None
    try:
        if clear:
            for control in controls.values():
                control.clear_journal()
            click.echo(f"cleared the journal of {', '.join(names)}")
            return
        entries = _journal_entries(controls, selection)
        shown = entries[-limit:] if limit else entries
        _print_entries(shown, as_json, lines=follow)
        while follow:
            time.sleep(0.5)
            since = {name: max([e["id"] for e in entries if e["service"] == name], default=0) for name in names}
            fresh = sorted((e for name in names for e in controls[name].journal(
                dataclasses.replace(selection, since_id=since[name]))), key=lambda e: e["sequence"])
            entries += fresh
            _print_entries(fresh, as_json, lines=True)
    except KeyboardInterrupt:
        return
    except ControlError as error:
        raise click.ClickException(f"the control API refused: {error.message}") from None
    except requests.RequestException as error:
        raise click.ClickException(f"cannot reach the sandbox ({str(error).splitlines()[0][:200]}); "
                                   f"is `mockservers serve --data-dir {data_dir}` running?") from None


@main.command()
@click.option("--customers", type=int, default=1000, show_default=True, help="BC customers.")
@click.option("--accounts", type=int, default=None, show_default="as many as customers", help="Dataverse accounts.")
@click.option("--contacts", type=int, default=0, show_default=True, help="BC contacts, and as many Dataverse contacts.")
@click.option("--items", type=int, default=0, show_default=True, help="BC items, and as many Dataverse products.")
@click.option("--overlap", type=float, default=0.5, show_default=True,
              help="Share of customers that have an account of the same name (match-based coupling finds them).")
@click.option("--case-variants", type=float, default=0.1, show_default=True,
              help="Share of those accounts whose name differs only in letter case.")
@click.option("--duplicates", type=float, default=0.0, show_default=True,
              help="Share of overlapping customers whose name is on two accounts (no unique match).")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same data.")
@click.option("--company", default=None, show_default="the first", help="BC company, by id or name.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"),
              show_default=True, help="The data dir of the running sandbox (its sandbox.json).")
@click.option("--json", "as_json", is_flag=True, help="The outcome as JSON.")
def generate(customers: int, accounts: int | None, contacts: int, items: int, overlap: float, case_variants: float,
             duplicates: float, seed: int, company: str | None, data_dir: Path, as_json: bool) -> None:
    """Generate synthetic customers, accounts, contacts and products and load them into a running sandbox
    through the bulk paths (Dataverse CreateMultiple, BC JSON $batch)."""
    from . import generate as generator

    try:
        scale = generator.Scale(customers=customers, accounts=accounts, contacts=contacts, items=items,
                                overlap=overlap, case_variants=case_variants, duplicates=duplicates, seed=seed)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    info = _running_sandbox(data_dir)
    company_id = _company_id(info, company)
    verify = info.get("ca_bundle") or True
    dataset = generator.generate(scale)
    try:
        dv = _app_session(info, "dataverse", verify)
        bc = _app_session(info, "bc", verify)
        report = generator.load(dataset, dataverse=dv, dataverse_api=info["dataverse"]["api_root"], bc=bc,
                                bc_api=info["bc"]["api_root"], company_id=company_id, progress=not as_json)
    except generator.LoadError as error:
        raise click.ClickException(str(error)) from None
    except requests.RequestException as error:
        raise click.ClickException(f"cannot reach the sandbox ({str(error).splitlines()[0][:200]}); "
                                   f"is `mockservers serve --data-dir {data_dir}` running?") from None
    records = sum(len(rows) for rows in (*dataset.bc.values(), *dataset.dataverse.values()))
    rate = records / report.seconds if report.seconds else 0.0
    if as_json:
        click.echo(json.dumps({"counts": report.counts, "seconds": round(report.seconds, 3),
                               "records_per_second": round(rate, 1), "requests": report.requests,
                               "matching": dataset.matching, "company": company_id}))
        return
    shown = ", ".join(f"{n:,} {key}" for key, n in report.counts.items() if n)
    click.echo(f"loaded {shown or 'nothing'} in {report.seconds:.1f} s ({rate:,.0f} records/s, "
               f"{report.requests:,} requests); {dataset.matching:,} customers match exactly one account by name")


def _company_id(info: dict, wanted: str | None) -> str:
    companies = (info.get("bc") or {}).get("companies") or []
    if not companies:
        raise click.ClickException("the sandbox's sandbox.json lists no BC company")
    if wanted is None:
        return str(companies[0]["id"])
    for company in companies:
        if wanted.lower() in (str(company["id"]).lower(), str(company.get("name", "")).lower()):
            return str(company["id"])
    known = ", ".join(f"{c.get('name')} ({c['id']})" for c in companies)
    raise click.ClickException(f"no BC company {wanted!r} in this sandbox; it has {known}")


def _app_session(info: dict, service: str, verify: bool | str) -> requests.Session:
    """A session authenticated as the sandbox's integration app (client credentials at the mock Entra ID)."""
    app, identity = info.get("app") or {}, info.get("identity") or {}
    if "authority" not in identity or "scope" not in info[service]:
        raise click.ClickException("sandbox.json has no identity authority or scope; restart the sandbox with this "
                                   "version of `mockservers serve`")
    resp = requests.post(f"{identity['authority']}/oauth2/v2.0/token",
                         data={"grant_type": "client_credentials", "client_id": app.get("client_id"),
                               "client_secret": app.get("client_secret"), "scope": info[service]["scope"]},
                         verify=verify, timeout=30)
    if resp.status_code != 200:
        try:
            detail = str(resp.json().get("error_description") or resp.text)
        except ValueError:
            detail = resp.text
        detail = detail.strip().splitlines()[0][:200] if detail.strip() else f"status {resp.status_code}"
        raise click.ClickException(f"the identity service refused a token for {service}: {detail}")
    session = requests.Session()
    session.verify = verify
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override the sandbox CA, and a proxy could take localhost
    session.headers.update({"Authorization": f"Bearer {resp.json()['access_token']}", "Accept": "application/json",
                            "OData-MaxVersion": "4.0", "OData-Version": "4.0"})
    # Throttled requests (429) were refused before any work, so sending them again is safe; Retry-After is honoured.
    retry = Retry(total=8, connect=3, read=0, status=8, status_forcelist=(429,), allowed_methods=None,
                  backoff_factor=0.5, respect_retry_after_header=True, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _journal_entries(controls: dict, selection: Any) -> list[dict]:
    entries = [e for control in controls.values() for e in control.journal(selection)]
    return sorted(entries, key=lambda e: e["sequence"])


def _print_entries(entries: list[dict], as_json: bool, *, lines: bool = False) -> None:
    """A line per request; with ``as_json`` one JSON array, or a JSON object per line when following."""
    if as_json and lines:
        for entry in entries:
            click.echo(json.dumps(entry))
        return
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    out = Console(soft_wrap=True)
    for e in entries:
        target = e["path"] + (f"?{e['query']}" if e["query"] else "")
        status = str(e["status"]) if e["status"] else "dropped"
        note = f"  [{e['fault'] or e['rejected_by']}]" if e["fault"] or e["rejected_by"] else ""
        out.print(f"{e['time'][11:23]} {e['service']:<9} {e['method']:<6} {target} {status} "
                  f"{e['duration_ms']:.1f} ms{note}", markup=False, highlight=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
