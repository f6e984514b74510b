"""`mockservers` command: run the sandbox services."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from .sandbox.fixtures import FixtureError, UnknownFixture
from .server import Sandbox, SandboxConfig
from .server.lock import DataDirLocked
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
def serve(data_dir: Path, seed: bool, fixture: str, fixtures_dirs: tuple[Path, ...], tls: bool, host: str,
          identity_port: int, dataverse_port: int, bc_port: int, db_url: str | None, bc_db_url: str | None,
          bc_max_page_size: int, webhook_delay: float, access_log: bool) -> None:
    """Run the sandbox in the foreground until Ctrl+C."""
    config = SandboxConfig(data_dir=data_dir, host=host, identity_port=identity_port,
                           dataverse_port=dataverse_port, bc_port=bc_port, tls=tls, seed=seed,
                           fixture=fixture, db_url=db_url, bc_db_url=bc_db_url,
                           bc_max_page_size=bc_max_page_size, webhook_delay_seconds=webhook_delay,
                           access_log=access_log, fixtures_dirs=fixtures_dirs)
    if access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)
        access_logger.propagate = False
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
    except SQLAlchemyError as error:
        raise click.ClickException(f"cannot open the database: {str(error).splitlines()[0]}; check --db-url / "
                                   "--bc-db-url") from None
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
    # A plain list, not threading.Event: Event.set() from a signal handler deadlocks when the signal
    # lands while the main thread holds the Event's lock inside Event.wait() (the process then
    # ignores SIGTERM for good).
    stop_signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_signals.append(signum))
    try:
        while not stop_signals:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".sandbox"))
def info(data_dir: Path) -> None:
    """Print sandbox.json of a running (or last run) sandbox."""
    path = data_dir / "sandbox.json"
    if not path.is_file():
        raise click.ClickException(f"{path} not found; start the sandbox with `mockservers serve` first")
    click.echo(json.dumps(json.loads(path.read_text()), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
