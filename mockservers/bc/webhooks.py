"""BC API v2.0 webhooks: subscriptions (with the validationToken handshake) and notification delivery.

Business Central keeps subscriptions in a table, queues one notification per changed record, waits a
while after the first change so repeated updates collapse into one item, then POSTs one
``{"value": [...]}`` body per notification URL. Failures it may retry (408, 429, 5xx, no answer) are
rescheduled; any other answer deletes the subscription. This module reproduces that for the mock BC
app, which calls :meth:`Webhooks.record_change` after each committed write.

Pending notifications live in memory (a restarted mock forgets them); subscriptions are persisted.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import sqlalchemy as sa

from ..counters import Counters
from ..odata.values import format_datetime
from ..rpc import Host, Remote
from .exceptions import BCError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

CHANGE_TYPES = ("created", "updated", "deleted")
MAX_CLIENT_STATE = 2048
# BC's sender waits 1, 1, 1, 10, 100, then 1000 minutes between attempts (GetDelayTimeForAttempt);
# the docs promise retries "over the next 36 hours", which two 1000-minute waits roughly make.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (60, 60, 60, 600, 6_000, 60_000, 60_000)
# BC subtracts 50 ms from the first change when it builds a collection filter (SQL rounds differently).
COLLECTION_FILTER_SLACK = timedelta(milliseconds=50)

_WRITABLE = ("notificationUrl", "resource", "clientState")
_READ_ONLY = (
    "subscriptionId", "userId", "lastModifiedDateTime", "expirationDateTime", "timestamp",
    "systemCreatedAt", "systemCreatedBy", "systemModifiedAt", "systemModifiedBy",
)
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# `api/v2.0` or a custom `api/<publisher>/<group>/<version>`, then a company-scoped entity set.
_RESOURCE = re.compile(
    rf"(?:(?P<prefix>api/(?:[^/()?#]+/[^/()?#]+/)?[^/()?#]+)/)?"
    rf"companies\((?P<company>{_GUID})\)/(?P<set>[A-Za-z_][A-Za-z0-9_]*)"
)


class WebhookError(BCError):
    """A subscription request BC refuses (answered in BC's envelope like every other BCError)."""


def _bad_request(message: str, code: str = "BadRequest") -> WebhookError:
    return WebhookError(400, code, message)


def _not_found() -> WebhookError:
    return WebhookError(404, "BadRequest_ResourceNotFound", "Resource not found for the segment 'subscriptions'.")


def _invalid_token() -> WebhookError:
    return _bad_request(
        "Could not validate the client concurrency token required by the service. "
        "Please provide a valid token in the client request.",
        "BadRequest_InvalidToken",
    )


def _entity_changed() -> WebhookError:
    return WebhookError(409, "Request_EntityChanged", "Another user has already changed the record.")


@dataclass
class WebhookConfig:
    """BC's on-prem knobs (ApiSubscriptionDelayTime, …) with SaaS defaults; tests shrink the times."""

    delay_seconds: float = 30.0
    handshake_timeout: float = 5.0
    expiry: timedelta = timedelta(days=3)
    max_subscriptions: int = 200
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    collection_threshold: int = 1000
    verify: bool | str = True
    send_timeout: float = 30.0
    idle_poll_seconds: float = 1.0


_metadata = sa.MetaData()
subscription_table = sa.Table(
    "bc_subscription",
    _metadata,
    sa.Column("subscription_id", sa.String(32), primary_key=True),
    sa.Column("notification_url", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    # lower-case "<api prefix>|<company id>|<entity set>": what record_change looks up
    sa.Column("target", sa.String(400), nullable=False, index=True),
    sa.Column("client_state", sa.Text, nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("expiration", sa.DateTime, nullable=False, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("created_by", sa.String(36), nullable=False),
    sa.Column("modified_at", sa.DateTime, nullable=False),
    sa.Column("modified_by", sa.String(36), nullable=False),
    sa.Column("row_version", sa.BigInteger, nullable=False),
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ms(value: datetime) -> datetime:
    """UTC, truncated to milliseconds: what BC stores and shows."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _to_db(value: datetime) -> datetime:
    return _ms(value).replace(tzinfo=None)


def _from_db(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return format_datetime(_ms(value), milliseconds=True)


def _etag_for(version: int) -> str:
    """Same weak-ETag shape as BC entities: base64 of `'<n>;<version>1;00;'`."""
    text = str(version)
    raw = f"'{len(text)};{text}1;00;'".encode()
    return f'W/"{base64.b64encode(raw).decode()}"'


def canonical_prefix(api_prefix: str) -> str:
    """`/api/v2.0/` -> `api/v2.0` (the form BC puts into notification resources)."""
    return api_prefix.strip().strip("/")


@dataclass(frozen=True)
class ResourceTarget:
    prefix: str       # e.g. "api/v2.0" or "api/contoso/app/v1.0"
    company_id: str   # lower-case GUID
    entity_set: str

    @property
    def key(self) -> str:
        return f"{self.prefix}|{self.company_id}|{self.entity_set}".lower()


def parse_resource(resource: Any, api_prefix: str) -> ResourceTarget:
    """Accept absolute, `/api/...`, `api/...` and `companies(...)/set` forms of a subscription resource."""
    if not isinstance(resource, str) or not resource.strip():
        raise _bad_request("The resource must be a URL of a company-scoped entity set, "
                           "for example '/api/v2.0/companies(<id>)/customers'.")
    text = resource.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        raise _bad_request(f"The resource '{resource}' is not valid for a subscription.") from None
    if parts.scheme or parts.netloc:
        if parts.query or parts.fragment:
            raise _bad_request(f"The resource '{resource}' is not valid for a subscription.")
        text = parts.path
    segments = text.strip("/").split("/")
    # An absolute URL carries /v2.0/<tenant>/<env>/ or /<instance>/ before the api root.
    candidates = ["/".join(segments[i:]) for i, seg in enumerate(segments) if seg.lower() == "api"]
    candidates.append(text.lstrip("/"))
    endpoint = canonical_prefix(api_prefix)
    for candidate in candidates:
        match = _RESOURCE.fullmatch(candidate)
        if not match:
            continue
        prefix = match.group("prefix") or endpoint
        if prefix.lower() != endpoint.lower():
            raise _bad_request(
                f"The resource '{resource}' does not belong to the API '{endpoint}' of this subscription endpoint; "
                f"subscribe through '{prefix}/subscriptions'."
            )
        return ResourceTarget(endpoint, match.group("company").lower(), match.group("set"))
    raise _bad_request(f"The resource '{resource}' is not valid for a subscription. "
                       "Use a company-scoped entity set such as '/api/v2.0/companies(<id>)/customers'.")


def validate_notification_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise _bad_request("The notificationUrl must be an absolute http or https URL.")
    try:
        parts = urlsplit(url.strip())
        valid = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # "http://[::1" (an unclosed IPv6 literal), a port that is no number
        valid = False
    if not valid:
        raise _bad_request(f"The notificationUrl '{url}' must be an absolute http or https URL.")
    return url.strip()


def validate_client_state(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad_request("The clientState must be a string.")
    if len(value) > MAX_CLIENT_STATE:
        shown = value[:50]
        raise _bad_request(
            f"The length of the string is {len(value)}, but it must be less than or equal to "
            f"{MAX_CLIENT_STATE} characters. Value: {shown}",
            "Application_StringExceededLength",
        )
    return value


def _check_body(body: Any) -> dict[str, Any]:
    """Known writable names pass; read-only ones and OData annotations are ignored as clients echo them."""
    if not isinstance(body, dict):
        raise _bad_request("Invalid Request Body")
    for name in body:
        if name in _WRITABLE or name in _READ_ONLY or name.startswith("@odata."):
            continue
        raise _bad_request(f"Could not find a property named '{name}' on type 'Microsoft.NAV.subscription'.")
    return body


def with_query_param(url: str, name: str, value: str) -> str:
    """Add one query parameter and keep the ones the subscriber put into its URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append((name, value))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def merge_change(earlier: str, later: str) -> str:
    """A record created and then updated in one window is still news of a creation; a delete wins."""
    if later == "deleted":
        return "deleted"
    if earlier == "created" and later == "updated":
        return "created"
    return later


@dataclass
class _Change:
    change_type: str
    last_modified: datetime


@dataclass
class _Bucket:
    """What one subscription has to report: single records, or one `collection` once over the limit."""

    first_modified: datetime
    last_modified: datetime
    records: dict[str, _Change] = field(default_factory=dict)
    collection: bool = False

    def add(self, record_id: str, change: _Change, threshold: int) -> None:
        self.first_modified = min(self.first_modified, change.last_modified)
        self.last_modified = max(self.last_modified, change.last_modified)
        if self.collection:
            return
        known = self.records.get(record_id)
        if known is None:
            self.records[record_id] = change
        else:
            known.change_type = merge_change(known.change_type, change.change_type)
            known.last_modified = max(known.last_modified, change.last_modified)
        if len(self.records) > threshold:
            self.collection = True
            self.records.clear()  # one item will stand for them all; keep memory flat

    def absorb(self, newer: _Bucket, threshold: int) -> None:
        if newer.collection:
            self.collection = True
            self.records.clear()
        for record_id, change in newer.records.items():
            self.add(record_id, change, threshold)
        self.first_modified = min(self.first_modified, newer.first_modified)
        self.last_modified = max(self.last_modified, newer.last_modified)


@dataclass
class _Outbox:
    """Everything waiting for one notification URL, with its next send time and failed attempts."""

    due: datetime
    attempts: int = 0
    buckets: dict[str, _Bucket] = field(default_factory=dict)       # by subscription id
    resources: dict[str, str] = field(default_factory=dict)          # subscription id -> collection URL

    def absorb(self, newer: _Outbox, threshold: int) -> None:
        for sub_id, bucket in newer.buckets.items():
            mine = self.buckets.get(sub_id)
            if mine is None:
                self.buckets[sub_id] = bucket
            else:
                mine.absorb(bucket, threshold)
        self.resources.update(newer.resources)


def _retryable(status: int | None) -> bool:
    """BC's ShouldReschedule: no answer, 408, 429 or any 5xx."""
    return status is None or status in (408, 429) or 500 <= status <= 599


class Webhooks:
    """Subscriptions store + notification sender for the mock BC app. Thread-safe."""

    def __init__(
        self,
        engine: sa.Engine,
        config: WebhookConfig | None = None,
        *,
        clock: Clock | None = None,
        session: requests.Session | None = None,
        supported_resource: Callable[[str], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config or WebhookConfig()
        self.clock: Clock = clock or _utc_now
        self.session = session or requests.Session()
        self.supports: Callable[[str], bool] = supported_resource or (lambda _set: True)
        self._lock = threading.RLock()
        self._outboxes: dict[str, _Outbox] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._targets: frozenset[str] | None = None  # resources some subscription watches (None: read anew)
        self.changes = Counters(["subscriptions"])  # the subscriptions changed (workers read `watched` anew)
        _metadata.create_all(engine, tables=[subscription_table], checkfirst=True)

    def share(self) -> None:
        """Call before forking BC's workers: they then learn when the subscriptions change."""
        self.changes.share()

    def _forget_targets(self) -> None:
        self._targets = None
        self.changes.add(("subscriptions",))

    # ------------------------------------------------------------------ subscriptions

    def create(self, body: dict, *, user_id: str, api_prefix: str = "/api/v2.0") -> dict:
        """POST subscriptions: validate, handshake, then store (nothing is stored if the handshake fails)."""
        body = _check_body(body)
        url = validate_notification_url(body.get("notificationUrl"))
        if "resource" not in body:
            raise _bad_request("The resource must be provided.")
        target = self._supported(parse_resource(body["resource"], api_prefix), body["resource"])
        client_state = validate_client_state(body.get("clientState"))
        self._purge_expired()
        self._check_capacity()
        self._handshake(url)
        now = _ms(self.clock())
        row = {
            "subscription_id": uuid.uuid4().hex,
            "notification_url": url,
            "resource": body["resource"].strip(),
            "target": target.key,
            "client_state": client_state,
            "user_id": user_id,
            "expiration": _to_db(now + self.config.expiry),
            "created_at": _to_db(now),
            "created_by": user_id,
            "modified_at": _to_db(now),
            "modified_by": user_id,
            "row_version": 1,
        }
        with self._lock, self.engine.begin() as conn:
            self._forget_targets()
            self._check_capacity(conn)  # another create may have won while we were handshaking
            conn.execute(subscription_table.insert().values(**row))
        return self._serialize(row)

    def list_subscriptions(self) -> list[dict]:
        with self._lock, self.engine.connect() as conn:
            rows = conn.execute(sa.select(subscription_table).order_by(subscription_table.c.created_at,
                                                                       subscription_table.c.subscription_id))
            return [self._serialize(r._asdict()) for r in rows]

    def get(self, subscription_id: str) -> dict:
        return self._serialize(self._row(subscription_id))

    def renew(self, subscription_id: str, body: dict, if_match: str | None, *, user_id: str | None = None) -> dict:
        """PATCH: If-Match as for any BC PATCH, a fresh handshake, and three more days."""
        row = self._row(subscription_id)
        self._check_if_match(row, if_match, required=True)
        body = _check_body(body)
        url = validate_notification_url(body.get("notificationUrl", row["notification_url"]))
        changes: dict[str, Any] = {"notification_url": url}
        if "resource" in body:
            prefix = row["target"].split("|", 1)[0]
            target = self._supported(parse_resource(body["resource"], prefix), body["resource"])
            changes.update(resource=body["resource"].strip(), target=target.key)
        if "clientState" in body:
            changes["client_state"] = validate_client_state(body["clientState"])
        self._handshake(url)
        now = _ms(self.clock())
        changes.update(
            expiration=_to_db(now + self.config.expiry),
            modified_at=_to_db(now),
            modified_by=user_id or row["modified_by"],
            row_version=row["row_version"] + 1,
        )
        table = subscription_table
        with self._lock, self.engine.begin() as conn:
            self._forget_targets()
            updated = conn.execute(
                table.update()
                .where(table.c.subscription_id == row["subscription_id"], table.c.row_version == row["row_version"])
                .values(**changes)
            ).rowcount
            if not updated:  # changed or deleted by someone else during the handshake
                if conn.execute(sa.select(table.c.row_version).where(
                        table.c.subscription_id == row["subscription_id"])).first() is None:
                    raise _not_found()
                raise _entity_changed()
            if url != row["notification_url"]:
                self._move_pending(row["subscription_id"], row["notification_url"], url)
        return self._serialize({**row, **changes})

    def delete(self, subscription_id: str, if_match: str | None) -> None:
        """DELETE: If-Match is checked when sent (stale -> 409) but not demanded, like BC entity deletes."""
        row = self._row(subscription_id)
        self._check_if_match(row, if_match, required=False)
        table = subscription_table
        with self._lock, self.engine.begin() as conn:
            self._forget_targets()
            deleted = conn.execute(table.delete().where(
                table.c.subscription_id == row["subscription_id"], table.c.row_version == row["row_version"]
            )).rowcount
            if not deleted:
                if conn.execute(sa.select(table.c.row_version).where(
                        table.c.subscription_id == row["subscription_id"])).first() is None:
                    raise _not_found()
                raise _entity_changed()
            self._drop_pending([row["subscription_id"]])

    def etag(self, subscription: dict) -> str:
        """The subscription's weak ETag (from the payload, or looked up by its id)."""
        tag = subscription.get("@odata.etag")
        if tag:
            return tag
        return _etag_for(self._row(subscription["subscriptionId"])["row_version"])

    # ------------------------------------------------------------------ change capture

    def record_change(
        self,
        *,
        company_id: str,
        entity_set: str,
        record_id: str,
        change_type: str,
        modified_at: datetime,
        api_prefix: str = "/api/v2.0",
    ) -> None:
        """Queue one committed change for every matching subscription that has not expired."""
        if change_type not in CHANGE_TYPES:
            raise ValueError(f"change_type must be one of {CHANGE_TYPES}, not {change_type!r}")
        prefix = canonical_prefix(api_prefix)
        target = ResourceTarget(prefix, company_id.lower(), entity_set)
        if target.key not in self.watched():  # most writes: nobody subscribed to this resource
            return
        now = _ms(self.clock())
        table = subscription_table
        with self._lock:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(table.c.subscription_id, table.c.notification_url).where(
                        table.c.target == target.key, table.c.expiration > _to_db(now))
                ).all()
            if not rows:
                return
            collection_url = f"{prefix}/companies({target.company_id})/{entity_set}"
            change_at = _ms(modified_at)
            for sub_id, url in rows:
                box = self._outboxes.get(url)
                if box is None:
                    box = self._outboxes[url] = _Outbox(due=now + timedelta(seconds=self.config.delay_seconds))
                box.resources[sub_id] = collection_url
                bucket = box.buckets.get(sub_id)
                if bucket is None:
                    bucket = box.buckets[sub_id] = _Bucket(change_at, change_at)
                bucket.add(record_id, _Change(change_type, change_at), self.config.collection_threshold)
        self._wake.set()

    # ------------------------------------------------------------------ delivery

    def flush(self) -> int:
        """Send every notification that is due now; returns how many POSTs were made."""
        self._purge_expired()
        now = _ms(self.clock())
        with self._lock:
            due = [(url, box) for url, box in self._outboxes.items() if box.due <= now]
            for url, _box in due:
                del self._outboxes[url]
        return sum(self._deliver(url, box) for url, box in due)

    def pending(self) -> int:
        """Number of notification URLs with something queued (for the control API and tests)."""
        with self._lock:
            return len(self._outboxes)

    def start(self) -> None:
        with self._lock:
            if self._worker and self._worker.is_alive():
                return
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="bc-webhooks", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        worker = self._worker
        self._stop.set()
        self._wake.set()
        if worker:
            worker.join(timeout=10)
        self._worker = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush()
            except Exception:  # the worker must outlive one bad delivery
                log.exception("webhook delivery failed")
            self._wake.clear()
            self._wake.wait(self._sleep_time())

    def _sleep_time(self) -> float:
        with self._lock:
            dues = [box.due for box in self._outboxes.values()]
        idle = self.config.idle_poll_seconds
        if not dues:
            return idle
        seconds = (min(dues) - self.clock()).total_seconds()
        return max(0.005, min(idle, seconds))

    def _deliver(self, url: str, box: _Outbox) -> int:
        items, sent_ids = self._payload(box)
        if not items:
            return 0
        request_id = str(uuid.uuid4())
        data = json.dumps({"value": items}, ensure_ascii=False).encode("utf-8")  # UTF-8, no BOM
        headers = {"Content-Type": "application/json", "clientRequestId": request_id,
                   "x-ms-correlation-id": request_id}
        status: int | None
        try:
            resp = self.session.post(url, data=data, headers=headers, timeout=self.config.send_timeout,
                                     verify=self.config.verify, allow_redirects=False)
            status = resp.status_code
        except requests.RequestException as exc:
            log.info("notification to %s got no answer: %s", url, exc)
            status = None
        if status is not None and 200 <= status <= 299:
            return 1
        if _retryable(status) and box.attempts < len(self.config.retry_schedule):
            box.due = _ms(self.clock()) + timedelta(seconds=self.config.retry_schedule[box.attempts])
            box.attempts += 1
            with self._lock:
                newer = self._outboxes.get(url)
                if newer is not None:  # changes queued while we were sending ride along with the retry
                    box.absorb(newer, self.config.collection_threshold)
                self._outboxes[url] = box
            return 1
        log.info("notification to %s rejected (%s); deleting %d subscription(s)", url, status, len(sent_ids))
        self._delete_ids(sent_ids)
        return 1

    def _payload(self, box: _Outbox) -> tuple[list[dict[str, Any]], list[str]]:
        """Items for live subscriptions only; one `collection` item per subscription over the threshold."""
        table = subscription_table
        now = _to_db(self.clock())
        with self._lock, self.engine.connect() as conn:
            rows = {r.subscription_id: r for r in conn.execute(
                sa.select(table).where(table.c.subscription_id.in_(list(box.buckets)), table.c.expiration > now))}
        items: list[dict[str, Any]] = []
        for sub_id, bucket in box.buckets.items():
            row = rows.get(sub_id)
            if row is None:
                continue
            head = {"subscriptionId": sub_id, "clientState": row.client_state,
                    "expirationDateTime": _iso(_from_db(row.expiration))}
            collection_url = box.resources[sub_id]
            if bucket.collection:
                since = _iso(bucket.first_modified - COLLECTION_FILTER_SLACK)
                items.append({**head, "resource": f"{collection_url}?$filter=lastModifiedDateTime%20gt%20{since}",
                              "changeType": "collection", "lastModifiedDateTime": _iso(bucket.last_modified)})
                continue
            for record_id, change in sorted(bucket.records.items(), key=lambda kv: kv[1].last_modified):
                items.append({**head, "resource": f"{collection_url}({record_id})",
                              "changeType": change.change_type,
                              "lastModifiedDateTime": _iso(change.last_modified)})
        return items, [sub_id for sub_id in box.buckets if sub_id in rows]

    # ------------------------------------------------------------------ helpers

    def _handshake(self, url: str) -> None:
        """POST notificationUrl?validationToken=…; the subscriber must echo the token with 200."""
        token = secrets.token_urlsafe(24)
        try:
            resp = self.session.post(with_query_param(url, "validationToken", token), data=b"",
                                     timeout=self.config.handshake_timeout, verify=self.config.verify,
                                     allow_redirects=False)
        except requests.RequestException as exc:
            raise _bad_request(f"The subscription could not be validated. The notification URL could not be "
                               f"reached ({type(exc).__name__}).") from exc
        if resp.status_code != 200:
            raise _bad_request(f"The subscription could not be validated. The notification URL answered "
                               f"{resp.status_code} instead of 200 with the validation token.")
        if resp.text.strip() != token:
            raise _bad_request("The subscription could not be validated. The notification URL did not return "
                               "the validation token in the response body.")

    def _supported(self, target: ResourceTarget, resource: str) -> ResourceTarget:
        if not self.supports(target.entity_set):
            raise _bad_request(f"The resource '{resource}' does not support webhook subscriptions.")
        return target

    def _check_capacity(self, conn: sa.Connection | None = None) -> None:
        query = sa.select(sa.func.count()).select_from(subscription_table)
        if conn is None:
            with self._lock, self.engine.connect() as own:
                count = own.execute(query).scalar_one()
        else:
            count = conn.execute(query).scalar_one()
        if count >= self.config.max_subscriptions:
            raise _bad_request(f"The maximum number of subscriptions ({self.config.max_subscriptions}) "
                               "has been reached. Delete a subscription before creating a new one.")

    def _check_if_match(self, row: dict[str, Any], if_match: str | None, *, required: bool) -> None:
        if if_match is None or not if_match.strip():
            if required:
                raise _invalid_token()
            return
        tags = [t.strip() for t in if_match.split(",") if t.strip()]
        if "*" in tags:
            return
        if not all(re.fullmatch(r'(?:W/)?"[^"]*"', t) for t in tags):
            raise _invalid_token()
        if _etag_for(row["row_version"]) not in tags:
            raise _entity_changed()

    def _row(self, subscription_id: str) -> dict[str, Any]:
        key = subscription_id.strip().strip("'") if isinstance(subscription_id, str) else ""
        with self._lock, self.engine.connect() as conn:
            found = conn.execute(sa.select(subscription_table).where(
                subscription_table.c.subscription_id == key)).first()
        if found is None:
            raise _not_found()
        return found._asdict()

    def _serialize(self, row: dict[str, Any]) -> dict[str, Any]:
        modified = _iso(_from_db(row["modified_at"]))
        return {
            "@odata.etag": _etag_for(row["row_version"]),
            "subscriptionId": row["subscription_id"],
            "notificationUrl": row["notification_url"],
            "resource": row["resource"],
            "userId": row["user_id"],
            "lastModifiedDateTime": modified,
            "clientState": row["client_state"],
            "expirationDateTime": _iso(_from_db(row["expiration"])),
            "systemCreatedAt": _iso(_from_db(row["created_at"])),
            "systemCreatedBy": row["created_by"],
            "systemModifiedAt": modified,
            "systemModifiedBy": row["modified_by"],
        }

    def watched(self) -> frozenset[str]:
        """The resources with at least one subscription (expired ones included), read once and again
        after every change to the subscriptions, all of which go through this object."""
        targets = self._targets
        if targets is None:
            with self._lock, self.engine.connect() as conn:
                targets = self._targets = frozenset(
                    conn.execute(sa.select(subscription_table.c.target).distinct()).scalars())
        return targets

    def _purge_expired(self) -> None:
        """BC's job deletes expired subscriptions before it sends anything."""
        table = subscription_table
        now = _to_db(self.clock())
        with self._lock, self.engine.begin() as conn:
            self._forget_targets()
            expired = conn.execute(sa.select(table.c.subscription_id).where(table.c.expiration <= now)).scalars().all()
            if expired:
                conn.execute(table.delete().where(table.c.subscription_id.in_(expired)))
                self._drop_pending(expired)

    def _delete_ids(self, ids: list[str]) -> None:
        if not ids:
            return
        with self._lock, self.engine.begin() as conn:
            self._forget_targets()
            conn.execute(subscription_table.delete().where(subscription_table.c.subscription_id.in_(ids)))
            self._drop_pending(ids)

    def _drop_pending(self, ids: Sequence[str]) -> None:
        with self._lock:
            for url in list(self._outboxes):
                box = self._outboxes[url]
                for sub_id in ids:
                    box.buckets.pop(sub_id, None)
                    box.resources.pop(sub_id, None)
                if not box.buckets:
                    del self._outboxes[url]

    def _move_pending(self, sub_id: str, old_url: str, new_url: str) -> None:
        """A renewed subscription with a new URL takes its queued changes along."""
        with self._lock:
            old = self._outboxes.get(old_url)
            if old is None or sub_id not in old.buckets:
                return
            moved = _Outbox(due=old.due, buckets={sub_id: old.buckets.pop(sub_id)},
                            resources={sub_id: old.resources.pop(sub_id)})
            if not old.buckets:
                del self._outboxes[old_url]
            target = self._outboxes.get(new_url)
            if target is None:
                self._outboxes[new_url] = moved
            else:
                target.absorb(moved, self.config.collection_threshold)


# What a BC worker asks of the one Webhooks object in the sandbox's process.
HOSTED_CALLS = ("create", "list_subscriptions", "get", "renew", "delete", "etag", "record_change", "watched",
                "pending")


class RemoteWebhooks:
    """A BC worker's subscriptions and outbox, kept once in the sandbox's process: BC collects the
    changes to a record within its delay into one notification, whichever worker made them."""

    def __init__(self, host: Host, name: str, hosted: Webhooks) -> None:
        self._remote = Remote(host, name)
        self._changes = hosted.changes
        self._watched: tuple[int, frozenset[str]] | None = None

    def create(self, body: dict, *, user_id: str, api_prefix: str = "/api/v2.0") -> dict:
        return self._remote.call("create", body, user_id=user_id, api_prefix=api_prefix)

    def list_subscriptions(self) -> list[dict]:
        return self._remote.call("list_subscriptions")

    def get(self, subscription_id: str) -> dict:
        return self._remote.call("get", subscription_id)

    def renew(self, subscription_id: str, body: dict, if_match: str | None, *, user_id: str | None = None) -> dict:
        return self._remote.call("renew", subscription_id, body, if_match, user_id=user_id)

    def delete(self, subscription_id: str, if_match: str | None) -> None:
        self._remote.call("delete", subscription_id, if_match)

    def etag(self, subscription: dict) -> str:
        return self._remote.call("etag", subscription)

    def pending(self) -> int:
        return self._remote.call("pending")

    def watched(self) -> frozenset[str]:
        seen = self._changes.get("subscriptions")
        cached = self._watched
        if cached is None or cached[0] != seen:
            cached = self._watched = (seen, self._remote.call("watched"))
        return cached[1]

    def record_change(self, *, company_id: str, entity_set: str, record_id: str, change_type: str,
                      modified_at: datetime, api_prefix: str = "/api/v2.0") -> None:
        """Sent without waiting: the host queues it before it reads this worker's next call, and a
        notification leaves only after BC's delay."""
        target = ResourceTarget(canonical_prefix(api_prefix), company_id.lower(), entity_set)
        if target.key in self.watched():
            self._remote.send("record_change", company_id=company_id, entity_set=entity_set, record_id=record_id,
                              change_type=change_type, modified_at=modified_at, api_prefix=api_prefix)

