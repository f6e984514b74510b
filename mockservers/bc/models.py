"""Business Central state: companies and their entities in a SQL store, with BC's write rules.

The rules BC's API pages apply on write live here: Code fields upper-cased, enum names with XML
escaping, zero GUIDs for empty references, id/code pairs kept in sync (currencyId/currencyCode),
number series for `number`, and the AL validation errors (`A "displayName" must be provided.`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..clock import Clock
from ..odata import errors as engine
from ..odata.csdl import enum_spellings
from ..odata.database import SessionProvider
from ..odata.query import ExpandItem, Page, QueryOptions, QueryRunner
from ..odata.schema import Edm, EntityType, Navigation, Property, Schema
from ..odata.storage import Row, Store, drawn_key
from ..odata.transactions import Transactions
from ..odata.values import parse_guid, shown_text, to_stored
from ..sandbox.fixtures import DEFAULT_LIBRARY, FixtureError, FixtureLibrary
from . import exceptions as exc
from .exceptions import BCError
from .security import METHOD_ACTIONS, Application, load_applications, permission_denied
from .tables import build_schema, entity_info

ZERO_GUID = "00000000-0000-0000-0000-000000000000"


def load_fixture(name: str, fixtures: FixtureLibrary = DEFAULT_LIBRARY) -> dict:
    return checked_document(fixtures.load(name, "bc.json"), f"{name}/bc.json")


def checked_document(data: dict, where: str) -> dict:
    """A BC fixture document, its shape checked before anything is written."""
    companies = data.get("companies", []) if isinstance(data, dict) else None
    if not isinstance(companies, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("name"), str)
            and isinstance(c.get("tables", []), list)
            and all(isinstance(t, dict) and isinstance(t.get("set"), str) and isinstance(t.get("records", []), list)
                    and all(isinstance(r, dict) for r in t.get("records", [])) for t in c.get("tables", []))
            for c in companies):
        raise FixtureError(f"{where}: 'companies' must be a list of "
                           '{"id", "name", "tables": [{"set", "records": [...]}]} objects')
    return data


# BC's No. Series Line "Last No. Used", per company and prefix (the API does not show it).
number_series_table = sa.Table(
    "_number_series", sa.MetaData(),
    sa.Column("company_id", sa.String(36), primary_key=True),
    sa.Column("prefix", sa.String(20), primary_key=True),
    sa.Column("last_no", sa.String(20), nullable=False),
)


_SERIES_KEY = ((number_series_table.c.company_id == sa.bindparam("b_company"))
               & (number_series_table.c.prefix == sa.bindparam("b_prefix")))
_LAST_NO = sa.select(number_series_table.c.last_no).where(_SERIES_KEY)
_SET_LAST_NO = number_series_table.update().where(_SERIES_KEY).values(last_no=sa.bindparam("number"))


def _series_digits(prefix: str, number: str) -> str | None:
    if not number.startswith(prefix) or not number[len(prefix):].isdigit() or not number[len(prefix):].isascii():
        return None
    return number[len(prefix):]


def _number_order(prefix: str, number: str) -> tuple[int, int]:
    digits = _series_digits(prefix, number) or ""
    return (len(digits), int(digits) if digits else -1)


def _after(prefix: str, number: str) -> str:
    """10 after ``number``, keeping its width."""
    digits = _series_digits(prefix, number) or "0"
    return f"{prefix}{int(digits) + 10:0{len(digits)}d}"


@dataclass
class Company:
    id: str
    name: str
    display_name: str
    lcy: str


class BCBackend:
    def __init__(self, db: Engine | str = "sqlite://", fixture: str = "default", *,
                 session: SessionProvider | None = None, fixtures: FixtureLibrary = DEFAULT_LIBRARY,
                 clock: Clock | None = None) -> None:
        """``db``: the engine Flask-SQLAlchemy made for the app (or a URL for a standalone store);
        ``session``: the app's request-scoped session provider (``odata.database.init_app``)."""
        self.fixture_name = fixture
        self.fixtures = fixtures
        data = load_fixture(fixture, fixtures)
        self.schema: Schema = build_schema()
        self.store = Store(self.schema, db, session=session, clock=clock)
        number_series_table.create(self.store.engine, checkfirst=True)
        self.runner = QueryRunner(self.schema, self.store)
        self.transactions = Transactions(self.store)
        self.environment: str = data.get("environment", "production")
        try:
            self.applications = load_applications(data)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise FixtureError(f"{fixture}/bc.json: {error}") from None
        self.companies: dict[str, Company] = {
            c["id"]: Company(c["id"], c["name"], c.get("displayName", c["name"]), c.get("lcy", "USD"))
            for c in data.get("companies", [])
        }
        self._ensure_companies()

    def share(self) -> None:
        """Call before forking processes that serve this environment: they learn of each other's writes."""
        self.store.share()

    # -- companies --------------------------------------------------------------------------
    @property
    def company_entity(self) -> EntityType:
        entity = self.schema.entity("company")
        assert entity is not None
        return entity

    def _ensure_companies(self) -> None:
        entity = self.company_entity
        table = self.store.table(entity)
        with self.store.write() as conn:
            for company in self.companies.values():
                if self.store.get(conn, entity, company.id) is not None:
                    continue
                now = self.store.clock.utcnow()
                conn.execute(table.insert().values(
                    id=company.id, name=company.name, displayName=company.display_name,
                    systemVersion="27.0.38460.0", timestamp=self.store.next_version(conn),
                    businessProfileId="", systemCreatedAt=now, systemModifiedAt=now,
                    systemCreatedBy=ZERO_GUID, systemModifiedBy=ZERO_GUID,
                ))

    # -- apps -------------------------------------------------------------------------------
    def application(self, client_id: str | None) -> Application | None:
        """The enabled Microsoft Entra application registered in BC under ``client_id``."""
        try:
            app = self.applications.get(str(uuid.UUID(client_id or "")))
        except ValueError:
            return None
        return app if app is not None and app.enabled else None

    def authorize(self, client_id: str | None, method: str, entity: EntityType) -> None:
        """Raise BC's 403 unless the app's permission sets allow ``method`` on ``entity``'s table.

        No client id means authentication is off (protocol tests): nothing is checked."""
        letter = METHOD_ACTIONS.get(method)
        if client_id is None or letter is None:
            return
        app = self.application(client_id)
        if app is None or not app.allows(letter, entity):
            raise permission_denied(letter, entity)

    def find_company(self, key: str) -> Company | None:
        """By id (GUID) or by name, as `?company=` and the batch `Company` header allow."""
        try:
            return self.companies.get(parse_guid(key))
        except engine.InvalidValue:
            pass
        return next((c for c in self.companies.values() if c.name.lower() == key.lower()), None)

    def entity(self, name: str) -> EntityType:
        entity = self.schema.entity(name)
        if entity is None:
            raise KeyError(name)
        return entity

    def supports_webhooks(self, set_name: str) -> bool:
        """Whether BC lists the entity set as one a subscription may watch."""
        entity = self.schema.by_set(set_name)
        return entity is not None and entity_info(entity).webhooks

    # -- reads: the protocol layer's only way to the rows ---------------------------------------
    def get(self, conn: Connection, entity: EntityType, company_id: str | None, key: str) -> Row | None:
        return self.store.get(conn, entity, key, company_id)

    def company_row(self, conn: Connection, company: Company) -> Row:
        row = self.store.get(conn, self.company_entity, company.id)
        assert row is not None, "every configured company has its row"
        return row

    def _scope(self, entity: EntityType, company_id: str | None) -> list[Any]:
        """Rows of one company only: companies are separate tables in BC."""
        if entity.scope_property is None:
            return []
        table = self.store.table(entity)
        return [table.c[entity.scope_property] == company_id]

    def check_query(self, entity: EntityType, select: list[str] | None, expand: list[ExpandItem]) -> None:
        """Refuse unknown `$select`/`$expand` names before anything is read."""
        self.runner.check_select(entity, select)
        self.runner.check_expand(entity, expand)

    def query(self, conn: Connection, entity: EntityType, company_id: str | None, opts: QueryOptions, *,
              page_size: int | None = None, after: Row | None = None) -> Page:
        """One page of a company's entity-set query (expanded navigations attached)."""
        return self.runner.run(conn, entity, opts, conditions=self._scope(entity, company_id), page_size=page_size,
                               after=after)

    def expand(self, conn: Connection, entity: EntityType, rows: list[Row], expand: list[ExpandItem]) -> None:
        self.runner.expand(conn, entity, rows, expand)

    def related(self, conn: Connection, entity: EntityType, company_id: str, row: Row, nav: Navigation) -> Row | None:
        """The row a single-valued navigation of ``row`` points at, in the same company."""
        return self.store.get(conn, self.entity(nav.target), row[nav.via], company_id) if row.get(nav.via) else None

    # -- writes -------------------------------------------------------------------------------
    def _type_name(self, entity: EntityType) -> str:
        return f"{self.schema.namespace}.{entity.name}"

    def _convert(self, entity: EntityType, prop: Property, value: Any) -> Any:
        if prop.kind == "Enum" and prop.options is not None:
            if not isinstance(value, str):
                raise BCError(400, "BadRequest", f"Cannot convert the literal '{shown_text(value)}' to the expected type "
                                                 f"'{self.schema.namespace}.{prop.options.name}'.")
            escaped = enum_spellings(prop.options).get(value.lower())
            if escaped is None:
                options = ",".join(o.label for o in prop.options.options)
                raise BCError(400, "Unknown", f"'{shown_text(value)}' is not an option. The existing options are: {options}")
            return escaped
        if prop.type is Edm.Guid and (value in (None, "") or value == ZERO_GUID):
            return None
        if prop.type is Edm.String and value is None:
            return ""
        try:
            converted = to_stored(prop, value)
        except engine.InvalidValue as error:
            if error.reason == "length" and isinstance(value, str):
                raise BCError(400, "Application_StringExceededLength",
                              f"The length of the string is {len(value)}, but it must be less than or equal to "
                              f"{prop.max_length} characters. Value: {shown_text(value)}") from error
            if prop.type is Edm.Guid:
                raise BCError(400, "Application_InvalidGUID",
                              f"Invalid format of GUID string. Correct format of GUID string is: "
                              f"CDEF7890-ABCD-0123-1234-567890ABCDEF where 0-9, A-F symbolizes hexadecimal digits. "
                              f"Value: {shown_text(value)}") from error
            raise BCError(400, "BadRequest", error.message) from error
        if prop.kind == "Code" and isinstance(converted, str):
            converted = converted.upper()
        return converted

    def prepare(self, conn: Connection, entity: EntityType, company_id: str, body: Any, *, creating: bool,
                existing: Row | None = None, draw_number: bool = True) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise exc.bad_request("Invalid Request Body")
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata."):
                continue
            prop = entity.property(name)
            if prop is None or prop.hidden:
                if entity.navigation(name) is not None:
                    raise exc.bad_request(f"Deep insert and update of '{name}' is not supported by the sandbox.")
                raise exc.bad_request(
                    f"The property '{name}' does not exist on type '{self._type_name(entity)}'. Make sure to only "
                    "use property names that are defined by the type.")
            if name == entity.key:
                if creating:
                    values[name] = self._convert(entity, prop, value)
                    continue
                if existing is not None and self._convert(entity, prop, value) == existing[entity.key]:
                    continue
                raise BCError(400, "BadRequest_InvalidOperation", "The 'id' property cannot be changed.")
            if prop.read_only:
                raise BCError(400, "BadRequest_InvalidOperation", f"The property '{name}' is read-only.")
            values[name] = self._convert(entity, prop, value)
        self._required(entity, values, creating=creating)
        if creating:
            for name in entity_info(entity).create_forbidden:
                if name in values:
                    raise BCError(400, "Application_DialogException",
                                  f'The "{name}" cannot be set when the record is created.')
        self._references(conn, entity, company_id, values)
        self._code_references(conn, entity, company_id, values)
        if creating:
            self._defaults(conn, entity, company_id, values, draw_number=draw_number)
        return values

    def _required(self, entity: EntityType, values: dict[str, Any], *, creating: bool) -> None:
        for name in entity_info(entity).required_on_create:
            if creating and not values.get(name):
                raise BCError(400, "Application_DialogException", f'A "{name}" must be provided.')
            if not creating and name in values and not values[name]:
                raise BCError(400, "Application_DialogException", f'The blank "{name}" is not allowed.')

    def _references(self, conn: Connection, entity: EntityType, company_id: str, values: dict[str, Any]) -> None:
        """Validate GUID references and keep id/code pairs (currencyId/currencyCode) in step."""
        lcy = self.companies[company_id].lcy if company_id in self.companies else ""
        for nav in entity.navigations:
            if nav.collection:
                continue
            target = self.entity(nav.target)
            code_field = entity_info(target).code_field or "code"
            # the code field paired with this id field (currencyId -> currencyCode), if both sides have one
            code_prop = nav.via[:-2] + "Code" if nav.via.endswith("Id") else None
            if code_prop is not None and (entity.property(code_prop) is None or not target.property(code_field)):
                code_prop = None
            table = self.store.table(target)
            if nav.via in values:
                ref = values[nav.via]
                if ref is None:
                    if code_prop is not None:
                        values[code_prop] = ""
                    continue
                row = self.store.get(conn, target, ref, company_id)
                if row is None:
                    raise BCError(400, "Application_DialogException",
                                  f'The "{nav.via}" does not match to a {entity_info(target).caption}.')
                if code_prop is not None:
                    values[code_prop] = row[code_field]
            elif code_prop is not None and code_prop in values:
                code = values[code_prop]
                if not code or (nav.target == "currency" and code == lcy.upper()):
                    values[nav.via] = None
                    values[code_prop] = ""
                    continue
                by_code = conn.execute(table.select().where(
                    table.c[code_field] == code, table.c.companyId == company_id)).mappings().first()
                if by_code is None:
                    raise BCError(400, "Application_DialogException",
                                  f'The "{code_prop}" does not match to a {entity_info(target).caption}.')
                values[nav.via] = by_code[target.key]

    def _code_references(self, conn: Connection, entity: EntityType, company_id: str, values: dict[str, Any]) -> None:
        """Code fields with a table relation (salespersonCode, country, …) must name an existing row."""
        for name, (target_name, field_name) in entity_info(entity).code_references.items():
            code = values.get(name)
            if not code:
                continue
            target = self.entity(target_name)
            table = self.store.table(target)
            found = conn.execute(sa.select(table.c[target.key]).where(
                table.c[field_name] == code, *self._scope(target, company_id)).limit(1)).first()
            if found is None:
                caption = entity_info(entity).caption
                related = entity_info(target).caption
                raise BCError(400, "Application_DialogException",
                              f"The field {name} of table {caption} contains a value ({code}) that cannot be found "
                              f"in the related table ({related}).")

    def _defaults(self, conn: Connection, entity: EntityType, company_id: str, values: dict[str, Any], *,
                  draw_number: bool = True) -> None:
        for prop in entity.public_properties():
            if prop.name in values or prop.read_only or prop.name == entity.key:
                continue
            if prop.default is not None:
                values[prop.name] = self._convert(entity, prop, prop.default)
        series = entity_info(entity).number_series
        if draw_number and series is not None and not values.get("number"):
            (values["number"],) = self._next_numbers(conn, entity, company_id, series, 1)

    def _next_numbers(self, conn: Connection, entity: EntityType, company_id: str, prefix: str,
                      count: int) -> list[str]:
        """The series' next ``count`` numbers, each 10 after the one before, starting after its last
        number, kept per company and prefix as BC keeps a No. Series Line's "Last No. Used" (so numbers
        cost a keyed read and a write, however many rows there are). A series used for the first time
        starts after the highest `<prefix><digits>` in use."""
        key = {"b_company": company_id, "b_prefix": prefix}
        last = conn.execute(_LAST_NO, key).scalar()
        if last is None:
            highest = self._highest_number(conn, entity, company_id, prefix)
            numbers = [_after(prefix, highest) if highest else f"{prefix}{10:05d}"]
        else:
            numbers = [_after(prefix, str(last))]
        while len(numbers) < count:
            numbers.append(_after(prefix, numbers[-1]))
        if last is None:
            conn.execute(number_series_table.insert(),
                         {"company_id": company_id, "prefix": prefix, "last_no": numbers[-1]})
        else:
            conn.execute(_SET_LAST_NO, {**key, "number": numbers[-1]})
        return numbers

    def _note_number(self, conn: Connection, entity: EntityType, company_id: str, number: Any) -> None:
        """A number given by the client moves its series past it when it is the series' highest."""
        prefix = entity_info(entity).number_series
        if prefix is None or not isinstance(number, str) or _series_digits(prefix, number) is None:
            return
        key = {"b_company": company_id, "b_prefix": prefix}
        last = conn.execute(_LAST_NO, key).scalar()
        if last is not None and _number_order(prefix, number) > _number_order(prefix, last):
            conn.execute(_SET_LAST_NO, {**key, "number": number})

    def _highest_number(self, conn: Connection, entity: EntityType, company_id: str, prefix: str) -> str | None:
        """The highest `<prefix><digits>` in use: the longest, then the largest (one scan of the range)."""
        table = self.store.table(entity)
        stmt = (sa.select(table.c.number)
                .where(table.c.companyId == company_id, table.c.number.startswith(prefix, autoescape=True))
                .order_by(sa.func.length(table.c.number).desc(), table.c.number.desc()))
        if self.store.is_sqlite:  # the sandbox's LIKE is a function there: give the index a range to seek
            stmt = stmt.where(table.c.number >= prefix, table.c.number < prefix + "\U0010ffff")
        for (number,) in conn.execute(stmt):
            if _series_digits(prefix, number or "") is not None:
                return str(number)
        return None

    def create(self, conn: Connection, entity: EntityType, company_id: str, body: Any) -> Row:
        values = self.prepare(conn, entity, company_id, body, creating=True)
        if not values.get(entity.key):
            values[entity.key] = drawn_key()
        row = self._insert(conn, entity, company_id, values)
        if isinstance(body, dict) and body.get("number"):
            self._note_number(conn, entity, company_id, row.get("number"))
        return row

    def _insert(self, conn: Connection, entity: EntityType, company_id: str, values: dict[str, Any]) -> Row:
        try:
            return self.store.insert(conn, entity, values, company_id)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity, entity_info(entity).caption, values) from error

    def create_many(self, conn: Connection, entity: EntityType, company_id: str, bodies: list[Any]) -> list[Row]:
        """What ``create`` does for each body in turn, the rows written a block at a time (one statement
        for many). A body whose create could see the rows before it (a number of its own moves the number
        series; a reference to this same table) first writes the block, then goes alone. The first body
        that one-by-one creates would refuse raises the same error."""
        rows: list[Row] = []
        pending: list[dict[str, Any]] = []

        series = entity_info(entity).number_series

        def write_block() -> None:
            if pending:
                numbered = [values for values in pending if series is not None and not values.get("number")]
                if numbered:  # the block's numbers, drawn in its order, at once
                    assert series is not None
                    for values, number in zip(numbered, self._next_numbers(conn, entity, company_id, series,
                                                                           len(numbered)), strict=True):
                        values["number"] = number
                try:
                    rows.extend(self.store.insert_rows(conn, entity, pending, company_id))
                except engine.ODataError:  # nothing of the block was written: find the refused row
                    for values in pending:
                        rows.append(self._insert(conn, entity, company_id, values))
                pending.clear()

        for body in bodies:
            if self._creates_alone(entity, body):
                write_block()
                rows.append(self.create(conn, entity, company_id, body))
                continue
            try:
                values = self.prepare(conn, entity, company_id, body, creating=True, draw_number=False)
            except Exception:
                write_block()  # an earlier body's refusal comes first
                raise
            if not values.get(entity.key):
                values[entity.key] = drawn_key()
            pending.append(values)
        write_block()
        return rows

    def _creates_alone(self, entity: EntityType, body: Any) -> bool:
        info = entity_info(entity)
        return (not isinstance(body, dict) or bool(body.get("number"))
                or any(nav.target == entity.name for nav in entity.navigations)
                or any(target == entity.name for target, _ in info.code_references.values()))

    def update(self, conn: Connection, entity: EntityType, company_id: str, key: str, body: Any, *,
               if_version: int | None) -> Row:
        existing = self.store.get(conn, entity, key, company_id)
        if existing is None:
            raise exc.resource_not_found(entity.set_name)
        values = self.prepare(conn, entity, company_id, body, creating=False, existing=existing)
        try:
            row = self.store.update(conn, entity, key, values, if_version=if_version, scope=company_id,
                                    current=existing)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity, entity_info(entity).caption, {**existing, **values}) from error
        if values.get("number"):
            self._note_number(conn, entity, company_id, row.get("number"))
        return row

    def update_many(self, conn: Connection, entity: EntityType, company_id: str,
                    updates: list[tuple[str, Any, int | None]]) -> list[Row] | None:
        """What ``update`` does for each ``(key, body, if_version)`` of distinct records, written with one
        statement; None, writing nothing, when any of them is not a plain update (a record missing or at
        another version, a number of its own, an alternate key changed): those go one by one. A refused
        body raises the error ``update`` raises."""
        current = {str(k).lower(): row for k, row in self.store.get_many(
            conn, entity, [key for key, _, _ in updates], company_id).items()}
        version = entity.version_property
        staged: list[tuple[str, dict[str, Any], Row]] = []
        for key, body, if_version in updates:
            existing = current.get(str(key).lower())
            if existing is None or (if_version is not None and version and existing[version] != if_version):
                return None
            values = self.prepare(conn, entity, company_id, body, creating=False, existing=existing)
            if values.get("number") or self.store.changes_alternate_key(entity, existing, values):
                return None
            staged.append((key, values, existing))
        return self.store.update_rows(conn, entity, staged, company_id)

    def delete(self, conn: Connection, entity: EntityType, company_id: str, key: str, *,
               if_version: int | None) -> Row:
        try:
            return self.store.delete(conn, entity, key, if_version=if_version, scope=company_id)
        except engine.ODataError as error:
            raise exc.from_engine(error, entity) from error

    # -- seeding -------------------------------------------------------------------------------
    def seed(self, fixture: str = "default", *, document: dict[str, Any] | None = None) -> dict[str, int]:
        """Load the fixture's records (or ``document``'s, a fixture's content given inline) through the
        same write rules the API applies, in one transaction: a refused record writes nothing."""
        if document is not None:
            fixture = "inline data"
            data = checked_document(document, fixture)
        else:
            data = load_fixture(fixture, self.fixtures)
        counts: dict[str, int] = {}
        with self.store.write() as conn:
            for company in data.get("companies", []):
                for table in company.get("tables", []):
                    entity = self.schema.by_set(table["set"])
                    if entity is None:
                        raise ValueError(f"fixture {fixture}: unknown entity set {table['set']}")
                    for record in table.get("records", []):
                        key = record.get(entity.key)
                        if key and self.store.get(conn, entity, parse_guid(key), company["id"]) is not None:
                            continue
                        self.create(conn, entity, company["id"], record)
                        counts[table["set"]] = counts.get(table["set"], 0) + 1
        return counts

    def reset(self) -> None:
        self.store.reset()
        with self.store.write() as conn:  # the series start again with the data
            conn.execute(number_series_table.delete())
        self._ensure_companies()
