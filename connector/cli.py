"""The ``connector`` command: every action of BC's Dataverse integration, scriptable.

Every command takes ``--json`` for scripts, shows a progress bar on long work (on stderr), and on bad
input exits non-zero with one line and no traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy import select

from . import __version__, bulk_import, schedule
from . import config as config_module
from .clients import ClientError
from .coupling import couple, create_in_dataverse, uncouple
from .errors_page import ErrorsPage
from .jobs import COUNTERS, JobLog, Outcome
from .mappings.setup import MappingError, find_field, install_defaults, set_field, set_mapping
from .mappings.tables import bc_entity
from .matching import match_couple
from .records import bc_records
from .runtime import Connector, ConnectorError
from .store import (
    Coupling,
    DeletionConflict,
    Direction,
    FieldStatus,
    MappingKind,
    OptionCoupling,
    SyncJob,
    TableMapping,
    UpdateConflict,
)
from .sync import bc_select, synchronize_from_dataverse, synchronize_now

out = Console()
err = Console(stderr=True)

DIRECTIONS = {
    "to-dataverse": Direction.TO_INTEGRATION, "from-dataverse": Direction.FROM_INTEGRATION,
    "bidirectional": Direction.BIDIRECTIONAL,
    **{d.value.lower(): d for d in Direction},
}


class _Choice(click.ParamType):
    """Case-insensitive choice that converts to an enum member."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self.mapping = mapping
        self.name = "|".join(k for k in mapping if not any(c.isupper() for c in k))[:60]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        found = self.mapping.get(value.lower())
        if found is None:
            choices = ", ".join(k for k in self.mapping if k == k.lower() and " " not in k)
            self.fail(f"{value!r} is not one of {choices}", param, ctx)
        return found


DIRECTION = _Choice(DIRECTIONS)
DELETION = _Choice({d.value.lower(): d for d in DeletionConflict} | {"none": DeletionConflict.NONE,
                                                                     "restore": DeletionConflict.RESTORE_RECORDS,
                                                                     "remove-coupling": DeletionConflict.REMOVE_COUPLING})
UPDATE = _Choice({u.value.lower(): u for u in UpdateConflict} | {"none": UpdateConflict.NONE,
                                                                  "send": UpdateConflict.SEND_UPDATE,
                                                                  "get": UpdateConflict.GET_UPDATE})
STATUS = _Choice({"enabled": FieldStatus.ENABLED, "disabled": FieldStatus.DISABLED})


class Failure(Exception):
    """Ends a command with one line on stderr and exit code 1."""


def _fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (Failure, ConnectorError, MappingError, config_module.ConfigError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            raise click.ClickException(str(message)) from None
        except ClientError as error:
            raise click.ClickException(str(error)) from None
    return wrapper


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(command)


@click.group()
@click.version_option(__version__, prog_name="connector")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Config file (default ./connector.toml, or $CONNECTOR_CONFIG).")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Couple and synchronize Business Central records with Dataverse, as BC's integration does."""
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # retries are expected, not news
    ctx.obj = {"config_path": config_path}


@contextmanager
def _connector(ctx: click.Context) -> Iterator[Connector]:
    config = config_module.load(ctx.obj["config_path"])
    cx = Connector.open(config)
    try:
        yield cx
    finally:
        cx.close()


def _emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=_json_default))
    else:
        human()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    return str(value)


@contextmanager
def _progress(as_json: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=as_json or not err.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _print_outcome(outcome: Outcome) -> None:
    for job in outcome.jobs:
        counts = job.snapshot()
        shown = ", ".join(f"{k} {counts[k]}" for k in COUNTERS if counts[k])
        label = "dry run" if not job.persist else f"job {job.id}"
        out.print(f"{job.mapping_name} {job.direction.value} {label}: {shown or 'nothing to do'}")
        for line in job.plan:
            out.print(f"  {line}")
        for line in _job_errors(job):
            out.print(f"  [red]error[/red] {line}")
    for note in outcome.notes:
        out.print(f"  note: {note}")


def _job_errors(job: JobLog) -> list[str]:
    return job.messages[:20]


def _outcome_payload(outcome: Outcome) -> dict[str, Any]:
    payload = outcome.as_dict()
    for entry, job in zip(payload["jobs"], outcome.jobs, strict=True):
        entry["errors"] = _job_errors(job)
    return payload


# -- setup ----------------------------------------------------------------------------------------


@main.command()
@click.option("--sandbox", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The sandbox's data directory (where sandbox.json is).")
@click.option("--company", default=None, help="BC company name or id (default: the first company).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@json_option
@click.pass_context
@_fail_cleanly
def init(ctx: click.Context, data_dir: Path, company: str | None, force: bool, as_json: bool) -> None:
    """Write a config file for a running sandbox."""
    path = config_module.resolve_path(ctx.obj["config_path"])
    if path.exists() and not force:
        raise Failure(f"{path} exists; pass --force to overwrite it")
    document = config_module.from_sandbox(data_dir, company)
    config_module.write(path, document)
    _emit(as_json, {"config": str(path), "company": document["bc"]["company_name"]},
          lambda: out.print(f"wrote {path} for BC company {document['bc']['company_name']} "
                            f"({document['bc']['company_id']})"))


@main.command("test-connection")
@json_option
@click.pass_context
@_fail_cleanly
def test_connection(ctx: click.Context, as_json: bool) -> None:
    """Get tokens and call both services (WhoAmI, BC companies, this company's Dataverse row)."""
    with _connector(ctx) as cx:
        who = cx.dataverse.who_am_i()
        companies = cx.bc.companies()
        ours = next((c for c in companies if c["id"].lower() == cx.config.company_id.lower()), None)
        if ours is None:
            raise Failure(f"BC company {cx.config.company_id} not found (companies: "
                          f"{', '.join(c['name'] for c in companies)})")
        company = cx.company()
        payload = {"dataverse": {"user_id": who["UserId"], "organization_id": who["OrganizationId"]},
                   "bc": {"company_id": ours["id"], "company_name": ours["name"]},
                   "bcbi_company": company.dataverse_id}
    _emit(as_json, payload, lambda: out.print(
        f"dataverse ok: user {who['UserId']} in organization {who['OrganizationId']}\n"
        f"bc ok: company {ours['name']} ({ours['id']})\n"
        f"company id in Dataverse (bcbi_company): {company.dataverse_id}"))


@main.group()
def setup() -> None:
    """Synchronization setup."""


@setup.command("defaults")
@json_option
@click.pass_context
@_fail_cleanly
def setup_defaults(ctx: click.Context, as_json: bool) -> None:
    """Create the default integration table mappings (existing ones are reset; couplings are kept)."""
    with _connector(ctx) as cx:
        names = install_defaults(cx.state, cx.company().dataverse_id)
    _emit(as_json, {"mappings": names}, lambda: out.print("default mappings: " + ", ".join(names)))


# -- mappings -------------------------------------------------------------------------------------


def _mapping_row(m: TableMapping) -> dict[str, Any]:
    return {"name": m.name, "bc_entity": m.bc_entity, "dataverse_table": m.dataverse_table, "kind": m.kind.value,
            "option_attribute": m.option_attribute, "direction": m.direction.value,
            "sync_only_coupled": m.sync_only_coupled, "deletion_conflict": m.deletion_conflict.value,
            "update_conflict": m.update_conflict.value, "table_filter": m.table_filter,
            "integration_table_filter": m.integration_table_filter, "dependency_filter": m.dependency_filter,
            "create_new_if_no_match": m.create_new_if_no_match,
            "sync_after_match_coupling": m.sync_after_match_coupling,
            "bc_watermark": m.bc_watermark, "dataverse_watermark": m.dataverse_watermark}


def _field_row(f: Any) -> dict[str, Any]:
    return {"id": f.id, "bc_field": f.bc_field, "dataverse_field": f.dataverse_field, "direction": f.direction.value,
            "status": f.status.value, "constant": f.constant_value, "via": f.via_mapping,
            "clear_value_on_failed_sync": f.clear_value_on_failed_sync, "not_null": f.not_null,
            "use_for_match": f.use_for_match, "case_sensitive": f.case_sensitive, "match_priority": f.match_priority}


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
@_fail_cleanly
def mappings(ctx: click.Context, as_json: bool) -> None:
    """Integration table mappings: list, show, and edit them."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(mappings_list, as_json=as_json)


@mappings.command("list")
@json_option
@click.pass_context
@_fail_cleanly
def mappings_list(ctx: click.Context, as_json: bool) -> None:
    """All mappings."""
    with _connector(ctx) as cx:
        rows = [_mapping_row(m) for m in cx.mappings().values()]

    def human() -> None:
        table = Table("Name", "BC", "Dataverse", "Direction", "Sync only coupled", "Dependency filter")
        for r in rows:
            table.add_row(r["name"], r["bc_entity"], r["dataverse_table"] + (
                f".{r['option_attribute']}" if r["option_attribute"] else ""), r["direction"],
                "yes" if r["sync_only_coupled"] else "no", r["dependency_filter"] or "")
        out.print(table)
    _emit(as_json, rows, human)


@mappings.command("show")
@click.argument("name")
@json_option
@click.pass_context
@_fail_cleanly
def mappings_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """One mapping with its filters and field mappings."""
    with _connector(ctx) as cx:
        mapping = cx.mapping(name)
        payload = {**_mapping_row(mapping), "fields": [_field_row(f) for f in mapping.fields]}

    def human() -> None:
        for key, value in payload.items():
            if key != "fields":
                out.print(f"{key:28} {value if value is not None else ''}")
        table = Table("Id", "BC field", "Dataverse field", "Direction", "Status", "Constant", "Via", "Match")
        for f in payload["fields"]:
            match = f"prio {f['match_priority']}{' case' if f['case_sensitive'] else ''}" if f["use_for_match"] else ""
            table.add_row(str(f["id"]), f["bc_field"] or "", f["dataverse_field"] or "", f["direction"],
                          f["status"], f["constant"] or "", f["via"] or "", match)
        out.print(table)
    _emit(as_json, payload, human)


def _changes(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@mappings.command("set")
@click.argument("name")
@click.option("--direction", type=DIRECTION)
@click.option("--sync-only-coupled/--no-sync-only-coupled", default=None)
@click.option("--deletion-conflict", type=DELETION, help="none | restore | remove-coupling")
@click.option("--update-conflict", type=UPDATE, help="none | send | get")
@click.option("--table-filter", help="OData $filter on the BC entity set ('' clears it).")
@click.option("--integration-table-filter", help="OData $filter on the Dataverse table ('' clears it).")
@click.option("--dependency-filter")
@click.option("--create-new-if-no-match/--no-create-new-if-no-match", default=None)
@click.option("--sync-after-match-coupling/--no-sync-after-match-coupling", default=None)
@json_option
@click.pass_context
@_fail_cleanly
def mappings_set(ctx: click.Context, name: str, as_json: bool, table_filter: str | None,
                 integration_table_filter: str | None, **options: Any) -> None:
    """Change a mapping's settings."""
    changes = _changes(**options)
    if table_filter is not None:
        changes["table_filter"] = table_filter or None
    if integration_table_filter is not None:
        changes["integration_table_filter"] = integration_table_filter or None
    if not changes:
        raise Failure("nothing to change; see `connector mappings set --help`")
    with _connector(ctx) as cx:
        mapping_name = cx.mapping(name).name
        with cx.state.session() as session:
            mapping = session.get(TableMapping, mapping_name)
            assert mapping is not None
            warnings = set_mapping(session, mapping, changes)
            payload = _mapping_row(mapping)
    for warning in warnings:
        err.print(f"warning: {warning}")
    _emit(as_json, payload, lambda: out.print(f"{mapping_name} updated"))


@mappings.command("field")
@click.argument("name")
@click.argument("field")
@click.option("--direction", type=DIRECTION)
@click.option("--status", type=STATUS)
@click.option("--constant", "constant_value")
@click.option("--match/--no-match", "use_for_match", default=None, help="Use for match-based coupling.")
@click.option("--case-sensitive/--no-case-sensitive", default=None)
@click.option("--priority", "match_priority", type=int)
@click.option("--clear-value-on-failed-sync/--no-clear-value-on-failed-sync", default=None)
@json_option
@click.pass_context
@_fail_cleanly
def mappings_field(ctx: click.Context, name: str, field: str, as_json: bool, **options: Any) -> None:
    """Change one field mapping (FIELD: its id, BC field or Dataverse field)."""
    changes = _changes(**options)
    if not changes:
        raise Failure("nothing to change; see `connector mappings field --help`")
    with _connector(ctx) as cx:
        mapping_name = cx.mapping(name).name
        with cx.state.session() as session:
            mapping = session.get(TableMapping, mapping_name)
            assert mapping is not None
            target = find_field(mapping, field)
            set_field(session, mapping, target, changes)
            payload = _field_row(target)
    _emit(as_json, payload, lambda: out.print(f"{mapping_name} field {payload['id']} updated"))


# -- coupling and synchronization -----------------------------------------------------------------


@main.command("couple")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("bc_key")
@click.option("--dataverse-id", help="Couple to this Dataverse row.")
@click.option("--dataverse-name", help="Couple to the row with this name (exact, else prefix).")
@click.option("--create-new", is_flag=True, help="Create a new Dataverse row and couple it.")
@click.option("--sync", "sync_choice", type=click.Choice(["to-dataverse", "from-dataverse", "none"]), default=None,
              help="Synchronize after coupling (default: in the mapping's direction, to-dataverse when bidirectional).")
@json_option
@click.pass_context
@_fail_cleanly
def couple_command(ctx: click.Context, mapping_name: str, bc_key: str, dataverse_id: str | None,
                   dataverse_name: str | None, create_new: bool, sync_choice: str | None, as_json: bool) -> None:
    """Set Up Coupling for one BC record (BC_KEY: its number or id)."""
    if sum(x is not None and x is not False for x in (dataverse_id, dataverse_name, create_new or None)) != 1:
        raise Failure("give exactly one of --dataverse-id, --dataverse-name, --create-new")
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        if sync_choice is None:
            sync: Direction | None = (Direction.FROM_INTEGRATION if mapping.direction is Direction.FROM_INTEGRATION
                                      else Direction.TO_INTEGRATION)
        else:
            sync = None if sync_choice == "none" else DIRECTIONS[sync_choice]
        if create_new and sync is Direction.FROM_INTEGRATION:
            raise Failure("--create-new synchronizes from Business Central; it cannot be combined with "
                          "--sync from-dataverse")
        outcome = couple(cx, mapping, bc_key, dataverse_id=dataverse_id, dataverse_name=dataverse_name,
                         create_new=create_new, sync=sync)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


def _keys_or_all(keys: tuple[str, ...], all_records: bool) -> list[str] | None:
    if bool(keys) == all_records:
        raise Failure("give BC keys or --all (not both)")
    return None if all_records else list(keys)


@main.command("create-in-dataverse")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("keys", nargs=-1)
@click.option("--all", "all_records", is_flag=True, help="Every record of the BC entity.")
@json_option
@click.pass_context
@_fail_cleanly
def create_in_dataverse_command(ctx: click.Context, mapping_name: str, keys: tuple[str, ...], all_records: bool,
                                as_json: bool) -> None:
    """Create Dataverse rows for BC records and couple them (coupled records are skipped)."""
    selected = _keys_or_all(keys, all_records)
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        records = (cx.bc.rows(mapping.bc_entity, select=bc_select(mapping)) if selected is None
                   else bc_records(cx, mapping, selected, bc_select(mapping)))
        with _progress(as_json, f"creating {mapping.name} rows in Dataverse", None if selected is None
                       else len(selected)) as advance:
            outcome = create_in_dataverse(cx, mapping, records, progress=advance)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("sync")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("keys", nargs=-1, required=True)
@click.option("--direction", type=click.Choice(["to-dataverse", "from-dataverse"]), default=None)
@json_option
@click.pass_context
@_fail_cleanly
def sync_command(ctx: click.Context, mapping_name: str, keys: tuple[str, ...], direction: str | None,
                 as_json: bool) -> None:
    """Synchronize Now: one or several coupled BC records."""
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        with _progress(as_json, f"synchronizing {mapping.name}", len(keys)) as advance:
            outcome = synchronize_now(cx, mapping, list(keys), DIRECTIONS[direction] if direction else None,
                                      progress=advance)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("sync-from-dataverse")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("dataverse_id")
@json_option
@click.pass_context
@_fail_cleanly
def sync_from_dataverse_command(ctx: click.Context, mapping_name: str, dataverse_id: str, as_json: bool) -> None:
    """Synchronize one Dataverse row to BC, creating and coupling the BC record when the mapping allows it."""
    with _connector(ctx) as cx:
        outcome = synchronize_from_dataverse(cx, cx.mapping(mapping_name), dataverse_id)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("uncouple")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("keys", nargs=-1)
@click.option("--all", "all_records", is_flag=True, help="Remove every coupling of the mapping.")
@json_option
@click.pass_context
@_fail_cleanly
def uncouple_command(ctx: click.Context, mapping_name: str, keys: tuple[str, ...], all_records: bool,
                     as_json: bool) -> None:
    """Delete Coupling: for BC records, or all couplings of a mapping (resets this company's id on the rows)."""
    selected = _keys_or_all(keys, all_records)
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        with _progress(as_json, f"uncoupling {mapping.name}", None) as advance:
            outcome = uncouple(cx, mapping, selected, progress=advance)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("match-couple")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("keys", nargs=-1)
@click.option("--create-new/--no-create-new", default=None,
              help="Create the unmatched records in Dataverse (default: the mapping's Create New in Case of No Match).")
@click.option("--sync-after/--no-sync-after", default=None,
              help="Synchronize the coupled pairs (default: the mapping's Synch. After Match-Based Coupling).")
@click.option("--dry-run", is_flag=True, help="Print what would be coupled or created; change nothing.")
@json_option
@click.pass_context
@_fail_cleanly
def match_couple_command(ctx: click.Context, mapping_name: str, keys: tuple[str, ...], create_new: bool | None,
                         sync_after: bool | None, dry_run: bool, as_json: bool) -> None:
    """Match-Based Coupling: the named BC records, or all uncoupled ones in the mapping's table filter."""
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        records = (bc_records(cx, mapping, list(keys), bc_select(mapping)) if keys
                   else cx.bc.rows(mapping.bc_entity, select=bc_select(mapping), filter=mapping.table_filter))
        with _progress(as_json, f"matching {mapping.name}", len(keys) or None) as advance:
            outcome = match_couple(cx, mapping, records, create_new=create_new, sync_after=sync_after,
                                   dry_run=dry_run, progress=advance)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("export")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
@_fail_cleanly
def export_command(ctx: click.Context, mapping_name: str, path: Path, as_json: bool) -> None:
    """Write a mapping's BC records to FILE (.csv or .xlsx): the "Open in Excel" step."""
    with _connector(ctx) as cx:
        count = bulk_import.export(cx, cx.mapping(mapping_name), path)
    _emit(as_json, {"file": str(path), "records": count}, lambda: out.print(f"wrote {count} records to {path}"))


@main.command("import")
@click.argument("mapping_name", metavar="MAPPING")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and print what would be imported and coupled; change nothing.")
@json_option
@click.pass_context
@_fail_cleanly
def import_command(ctx: click.Context, mapping_name: str, path: Path, dry_run: bool, as_json: bool) -> None:
    """Bulk-insert FILE's rows into Dataverse (company id, type codes), then match-based coupling."""
    with _connector(ctx) as cx:
        outcome = bulk_import.import_file(cx, cx.mapping(mapping_name), path, dry_run=dry_run)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


@main.command("run")
@click.option("--mapping", "mapping_names", multiple=True, help="Only this mapping (repeatable); default: all.")
@click.option("--dry-run", is_flag=True, help="Print what would be inserted, modified, skipped or failed; change nothing.")
@json_option
@click.pass_context
@_fail_cleanly
def run_command(ctx: click.Context, mapping_names: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Scheduled synchronization: every mapping in dependency order, To pass then From pass."""
    with _connector(ctx) as cx:
        with _progress(as_json, "synchronizing", None) as advance:
            outcome = schedule.run(cx, list(mapping_names) or None, dry_run=dry_run, progress=advance)
        payload = _outcome_payload(outcome)
    _emit(as_json, payload, lambda: _print_outcome(outcome))


# -- logs -----------------------------------------------------------------------------------------


def _coupling_row(c: Coupling) -> dict[str, Any]:
    return {"id": c.id, "bc_entity": c.bc_entity, "bc_id": c.bc_id, "dataverse_table": c.dataverse_table,
            "dataverse_id": c.dataverse_id, "skipped": c.skipped, "pending": c.pending,
            "last_result_to": c.last_result_to.value if c.last_result_to else None,
            "last_result_from": c.last_result_from.value if c.last_result_from else None,
            "last_synced_bc_modified": c.last_synced_bc_modified,
            "last_synced_dataverse_modified": c.last_synced_dataverse_modified}


@main.command("couplings")
@click.argument("mapping_name", metavar="MAPPING")
@json_option
@click.pass_context
@_fail_cleanly
def couplings_command(ctx: click.Context, mapping_name: str, as_json: bool) -> None:
    """The coupled pairs of a mapping."""
    with _connector(ctx) as cx:
        mapping = cx.mapping(mapping_name)
        with cx.state.session() as session:
            if mapping.kind is MappingKind.OPTION:
                options = [{"id": o.id, "bc_id": o.bc_id, "bc_code": o.bc_code, "option_value": o.option_value,
                            "option_label": o.option_label} for o in session.scalars(
                    select(OptionCoupling).where(OptionCoupling.mapping_name == mapping.name)
                    .order_by(OptionCoupling.id))]
                table = Table("Id", f"BC {bc_entity(mapping.bc_entity).caption}", "Option value", "Label")
                for o in options:
                    table.add_row(str(o["id"]), str(o["bc_code"]), str(o["option_value"]), str(o["option_label"]))
                _emit(as_json, options, lambda: out.print(table))
                return
            rows = [_coupling_row(c) for c in session.scalars(select(Coupling).where(
                Coupling.bc_entity == mapping.bc_entity, Coupling.dataverse_table == mapping.dataverse_table)
                .order_by(Coupling.id))]

    def human() -> None:
        table = Table("Id", f"BC {bc_entity(mapping.bc_entity).caption} id", f"Dataverse {mapping.dataverse_table} id",
                      "Last to", "Last from", "Skipped")
        for r in rows:
            table.add_row(str(r["id"]), r["bc_id"], r["dataverse_id"] + (" (pending)" if r["pending"] else ""),
                          r["last_result_to"] or "", r["last_result_from"] or "", "yes" if r["skipped"] else "")
        out.print(table)
    _emit(as_json, rows, human)


def _job_row(job: SyncJob) -> dict[str, Any]:
    return {"id": job.id, "mapping": job.mapping_name, "type": job.type.value, "direction": job.direction.value,
            "started_at": job.started_at, "finished_at": job.finished_at, "message": job.message,
            **{name: getattr(job, name) for name in ("inserted", "modified", "deleted", "unchanged", "skipped",
                                                      "failed", "coupled", "uncoupled")}}


@main.command("jobs")
@click.option("--mapping", "mapping_name", default=None)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@click.pass_context
@_fail_cleanly
def jobs_command(ctx: click.Context, mapping_name: str | None, limit: int, as_json: bool) -> None:
    """The Integration Synch. Job log, newest first."""
    with _connector(ctx) as cx:
        query = select(SyncJob)
        if mapping_name:
            query = query.where(SyncJob.mapping_name == cx.mapping(mapping_name).name)
        with cx.state.session() as session:
            rows = [_job_row(j) for j in session.scalars(
                query.order_by(SyncJob.started_at.desc(), SyncJob.id).limit(limit))]

    def human() -> None:
        table = Table("Started", "Mapping", "Type", "Direction", "Ins", "Mod", "Unch", "Skip", "Fail", "Coup",
                      "Uncoup", "Finished")
        for r in rows:
            table.add_row(r["started_at"].strftime("%Y-%m-%d %H:%M:%S"), r["mapping"], r["type"], r["direction"],
                          *(str(r[k]) for k in ("inserted", "modified", "unchanged", "skipped", "failed", "coupled",
                                                "uncoupled")),
                          "yes" if r["finished_at"] else "[yellow]no[/yellow]")
        out.print(table)
    _emit(as_json, rows, human)


@main.command("errors")
@click.argument("action", required=False, type=click.Choice(["list", "retry", "skip", "sync", "uncouple"]),
                default="list")
@click.argument("ids", nargs=-1, type=int)
@click.option("--mapping", "mapping_name", default=None)
@click.option("--all", "all_ids", is_flag=True, help="Every listed coupling (with retry, skip, sync, uncouple).")
@click.option("--direction", type=click.Choice(["to-dataverse", "from-dataverse"]), default=None,
              help="For sync of bidirectional mappings.")
@json_option
@click.pass_context
@_fail_cleanly
def errors_command(ctx: click.Context, action: str, ids: tuple[int, ...], mapping_name: str | None, all_ids: bool,
                   direction: str | None, as_json: bool) -> None:
    """Coupled Data Synchronization Errors: list failed or skipped couplings; retry, skip, sync or uncouple them."""
    with _connector(ctx) as cx:
        page = ErrorsPage(cx, cx.mapping(mapping_name) if mapping_name else None)
        if action == "list":
            if ids or all_ids:
                raise Failure("list takes no ids")
            rows = page.rows()

            def human() -> None:
                table = Table("Id", "Mapping", "BC id", "Dataverse id", "Skipped", "Last error")
                for r in rows:
                    table.add_row(str(r["id"]), r["mapping"], r["bc_id"], r["dataverse_id"],
                                  "yes" if r["skipped"] else "", r["message"] or "")
                out.print(table)
            _emit(as_json, rows, human)
            return
        if bool(ids) == all_ids:
            raise Failure(f"errors {action}: give coupling ids or --all (not both)")
        chosen = None if all_ids else list(ids)
        if action == "retry":
            payload: Any = {"retried": page.retry(chosen)}
        elif action == "skip":
            payload = {"skipped": page.skip(chosen)}
        elif action == "uncouple":
            payload = _outcome_payload(page.uncouple(chosen))
        else:
            payload = _outcome_payload(page.synchronize(chosen, DIRECTIONS[direction] if direction else None))
    _emit(as_json, payload, lambda: out.print(json.dumps(payload, default=_json_default)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
