"""Dataverse state: the org's tables in a SQL store, and the write rules Dataverse applies.

``DataverseBackend`` is the moto-style backend: it knows records, binds, deep inserts, computed
columns and server-maintained columns. It speaks Python values and raises ``DataverseError``;
HTTP lives in ``responses.py``.
"""

from __future__ import annotations

import functools
import re
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from werkzeug.datastructures import Headers

from ..clock import Clock
from ..counters import Counters
from ..odata import errors as engine
from ..odata.database import SessionProvider
from ..odata.query import ExpandItem, Page, QueryOptions, QueryRunner
from ..odata.schema import EntityType, Navigation, Schema
from ..odata.storage import Row, Store, drawn_key
from ..odata.transactions import Transactions
from ..odata.urlpath import KeyPredicate, parse_key, split_path
from ..odata.values import parse_guid, to_stored
from ..sandbox.fixtures import DEFAULT_LIBRARY, FixtureError, FixtureLibrary
from . import exceptions as exc
from .exceptions import DataverseError
from .functions import FUNCTIONS
from .option_values import OptionValues
from .security import (
    IMPERSONATION_PRIVILEGE,
    Access,
    SecurityModel,
    misc_privilege_denied,
    privilege_denied,
)
from .tables import bind_navigation, build_schema, computed_values, default_status, table_info

_SYSTEM_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "https://bc-dataverse-sandbox.invalid/dataverse/system-rows")
_READ_ONLY_MESSAGES = {"Retrieve", "RetrieveMultiple"} | {f.name for f in FUNCTIONS.values() if f.read_only}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the systemuser behind the token (application user for app tokens).

    ``access`` is what its security roles allow; None is the sandbox itself (seeding), unrestricted.
    """

    user_id: str
    business_unit_id: str | None
    access: Access | None = None


@dataclass
class Organization:
    organization_id: str
    name: str
    base_currency_id: str | None
    business_unit_id: str | None


def load_fixture(name: str, fixtures: FixtureLibrary = DEFAULT_LIBRARY) -> dict:
    return fixtures.load(name, "dataverse.json")


def load_customizations(name: str = "default", fixtures: FixtureLibrary = DEFAULT_LIBRARY) -> dict:
    filename = "dataverse-customizations.json"
    return fixtures.load(name, filename) if fixtures.has(name, filename) else {}


def _fixture_tables(data: dict, where: str) -> list[dict]:
    """The fixture's ``tables``, checked for shape before anything is written."""
    tables = data.get("tables", []) if isinstance(data, dict) else None
    if not isinstance(tables, list) or not all(
            isinstance(t, dict) and isinstance(t.get("set"), str) and isinstance(t.get("records", []), list)
            and all(isinstance(r, dict) for r in t.get("records", [])) for t in tables):
        raise FixtureError(f"{where}: 'tables' must be a list of "
                           '{"set": "<entity set>", "records": [{...}, ...]} objects')
    return tables


CACHED_CALLERS = 1024  # (appid, oid) pairs whose application user is remembered


class DataverseBackend:
    def __init__(self, db: Engine | str = "sqlite://", fixture: str = "default", *,
                 session: SessionProvider | None = None, fixtures: FixtureLibrary = DEFAULT_LIBRARY,
                 clock: Clock | None = None) -> None:
        """``db``: the engine Flask-SQLAlchemy made for the app (or a URL for a standalone store);
        ``session``: the app's request-scoped session provider (``odata.database.init_app``);
        ``fixtures``: where fixture sets are looked up by name."""
        self.fixture_name = fixture
        self.fixtures = fixtures
        data = load_fixture(fixture, fixtures)
        self.schema: Schema = build_schema(load_customizations(fixture, fixtures))
        self.store = Store(self.schema, db, session=session, clock=clock)
        self.option_values = OptionValues(self.schema, self.store)
        self._callers: dict[tuple[str | None, str | None], tuple[int, Caller | None]] = {}
        self.runner = QueryRunner(self.schema, self.store)
        self.transactions = Transactions(self.store)
        # Bumped whenever what this object keeps of the org's settings (its organization, the added
        # options) is rewritten, so other processes serving the same org read them again.
        self._settings = Counters(["settings"])
        self._settings_seen = 0
        self._settings_lock = threading.Lock()
        self._org_settings: dict[str, Any] = data.get("organization", {})
        if not isinstance(self._org_settings, dict):
            raise FixtureError(f"{fixture}/dataverse.json: 'organization' must be a JSON object")
        self.organization = Organization(  # until the organization row is read
            organization_id=self._org_settings.get("organizationid", str(uuid.uuid4())),
            name=self._org_settings.get("name", "Sandbox"),
            base_currency_id=None,
            business_unit_id=self._org_settings.get("business_unit"),
        )
        try:
            self.security = SecurityModel.from_fixture(data.get("security_roles", []))
        except (ValueError, KeyError, TypeError) as error:
            raise FixtureError(f"{fixture}/dataverse.json: security_roles: {error}") from None
        with self.store.read() as conn:
            empty = self.store.count(conn, self.entity("systemuser")) == 0
            self.option_values.apply(conn)
        if empty:
            self.seed(fixture, system_only=True)
        else:
            self._ensure_system_rows()

    # -- lookups ----------------------------------------------------------------------------
    def entity(self, name: str) -> EntityType:
        entity = self.schema.entity(name)
        if entity is None:
            raise KeyError(name)
        return entity

    def organization_row(self, conn: Connection) -> Row:
        """The org's settings as they are now (an admin may have updated them)."""
        table = self.store.table(self.entity("organization"))
        row = conn.execute(table.select().limit(1)).mappings().first()
        assert row is not None, "the organization row is written at start"
        return dict(row)

    def check_message(self, entity: EntityType, message: str) -> None:
        """Refuse a message the table does not support, as the platform does (0x80040800)."""
        if not table_info(entity).supports(message):
            raise exc.message_not_supported(message, entity.name)

    def caller_for_token(self, app_id: str | None, object_id: str | None) -> Caller | None:
        """The application user a token's ``appid``/``oid`` stand for (None: not a user of this org).

        Remembered while no transaction writes ``systemuser`` (the store's write generation), so a
        user that is changed, disabled or removed is looked up afresh on the next request."""
        key = (app_id, object_id)
        generation = self.store.generation("systemuser")
        cached = self._callers.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self.store.read() as conn:
            caller = self.caller_for_app(conn, app_id, object_id)
        if len(self._callers) >= CACHED_CALLERS:
            self._callers.clear()
        self._callers[key] = (generation, caller)
        return caller

    def caller_for_app(self, conn: Connection, app_id: str | None, object_id: str | None) -> Caller | None:
        users = self.store.table(self.entity("systemuser"))
        for column, value in (("applicationid", app_id), ("azureactivedirectoryobjectid", object_id)):
            if not value:
                continue
            row = conn.execute(users.select().where(users.c[column] == value.lower())).mappings().first()
            if row is not None:
                access = self.security.access_for(row["systemuserid"], row.get("accessmode") or 0)
                return Caller(row["systemuserid"], row.get("_businessunitid_value"), access)
        return None

    def impersonate(self, conn: Connection, caller: Caller, headers: Headers) -> Caller:
        """``MSCRMCallerID`` / ``CallerObjectId``: act as another user, if the caller may
        (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/impersonate-another-user-web-api)."""
        by_id, by_object = headers.get("MSCRMCallerID"), headers.get("CallerObjectId")
        if not by_id and not by_object:
            return caller
        if caller.access is not None and not caller.access.holds(IMPERSONATION_PRIVILEGE):
            raise misc_privilege_denied(caller.access, IMPERSONATION_PRIVILEGE, self.schema)
        users = self.store.table(self.entity("systemuser"))
        column, value = ("systemuserid", by_id) if by_id else ("azureactivedirectoryobjectid", by_object)
        row = conn.execute(users.select().where(users.c[column] == self.guid(str(value)))).mappings().first()
        if row is None:
            raise exc.not_found("systemuser", value)
        access = self.security.access_for(row["systemuserid"], row.get("accessmode") or 0)
        return Caller(row["systemuserid"], row.get("_businessunitid_value"), access)

    # -- reads: the protocol layer's only way to the rows ---------------------------------------
    def get(self, conn: Connection, entity: EntityType, key: str) -> Row | None:
        return self.store.get(conn, entity, key)

    def count(self, conn: Connection, entity: EntityType) -> int:
        return self.store.count(conn, entity)

    def current_version(self, conn: Connection) -> int:
        """The org's latest row version: where a change-tracking delta starts."""
        return self.store.current_version(conn)

    def check_query(self, entity: EntityType, select: list[str] | None = None,
                    expand: list[ExpandItem] | None = None) -> None:
        """Refuse unknown `$select`/`$expand` names before anything is read or written."""
        self.runner.check_select(entity, select)
        self.runner.check_expand(entity, expand or [])

    def query(self, conn: Connection, entity: EntityType, opts: QueryOptions, *, page_size: int,
              after: Row | None = None, count_cap: int | None = None) -> Page:
        """One page of an entity-set query (expanded navigations attached)."""
        return self.runner.run(conn, entity, opts, page_size=page_size, after=after, count_cap=count_cap)

    def expand(self, conn: Connection, entity: EntityType, rows: list[Row], expand: list[ExpandItem]) -> None:
        self.runner.expand(conn, entity, rows, expand)

    def changes_since(self, conn: Connection, entity: EntityType, since: int) -> tuple[int, list[Row], list[str]]:
        """(current version, rows changed after ``since`` in version order, keys deleted after it);
        ExpiredVersionStamp for a token from before the last reset (``check_change_token``)."""
        self.check_change_token(conn, since)
        table = self.store.table(entity)
        tomb = self.store.tombstones
        assert entity.version_property is not None
        now_version = self.store.current_version(conn)
        stmt = (table.select().where(table.c[entity.version_property] > since)
                .order_by(table.c[entity.version_property]))
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
        deleted = conn.execute(
            sa.select(tomb.c.key).where(tomb.c.entity == entity.name, tomb.c.version > since).order_by(tomb.c.version)
        ).scalars().all()
        return now_version, rows, list(deleted)

    # -- related records (navigation paths and $ref) ----------------------------------------------
    def related(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation) -> Row | None:
        """The record a single-valued navigation of ``row`` points at (None when unset)."""
        target = self.entity(nav.target)
        matches = not nav.discriminator or row.get(nav.discriminator) == nav.discriminator_value
        return self.store.get(conn, target, row[nav.via]) if row.get(nav.via) and matches else None

    def _related_conditions(self, entity: EntityType, row: Row, nav: Navigation) -> list[Any]:
        table = self.store.table(self.entity(nav.target))
        conds = [table.c[nav.via] == row[entity.key]]
        if nav.discriminator:
            conds.append(table.c[nav.discriminator] == nav.discriminator_value)
        return conds

    def related_page(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation, opts: QueryOptions,
                     *, page_size: int, after: Row | None = None, count_cap: int | None = None) -> Page:
        """One page of the records a collection-valued navigation of ``row`` holds."""
        return self.runner.run(conn, self.entity(nav.target), opts, conditions=self._related_conditions(entity, row, nav),
                               page_size=page_size, after=after, count_cap=count_cap)

    def related_count(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation) -> int:
        page = self.runner.run(conn, self.entity(nav.target), QueryOptions(count=True),
                               conditions=self._related_conditions(entity, row, nav), page_size=1)
        return page.count or 0

    def related_rows(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation) -> list[Row]:
        """Every record a collection-valued navigation of ``row`` holds (for `$ref` listings)."""
        table = self.store.table(self.entity(nav.target))
        return [dict(r) for r in conn.execute(table.select().where(table.c[nav.via] == row[entity.key])).mappings()]

    def associate(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation, ref_row: Row, *,
                  caller: Caller) -> None:
        """Add ``ref_row`` to the collection ``nav`` of ``row`` (its lookup now points at ``row``)."""
        target = self.entity(nav.target)
        self.update(conn, target, ref_row[target.key], {}, caller=caller)  # stamps modifiedby/modifiedon
        self.store.update(conn, target, ref_row[target.key], _link(entity, row, nav))

    def disassociate(self, conn: Connection, entity: EntityType, row: Row, nav: Navigation, ref: str) -> None:
        """Remove the record ``ref`` (an id or an entity URL) from the collection ``nav`` of ``row``."""
        target = self.entity(nav.target)
        if "(" in ref:
            _, ref_row = self.resolve_reference(conn, ref)
        else:
            found = self.store.get(conn, target, self.guid(ref))
            ref_row = found if found is not None else {}
        if not ref_row or ref_row.get(nav.via) != row[entity.key]:
            raise exc.not_found(target.name, ref)
        self.store.update(conn, target, ref_row[target.key], {nav.via: None})

    def primary_names(self, conn: Connection, entity: EntityType, keys: set[str]) -> dict[str, str]:
        """Primary-name values of the given records (formatted values of lookups), one query."""
        if not entity.primary_name or not keys:
            return {}
        table = self.store.table(entity)
        stmt = sa.select(table.c[entity.key], table.c[entity.primary_name]).where(table.c[entity.key].in_(keys))
        return {key: name for key, name in conn.execute(stmt)}

    def currency_symbols(self, conn: Connection, keys: set[str]) -> dict[str, str]:
        """Currency symbols by transactioncurrency id (formatted values of money columns)."""
        currency = self.schema.entity("transactioncurrency")
        if currency is None or not keys:
            return {}
        table = self.store.table(currency)
        stmt = sa.select(table.c.transactioncurrencyid, table.c.currencysymbol).where(
            table.c.transactioncurrencyid.in_(keys))
        return {key: symbol for key, symbol in conn.execute(stmt)}

    def authorize(self, caller: Caller | None, verb: str, entity: EntityType) -> None:
        """Raise the PrivilegeDenied 403 unless the caller's roles grant ``verb`` on ``entity``."""
        if caller is None or caller.access is None or caller.access.allows(verb, entity):
            return
        raise privilege_denied(caller.access, verb, entity, self.schema)

    def find_by_key(self, conn: Connection, entity: EntityType, key: KeyPredicate) -> Row | None:
        if key.named:
            values = {}
            for name, value in key.named.items():
                prop = entity.property(name)
                if prop is None or prop.hidden:
                    raise DataverseError(400, exc.PROPERTY_NOT_FOUND,
                                         f"Could not find a property named '{name}' on type "
                                         f"'{self.schema.namespace}.{entity.name}'.")
                values[name] = self._key_value(entity, name, value)
            if list(values) == [entity.key]:
                return self.store.get(conn, entity, values[entity.key])
            if not any(set(values) == set(k.properties) for k in entity.alternate_keys):
                raise DataverseError(
                    400, exc.INVALID_ARGUMENT,
                    f"The key attribute(s) {', '.join(values)} do not form an alternate key of '{entity.name}'.")
            return self.store.find(conn, entity, values)
        if key.single is None:  # `accounts(null)`: a key segment without a value
            raise DataverseError(400, exc.INVALID_ARGUMENT, "Bad Request - Error in query syntax: the key is null.")
        return self.store.get(conn, entity, self.guid(key.single))

    def _key_value(self, entity: EntityType, name: str, value: Any) -> Any:
        prop = entity.property(name)
        assert prop is not None
        if prop.type.name == "Guid":
            return self.guid(str(value))
        try:
            return to_stored(prop, value)
        except engine.InvalidValue as error:
            raise DataverseError(400, exc.INVALID_ARGUMENT, error.message) from error

    @staticmethod
    def guid(text: str) -> str:
        try:
            return parse_guid(text)
        except engine.InvalidValue as error:
            raise DataverseError(
                400, exc.INVALID_ARGUMENT, f"Bad Request - Error in query syntax: '{text}' is not a valid GUID."
            ) from error

    # -- binds --------------------------------------------------------------------------------
    def resolve_reference(self, conn: Connection, url: str) -> tuple[EntityType, Row]:
        """Resolve an ``@odata.bind`` / ``@odata.id`` value to the referenced record."""
        if not isinstance(url, str) or not url:
            raise exc.bad_request("The @odata.bind value must be a URI string.")
        set_name, raw_key = _reference_segment(url)
        target = self.schema.by_set(set_name)
        if target is None:
            raise exc.segment_not_found(set_name)
        try:
            key = _reference_key(raw_key)
        except engine.ODataError as error:
            raise exc.bad_request(f"Invalid key in @odata.bind: '{url}'.") from error
        row = self.find_by_key(conn, target, key)
        if row is None:
            raise exc.not_found(target.name, raw_key)
        return target, row

    def _bind_navigation(self, entity: EntityType, name: str, target: EntityType) -> Navigation:
        nav = bind_navigation(entity, name, target.name)
        if nav is None:
            raise _undeclared_bind(name)
        if nav.target != target.name:
            raise exc.bad_request(f"The navigation property '{name}' cannot be bound to a '{target.name}' record.")
        return nav

    # -- writes -----------------------------------------------------------------------------
    def prepare(
        self, conn: Connection, entity: EntityType, body: Any, *, creating: bool, caller: Caller,
        existing: Row | None = None,
    ) -> tuple[dict[str, Any], list[tuple[Navigation, Any]]]:
        """Validate a JSON body into column values; returns (values, deferred collection work)."""
        if not isinstance(body, dict):
            raise exc.bad_request("The request body must be a JSON object.")
        values: dict[str, Any] = {}
        deferred: list[tuple[Navigation, Any]] = []
        for name, value in body.items():
            if name.startswith("@odata.") or name.startswith("@"):
                continue
            if name.endswith("@odata.bind"):
                nav_name = name[: -len("@odata.bind")]
                self._apply_bind(conn, entity, nav_name, value, values, deferred)
                continue
            if "@" in name:
                continue  # instance annotations (FormattedValue…) sent back by clients
            nav = entity.navigation(name)
            if nav is not None:
                if value is None and not nav.collection:
                    self._set_lookup(entity, nav, None, values)
                elif nav.collection and isinstance(value, list):
                    deferred.append((nav, value))
                elif not nav.collection and isinstance(value, dict):
                    target = self.entity(nav.target)
                    child = self.create(conn, target, value, caller=caller)
                    self._set_lookup(entity, nav, child[target.key], values)
                else:
                    raise exc.bad_request(f"Invalid value for navigation property '{name}'.")
                continue
            prop = entity.property(name)
            if prop is None or prop.hidden:
                raise DataverseError(
                    400, exc.PROPERTY_NOT_FOUND,
                    f"An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid "
                    f"property '{name}' was found in entity '{self.schema.namespace}.{entity.name}'. ---> "
                    f"Microsoft.OData.ODataException: Does not support untyped value in non-open type.")
            if prop.read_only:
                if prop.name == entity.key and creating:
                    pass
                else:
                    continue  # Dataverse ignores values for columns that are not valid for create/update
            if name == entity.key and not creating:
                continue
            try:
                values[name] = to_stored(prop, value)
            except engine.InvalidValue as error:
                raise exc.from_engine(error, entity) from error
        return values, deferred

    def _apply_bind(self, conn, entity, nav_name, value, values, deferred) -> None:
        if isinstance(value, list):
            nav = entity.navigation(nav_name)
            if nav is None or not nav.collection:
                raise exc.bad_request(f"The navigation property '{nav_name}' is not collection-valued.")
            refs = [self.resolve_reference(conn, v) for v in value]
            deferred.append((nav, [("bind", r) for r in refs]))
            return
        if value is None:
            nav = entity.navigation(nav_name)
            aliases = table_info(entity).bind_aliases.get(nav_name)
            if nav is None and aliases:
                for alias in aliases.values():
                    self._set_lookup(entity, entity.navigation(alias), None, values)
                return
            if nav is None:
                raise exc.bad_request(f"An undeclared property '{nav_name}' was found in the payload.")
            self._set_lookup(entity, nav, None, values)
            return
        if entity.navigation(nav_name) is None and not table_info(entity).bind_aliases.get(nav_name):
            raise _undeclared_bind(nav_name)  # the payload is rejected before the reference is looked up
        target, row = self.resolve_reference(conn, value)
        nav = self._bind_navigation(entity, nav_name, target)
        self._set_lookup(entity, nav, row[target.key], values)

    def _set_lookup(self, entity: EntityType, nav: Navigation | None, key: str | None, values: dict) -> None:
        if nav is None:
            return
        if nav.collection or nav.read_only:
            raise exc.bad_request(f"The navigation property '{nav.name}' cannot be set on '{entity.name}'.")
        values[nav.via] = key
        if nav.discriminator:
            values[nav.discriminator] = nav.discriminator_value if key else None

    def _server_columns(self, conn: Connection, entity: EntityType, values: dict, caller: Caller, *,
                        creating: bool, existing: Row | None) -> None:
        if entity.property("_modifiedby_value"):
            values["_modifiedby_value"] = caller.user_id
        if creating:
            if entity.property("_createdby_value"):
                values["_createdby_value"] = caller.user_id
            owner = entity.property("_ownerid_value")
            if owner and not values.get("_ownerid_value"):
                values["_ownerid_value"] = caller.user_id
                if owner.lookup_type_column:
                    values[owner.lookup_type_column] = "systemuser"
            if entity.property("_owningbusinessunit_value") and caller.business_unit_id:
                values.setdefault("_owningbusinessunit_value", caller.business_unit_id)
        owner = entity.property("_ownerid_value")
        if owner and "_ownerid_value" in values:
            owner_type = owner.lookup_type_column
            kind = values.get(owner_type) if owner_type else "systemuser"
            if entity.property("_owninguser_value"):
                values["_owninguser_value"] = values["_ownerid_value"] if kind == "systemuser" else None
            if entity.property("_owningteam_value"):
                values["_owningteam_value"] = values["_ownerid_value"] if kind == "team" else None
        self._state_and_status(entity, values, creating=creating, existing=existing)
        merged = {**(existing or {}), **values}
        values.update(computed_values(entity, merged))
        self._money(conn, entity, values, merged)

    def _system_required(self, entity: EntityType, values: dict[str, Any], *, creating: bool) -> None:
        """SystemRequired columns need a value: on create (their default if they have one), and an
        update cannot clear them. ApplicationRequired is left to apps, as the platform does
        (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/entity-attribute-metadata#column-requirement-level).
        """
        for attribute, level in table_info(entity).required_levels.items():
            if level != "SystemRequired":
                continue
            prop = entity.property(attribute) or entity.property(f"_{attribute}_value")
            assert prop is not None, f"{entity.name}.{attribute} is declared"
            if creating and values.get(prop.name) is None and prop.default is not None:
                values[prop.name] = prop.default
            if (creating or prop.name in values) and values.get(prop.name) is None:
                raise DataverseError(
                    400, exc.REQUIRED_FIELD_MISSING,
                    f"Required field missing. The column '{attribute}' of '{entity.name}' is SystemRequired and "
                    "has no value.")

    def _state_and_status(self, entity: EntityType, values: dict, *, creating: bool, existing: Row | None) -> None:
        state_prop, status_prop = entity.property("statecode"), entity.property("statuscode")
        if state_prop is None or status_prop is None or status_prop.options is None:
            return
        state = values.get("statecode", existing.get("statecode") if existing else None)
        if state is None:
            state = state_prop.default if state_prop.default is not None else 0
            values["statecode"] = state
        status = values.get("statuscode")
        if status is None and ("statecode" in values or creating):
            values["statuscode"] = default_status(status_prop.options, state)
        elif status is not None:
            option = next((o for o in status_prop.options.options if o.value == status), None)
            if option is not None and option.state is not None:
                if "statecode" in values and values["statecode"] != option.state:
                    raise DataverseError(
                        400, exc.INVALID_ARGUMENT,
                        f"{status} is not a valid status code for state code {entity.name}State.{values['statecode']}")
                values["statecode"] = option.state

    def _money(self, conn: Connection, entity: EntityType, values: dict, merged: dict) -> None:
        money = [p for p in entity.properties if p.kind == "Money" and not p.read_only]
        if not money or not entity.property("_transactioncurrencyid_value"):
            return
        if not any(p.name in values for p in money) and "_transactioncurrencyid_value" not in values:
            return
        currency_id = merged.get("_transactioncurrencyid_value") or self.organization.base_currency_id
        if currency_id and not merged.get("_transactioncurrencyid_value"):
            values["_transactioncurrencyid_value"] = currency_id
        rate = Decimal(1)
        if currency_id:
            currency = self.store.get(conn, self.entity("transactioncurrency"), currency_id)
            if currency and currency.get("exchangerate"):
                rate = Decimal(str(currency["exchangerate"]))
        if entity.property("exchangerate"):
            values["exchangerate"] = rate
        for prop in money:
            base = entity.property(f"{prop.name}_base")
            if base is not None and merged.get(prop.name) is not None:
                values[base.name] = Decimal(str(merged[prop.name])) / rate

    def create(self, conn: Connection, entity: EntityType, body: Any, *, caller: Caller,
               key_values: dict[str, Any] | None = None) -> Row:
        self.check_message(entity, "Create")
        self.authorize(caller, "Create", entity)
        values, deferred = self._new_row(conn, entity, body, caller, key_values)
        (row,) = self._insert(conn, entity, [values])
        self._created(conn, entity, row, deferred, caller)
        return row

    def create_many(self, conn: Connection, entity: EntityType, bodies: list[Any], *, caller: Caller) -> list[Row]:
        """CreateMultiple: what ``create`` does for each body in turn, with the rows written a block at a time
        (one statement for many rows). A body that could depend on rows of the same block (a bind to this
        table, a nested record) first writes the block, then goes on its own, so it sees every row before
        it as one-by-one creates would; an error is the one the first refused body would raise."""
        self.check_message(entity, "Create")
        self.authorize(caller, "Create", entity)
        rows: list[Row] = []
        pending: list[tuple[dict[str, Any], list[tuple[Navigation, Any]]]] = []

        def write_block() -> None:
            if pending:
                for row, (_, deferred) in zip(self._insert(conn, entity, [v for v, _ in pending]), pending,
                                              strict=True):
                    self._created(conn, entity, row, deferred, caller)
                    rows.append(row)
                pending.clear()

        for body in bodies:
            if self._writes_alone(entity, body):
                write_block()
                rows.append(self.create(conn, entity, body, caller=caller))
                continue
            try:
                pending.append(self._new_row(conn, entity, body, caller, None))
            except Exception:
                write_block()  # an earlier body's refusal comes first
                raise
        write_block()
        return rows

    def _writes_alone(self, entity: EntityType, body: Any) -> bool:
        """A body whose create may read rows written just before it in the same request, or write others."""
        if entity.name == "uomschedule" or not isinstance(body, dict):
            return True
        for name, value in body.items():
            if isinstance(value, dict | list) and entity.navigation(name.split("@")[0]) is not None:
                return True
            if name.endswith("@odata.bind") and isinstance(value, str) and entity.set_name in value:
                return True
        return False

    def _new_row(self, conn: Connection, entity: EntityType, body: Any, caller: Caller,
                 key_values: dict[str, Any] | None) -> tuple[dict[str, Any], list[tuple[Navigation, Any]]]:
        """A create's column values, server columns and defaults included, and its deferred collection work."""
        values, deferred = self.prepare(conn, entity, body, creating=True, caller=caller)
        for name, value in (key_values or {}).items():
            values.setdefault(name, value)
        if not values.get(entity.key):
            values[entity.key] = drawn_key()
        for prop in entity.properties:  # Yes/No and choice columns start at their declared default
            if prop.default is not None and not prop.hidden and prop.name not in values:
                values[prop.name] = prop.default
        self._server_columns(conn, entity, values, caller, creating=True, existing=None)
        self._system_required(entity, values, creating=True)
        return values, deferred

    def _insert(self, conn: Connection, entity: EntityType, rows: list[dict[str, Any]]) -> list[Row]:
        try:
            return self.store.insert_rows(conn, entity, rows)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity) from error

    def _created(self, conn: Connection, entity: EntityType, row: Row, deferred: list, caller: Caller) -> None:
        if entity.name == "uomschedule":
            self._create_base_unit(conn, row, caller)
        self._run_deferred(conn, entity, row, deferred, caller)

    def _create_base_unit(self, conn: Connection, schedule: Row, caller: Caller) -> None:
        """A new unit group comes with its base unit, named after ``baseuomname``
        (https://learn.microsoft.com/dynamics365/sales/create-unit-groups-add-units-that-group).
        Its id derives from the group's, so a fixture can refer to it."""
        unit = self.entity("uom")
        unit_id = str(uuid.uuid5(uuid.UUID(schedule["uomscheduleid"]), "base unit"))
        self.create(conn, unit, {"name": schedule["baseuomname"], "quantity": 1,
                                 "uomscheduleid@odata.bind": f"/uomschedules({schedule['uomscheduleid']})"},
                    caller=caller, key_values={"uomid": unit_id, "isschedulebaseuom": True})

    def _run_deferred(self, conn: Connection, entity: EntityType, row: Row, deferred: list, caller: Caller) -> None:
        for nav, items in deferred:
            target = self.entity(nav.target)
            link = _link(entity, row, nav)
            for item in items:
                if isinstance(item, tuple) and item[0] == "bind":
                    _, (ref_entity, ref_row) = item
                    self.store.update(conn, ref_entity, ref_row[ref_entity.key], link)
                elif isinstance(item, dict):
                    self.create(conn, target, item, caller=caller, key_values=link)
                else:
                    raise exc.bad_request(f"Invalid value in collection '{nav.name}'.")

    def update(self, conn: Connection, entity: EntityType, key: str, body: Any, *, caller: Caller,
               if_version: int | None = None, existing: Row | None = None) -> Row:
        """``existing``: the row as this write transaction read it already (an upsert found it)."""
        existing, values, deferred = self._update_values(conn, entity, key, body, caller, existing)
        return self._write_update(conn, entity, key, existing, values, deferred, caller, if_version)

    def _update_values(self, conn: Connection, entity: EntityType, key: str, body: Any, caller: Caller,
                       existing: Row | None) -> tuple[Row, dict[str, Any], list[tuple[Navigation, Any]]]:
        """An update's checks and column values, server columns included: (the row, values, deferred work)."""
        self.check_message(entity, "Update")
        self.authorize(caller, "Write", entity)
        if existing is None:
            existing = self.store.get(conn, entity, key)
        if existing is None:
            raise exc.not_found(entity.name, key)
        values, deferred = self.prepare(conn, entity, body, creating=False, caller=caller, existing=existing)
        _drop_create_only(entity, values)
        self._server_columns(conn, entity, values, caller, creating=False, existing=existing)
        self._system_required(entity, values, creating=False)
        return existing, values, deferred

    def _write_update(self, conn: Connection, entity: EntityType, key: str, existing: Row, values: dict[str, Any],
                      deferred: list[tuple[Navigation, Any]], caller: Caller, if_version: int | None) -> Row:
        try:
            row = self.store.update(conn, entity, key, values, if_version=if_version, current=existing)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity) from error
        self._run_deferred(conn, entity, row, deferred, caller)
        return row

    def upsert(self, conn: Connection, entity: EntityType, key: KeyPredicate, body: Any, *, caller: Caller,
               if_match: str | None = None, if_none_match: str | None = None) -> tuple[Row, bool]:
        """Update the record ``key`` names, or create it with that key: (row, created).

        The one upsert path: PATCH to a key, UpsertMultiple and UpdateMultiple targets, alternate keys.
        ``If-Match`` (any value) forbids the create, ``If-None-Match: *`` forbids the update
        (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/webapi/perform-conditional-operations-using-web-api).
        """
        row = self.find_by_key(conn, entity, key)
        if row is not None:
            return self._update_found(conn, entity, key, body, row, caller=caller, if_match=if_match,
                                      if_none_match=if_none_match), False
        key_values = self._upsert_key_values(entity, key, if_match)
        return self.create(conn, entity, body, caller=caller, key_values=key_values), True

    def upsert_many(self, conn: Connection, entity: EntityType, targets: list[tuple[KeyPredicate, Any]], *,
                    caller: Caller, if_match: str | None = None,
                    if_matches: list[str | None] | None = None) -> list[tuple[Row, bool]]:
        """UpsertMultiple and UpdateMultiple: ``upsert`` for each target in turn. The rows named by id are
        read in one query; consecutive creates, and consecutive plain updates (no alternate key changed, no
        collection work, an ``If-Match`` the row holds), are written a block at a time, and a block is
        written before anything else (the other kind, a repeated key, a body that may read it), so each
        target sees every earlier one as one-by-one upserts would. ``if_matches`` gives each target its
        own ``If-Match`` (a ``$batch`` of PATCHes), else ``if_match`` is every target's."""
        ids = [self.guid(key.single) for key, _ in targets if not key.named and key.single is not None]
        known = self.store.get_many(conn, entity, ids)
        seen: set[str] = set()
        results: dict[int, tuple[Row, bool]] = {}
        creates: list[tuple[int, dict[str, Any], list[tuple[Navigation, Any]]]] = []
        updates: list[tuple[int, str, dict[str, Any], Row]] = []

        def write_block() -> None:  # each block is taken first: a block that fails is not written twice
            if creates:
                block, creates[:] = creates[:], []
                inserted = self._insert(conn, entity, [values for _, values, _ in block])
                for (index, _, deferred), row in zip(block, inserted, strict=True):
                    self._created(conn, entity, row, deferred, caller)
                    results[index] = (row, True)
            if updates:
                changes, updates[:] = updates[:], []
                written = self.store.update_rows(conn, entity, [(key, values, row) for _, key, values, row in changes])
                for (index, *_), row in zip(changes, written, strict=True):
                    results[index] = (row, False)

        for index, (key, body) in enumerate(targets):
            if if_matches is not None:
                if_match = if_matches[index]
            key_id = None if key.named or key.single is None else self.guid(key.single)
            row = known.get(key_id) if key_id is not None else None
            try:
                if row is not None and key_id not in seen:
                    if creates:
                        write_block()
                    body, version = self._found_update(entity, key, body, if_match, if_none_match=None)
                    stored_key = row[entity.key]
                    if version is not None and version != row.get(entity.version_property or ""):
                        write_block()  # refused as it would be alone (the version does not match)
                        results[index] = (self.update(conn, entity, stored_key, body, caller=caller,
                                                      if_version=version, existing=row), False)
                    else:
                        existing, values, deferred = self._update_values(conn, entity, stored_key, body, caller, row)
                        if deferred or self.store.changes_alternate_key(entity, existing, values):
                            write_block()
                            results[index] = (self._write_update(conn, entity, stored_key, existing, values,
                                                                 deferred, caller, version), False)
                        else:
                            updates.append((index, stored_key, values, existing))
                elif key_id is None or key_id in seen or self._writes_alone(entity, body):
                    write_block()
                    results[index] = self.upsert(conn, entity, key, body, caller=caller, if_match=if_match)
                else:
                    if updates:
                        write_block()
                    if not creates:
                        self.check_message(entity, "Create")
                        self.authorize(caller, "Create", entity)
                    key_values = self._upsert_key_values(entity, key, if_match)
                    creates.append((index, *self._new_row(conn, entity, body, caller, key_values)))
            except Exception:
                write_block()  # an earlier target's refusal comes first
                raise
            if key_id is not None:
                seen.add(key_id)
        write_block()
        return [results[index] for index in range(len(targets))]

    def _found_update(self, entity: EntityType, key: KeyPredicate, body: Any, if_match: str | None,
                      if_none_match: str | None) -> tuple[Any, int | None]:
        """An upsert that found its row updates it: the body to write and the version ``If-Match`` holds it to."""
        if if_none_match == "*":
            raise DataverseError(412, exc.DUPLICATE_RECORD, "A record with matching key values already exists.")
        version = None
        if if_match and if_match != "*":
            version = parse_etag(if_match)
            if version is None:
                raise DataverseError(412, exc.CONCURRENCY_VERSION_MISMATCH,
                                     "The version of the existing record doesn't match the RowVersion "
                                     "property provided.")
        if key.named and isinstance(body, dict):  # keys cannot change through themselves
            body = {k: v for k, v in body.items() if k not in key.named}
        return body, version

    def _update_found(self, conn: Connection, entity: EntityType, key: KeyPredicate, body: Any, row: Row, *,
                      caller: Caller, if_match: str | None, if_none_match: str | None) -> Row:
        body, version = self._found_update(entity, key, body, if_match, if_none_match)
        return self.update(conn, entity, row[entity.key], body, caller=caller, if_version=version, existing=row)

    def _upsert_key_values(self, entity: EntityType, key: KeyPredicate, if_match: str | None) -> dict[str, Any]:
        """The key columns of the record an upsert creates (``If-Match`` forbids the create)."""
        if if_match:
            raise exc.not_found(entity.name, _key_text(key))
        if key.named:
            return {name: self._key_value(entity, name, value) for name, value in key.named.items()}
        return {entity.key: self.guid(key.single or "")}

    def delete(self, conn: Connection, entity: EntityType, key: str, *, if_version: int | None = None,
               caller: Caller | None = None) -> Row:
        self.check_message(entity, "Delete")
        self.authorize(caller, "Delete", entity)
        try:
            return self.store.delete(conn, entity, key, if_version=if_version)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity) from error

    # -- change tracking ----------------------------------------------------------------------
    def check_change_token(self, conn: Connection, version: int) -> None:
        """Refuse a change-tracking token the org no longer answers for: one issued before the last
        reset (its changes are gone) or one this org never issued. Dataverse answers a data version
        past its retention with ExpiredVersionStamp ("If unprocessed changes are older than the
        configured value, the system throws an exception",
        https://learn.microsoft.com/power-apps/developer/data-platform/use-change-tracking-synchronize-data-external-systems);
        the client has to start over with a full read."""
        if not self.store.tracking_floor(conn) <= version <= self.store.current_version(conn):
            raise DataverseError(400, exc.EXPIRED_VERSION_STAMP,
                                 "Version stamp associated with the client has expired. Please perform a full sync.")

    # -- seeding ----------------------------------------------------------------------------
    def system_caller(self, conn: Connection) -> Caller:
        users = self.store.table(self.entity("systemuser"))
        row = conn.execute(users.select().limit(1)).mappings().first()
        if row is None:
            return Caller("00000000-0000-0000-0000-000000000000", self.organization.business_unit_id)
        return Caller(row["systemuserid"], row.get("_businessunitid_value"))

    def seed(self, fixture: str = "default", *, system_only: bool = False,
             document: dict[str, Any] | None = None) -> dict[str, int]:
        """Load a fixture set (or ``document``, a fixture's content given inline) through the same write
        path clients use (binds and all), in one transaction: a refused record writes nothing.

        A block marked ``"update": true`` holds PATCH bodies for records created earlier in the same
        run (links that need both sides first, such as an account's primary contact); records that
        already existed before the run are left as they are, so seeding twice changes nothing.
        """
        if document is not None:
            fixture = "inline data"
            tables = _fixture_tables(document, fixture)
        else:
            tables = _fixture_tables(load_fixture(fixture, self.fixtures), f"{fixture}/dataverse.json")
        counts: dict[str, int] = {}
        created: set[tuple[str, str]] = set()
        with self.store.write() as conn:
            caller = self.system_caller(conn)
            for table in tables:
                set_name = table["set"]
                entity = self.schema.by_set(set_name)
                if entity is None:
                    raise ValueError(f"fixture {fixture}: unknown entity set {set_name}")
                if system_only and not table_info(entity).system_rows:
                    continue
                if table.get("update"):
                    for record in table.get("records", []):
                        key = self.guid(str(record.get(entity.key)))
                        if (entity.name, key) in created:
                            body = {k: v for k, v in record.items() if k != entity.key}
                            self.update(conn, entity, key, body, caller=caller)
                    continue
                for record in table.get("records", []):
                    key = record.get(entity.key)
                    if key and self.store.get(conn, entity, key) is not None:
                        continue
                    # Self-referencing binds (root business unit, system user's BU) need the row first.
                    body = {k: v for k, v in record.items() if not _binds_to_missing(self, conn, k, v)}
                    row = self.create(conn, entity, body, caller=caller)
                    created.add((entity.name, row[entity.key]))
                    if entity.name == "systemuser" and caller.user_id.startswith("00000000"):
                        caller = self.system_caller(conn)
                    counts[set_name] = counts.get(set_name, 0) + 1
                    late = {k: v for k, v in record.items() if k not in body}
                    if late:
                        self.update(conn, entity, self.guid(key), late, caller=caller)
        self._ensure_system_rows()
        return counts

    def reset(self) -> None:
        self.store.reset()
        with self.store.read() as conn:
            self.option_values.apply(conn)  # added options went with the data
        self.seed(self.fixture_name, system_only=True)

    def insert_option_value(self, body: Any) -> int:
        with self.transactions.connection(True) as conn:
            value = self.option_values.insert(conn, body)
            self.transactions.after_commit(self._settings_changed)
            return value

    # -- several processes serving one org ------------------------------------------------------
    def share(self) -> None:
        """Call before forking processes that serve this org: they then learn of each other's writes
        (the store's generations) and of rewritten settings (:meth:`refresh_settings`)."""
        self.store.share()
        self._settings.share()

    def _settings_changed(self) -> None:
        self._settings.add(("settings",))

    def refresh_settings(self) -> None:
        """Read the org's settings and added options again if any process rewrote them since this one
        last read them; called at the start of every request (one shared-memory read when nothing changed)."""
        epoch = self._settings.get("settings")
        if epoch == self._settings_seen:
            return
        with self._settings_lock:
            if epoch == self._settings_seen:
                return
            with self.store.read() as conn:
                self.option_values.apply(conn)
                self._take_organization(self.organization_row(conn))
            self._settings_seen = epoch

    # -- the org's own rows: organization settings, SDK messages and their filters -------------
    def _ensure_system_rows(self) -> None:
        """Write the organization row and the SDK message rows the declarations imply, where missing."""
        with self.store.write() as conn:
            caller = self.system_caller(conn)
            org = self._ensure_organization(conn, caller)
            self._ensure_sdk_messages(conn, caller)
        self._take_organization(org)
        self._settings_changed()

    def _take_organization(self, org: Row) -> None:
        self.organization = Organization(
            organization_id=org["organizationid"],
            name=org["name"],
            base_currency_id=org.get("_basecurrencyid_value"),
            business_unit_id=self.organization.business_unit_id,
        )

    def _insert_system_rows(self, conn: Connection, entity: EntityType, rows: list[dict[str, Any]],
                            caller: Caller) -> None:
        """Rows the org owns, written column by column (their read-only columns included)."""
        for values in rows:
            self._server_columns(conn, entity, values, caller, creating=True, existing=None)
        self.store.insert_rows(conn, entity, rows)

    def _existing_keys(self, conn: Connection, entity: EntityType) -> set[str]:
        table = self.store.table(entity)
        return set(conn.execute(sa.select(table.c[entity.key])).scalars())

    def _ensure_organization(self, conn: Connection, caller: Caller) -> Row:
        """The one organization row (https://learn.microsoft.com/en-us/power-apps/developer/data-platform/reference/entities/organization)."""
        entity = self.entity("organization")
        table = self.store.table(entity)
        row = conn.execute(table.select().limit(1)).mappings().first()
        if row is not None:
            return dict(row)
        settings = self._org_settings
        code = settings.get("base_currency", "USD")
        currencies = self.store.table(self.entity("transactioncurrency"))
        currency = conn.execute(currencies.select().where(currencies.c.isocurrencycode == code)).mappings().first()
        if currency is None:
            raise ValueError(f"fixture {self.fixture_name}: the organization's base currency {code} is not one of "
                             "its transactioncurrencies")
        language = int(settings.get("language_code", 1033))
        self._insert_system_rows(conn, entity, [{
            "organizationid": self.organization.organization_id,
            "name": self.organization.name,
            "_basecurrencyid_value": currency["transactioncurrencyid"],
            "basecurrencysymbol": currency["currencysymbol"],
            "currencysymbol": currency["currencysymbol"],
            "currencydecimalprecision": currency.get("currencyprecision") or 2,
            "pricingdecimalprecision": 2,
            "languagecode": language,
            "localeid": int(settings.get("locale_id", language)),
            "dateformatstring": settings.get("date_format", "M/d/yyyy"),
            "timeformatstring": settings.get("time_format", "h:mm tt"),
            "isauditenabled": False,
        }], caller)
        return self.organization_row(conn)

    def _ensure_sdk_messages(self, conn: Connection, caller: Caller) -> None:
        """One sdkmessage per message the tables and functions answer, one sdkmessagefilter per
        (table, message) a table declares: the rows the bulk-operation detection query reads."""
        message_entity, filter_entity = self.entity("sdkmessage"), self.entity("sdkmessagefilter")
        have_messages = self._existing_keys(conn, message_entity)
        have_filters = self._existing_keys(conn, filter_entity)
        names = set(FUNCTIONS).union(*(table_info(e).messages for e in self.schema))
        messages = [
            {"sdkmessageid": key, "name": name, "categoryname": name[:25], "availability": 0,
             "autotransact": name not in _READ_ONLY_MESSAGES, "isactive": True, "isprivate": False,
             "isreadonly": name in _READ_ONLY_MESSAGES, "template": False, "isvalidforexecuteasync": False,
             "workflowsdkstepenabled": False}
            for name in sorted(names) if (key := _system_id("sdkmessage", name)) not in have_messages
        ]
        filters = [
            {"sdkmessagefilterid": key, "_sdkmessageid_value": _system_id("sdkmessage", name),
             "primaryobjecttypecode": entity.name, "secondaryobjecttypecode": "none", "availability": 0,
             "iscustomprocessingstepallowed": True, "isvisible": True, "workflowsdkstepenabled": False}
            for entity in self.schema for name in sorted(table_info(entity).messages)
            if (key := _system_id("sdkmessagefilter", entity.name, name)) not in have_filters
        ]
        self._insert_system_rows(conn, message_entity, messages, caller)
        self._insert_system_rows(conn, filter_entity, filters, caller)


def _system_id(*parts: str) -> str:
    """Stable ids for the org's own rows, the same on every start and after every reset."""
    return str(uuid.uuid5(_SYSTEM_IDS, "/".join(parts)))


def parse_etag(value: str) -> int | None:
    """The row version in a `W/"<n>"` ETag (None when the value is not one)."""
    m = re.fullmatch(r'\s*(?:W/)?"(\d+)"\s*', value)
    return int(m.group(1)) if m else None


def _drop_create_only(entity: EntityType, values: dict[str, Any]) -> None:
    """An update ignores values of attributes that are valid for create only (IsValidForUpdate false)
    (https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.messages.updaterequest.target#remarks)."""
    for attribute in table_info(entity).create_only:
        for column in (attribute, f"_{attribute}_value", f"{attribute}_type"):
            values.pop(column, None)


def _link(entity: EntityType, row: Row, nav: Navigation) -> dict[str, Any]:
    """The lookup values that make a record of ``nav.target`` belong to ``row``'s collection ``nav``."""
    link: dict[str, Any] = {nav.via: row[entity.key]}
    if nav.discriminator:
        link[nav.discriminator] = nav.discriminator_value
    return link


def _key_text(key: KeyPredicate) -> str:
    """A key as error messages show it: the id, or `name=value` pairs of an alternate key."""
    if key.single is not None:
        return key.single
    return ",".join(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}"
                    for name, value in key.named.items())


def _undeclared_bind(name: str) -> DataverseError:
    return exc.bad_request(
        f"An undeclared property '{name}' which only has property annotations in the payload but no "
        f"property value was found in the payload. In OData, only declared navigation properties and "
        f"declared named streams can be represented as properties without values."
    )


def _binds_to_missing(backend: DataverseBackend, conn: Connection, key: str, value: Any) -> bool:
    if not key.endswith("@odata.bind") or not isinstance(value, str):
        return False
    try:
        backend.resolve_reference(conn, value)
    except DataverseError:
        return True
    return False


# A batch binds the same few records (the company, the currency) in hundreds of operations: the text of a
# reference is read once. Both are pure functions of the text; a refused text raises and is not kept.
@functools.lru_cache(maxsize=1024)
def _reference_segment(url: str) -> tuple[str, str]:
    """The entity set and raw key of an ``@odata.bind`` / ``@odata.id`` URL (absolute or relative)."""
    path = url
    marker = "/api/data/v9.2/"
    if marker in path:
        path = path.split(marker, 1)[1]
    try:
        segments = split_path(path.lstrip("/"))
    except engine.ODataError as error:
        raise exc.bad_request(f"Invalid URI in @odata.bind: '{url}'.") from error
    if len(segments) != 1 or segments[0].key is None:
        raise exc.bad_request(f"Invalid URI in @odata.bind: '{url}'.")
    return segments[0].name, segments[0].key


@functools.lru_cache(maxsize=1024)
def _reference_key(raw: str) -> KeyPredicate:
    return parse_key(raw)
