"""The BC API v2.0 protocol: URL forms, companies, CRUD with BC's ETag rules, paging, JSON `$batch`.

``BCService.handle`` serves one request (plain or from a batch) without touching Flask.
"""

from __future__ import annotations

import contextvars
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from werkzeug.datastructures import Headers, MultiDict

from ..odata import errors as engine
from ..odata.csdl import render_csdl
from ..odata.jsonbody import InvalidJson, check_json, parse_json
from ..odata.protocol import Result, parse_max_page_size, parse_prefer
from ..odata.query import QueryOptions, parse_options
from ..odata.schema import EntityType, Schema
from ..odata.storage import Row
from ..odata.urlpath import Segment, parse_key, split_path
from ..odata.values import parse_guid
from . import exceptions as exc
from .exceptions import BCError
from .filters import BCFilters
from .models import BCBackend, Company
from .serializer import BCSerializer, parse_bc_etag
from .tables import entity_info

STANDARD_API: tuple[str, ...] = ("v2.0",)
SUCCESS_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true"
MAX_BATCH_OPERATIONS = 100
DEFAULT_MAX_PAGE_SIZE = 20_000
QUERY_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$skip", "$count", "$expand", "$skiptoken", "$schemaversion")
# OData system query options BC's stack knows and the sandbox does not emulate: refused, never ignored.
NOT_EMULATED = {"$apply": "aggregation with $apply", "$search": "$search", "$compute": "$compute",
                "$format": "formats other than JSON"}


@dataclass
class Request:
    method: str
    path: str  # full URL path, percent-decoded
    args: MultiDict
    headers: Headers
    body: bytes
    base_url: str  # scheme://host:port
    principal: dict[str, Any] = field(default_factory=dict)
    # A $batch operation's body arrives decoded inside its envelope: (value,), checked as a body when read.
    decoded: tuple[Any] | None = None


@dataclass
class Route:
    """Where a request landed: the service root and what follows it."""

    root_path: str  # e.g. /v2.0/<tenant>/production/api/v2.0
    api: tuple[str, ...]  # ("v2.0",) or (publisher, group, version)
    tenant: str | None
    environment: str | None
    rest: list[Segment]

    @property
    def custom(self) -> bool:
        return self.api != STANDARD_API


class BCService:
    def __init__(self, backend: BCBackend, *, tenant_aliases: set[str] | None = None,
                 max_page_size: int = DEFAULT_MAX_PAGE_SIZE, webhooks: Any = None) -> None:
        self.backend = backend
        self.schema: Schema = backend.schema
        self.tx = backend.transactions
        self.serializer = BCSerializer(self.schema)
        self.tenant_aliases = {t.lower() for t in (tenant_aliases or set())}
        self.max_page_size = max_page_size
        self.webhooks = webhooks
        self._csdl: dict[bool, str] = {}
        self._entity_sets: dict[bool, dict[str, EntityType]] = {}
        # A batch's consecutive writes run together (answers as one by one); off, each in its own savepoint.
        self.group_writes = True
        self._deferring: contextvars.ContextVar[bool] = contextvars.ContextVar(f"bc_deferring_{id(self)}",
                                                                               default=False)

    # -- entry point -------------------------------------------------------------------------
    def handle(self, req: Request) -> Result:
        correlation = str(uuid.uuid4())
        try:
            result = self._dispatch(req)
        except BCError as error:
            result = error.result(correlation)
        except engine.ODataError as error:
            result = exc.from_engine(error).result(correlation)
        return _with_request_id(result, correlation)

    # -- routing -----------------------------------------------------------------------------
    def route(self, path: str) -> Route:
        parts = [p for p in path.split("/") if p != ""]
        try:
            api_at = parts.index("api")
        except ValueError:
            raise exc.no_resource(path) from None
        prefix = parts[:api_at]
        tenant = environment = None
        if prefix[:1] == ["v2.0"] and len(prefix) == 2:
            environment = prefix[1]
        elif prefix[:1] == ["v2.0"] and len(prefix) == 3:
            tenant, environment = prefix[1], prefix[2]
        elif len(prefix) != 1:
            raise exc.no_resource(path)
        after = parts[api_at + 1:]
        if after[:1] == ["v2.0"]:
            api, rest_parts = STANDARD_API, after[1:]
        elif len(after) >= 3 and re.fullmatch(r"v\d+\.\d+", after[2]):
            api, rest_parts = tuple(after[:3]), after[3:]
        else:
            raise exc.no_resource(path)
        if environment is not None and environment.lower() != self.backend.environment.lower():
            raise EnvironmentMissing()
        if tenant is not None and self.tenant_aliases and tenant.lower() not in self.tenant_aliases:
            raise BCError(404, "BadRequest_NotFound", f"Tenant '{tenant}' was not found.")
        root = "/" + "/".join(parts[: api_at + 1 + len(api)])
        rest = split_path("/".join(rest_parts)) if rest_parts else []
        return Route(root, api, tenant, environment, rest)

    def _entities(self, route: Route) -> dict[str, EntityType]:
        """Entity sets served under this API route (standard v2.0 or the custom route); the schema is
        fixed, so each route's are found once."""
        sets = self._entity_sets.get(route.custom)
        if sets is None:
            sets = {entity.set_name: entity for entity in self.schema if entity.name != "company"
                    and (entity_info(entity).api_route == "custom") == route.custom}
            self._entity_sets[route.custom] = sets
        return sets

    def _dispatch(self, req: Request) -> Result:
        check_query_options(req.args)
        route = self.route(req.path)
        root_url = req.base_url + route.root_path
        rest = route.rest
        if not rest:
            if req.method != "GET":
                raise exc.no_resource(req.path)
            return self.service_document(route, root_url)
        head = rest[0]
        if head.name == "$metadata" and len(rest) == 1:
            return self.metadata(route)
        if head.name == "$batch" and len(rest) == 1:
            if req.method != "POST":
                raise exc.no_resource(req.path)
            return self.batch(req, route)
        if head.name == "subscriptions":
            return self.subscriptions(req, route, root_url, rest)
        if head.name == "companies":
            if head.key is None:
                if len(rest) > 1:
                    raise exc.resource_not_found(rest[1].name)
                return self.list_companies(req, root_url)
            company = self._company(head.key)
            if len(rest) == 1:
                return self.get_company(req, root_url, company)
            return self.entity_request(req, route, root_url, company, rest[1:], scoped_context=True)
        company_arg = req.args.get("company")
        if company_arg is None:
            raise exc.resource_not_found(head.name)
        found = self.backend.find_company(company_arg)
        if found is None:
            raise BCError(400, "Internal_CompanyNotFound", f"Cannot process the request because the company "
                                                          f"'{company_arg}' does not exist.")
        return self.entity_request(req, route, root_url, found, rest, scoped_context=False)

    def _company(self, key: str) -> Company:
        try:
            company_id = parse_guid(key)
        except engine.InvalidValue:
            raise BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.") from None
        company = self.backend.companies.get(company_id)
        if company is None:
            raise exc.resource_not_found("companies")
        return company

    # -- documents ---------------------------------------------------------------------------
    def service_document(self, route: Route, root_url: str) -> Result:
        names = ["companies", *sorted(self._entities(route)), "subscriptions"]
        value = [{"name": n, "kind": "EntitySet", "url": n} for n in names]
        return self._json(200, {"@odata.context": f"{root_url}/$metadata", "value": value})

    def metadata(self, route: Route) -> Result:
        if route.custom not in self._csdl:
            served = {e.name for e in self._entities(route).values()} | {self.backend.company_entity.name}
            keep = [e for e in self.schema if e.name in served]
            # navigations to entities outside this route are dropped from its document
            subset = Schema(self.schema.namespace, [_without_foreign_navs(e, keep) for e in keep])
            self._csdl[route.custom] = render_csdl(subset, container="NAV", enum_types=True)
        return Result(200, [("Content-Type", "application/xml")], self._csdl[route.custom].encode())

    def _json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Result:
        return Result.json(status, payload, headers, content_type=SUCCESS_TYPE)

    # -- companies ---------------------------------------------------------------------------
    @staticmethod
    def _read_only(entity: EntityType, req: Request) -> None:
        """A set its declaration marks read-only (companies) answers GET and nothing else."""
        if entity_info(entity).read_only and req.method != "GET":
            raise exc.method_not_allowed(req.method, entity.set_name)

    def list_companies(self, req: Request, root_url: str) -> Result:
        entity = self.backend.company_entity
        self._read_only(entity, req)
        opts = self._options(req, entity)
        with self.tx.connection(False) as conn:
            page = self.backend.query(conn, entity, None, opts)
        value = self.serializer.records(entity, page.rows, opts.select, [], "")
        payload: dict[str, Any] = {"@odata.context": f"{root_url}/$metadata#companies"}
        if page.count is not None:
            payload["@odata.count"] = page.count
        payload["value"] = value
        return self._json(200, payload)

    def get_company(self, req: Request, root_url: str, company: Company) -> Result:
        entity = self.backend.company_entity
        self._read_only(entity, req)
        opts = self._options(req, entity)
        with self.tx.connection(False) as conn:
            row = self.backend.company_row(conn, company)
        record = self.serializer.records(entity, [row], opts.select, [], "")[0]
        return self._json(200, {"@odata.context": f"{root_url}/$metadata#companies/$entity", **record})

    # -- entity sets ---------------------------------------------------------------------------
    def _options(self, req: Request, entity: EntityType) -> QueryOptions:
        opts = parse_options({k: v for k, v in req.args.items() if k in QUERY_OPTIONS})
        aliases = {k: v for k, v in req.args.items() if k.startswith("@")}
        BCFilters(self.schema, req.args.get("$schemaversion", "2.0"), aliases,
                  now=self.backend.store.clock.now).prepare_options(opts, entity)
        return opts

    def entity_request(self, req: Request, route: Route, root_url: str, company: Company, rest: list[Segment],
                       *, scoped_context: bool) -> Result:
        head = rest[0]
        entity = self._entities(route).get(head.name)
        if entity is None:
            raise exc.resource_not_found(head.name)
        self.backend.authorize(req.principal.get("appid"), req.method, entity)
        context_base = (f"{root_url}/$metadata#companies({company.id})/{entity.set_name}" if scoped_context
                        else f"{root_url}/$metadata#{entity.set_name}")
        location_base = (f"{root_url}/companies({company.id})/{entity.set_name}" if scoped_context
                         else f"{root_url}/{entity.set_name}")
        if head.key is None:
            if len(rest) == 2 and rest[1].name == "$count" and rest[1].key is None and req.method == "GET":
                return self.count(req, entity, company)
            if len(rest) > 1:
                raise exc.resource_not_found(rest[1].name)
            if req.method == "GET":
                return self.list_records(req, entity, company, context_base)
            if req.method == "POST":
                return self.create(req, entity, company, context_base, location_base)
            raise exc.method_not_allowed(req.method, entity.set_name)
        key = self._key(entity, head.key)
        if len(rest) > 1:
            return self.navigation(req, entity, company, key, rest[1:], root_url)
        if req.method == "GET":
            return self.retrieve(req, entity, company, key, context_base)
        if req.method == "PATCH":
            return self.update(req, entity, company, key, context_base)
        if req.method == "DELETE":
            return self.delete(req, entity, company, key)
        raise exc.method_not_allowed(req.method, entity.set_name)

    @staticmethod
    def _key(entity: EntityType, raw: str) -> str:
        try:
            predicate = parse_key(raw)
        except engine.ODataError:
            raise BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.") from None
        value = predicate.single if predicate.single is not None else predicate.named.get(entity.key)
        if value is None or predicate.single_quoted:
            raise BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.")
        try:
            return parse_guid(str(value))
        except engine.InvalidValue:
            raise BCError(400, "BadRequest_NotFound", "Bad Request - Error in query syntax.") from None

    def count(self, req: Request, entity: EntityType, company: Company) -> Result:
        opts = self._options(req, entity)
        opts.count, opts.top, opts.skip = True, None, None
        with self.tx.connection(False) as conn:
            page = self.backend.query(conn, entity, company.id, opts, page_size=0)
        return Result(200, [("Content-Type", "text/plain")], str(page.count).encode())

    def _page_size(self, req: Request) -> tuple[int, bool]:
        return parse_max_page_size(parse_prefer(req.headers), self.max_page_size)

    def list_records(self, req: Request, entity: EntityType, company: Company, context_base: str) -> Result:
        opts = self._options(req, entity)
        page_size, preferred = self._page_size(req)
        token = req.args.get("$skiptoken")
        with self.tx.connection(False) as conn:
            after = None
            if token is not None:
                try:
                    after = self.backend.get(conn, entity, company.id, parse_guid(token))
                except engine.InvalidValue:
                    after = None
                if after is None:
                    raise exc.bad_request("The $skiptoken value is not valid.")
            if not opts.orderby and entity.alternate_keys:
                opts.orderby = [(p, False) for p in entity.alternate_keys[0].properties]
            page = self.backend.query(conn, entity, company.id, opts, page_size=page_size, after=after)
        payload: dict[str, Any] = {"@odata.context": context_base + self._select_fragment(opts)}
        if page.count is not None:
            payload["@odata.count"] = page.count
        payload["value"] = self.serializer.records(entity, page.rows, opts.select, opts.expand, company.lcy)
        if page.has_more and page.rows:
            payload["@odata.nextLink"] = self._next_link(req, opts, page_size, page.rows[-1][entity.key])
        headers = [("Preference-Applied", f"odata.maxpagesize={page_size}")] if preferred else []
        return self._json(200, payload, headers)

    @staticmethod
    def _select_fragment(opts: QueryOptions) -> str:
        return f"({','.join(opts.select)})" if opts.select else ""

    def _next_link(self, req: Request, opts: QueryOptions, page_size: int, last_id: str) -> str:
        args: list[tuple[str, str]] = []
        for name, value in req.args.items(multi=True):
            if name in ("$skiptoken", "aid", "$skip"):
                continue
            if name == "$top" and opts.top is not None:
                value = str(max(opts.top - page_size, 0))
            args.append((name, value))
        args.extend([("aid", "FIN"), ("$skiptoken", last_id)])
        query = urlencode(args, quote_via=quote, safe="$,()'=@/:*")
        path = quote(req.path, safe="/()',=$@:")
        return f"{req.base_url}{path}?{query}"

    def retrieve(self, req: Request, entity: EntityType, company: Company, key: str, context_base: str) -> Result:
        opts = self._options(req, entity)
        with self.tx.connection(False) as conn:
            self.backend.check_query(entity, opts.select, opts.expand)
            row = self.backend.get(conn, entity, company.id, key)
            if row is None:
                raise exc.resource_not_found(entity.set_name)
            self.backend.expand(conn, entity, [row], opts.expand)
        record = self.serializer.records(entity, [row], opts.select, opts.expand, company.lcy)[0]
        return self._json(200, {"@odata.context": context_base + self._select_fragment(opts) + "/$entity",
                                **record})

    def navigation(self, req: Request, entity: EntityType, company: Company, key: str, rest: list[Segment],
                   root_url: str) -> Result:
        nav = entity.navigation(rest[0].name)
        if nav is None or len(rest) > 1 or rest[0].key is not None or nav.collection:
            raise exc.resource_not_found(rest[0].name)
        if req.method != "GET":
            raise exc.method_not_allowed(req.method, nav.name)
        target = self.backend.entity(nav.target)
        opts = self._options(req, target)
        with self.tx.connection(False) as conn:
            row = self.backend.get(conn, entity, company.id, key)
            if row is None:
                raise exc.resource_not_found(entity.set_name)
            related = self.backend.related(conn, entity, company.id, row, nav)
        if related is None:
            raise exc.resource_not_found(nav.name)
        record = self.serializer.records(target, [related], opts.select, [], company.lcy)[0]
        context = f"{root_url}/$metadata#companies({company.id})/{entity.set_name}({key})/{nav.name}/$entity"
        return self._json(200, {"@odata.context": context, **record})

    def _body(self, req: Request, *, allow_surrogates: bool = False) -> Any:
        try:
            if req.decoded is not None:
                return check_json(req.decoded[0], allow_surrogates=allow_surrogates)
            return parse_json(req.body, allow_surrogates=allow_surrogates)
        except InvalidJson:
            raise exc.bad_request("Invalid Request Body") from None

    def _changed(self, entity: EntityType, company: Company, row: Row, change: str, prefix: str) -> None:
        if self.webhooks is None or not entity_info(entity).webhooks:
            return
        hooks = self.webhooks
        modified_on = entity.modified_on
        assert modified_on is not None, "every BC table declares its modification time"

        def notify() -> None:
            hooks.record_change(company_id=company.id, entity_set=entity.set_name, record_id=row[entity.key],
                                change_type=change, modified_at=row.get(modified_on), api_prefix=prefix)

        self.tx.after_commit(notify)

    def create(self, req: Request, entity: EntityType, company: Company, context_base: str,
               location_base: str) -> Result:
        body = self._body(req)
        created = _Create(entity, company, body, context_base, location_base, self._api_prefix(req))
        if self._deferring.get():
            raise _Deferred(created)
        with self.tx.connection(True) as conn:
            row = self.backend.create(conn, entity, company.id, body)
            self._changed(entity, company, row, "created", created.api_prefix)
        return self._created(created, row)

    def _created(self, created: _Create, row: Row) -> Result:
        record = self.serializer.records(created.entity, [row], None, [], created.company.lcy)[0]
        location = f"{created.location_base}({row[created.entity.key]})"
        return self._json(201, {"@odata.context": created.context_base + "/$entity", **record},
                          [("Location", location)])

    def _if_match(self, req: Request, required: bool) -> tuple[bool, int | None]:
        """(present, expected version); `*` means present without a version."""
        value = req.headers.get("If-Match")
        if value is None or not value.strip():
            if required:
                raise exc.invalid_token()
            return False, None
        if value.strip() == "*":
            return True, None
        version = parse_bc_etag(value)
        if version is None:
            raise exc.invalid_token()
        return True, version

    def update(self, req: Request, entity: EntityType, company: Company, key: str, context_base: str) -> Result:
        _, version = self._if_match(req, required=True)
        body = self._body(req)
        updated = _Update(entity, company, key, body, version, context_base, self._api_prefix(req))
        if self._deferring.get():
            raise _Deferred(updated)
        with self.tx.connection(True) as conn:
            row = self.backend.update(conn, entity, company.id, key, body, if_version=version)
            self._changed(entity, company, row, "updated", updated.api_prefix)
        return self._updated(updated, row)

    def _updated(self, updated: _Update, row: Row) -> Result:
        record = self.serializer.records(updated.entity, [row], None, [], updated.company.lcy)[0]
        return self._json(200, {"@odata.context": updated.context_base + "/$entity", **record})

    def delete(self, req: Request, entity: EntityType, company: Company, key: str) -> Result:
        _, version = self._if_match(req, required=False)
        with self.tx.connection(True) as conn:
            row = self.backend.delete(conn, entity, company.id, key, if_version=version)
            self._changed(entity, company, row, "deleted", self._api_prefix(req))
        return Result(204)

    @staticmethod
    def _api_prefix(req: Request) -> str:
        parts = req.path.split("/")
        at = parts.index("api")
        version_at = at + 1 if parts[at + 1] == "v2.0" else at + 3
        return "/" + "/".join(parts[at: version_at + 1])

    # -- subscriptions -----------------------------------------------------------------------
    def subscriptions(self, req: Request, route: Route, root_url: str, rest: list[Segment]) -> Result:
        if self.webhooks is None:
            raise exc.resource_not_found("subscriptions")
        hooks = self.webhooks
        head = rest[0]
        if len(rest) > 1:
            raise exc.resource_not_found(rest[1].name)
        context = f"{root_url}/$metadata#subscriptions"
        if head.key is None:
            if req.method == "GET":
                return self._json(200, {"@odata.context": context, "value": hooks.list_subscriptions()})
            if req.method == "POST":
                body = self._body(req)
                self._check_subscription_company(body)
                created = hooks.create(body, user_id=req.principal.get("oid", ""),
                                       api_prefix=self._api_prefix(req))
                location = f"{root_url}/subscriptions('{created['subscriptionId']}')"
                return self._json(201, {"@odata.context": context + "/$entity", **created},
                                  [("Location", location)])
            raise exc.method_not_allowed(req.method, "subscriptions")
        sub_id = head.key.strip("'")
        if req.method == "GET":
            return self._json(200, {"@odata.context": context + "/$entity", **hooks.get(sub_id)})
        if req.method == "PATCH":
            renewed = hooks.renew(sub_id, self._body(req), req.headers.get("If-Match"))
            return self._json(200, {"@odata.context": context + "/$entity", **renewed})
        if req.method == "DELETE":
            hooks.delete(sub_id, req.headers.get("If-Match"))
            return Result(204)
        raise exc.method_not_allowed(req.method, "subscriptions")

    def _check_subscription_company(self, body: Any) -> None:
        """A subscription must name a company of this environment, or it could never fire."""
        resource = body.get("resource") if isinstance(body, dict) else None
        m = re.search(r"companies\(([^)]*)\)", resource) if isinstance(resource, str) else None
        if m is None:
            return
        try:
            known = parse_guid(m.group(1)) in self.backend.companies
        except engine.InvalidValue:
            known = False
        if not known:
            raise BCError(400, "BadRequest", f"The company '{m.group(1)}' in the resource does not exist.")

    # -- $batch ------------------------------------------------------------------------------
    def batch(self, req: Request, route: Route) -> Result:
        # Inner bodies are read again one by one, so one bad body fails its own request only.
        body = self._body(req, allow_surrogates=True)
        requests_ = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests_, list):
            raise exc.bad_request("Invalid Request Body: a JSON batch needs a 'requests' array.")
        if len(requests_) > MAX_BATCH_OPERATIONS:
            raise exc.bad_request(f"The batch contains {len(requests_)} requests; the maximum is "
                                  f"{MAX_BATCH_OPERATIONS}.")
        atomic = req.headers.get("Isolation", "").lower() == "snapshot"
        company_arg = req.args.get("company")
        responses: list[dict[str, Any]] = []

        def run_all() -> bool:
            failed = False
            for item in requests_:
                outcome = self._batch_item(req, route, item, company_arg)
                failed = failed or outcome["status"] >= 400
                responses.append(outcome)
            return failed

        def run_alone(item: Any) -> None:
            with self.tx.apart() as undo:
                outcome = self._batch_item(req, route, item, company_arg)
                if outcome["status"] >= 400:
                    undo()
            responses.append(outcome)

        def run_in_turn(items: list[Any]) -> None:
            """Operations in one savepoint, one after the other, as long as each succeeds; at the first
            that fails, all of them are undone and go one by one after all (the same answers: each
            sees what the ones before it left, as it would alone)."""
            if len(items) < 2:
                for item in items:
                    run_alone(item)
                return
            outcomes: list[dict[str, Any]] = []
            failed = False
            with self.tx.apart() as undo:
                for item in items:
                    outcomes.append(self._batch_item(req, route, item, company_arg))
                    if outcomes[-1]["status"] >= 400:
                        failed = True
                        undo()
                        break
            if not failed:
                responses.extend(outcomes)
                return
            for item in items:
                run_alone(item)

        def run_each_apart() -> None:
            """Each operation stands alone: a failed one leaves nothing behind, the others keep their writes
            (one transaction for the batch, a savepoint for each operation, so the batch's writes become
            visible to other clients together, when it ends). Consecutive creates in one entity set and
            company are written together (one savepoint, one INSERT), and so are consecutive updates of
            distinct records of one entity set and company (one UPDATE); other consecutive operations run
            in one savepoint, answered as if one by one. If any of them fails, the run is rolled back and
            its operations go one by one after all."""
            run: list[tuple[Any, _Create | _Update]] = []
            run_keys: set[str] = set()  # the records the run's updates write (a record joins a run once)
            others: list[Any] = []

            def flush() -> None:
                if run and isinstance(run[0][1], _Create):
                    together = self._create_together([op for _, op in run if isinstance(op, _Create)]) \
                        if len(run) > 1 else None
                    if together is None:
                        for item, _ in run:
                            run_alone(item)
                else:
                    together = self._update_together([op for _, op in run if isinstance(op, _Update)]) \
                        if len(run) > 1 else None
                    if together is None:
                        run_in_turn([item for item, _ in run])
                if together is not None:
                    responses.extend(self._outcome(item, result) for (item, _), result in zip(run, together,
                                                                                              strict=True))
                run.clear()
                run_keys.clear()
                run_in_turn(others)
                others.clear()

            def joins(op: _Create | _Update) -> bool:
                if not run or type(run[0][1]) is not type(op) or (run[0][1].entity, run[0][1].company.id) != (
                        op.entity, op.company.id):
                    return False
                return not isinstance(op, _Update) or op.key.lower() not in run_keys  # the run's ops share a type

            def add(item: Any, op: _Create | _Update) -> None:
                run.append((item, op))
                if isinstance(op, _Update):
                    run_keys.add(op.key.lower())

            for item in requests_:
                if not self.group_writes:
                    run_alone(item)
                    continue
                deferred = self._deferred_write(req, route, item, company_arg)
                if deferred is not None and joins(deferred):
                    add(item, deferred)
                    continue
                if run or deferred is not None:
                    flush()
                if deferred is not None:
                    add(item, deferred)
                else:
                    others.append(item)
            flush()

        if atomic:
            try:
                with self.tx.shared():
                    if run_all():
                        raise _RollBack()
            except _RollBack:
                pass
        elif any(not isinstance(item, dict) or str(item.get("method", "")).upper() != "GET" for item in requests_):
            with self.tx.shared():
                run_each_apart()
        else:  # reads only: no write transaction
            run_all()
        result = self._json(200, {"responses": responses})
        result.batch_operations = len(requests_)
        return result

    def _deferred_write(self, req: Request, route: Route, item: Any,
                        company_arg: str | None) -> _Create | _Update | None:
        """The create or update this batch operation is, routed and checked like any request but not yet
        written; None for anything else (it then runs on its own). Only a POST to a plain entity set URL
        or a PATCH of one record of an entity set can be one, so nothing here writes."""
        method = str(item.get("method", "")).upper() if isinstance(item, dict) else ""
        if method not in ("POST", "PATCH"):
            return None
        url = item.get("url")
        last = url.partition("?")[0].rstrip("/").rsplit("/", 1)[-1] if isinstance(url, str) else ""
        name, keyed, _ = last.partition("(")
        if not name or "." in name or name in ("subscriptions", "$batch", "companies") or \
                keyed != ("(" if method == "PATCH" else "") or not last.endswith(")" if keyed else name):
            return None
        inner = self._inner_request(req, route, item, company_arg)
        if not isinstance(inner, Request):
            return None
        token = self._deferring.set(True)
        try:
            self.handle(inner)
        except _Deferred as deferred:
            return deferred.write
        finally:
            self._deferring.reset(token)
        return None

    def _create_together(self, run: list[_Create]) -> list[Result] | None:
        """The creates of a run written in one block, answered each as ``create`` answers; None when any
        of them fails (nothing of the run is left behind)."""
        first = run[0]
        try:
            with self.tx.apart():
                with self.tx.connection(True) as conn:
                    rows = self.backend.create_many(conn, first.entity, first.company.id, [c.body for c in run])
                for created, row in zip(run, rows, strict=True):
                    self._changed(created.entity, created.company, row, "created", created.api_prefix)
        except (BCError, engine.ODataError):
            return None
        return [_with_request_id(self._created(created, row), str(uuid.uuid4())) for created, row in zip(run, rows,
                                                                                                        strict=True)]

    def _update_together(self, run: list[_Update]) -> list[Result] | None:
        """The updates of a run written with one statement, answered each as ``update`` answers; None when
        any of them is not a plain update or fails (nothing of the run is left behind)."""
        first = run[0]
        try:
            with self.tx.apart():
                with self.tx.connection(True) as conn:
                    rows = self.backend.update_many(conn, first.entity, first.company.id,
                                                    [(u.key, u.body, u.if_version) for u in run])
                if rows is None:
                    return None
                for updated, row in zip(run, rows, strict=True):
                    self._changed(updated.entity, updated.company, row, "updated", updated.api_prefix)
        except (BCError, engine.ODataError):
            return None
        return [_with_request_id(self._updated(updated, row), str(uuid.uuid4())) for updated, row in zip(
            run, rows, strict=True)]

    def _batch_item(self, req: Request, route: Route, item: Any, company_arg: str | None) -> dict[str, Any]:
        inner = self._inner_request(req, route, item, company_arg)
        if not isinstance(inner, Request):
            return inner
        if inner.path.rstrip("/").endswith("$batch"):
            result = exc.bad_request("Nested $batch requests are not supported.").result(str(uuid.uuid4()))
        else:
            result = self.handle(inner)
        return self._outcome(item, result)

    def _inner_request(self, req: Request, route: Route, item: Any,
                       company_arg: str | None) -> Request | dict[str, Any]:
        """A batch operation as a request of its own, or its error outcome when it is malformed."""
        if not isinstance(item, dict) or not isinstance(item.get("method"), str) or not isinstance(
                item.get("url"), str):
            return _batch_item_error(item, "Each batch request needs 'method' and 'url'.")
        if not isinstance(item.get("headers", {}), dict | None):
            return _batch_item_error(item, "The 'headers' of a batch request must be a JSON object.")
        headers = Headers()
        for name, value in (item.get("headers") or {}).items():
            if not isinstance(value, str | int | float | bool) or "\n" in str(value) or "\r" in str(value):
                return _batch_item_error(item, f"The batch request header '{name}' must be a single-line string.")
            headers[str(name)] = str(value)
        url = item["url"]
        if "://" in url:
            try:
                split = urlsplit(url)
            except ValueError:
                return _batch_item_error(item, f"The batch request URL '{url[:200]}' is not a valid URL.")
            path, query = split.path, split.query
        else:
            raw_path, _, query = url.partition("?")
            path = raw_path if raw_path.startswith("/") else f"{route.root_path}/{raw_path}"
        args = MultiDict(parse_qsl(query, keep_blank_values=True))
        company = headers.get("Company") or headers.get("CompanyId") or company_arg
        if company and "company" not in args and "/companies(" not in path:
            args["company"] = company
        body = item.get("body")
        return Request(method=item["method"].upper(), path=unquote(path), args=args, headers=headers,
                       body=b"", base_url=req.base_url, principal=req.principal,
                       decoded=(body,) if body is not None else None)

    @staticmethod
    def _outcome(item: dict[str, Any], result: Result) -> dict[str, Any]:
        """A batch operation's answer, as the batch response lists it."""
        out_headers = {k.lower(): v for k, v in result.headers if k.lower() != "content-length"}
        if result.has_body:
            out_headers.setdefault("odata-version", "4.0")
        outcome: dict[str, Any] = {"id": item.get("id"), "status": result.status, "headers": out_headers}
        if result.has_body:
            try:
                outcome["body"] = result.payload if result.payload is not None else json.loads(result.body)
            except ValueError:
                outcome["body"] = result.body.decode("utf-8", "replace")
        return outcome


def check_query_options(args: MultiDict) -> None:
    """BC's OData stack refuses `$` options it does not know; the sandbox also refuses those it does not emulate.

    Other parameters (``company``, ``tenant``, ``aid``, parameter aliases) pass, as custom query options do.
    """
    for name in args:
        if not name.startswith("$") or name in QUERY_OPTIONS:
            continue
        if name == "$format" and args.get(name, "").lower() in ("json", "application/json"):
            continue  # the only format there is
        what = NOT_EMULATED.get(name)
        if what is not None:
            raise exc.bad_request(f"The query parameter '{name}' is not supported by the sandbox: it does not "
                                  f"emulate {what}.")
        raise exc.bad_request(f"The query parameter '{name}' is not supported.")


def _with_request_id(result: Result, correlation: str) -> Result:
    if result.header("request-id") is None:
        result.headers.append(("request-id", correlation))
    return result


@dataclass(frozen=True)
class _Create:
    """A create, routed and checked, with what its answer needs."""

    entity: EntityType
    company: Company
    body: Any
    context_base: str
    location_base: str
    api_prefix: str


@dataclass(frozen=True)
class _Update:
    """An update, routed and checked as far as the request goes, with what its answer needs."""

    entity: EntityType
    company: Company
    key: str
    body: Any
    if_version: int | None
    context_base: str
    api_prefix: str


class _Deferred(Exception):
    """Raised by ``create`` and ``update`` while a batch collects a run of them to write together."""

    def __init__(self, write: _Create | _Update) -> None:
        super().__init__(write.entity.set_name)
        self.write = write


def _batch_item_error(item: Any, message: str) -> dict[str, Any]:
    error = exc.bad_request(message).result(str(uuid.uuid4()))
    return {"id": item.get("id") if isinstance(item, dict) else None, "status": 400, "headers": {},
            "body": json.loads(error.body)}


class EnvironmentMissing(BCError):
    """The environment segment names no environment of this tenant (answered in XML, as SaaS does)."""

    def __init__(self) -> None:
        super().__init__(404, "NoEnvironment", "Environment does not exist.")

    def result(self, correlation_id: str | None = None) -> Result:
        body = ('<?xml version="1.0" encoding="utf-8"?><error xmlns="http://docs.oasis-open.org/odata/ns/metadata">'
                f"<code>{self.code}</code><message>{self.message}</message></error>")
        return Result(self.status, [("Content-Type", "application/xml")], body.encode())


class _RollBack(Exception):
    pass


def _without_foreign_navs(entity: EntityType, keep: list[EntityType]) -> EntityType:
    names = {e.name for e in keep}
    if all(n.target in names for n in entity.navigations):
        return entity
    return replace(entity, navigations=[n for n in entity.navigations if n.target in names])

