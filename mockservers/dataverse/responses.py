"""The Dataverse Web API protocol: URL forms, query options, conditional requests, bulk and batch.

``DataverseService.handle`` turns one request (plain or from inside a ``$batch``) into a response;
it never touches Flask, so the same code serves HTTP, batches and in-process use.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode
from xml.etree import ElementTree

from sqlalchemy.engine import Connection
from werkzeug.datastructures import Headers, MultiDict

from ..odata import errors as engine
from ..odata.csdl import render_csdl
from ..odata.jsonbody import InvalidJson, parse_json
from ..odata.protocol import Result, parse_max_page_size, parse_prefer
from ..odata.query import QueryOptions, parse_options
from ..odata.schema import EntityType
from ..odata.storage import Row
from ..odata.urlpath import KeyPredicate, Segment, parse_key, split_path
from ..odata.values import to_json
from . import batch as batch_protocol
from . import exceptions as exc
from . import functions, option_values
from .exceptions import DataverseError
from .metadata_query import MetadataQuery
from .models import Caller, DataverseBackend, parse_etag
from .paging import PagingCookie, paging_cookie, read_paging_cookie
from .query_functions import DataverseFilters, orderby_with_aliases
from .serializer import Annotations, Serializer, etag

API_PATH = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000
COUNT_LIMIT = 5000
BULK_ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
# Headers that leave a batch write as plain as one without them (anything else: it runs on its own).
# Prefer is part of the run's key: every write of a run asks for the same answer.
_PLAIN_WRITE_HEADERS = frozenset({"content-type", "content-length", "accept", "odata-version", "odata-maxversion",
                                  "content-transfer-encoding", "prefer"})
SYSTEM_QUERY_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$expand", "$count", "$skiptoken", "$deltatoken")
# Query options the real Web API answers and the sandbox does not emulate (yet): refused, never ignored.
# https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/overview
NOT_EMULATED = {
    "$apply": "aggregation with $apply",
    "fetchxml": "FetchXML queries",
    "sql": "SQL queries",
    "savedquery": "saved queries (system views)",
    "userquery": "user queries (personal views)",
    "partitionid": "elastic table partitions",
}
MAX_ROW_VERSION = 2**63 - 1


@dataclass
class Request:
    method: str
    path: str  # below the API root, without a leading slash, percent-decoded
    args: MultiDict
    headers: Headers
    body: bytes
    caller: Caller


@dataclass(frozen=True)
class _PlainWrite:
    """A batch request that may be written together with the like ones next to it, read ahead."""

    key: str  # requests with one key next to each other form a run
    inner: batch_protocol.InnerRequest
    sub: Request  # the request on its own
    head: Segment
    body: dict[str, Any] | InvalidJson  # the parsed body, or why it does not parse

    def json(self) -> dict[str, Any]:
        if isinstance(self.body, InvalidJson):
            raise self.body
        return self.body


def check_query_options(args: MultiDict) -> None:
    """Refuse what the sandbox does not serve: `$skip` (Dataverse has none), unknown `$` options, and
    the query forms Dataverse has that the sandbox does not emulate."""
    if "$skip" in args:
        raise DataverseError(400, exc.NOT_SUPPORTED, "The query parameter $skip is not supported")
    for name in args:
        what = NOT_EMULATED.get(name.lower())
        if what is not None:
            raise DataverseError(400, exc.NOT_SUPPORTED,
                                 f"The query parameter {name} is not supported by the sandbox: it does not emulate {what}.")
        if name.startswith("$") and name not in SYSTEM_QUERY_OPTIONS:
            raise DataverseError(400, exc.NOT_SUPPORTED, f"The query parameter {name} is not supported")


class DataverseService:
    def __init__(self, backend: DataverseBackend, service_root: str, *, tenant_id: str = "") -> None:
        self.backend = backend
        self.tenant_id = tenant_id
        self.schema = backend.schema
        self.service_root = service_root.rstrip("/")
        self.serializer = Serializer(self.schema, backend, self.service_root)
        self.tx = backend.transactions
        # A batch's consecutive plain creates and upserts are written together (answers as one by one);
        # off, one by one.
        self.group_creates = True
        self._csdl: str | None = None

    # -- transactions ------------------------------------------------------------------------
    def connection(self, write: bool):
        return self.tx.connection(write)

    def changeset(self):
        return self.tx.unit()

    # -- entry point -------------------------------------------------------------------------
    def handle(self, req: Request) -> Result:
        try:
            return self._dispatch(req)
        except DataverseError as error:
            return error.result()
        except engine.ODataError as error:
            return exc.from_engine(error).result()

    def _dispatch(self, req: Request) -> Result:
        check_query_options(req.args)
        path = req.path.strip("/")
        if path == "":
            return self.service_document(req)
        if path == "$metadata":
            return self.metadata(req)
        if path == "$batch":
            if req.method != "POST":
                raise self._no_resource(req)
            return self.batch(req)
        segments = split_path(path)
        head = segments[0]
        function = functions.FUNCTIONS.get(head.name.removeprefix("Microsoft.Dynamics.CRM."))
        if function is not None and (head.key is not None or function.name == "WhoAmI"):
            if req.method != "GET" or len(segments) > 1:
                raise self._no_resource(req)
            return self.call_function(req, function, head.key)
        if head.name.removeprefix("Microsoft.Dynamics.CRM.") == "InsertOptionValue" and head.key is None:
            if req.method != "POST" or len(segments) > 1:
                raise self._no_resource(req)
            value = self.backend.insert_option_value(self._body(req))
            return Result.json(200, {"@odata.context": self.context("Microsoft.Dynamics.CRM.InsertOptionValueResponse"),
                                     "NewOptionValue": value})
        if head.name in ("EntityDefinitions", "RelationshipDefinitions", "GlobalOptionSetDefinitions"):
            if req.method != "GET":
                raise DataverseError(405, exc.NOT_SUPPORTED, "Metadata changes are not supported by the sandbox.")
            return self.entity_definitions(req, path)
        entity = self.schema.by_set(head.name)
        if entity is None:
            raise exc.segment_not_found(head.name)
        if req.method == "GET":
            self.backend.authorize(req.caller, "Read", entity)
        if head.key is None:
            return self.collection(req, entity, segments[1:])
        return self.single(req, entity, head, segments[1:])

    def _no_resource(self, req: Request) -> DataverseError:
        return DataverseError(
            404, "", f"No HTTP resource was found that matches the request URI '{self.service_root}/{req.path}'."
        )

    # -- documents ---------------------------------------------------------------------------
    def context(self, fragment: str) -> str:
        return f"{self.service_root}/$metadata#{fragment}"

    def service_document(self, req: Request) -> Result:
        value = [{"name": e.set_name, "kind": "EntitySet", "url": e.set_name} for e in self.schema]
        return Result.json(200, {"@odata.context": f"{self.service_root}/$metadata", "value": value})

    def metadata(self, req: Request) -> Result:
        if self._csdl is None:
            self._csdl = render_csdl(self.schema, container="System",
                                     extra_schema_xml=functions.CSDL + option_values.CSDL)
        return Result(200, [("Content-Type", "application/xml")], self._csdl.encode())

    def call_function(self, req: Request, function: functions.Function, raw_args: str | None) -> Result:
        """An unbound function: ``WhoAmI``, ``RetrieveVersion()``, ``RetrieveCurrentOrganization(AccessType=…)``."""
        aliases = {k: v for k, v in req.args.items() if k.startswith("@")}
        args = functions.parse_parameters(function, raw_args, aliases)
        org = self.backend.organization
        if function.name == "WhoAmI":
            payload: dict[str, Any] = {
                "BusinessUnitId": req.caller.business_unit_id,
                "UserId": req.caller.user_id,
                "OrganizationId": org.organization_id,
            }
        elif function.name == "RetrieveVersion":
            payload = functions.retrieve_version()
        else:
            access = functions.enum_member(args["AccessType"], "EndpointAccessType", functions.ENDPOINT_ACCESS_TYPES)
            with self.connection(False) as conn:
                name = self.backend.organization_row(conn)["name"]
            org_url = self.service_root.removesuffix(API_PATH)
            context = functions.OrgContext(org.organization_id, name, org_url, self.tenant_id)
            payload = functions.retrieve_current_organization(context, access)
        return Result.json(200, {"@odata.context": self.context(f"Microsoft.Dynamics.CRM.{function.name}Response"),
                                 **payload})

    def entity_definitions(self, req: Request, path: str) -> Result:
        query = MetadataQuery(self.schema, self.service_root)
        segments = [s.name + (f"({s.key})" if s.key is not None else "") for s in split_path(path)]
        status, payload = query.execute(segments, {k: req.args[k] for k in req.args if k.startswith("$")})
        return Result.json(status, payload)

    # -- queries -----------------------------------------------------------------------------
    def _options(self, req: Request, entity: EntityType) -> QueryOptions:
        args = {k: v for k, v in req.args.items() if k.startswith("$")}
        aliases = {k: v for k, v in req.args.items() if k.startswith("@")}
        if "$orderby" in args and aliases:
            args["$orderby"] = orderby_with_aliases(args["$orderby"], aliases)
        opts = parse_options(args)
        DataverseFilters(self.schema, aliases, now=self.backend.store.clock.now, user_id=req.caller.user_id,
                         business_unit_id=req.caller.business_unit_id).prepare_options(opts, entity)
        for item in opts.expand:
            nav = entity.navigation(item.name)
            if item.options.ref and nav is not None and nav.collection:
                raise DataverseError(400, exc.QUERY_PROPERTY_ERROR,
                                     "Expand with $ref is only supported on lookup type navigation property.")
        return opts

    def _page_size(self, prefs: dict[str, str]) -> tuple[int, bool]:
        try:
            return parse_max_page_size(prefs, MAX_PAGE_SIZE)
        except engine.QuerySyntaxError as error:
            raise DataverseError(400, exc.INVALID_ARGUMENT, error.message) from error

    def collection(self, req: Request, entity: EntityType, rest: list[Segment]) -> Result:
        if rest:
            if len(rest) == 1 and rest[0].key is None and rest[0].name == "$count" and req.method == "GET":
                return self.count(req, entity)
            action = rest[0].name.removeprefix("Microsoft.Dynamics.CRM.")
            if len(rest) == 1 and action in BULK_ACTIONS:
                if req.method != "POST":
                    raise self._no_resource(req)
                return self.bulk(req, entity, action)
            raise exc.segment_not_found(rest[0].name)
        if req.method == "GET":
            return self.list_records(req, entity)
        if req.method == "POST":
            return self.create(req, entity)
        raise DataverseError(405, "", f"The requested resource does not support http method '{req.method}'.")

    def count(self, req: Request, entity: EntityType) -> Result:
        with self.connection(False) as conn:
            n = min(self.backend.count(conn, entity), COUNT_LIMIT)
        return Result(200, [("Content-Type", "text/plain")], ("\ufeff" + str(n)).encode("utf-8"))

    def list_records(self, req: Request, entity: EntityType) -> Result:
        prefs = parse_prefer(req.headers)
        if "$deltatoken" in req.args:
            return self.delta(req, entity)
        if "odata.track-changes" in prefs and "$skiptoken" not in req.args:
            for option in ("$filter", "$orderby", "$expand", "$top"):
                if option in req.args:
                    raise DataverseError(
                        400, exc.NOT_SUPPORTED, f'The "{option}" query parameter isn\'t supported when Change '
                        "Tracking is enabled.")
        opts = self._options(req, entity)
        page_size, preferred = self._page_size(prefs)
        if preferred:
            opts.top = None  # documented: $top is ignored together with odata.maxpagesize
        cookie = self._read_skiptoken(entity, opts, req.args.get("$skiptoken"))
        tracking_version = cookie.tracking
        annotations = Annotations(prefs.get("odata.include-annotations"))
        with self.connection(False) as conn:
            if tracking_version is not None:  # the next page of a tracked read
                self.backend.check_change_token(conn, tracking_version)
            if "odata.track-changes" in prefs and tracking_version is None:
                tracking_version = self.backend.current_version(conn)
            page = self.backend.query(conn, entity, opts, page_size=page_size, after=cookie.last, count_cap=COUNT_LIMIT)
            records = self.serializer.records(conn, entity, page.rows, opts.select, opts.expand, annotations)
        payload: dict[str, Any] = {"@odata.context": self.context(self._context_fragment(entity, opts))}
        if annotations:
            if annotations.wants("Microsoft.Dynamics.CRM.totalrecordcount"):
                payload["@Microsoft.Dynamics.CRM.totalrecordcount"] = page.count if page.count is not None else -1
            if annotations.wants("Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"):
                payload["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = (page.count or 0) >= COUNT_LIMIT
        if page.count is not None:
            payload["@odata.count"] = page.count
        payload["value"] = records
        if page.has_more:
            payload["@odata.nextLink"] = self._next_link(req, entity, opts, page, cookie.page + 1, tracking_version)
        elif tracking_version is not None:
            payload["@odata.deltaLink"] = self._link(req, {"$deltatoken": self._deltatoken(tracking_version)})
        headers = self._applied(prefs, preferred, page_size, annotations)
        return Result.json(200, payload, headers)

    def _applied(self, prefs, preferred, page_size, annotations) -> list[tuple[str, str]]:
        applied = []
        if preferred:
            applied.append(f"odata.maxpagesize={page_size}")
        if annotations:
            applied.append(f"odata.include-annotations={prefs['odata.include-annotations']}")
        if "odata.track-changes" in prefs:
            applied.append("odata.track-changes")
        return [("Preference-Applied", ",".join(applied))] if applied else []

    def _context_fragment(self, entity: EntityType, opts: QueryOptions, suffix: str = "") -> str:
        parts = list(opts.select or [])
        for item in opts.expand:
            inner = ",".join(item.options.select or [])
            parts.append(f"{item.name}({inner})")
        return entity.set_name + (f"({','.join(parts)})" if parts else "") + suffix

    def _link(self, req: Request, extra: dict[str, str]) -> str:
        args = [(k, v) for k, v in req.args.items(multi=True) if k not in ("$skiptoken", "$deltatoken", *extra)]
        args.extend(extra.items())
        query = urlencode(args, quote_via=quote, safe="$,()'=@/:*")
        return f"{self.service_root}/{req.path}?{query}"

    def _next_link(self, req: Request, entity: EntityType, opts: QueryOptions, page, page_number: int,
                   tracking: int | None) -> str:
        extra = {"$skiptoken": paging_cookie(entity, opts, page.rows, page_number, tracking)}
        if opts.top is not None:
            extra["$top"] = str(opts.top - len(page.rows))
        return self._link(req, extra)

    def _read_skiptoken(self, entity: EntityType, opts: QueryOptions, token: str | None) -> PagingCookie:
        if token is None:
            return PagingCookie(page=1, last=None, tracking=None)
        try:
            return read_paging_cookie(entity, opts, token)
        except (ValueError, KeyError, ArithmeticError, ElementTree.ParseError, engine.ODataError) as error:
            raise DataverseError(400, exc.INVALID_ARGUMENT, "The $skiptoken value is not valid.") from error

    def _deltatoken(self, version: int) -> str:
        return f"{version}!{self.backend.store.clock.now().strftime('%m/%d/%Y %H:%M:%S')}"

    def delta(self, req: Request, entity: EntityType) -> Result:
        token = req.args.get("$deltatoken", "")
        m = re.match(r"^(\d{1,19})!", token)
        if not m or int(m.group(1)) > MAX_ROW_VERSION:  # row versions are SQL bigints
            raise DataverseError(400, exc.INVALID_ARGUMENT, "The $deltatoken value is not valid.")
        since = int(m.group(1))
        opts = self._options(req, entity)
        with self.connection(False) as conn:
            now_version, rows, deleted = self.backend.changes_since(conn, entity, since)
            records = self.serializer.records(conn, entity, rows, opts.select, [], Annotations(None))
        live = {r[entity.key] for r in rows}
        value = records + [
            {"@odata.context": self.context(f"{entity.set_name}/$deletedEntity"), "id": key, "reason": "deleted"}
            for key in deleted if key not in live
        ]
        payload = {
            "@odata.context": self.context(self._context_fragment(entity, opts, "/$delta")),
            "@odata.deltaLink": self._link(req, {"$deltatoken": self._deltatoken(now_version)}),
            "value": value,
        }
        return Result.json(200, payload, [("Preference-Applied", "odata.track-changes")])

    # -- single records ----------------------------------------------------------------------
    def _find(self, conn: Connection, entity: EntityType, segment: Segment) -> Row | None:
        key = parse_key(segment.key or "")
        return self.backend.find_by_key(conn, entity, key)

    def _entity_id(self, entity: EntityType, row: Row) -> str:
        return f"{self.service_root}/{entity.set_name}({row[entity.key]})"

    def single(self, req: Request, entity: EntityType, head: Segment, rest: list[Segment]) -> Result:
        if head.key == "":
            raise DataverseError(400, exc.INVALID_ARGUMENT, "Bad Request - Error in query syntax: empty key.")
        if rest:
            return self.record_path(req, entity, head, rest)
        if req.method == "GET":
            return self.retrieve(req, entity, head)
        if req.method == "PATCH":
            return self.upsert(req, entity, head)
        if req.method == "DELETE":
            return self.delete(req, entity, head)
        raise DataverseError(405, "", f"The requested resource does not support http method '{req.method}'.")

    def retrieve(self, req: Request, entity: EntityType, head: Segment) -> Result:
        prefs = parse_prefer(req.headers)
        opts = self._options(req, entity)
        annotations = Annotations(prefs.get("odata.include-annotations"))
        with self.connection(False) as conn:
            self.backend.check_query(entity, opts.select, opts.expand)
            row = self._find(conn, entity, head)
            if row is None:
                raise exc.not_found(entity.name, head.key)
            if_none = req.headers.get("If-None-Match")
            assert entity.version_property is not None, "every Dataverse table has a versionnumber"
            if (if_none and if_none != "null" and not opts.expand and not annotations
                    and parse_etag(if_none) == row.get(entity.version_property)):
                return Result(304, [("ETag", etag(entity, row) or "")])
            self.backend.expand(conn, entity, [row], opts.expand)
            record = self.serializer.records(conn, entity, [row], opts.select, opts.expand, annotations)[0]
        payload = {"@odata.context": self.context(self._context_fragment(entity, opts, "/$entity")), **record}
        headers = [("ETag", etag(entity, row) or "")]
        if annotations:
            headers.append(("Preference-Applied", f"odata.include-annotations={prefs['odata.include-annotations']}"))
        return Result.json(200, payload, headers)

    def _body(self, req: Request) -> Any:
        try:
            return parse_json(req.body)
        except InvalidJson as error:
            if error.reason == "empty":
                raise exc.bad_request("The request body is empty; a JSON object is expected.") from None
            raise exc.bad_request(f"Error identified in Payload provided by the user for Entity: {error.message}") \
                from None

    def _representation(self, conn: Connection, entity: EntityType, row: Row, status: int,
                        opts: QueryOptions) -> Result:
        """The written row as ``return=representation`` shows it; built inside the write transaction,
        so a failure here rolls the write back instead of answering an error for a committed row."""
        self.backend.expand(conn, entity, [row], opts.expand)
        record = self.serializer.records(conn, entity, [row], opts.select, opts.expand, Annotations(None))[0]
        payload = {"@odata.context": self.context(self._context_fragment(entity, opts, "/$entity")), **record}
        return Result.json(status, payload, [("Preference-Applied", "return=representation"),
                                             ("ETag", etag(entity, row) or "")])

    def _write_options(self, req: Request, entity: EntityType) -> QueryOptions:
        """Query options of a write, validated before anything is written."""
        opts = self._options(req, entity)
        self.backend.check_query(entity, opts.select, opts.expand)
        return opts

    def create(self, req: Request, entity: EntityType) -> Result:
        body = self._body(req)
        prefs = parse_prefer(req.headers)
        opts = self._write_options(req, entity)
        with self.connection(True) as conn:
            row = self.backend.create(conn, entity, body, caller=req.caller)
            if prefs.get("return") == "representation":
                return self._representation(conn, entity, row, 201, opts)
        return Result(204, [("OData-EntityId", self._entity_id(entity, row))])

    def upsert(self, req: Request, entity: EntityType, head: Segment) -> Result:
        body = self._body(req)
        prefs = parse_prefer(req.headers)
        opts = self._write_options(req, entity)
        if_none = req.headers.get("If-None-Match")
        key = parse_key(head.key or "")
        with self.connection(True) as conn:
            row, created = self.backend.upsert(
                conn, entity, key, body, caller=req.caller, if_match=req.headers.get("If-Match"),
                if_none_match=None if if_none in (None, "null") else if_none,
            )
            if prefs.get("return") == "representation":
                return self._representation(conn, entity, row, 201 if created else 200, opts)
        return Result(204, [("OData-EntityId", f"{self.service_root}/{entity.set_name}({head.key})")])

    def delete(self, req: Request, entity: EntityType, head: Segment) -> Result:
        if_match = req.headers.get("If-Match")
        version = parse_etag(if_match) if if_match and if_match != "*" else None
        with self.connection(True) as conn:
            row = self._find(conn, entity, head)
            if row is None:
                raise exc.not_found(entity.name, head.key)
            if if_match and if_match != "*" and version is None:
                raise DataverseError(412, exc.CONCURRENCY_VERSION_MISMATCH,
                                     "The version of the existing record doesn't match the RowVersion property provided.")
            self.backend.delete(conn, entity, row[entity.key], if_version=version, caller=req.caller)
        return Result(204)

    # -- property and navigation paths -------------------------------------------------------
    def record_path(self, req: Request, entity: EntityType, head: Segment, rest: list[Segment]) -> Result:
        first = rest[0]
        if first.key is None and (prop := entity.property(first.name)) is not None and not prop.hidden:
            if len(rest) > 1 and not (len(rest) == 2 and rest[1].name == "$value"):
                raise exc.segment_not_found(rest[1].name)
            return self.property_value(req, entity, head, prop.name, raw=len(rest) == 2)
        nav = entity.navigation(first.name)
        if nav is None:
            raise exc.segment_not_found(first.name)
        with self.connection(req.method != "GET") as conn:
            row = self._find(conn, entity, head)
            if row is None:
                raise exc.not_found(entity.name, head.key)
            target = self.schema.entity(nav.target)
            assert target is not None
            tail = [s.name for s in rest[1:]]
            if tail == ["$ref"] or (first.key is not None and tail == ["$ref"]):
                return self.reference(req, conn, entity, row, nav, first)
            if req.method != "GET":
                raise DataverseError(405, "", f"The requested resource does not support http method '{req.method}'.")
            opts = self._options(req, target)
            if not nav.collection:
                related = self.backend.related(conn, entity, row, nav)
                if related is None:
                    return Result(204)
                self.backend.expand(conn, target, [related], opts.expand)
                record = self.serializer.records(conn, target, [related], opts.select, opts.expand, Annotations(None))[0]
                return Result.json(200, {"@odata.context": self.context(self._context_fragment(target, opts, "/$entity")),
                                         **record})
            if tail == ["$count"]:
                n = self.backend.related_count(conn, entity, row, nav)
                return Result(200, [("Content-Type", "text/plain")], ("\ufeff" + str(n)).encode("utf-8"))
            page_size, preferred = self._page_size(parse_prefer(req.headers))
            cookie = self._read_skiptoken(target, opts, req.args.get("$skiptoken"))
            page = self.backend.related_page(conn, entity, row, nav, opts, page_size=page_size, after=cookie.last,
                                             count_cap=COUNT_LIMIT)
            records = self.serializer.records(conn, target, page.rows, opts.select, opts.expand, Annotations(None))
        payload: dict[str, Any] = {"@odata.context": self.context(self._context_fragment(target, opts))}
        if page.count is not None:
            payload["@odata.count"] = page.count
        payload["value"] = records
        if page.has_more:
            payload["@odata.nextLink"] = self._next_link(req, target, opts, page, cookie.page + 1, None)
        return Result.json(200, payload, [("Preference-Applied", f"odata.maxpagesize={page_size}")] if preferred else [])

    def property_value(self, req: Request, entity: EntityType, head: Segment, name: str, raw: bool) -> Result:
        prop = entity.property(name)
        assert prop is not None
        if req.method == "GET":
            with self.connection(False) as conn:
                row = self._find(conn, entity, head)
                if row is None:
                    raise exc.not_found(entity.name, head.key)
            value = to_json(prop, row.get(name))
            if raw:
                if value is None:
                    return Result(204)
                return Result(200, [("Content-Type", "text/plain")], str(value).encode())
            if value is None:
                return Result(204)
            return Result.json(200, {"@odata.context": self.context(f"{entity.set_name}({row[entity.key]})/{name}"),
                                     "value": value})
        if req.method in ("PUT", "DELETE"):
            if req.method == "PUT":
                body = self._body(req)
                if not isinstance(body, dict) or "value" not in body:
                    raise exc.bad_request("A PUT to a property expects a body of the form {\"value\": …}.")
                value = body["value"]
            else:
                value = None
            with self.connection(True) as conn:
                row = self._find(conn, entity, head)
                if row is None:
                    raise exc.not_found(entity.name, head.key)
                self.backend.update(conn, entity, row[entity.key], {name: value}, caller=req.caller)
            return Result(204)
        raise DataverseError(405, "", f"The requested resource does not support http method '{req.method}'.")

    def reference(self, req: Request, conn: Connection, entity: EntityType, row: Row, nav, segment: Segment) -> Result:
        target = self.schema.entity(nav.target)
        assert target is not None
        if req.method == "GET":
            if nav.collection:
                rows = self.backend.related_rows(conn, entity, row, nav)
                return Result.json(200, {"@odata.context": self.context("Collection($ref)"),
                                         "value": [{"@odata.id": self._entity_id(target, r)} for r in rows]})
            if not row.get(nav.via):
                return Result(204)
            return Result.json(200, {"@odata.context": self.context("$ref"),
                                     "@odata.id": f"{self.service_root}/{target.set_name}({row[nav.via]})"})
        if req.method in ("PUT", "POST"):
            body = self._body(req)
            if not isinstance(body, dict) or not isinstance(body.get("@odata.id"), str):
                raise exc.bad_request("A $ref request expects a body of the form {\"@odata.id\": \"…\"}.")
            ref_entity, ref_row = self.backend.resolve_reference(conn, body["@odata.id"])
            if ref_entity.name != target.name:
                raise exc.bad_request(f"The reference must point to a '{target.name}' record.")
            if nav.collection:
                self.backend.associate(conn, entity, row, nav, ref_row, caller=req.caller)
            else:
                self.backend.update(conn, entity, row[entity.key],
                                    {f"{nav.name}@odata.bind": f"/{target.set_name}({ref_row[target.key]})"},
                                    caller=req.caller)
            return Result(204)
        if req.method == "DELETE":
            if nav.collection:
                ref_id = segment.key or req.args.get("$id")
                if not ref_id:
                    raise exc.bad_request("Disassociating a collection requires the related record id.")
                self.backend.disassociate(conn, entity, row, nav, ref_id)
            else:
                self.backend.update(conn, entity, row[entity.key], {f"{nav.name}@odata.bind": None}, caller=req.caller)
            return Result(204)
        raise DataverseError(405, "", f"The requested resource does not support http method '{req.method}'.")

    # -- bulk actions ------------------------------------------------------------------------
    def bulk(self, req: Request, entity: EntityType, action: str) -> Result:
        self.backend.check_message(entity, action)
        body = self._body(req)
        targets = body.get("Targets") if isinstance(body, dict) else None
        if not isinstance(targets, list) or not targets:
            raise exc.bad_request(f"{action} requires a non-empty 'Targets' array.")
        expected = f"Microsoft.Dynamics.CRM.{entity.name}"
        for target in targets:
            if not isinstance(target, dict):
                raise exc.bad_request("Each item in 'Targets' must be a JSON object.")
            odata_type = target.get("@odata.type")
            if not isinstance(odata_type, str) or odata_type.lstrip("#") != expected:
                raise exc.bad_request(f"Each item in 'Targets' must have \"@odata.type\": \"{expected}\".")
        if action == "CreateMultiple":
            with self.connection(True) as conn:
                rows = self.backend.create_many(conn, entity, targets, caller=req.caller)
            return Result.json(200, {"@odata.context": self.context("Microsoft.Dynamics.CRM.CreateMultipleResponse"),
                                     "Ids": [row[entity.key] for row in rows]})
        keyed = [(self._target_key(entity, target), {k: v for k, v in target.items() if k != "@odata.id"})
                 for target in targets]
        with self.connection(True) as conn:
            # UpdateMultiple never creates: an If-Match of "*" on each target says exactly that.
            upserted = self.backend.upsert_many(conn, entity, keyed, caller=req.caller,
                                                if_match="*" if action == "UpdateMultiple" else None)
        if action == "UpsertMultiple":
            return Result.json(200, {"@odata.context": self.context("Microsoft.Dynamics.CRM.UpsertMultipleResponse"),
                                     "Results": [{"RecordCreated": created, "RecordId": row[entity.key]}
                                                 for row, created in upserted]})
        return Result(204)

    @staticmethod
    def _target_key(entity: EntityType, target: dict[str, Any]) -> KeyPredicate:
        """The record an UpsertMultiple/UpdateMultiple target names: its ``@odata.id`` or its id column."""
        odata_id = target.get("@odata.id")
        if odata_id is not None and not isinstance(odata_id, str):
            raise exc.bad_request("The @odata.id of an item in 'Targets' must be a URI string.")
        if odata_id:
            segs = split_path(odata_id.split("/api/data/v9.2/")[-1].lstrip("/"))
            if len(segs) != 1 or segs[0].name != entity.set_name or segs[0].key is None:
                raise exc.bad_request(f"Invalid @odata.id '{odata_id}' in Targets.")
            return parse_key(segs[0].key)
        if target.get(entity.key):
            return parse_key(str(target[entity.key]))
        raise exc.bad_request(f"Each item in 'Targets' must identify the record ({entity.key} or @odata.id).")

    # -- $batch ------------------------------------------------------------------------------
    @staticmethod
    def _sub_request(req: Request, inner: batch_protocol.InnerRequest) -> Request | None:
        """A batch request as a request of its own (None when its URL is outside the Web API root)."""
        path, _, query = batch_protocol.service_path(inner.url, API_PATH).partition("?")
        if not path.startswith(API_PATH):
            return None
        return Request(
            method=inner.method.upper(),
            path=unquote(path[len(API_PATH):].lstrip("/")),
            args=MultiDict(parse_qsl(query, keep_blank_values=True)),
            headers=inner.headers if isinstance(inner.headers, Headers) else Headers(inner.headers),
            body=inner.body,
            caller=req.caller,
        )

    @staticmethod
    def _inner_response(inner: batch_protocol.InnerRequest, result: Result) -> batch_protocol.InnerResponse:
        if result.status == 204 and any(h[0] == "OData-EntityId" for h in result.headers) and inner.method == "POST":
            result.headers.append(("Location", dict(result.headers)["OData-EntityId"]))
        return batch_protocol.InnerResponse(result.status, [("OData-Version", "4.0"), *result.headers], result.body)

    def _plain_write(self, req: Request, inner: batch_protocol.InnerRequest) -> _PlainWrite | None:
        """A batch request that may be written together with the like ones next to it: a create (POST
        of a JSON body to an entity set, no query options) or an upsert by id (PATCH of a JSON body to
        ``set(id)``, at most ``$select``, its own If-Match if any, no If-None-Match), with no headers
        beyond the content's and ``Prefer``. None for anything else (it runs on its own)."""
        method = inner.method.upper()
        allowed = _PLAIN_WRITE_HEADERS | {"if-match"} if method == "PATCH" else _PLAIN_WRITE_HEADERS
        if (method not in ("POST", "PATCH") or len(inner.url) > batch_protocol.MAX_URL_LENGTH
                or any(name.lower() not in allowed for name, _ in inner.headers.items())):
            return None
        path, _, query = batch_protocol.service_path(inner.url, API_PATH).partition("?")
        name = unquote(path[len(API_PATH):].strip("/")) if path.startswith(API_PATH + "/") else ""
        try:
            segments = split_path(name) if name else []
        except engine.ODataError:
            return None
        if len(segments) != 1 or self.schema.by_set(segments[0].name) is None:
            return None
        head = segments[0]
        if method == "POST" and (head.key is not None or query):
            return None
        if method == "PATCH" and (head.key is None or any(k != "$select" for k, _ in parse_qsl(query))):
            return None
        sub = self._sub_request(req, inner)
        assert sub is not None  # the path is under the Web API root
        try:
            body: dict[str, Any] | InvalidJson = parse_json(inner.body)
        except InvalidJson as error:
            body = error
        return _PlainWrite(f"{method} {head.name}?{query} {inner.headers.get('Prefer', '')}", inner, sub, head, body)

    def _write_together(self, req: Request, run: list[_PlainWrite]) -> list[batch_protocol.InnerResponse] | None:
        """A run of like writes (``_plain_write``) in one block: creates through ``create_many``, upserts
        through ``upsert_many``, each answered as ``create`` or ``upsert`` answers it alone; None when
        any of them fails."""
        first, heads = run[0].sub, [write.head for write in run]
        entity = self.schema.by_set(heads[0].name)
        assert entity is not None
        prefs = parse_prefer(first.headers)
        results: list[Result] = []
        try:
            opts = self._write_options(first, entity)
            bodies = [write.json() for write in run]
            with self.connection(True) as conn:
                if first.method == "POST":
                    written = [(row, True) for row in self.backend.create_many(conn, entity, bodies,
                                                                               caller=req.caller)]
                else:
                    keys = [parse_key(head.key or "") for head in heads]
                    written = self.backend.upsert_many(conn, entity, list(zip(keys, bodies, strict=True)),
                                                       caller=req.caller,
                                                       if_matches=[write.sub.headers.get("If-Match") for write in run])
                for (row, created), head in zip(written, heads, strict=True):
                    if prefs.get("return") == "representation":
                        results.append(self._representation(conn, entity, row, 201 if created else 200, opts))
                    elif first.method == "POST":
                        results.append(Result(204, [("OData-EntityId", self._entity_id(entity, row))]))
                    else:
                        results.append(Result(204, [("OData-EntityId",
                                                     f"{self.service_root}/{entity.set_name}({head.key})")]))
        except (InvalidJson, DataverseError, engine.ODataError):
            return None
        return [self._inner_response(write.inner, result) for write, result in zip(run, results, strict=True)]

    def batch(self, req: Request) -> Result:
        content_type = req.headers.get("Content-Type", "")
        try:
            parts = batch_protocol.parse_batch(req.body, content_type)
        except batch_protocol.BatchFormatError as error:
            raise DataverseError(error.status, error.code if error.code != "0x0" else exc.PAYLOAD_ERROR,
                                 error.message) from error
        prefs = parse_prefer(req.headers)

        def execute(inner: batch_protocol.InnerRequest) -> batch_protocol.InnerResponse:
            sub = self._sub_request(req, inner)
            if sub is None:
                return batch_protocol.error_response(400, exc.INVALID_ARGUMENT,
                                                     f"The URL '{inner.url}' is outside the Web API root.")
            if sub.path == "$batch":
                return batch_protocol.error_response(400, exc.NOT_SUPPORTED, "Nested $batch requests are not supported.")
            if len(inner.url) > batch_protocol.MAX_URL_LENGTH:
                return batch_protocol.error_response(
                    414, "", f"The request URL is {len(inner.url):,} characters long; inside a $batch the maximum "
                             f"is {batch_protocol.MAX_URL_LENGTH:,}.")
            return self._inner_response(inner, self.handle(sub))

        writes = any(inner.method.upper() != "GET" for part in parts
                     for inner in (part.requests if isinstance(part, batch_protocol.Changeset) else [part]))
        # Which requests may be written together, read before the write transaction starts: the
        # database takes one writer at a time, and this work needs none of it.
        plain = {id(inner): self._plain_write(req, inner) for inner in parts
                 if writes and self.group_creates and isinstance(inner, batch_protocol.InnerRequest)}

        def run_key(inner: batch_protocol.InnerRequest) -> str | None:
            write = plain.get(id(inner))
            return write.key if write else None

        together = batch_protocol.RunTogether(
            run_key, lambda run: self._write_together(req, [cast(_PlainWrite, plain[id(inner)]) for inner in run]))
        try:
            # With writes, one transaction for the batch and a savepoint for each request: a failed
            # request leaves nothing behind, the others keep their writes (visible when the batch ends).
            # Consecutive plain creates, or upserts by id, in one table are written together, answered
            # as one by one.
            with self.tx.shared() if writes else contextlib.nullcontext():
                outcome = batch_protocol.run_batch(
                    parts, continue_on_error="odata.continue-on-error" in prefs, execute=execute,
                    changeset_scope=self.changeset, request_scope=self.tx.apart if writes else None,
                    together=together if self.group_creates else None,
                )
        except batch_protocol.BatchFormatError as error:
            raise DataverseError(error.status, error.code, error.message) from error
        status, content_type, body = batch_protocol.render_batch_response(outcome)
        return Result(status, [("Content-Type", content_type)], body,
                      batch_operations=batch_protocol.count_operations(parts))

