"""BC webhooks against a real HTTP receiver: handshake, subscription CRUD, notification batches, retries."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from mockservers.bc.webhooks import WebhookConfig, WebhookError, Webhooks

COMPANY = "f64eba74-dacd-4854-a584-1834f68cfc3a"
OTHER_COMPANY = "7dbba574-5f69-4167-a43e-fb975045de15"
USER = "f2a5738a-44e3-ea11-bb43-000d3a2feca1"
CUSTOMERS = f"/api/v2.0/companies({COMPANY})/customers"
REC_A = "130bbd17-dbb9-4790-9b12-2b0e9c9d22c3"
REC_B = "4b4f31f0-dc1c-4033-b2aa-ab03ca1d6ebc"
REC_C = "26814998-936a-401c-81c1-0e848a64971d"
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SUBSCRIPTION_FIELDS = {
    "@odata.etag", "subscriptionId", "notificationUrl", "resource", "userId", "lastModifiedDateTime",
    "clientState", "expirationDateTime", "systemCreatedAt", "systemCreatedBy", "systemModifiedAt",
    "systemModifiedBy",
}


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Receiver:
    """A subscriber endpoint: answers the handshake as told and records every notification."""

    handshake_mode: str = "echo"           # echo | wrong | error | slow
    statuses: list[int] = field(default_factory=list)  # answers for notifications; 200 when empty
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def bodies(self) -> list[list[dict[str, Any]]]:
        return [n["body"]["value"] for n in self.notifications]

    @Request.application
    def _app(self, request: Request) -> Response:
        token = request.args.get("validationToken")
        if token is not None:
            self.handshakes.append({"method": request.method, "path": request.path, "args": dict(request.args),
                                    "body": request.get_data()})
            if self.handshake_mode == "wrong":
                return Response("not-the-token", 200)
            if self.handshake_mode == "error":
                return Response("boom", 500)
            if self.handshake_mode == "slow":
                time.sleep(1.0)
            return Response(token + "\n", 200, content_type="text/plain")
        self.notifications.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                                   "raw": request.get_data(), "body": json.loads(request.get_data())})
        status = self.statuses.pop(0) if self.statuses else 200
        return Response("", status)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def engine() -> sa.Engine:
    return sa.create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_hooks(engine: sa.Engine, clock: FakeClock | None = None, **config: Any) -> Webhooks:
    supported = config.pop("supported_resource", None)
    settings = {"delay_seconds": 5.0, "handshake_timeout": 0.5, "retry_schedule": (10.0,), **config}
    return Webhooks(engine, WebhookConfig(**settings), clock=clock, supported_resource=supported)


@pytest.fixture
def hooks(engine: sa.Engine, clock: FakeClock) -> Webhooks:
    return make_hooks(engine, clock)


def subscribe(hooks: Webhooks, receiver: Receiver, resource: str = CUSTOMERS, path: str = "/hook",
              client_state: str | None = "secret", **kw: Any) -> dict[str, Any]:
    body = {"notificationUrl": receiver.url(path), "resource": resource}
    if client_state is not None:
        body["clientState"] = client_state
    return hooks.create(body, user_id=USER, **kw)


def change(hooks: Webhooks, record: str, change_type: str, at: datetime, company: str = COMPANY,
           entity_set: str = "customers", **kw: Any) -> None:
    hooks.record_change(company_id=company, entity_set=entity_set, record_id=record, change_type=change_type,
                        modified_at=at, **kw)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def expect_error(status: int, code: str, fn, *args, **kwargs) -> WebhookError:
    with pytest.raises(WebhookError) as info:
        fn(*args, **kwargs)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    assert "CorrelationId" not in info.value.message
    return info.value


# ---------------------------------------------------------------------------- create / handshake


def test_create_performs_handshake_then_returns_subscription(hooks: Webhooks, receiver: Receiver) -> None:
    body = {"notificationUrl": receiver.url("/hook?code=abc&x="), "resource": CUSTOMERS, "clientState": "s3"}
    sub = hooks.create(body, user_id=USER)

    assert len(receiver.handshakes) == 1
    shake = receiver.handshakes[0]
    assert shake["method"] == "POST" and shake["path"] == "/hook" and shake["body"] == b""
    assert shake["args"]["code"] == "abc" and shake["args"]["x"] == ""  # subscriber's own query kept
    assert len(shake["args"]["validationToken"]) >= 16

    assert set(sub) == SUBSCRIPTION_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", sub["subscriptionId"])
    assert sub["notificationUrl"] == receiver.url("/hook?code=abc&x=")
    assert sub["resource"] == CUSTOMERS
    assert sub["clientState"] == "s3"
    assert sub["userId"] == sub["systemCreatedBy"] == sub["systemModifiedBy"] == USER
    assert sub["systemCreatedAt"] == sub["systemModifiedAt"] == sub["lastModifiedDateTime"] == "2026-03-02T09:00:00Z"
    assert sub["expirationDateTime"] == "2026-03-05T09:00:00Z"
    tag = re.fullmatch(r'W/"([A-Za-z0-9+/=]+)"', sub["@odata.etag"])
    assert tag and re.fullmatch(r"'\d+;\d+1;00;'", base64.b64decode(tag.group(1)).decode())
    assert hooks.etag(sub) == sub["@odata.etag"] == hooks.etag({"subscriptionId": sub["subscriptionId"]})
    assert hooks.list_subscriptions() == [sub]


def test_timestamps_keep_milliseconds(engine: sa.Engine, receiver: Receiver) -> None:
    clock = FakeClock(START.replace(microsecond=123456))
    sub = subscribe(make_hooks(engine, clock), receiver)
    assert sub["systemCreatedAt"] == "2026-03-02T09:00:00.123Z"
    assert sub["expirationDateTime"] == "2026-03-05T09:00:00.123Z"


def test_client_state_defaults_to_empty(hooks: Webhooks, receiver: Receiver) -> None:
    assert subscribe(hooks, receiver, client_state=None)["clientState"] == ""


@pytest.mark.parametrize("mode", ["wrong", "error", "slow", "unreachable"])
def test_failed_handshake_stores_nothing(hooks: Webhooks, receiver: Receiver, mode: str) -> None:
    receiver.handshake_mode = mode
    url = closed_port_url() if mode == "unreachable" else receiver.url()
    err = expect_error(400, "BadRequest", hooks.create,
                       {"notificationUrl": url, "resource": CUSTOMERS}, user_id=USER)
    assert err.message.startswith("The subscription could not be validated.")
    assert hooks.list_subscriptions() == []
    if mode != "unreachable":
        assert len(receiver.handshakes) == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"resource": CUSTOMERS}, "BadRequest"),
        ({"notificationUrl": "ftp://example.com/hook", "resource": CUSTOMERS}, "BadRequest"),
        ({"notificationUrl": "/relative/hook", "resource": CUSTOMERS}, "BadRequest"),
        ({"notificationUrl": 42, "resource": CUSTOMERS}, "BadRequest"),
        ({"notificationUrl": "{url}"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": "/api/v2.0/customers"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": "/api/v2.0/companies(not-a-guid)/customers"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": f"/api/v2.0/companies({COMPANY})"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": f"{CUSTOMERS}(" + REC_A + ")"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": f"{CUSTOMERS}?$filter=number eq '1'"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": f"/api/pub/grp/v1.0/companies({COMPANY})/things"}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": CUSTOMERS, "clientState": "x" * 2049},
         "Application_StringExceededLength"),
        ({"notificationUrl": "{url}", "resource": CUSTOMERS, "clientState": 7}, "BadRequest"),
        ({"notificationUrl": "{url}", "resource": CUSTOMERS, "changeType": "updated"}, "BadRequest"),
        (["not", "an", "object"], "BadRequest"),
    ],
)
def test_invalid_create_bodies_are_rejected_before_any_handshake(
    hooks: Webhooks, receiver: Receiver, body: Any, code: str
) -> None:
    if isinstance(body, dict) and body.get("notificationUrl") == "{url}":
        body = {**body, "notificationUrl": receiver.url()}
    expect_error(400, code, hooks.create, body, user_id=USER)
    assert receiver.handshakes == []
    assert hooks.list_subscriptions() == []


def test_client_state_of_2048_characters_is_accepted(hooks: Webhooks, receiver: Receiver) -> None:
    assert subscribe(hooks, receiver, client_state="y" * 2048)["clientState"] == "y" * 2048


def test_unsupported_entity_set_is_rejected(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock, supported_resource=lambda name: name != "contacts")
    err = expect_error(400, "BadRequest", subscribe, hooks, receiver, f"/api/v2.0/companies({COMPANY})/contacts")
    assert "contacts" in err.message
    assert receiver.handshakes == [] and hooks.list_subscriptions() == []
    assert subscribe(hooks, receiver)["resource"] == CUSTOMERS


def test_subscription_limit(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock, max_subscriptions=2)
    subscribe(hooks, receiver)
    subscribe(hooks, receiver)
    err = expect_error(400, "BadRequest", subscribe, hooks, receiver)
    assert "2" in err.message
    assert len(hooks.list_subscriptions()) == 2
    assert len(receiver.handshakes) == 2


@pytest.mark.parametrize(
    ("resource", "api_prefix", "expected_prefix"),
    [
        (CUSTOMERS, "/api/v2.0", "api/v2.0"),
        (CUSTOMERS[1:], "/api/v2.0", "api/v2.0"),
        (f"companies({COMPANY.upper()})/customers", "/api/v2.0", "api/v2.0"),
        (f"https://api.businesscentral.dynamics.com/v2.0/tid/Production{CUSTOMERS}", "/api/v2.0", "api/v2.0"),
        (f"/api/contoso/sales/v1.0/companies({COMPANY})/customers", "/api/contoso/sales/v1.0", "api/contoso/sales/v1.0"),
        (f"companies({COMPANY})/customers", "api/contoso/sales/v1.0/", "api/contoso/sales/v1.0"),
    ],
)
def test_resource_forms_and_notification_resource(
    hooks: Webhooks, receiver: Receiver, clock: FakeClock, resource: str, api_prefix: str, expected_prefix: str
) -> None:
    sub = subscribe(hooks, receiver, resource, api_prefix=api_prefix)
    assert sub["resource"] == resource
    other_api = "/api/contoso/sales/v1.0" if expected_prefix == "api/v2.0" else "/api/v2.0"
    change(hooks, REC_A, "created", START, api_prefix=other_api)  # same company and set, other API: no match
    change(hooks, REC_B, "created", START, api_prefix="/" + expected_prefix + "/")
    clock.advance(5)
    assert hooks.flush() == 1
    [items] = receiver.bodies()
    assert [i["resource"] for i in items] == [f"{expected_prefix}/companies({COMPANY})/customers({REC_B})"]


# ---------------------------------------------------------------------------- read / renew / delete


def test_get_and_list(hooks: Webhooks, receiver: Receiver) -> None:
    one = subscribe(hooks, receiver)
    two = subscribe(hooks, receiver, f"/api/v2.0/companies({COMPANY})/vendors")
    assert hooks.get(one["subscriptionId"]) == one
    assert {s["subscriptionId"] for s in hooks.list_subscriptions()} == {one["subscriptionId"], two["subscriptionId"]}
    err = expect_error(404, "BadRequest_ResourceNotFound", hooks.get, "0" * 32)
    assert err.message == "Resource not found for the segment 'subscriptions'."


@pytest.mark.parametrize(
    ("if_match", "status", "code"),
    [
        (None, 400, "BadRequest_InvalidToken"),
        ("", 400, "BadRequest_InvalidToken"),
        ("not-an-etag", 400, "BadRequest_InvalidToken"),
        ('W/"JzE7OTk5MTswMDsn"', 409, "Request_EntityChanged"),
    ],
)
def test_renew_if_match_rules(hooks: Webhooks, receiver: Receiver, if_match: str | None, status: int,
                              code: str) -> None:
    sub = subscribe(hooks, receiver)
    expect_error(status, code, hooks.renew, sub["subscriptionId"], {}, if_match)
    assert hooks.get(sub["subscriptionId"]) == sub
    assert len(receiver.handshakes) == 1  # no handshake for a refused PATCH


@pytest.mark.parametrize("use_star", [True, False])
def test_renew_rehandshakes_and_moves_expiry(hooks: Webhooks, receiver: Receiver, clock: FakeClock,
                                             use_star: bool) -> None:
    sub = subscribe(hooks, receiver)
    clock.advance(24 * 3600 + 0.25)
    renewed = hooks.renew(sub["subscriptionId"], {"clientState": "new"}, "*" if use_star else sub["@odata.etag"],
                          user_id="00000000-0000-0000-0000-000000000001")
    assert len(receiver.handshakes) == 2
    assert renewed["expirationDateTime"] == "2026-03-06T09:00:00.25Z"
    assert renewed["lastModifiedDateTime"] == renewed["systemModifiedAt"] == "2026-03-03T09:00:00.25Z"
    assert renewed["systemCreatedAt"] == sub["systemCreatedAt"]
    assert renewed["systemModifiedBy"] == "00000000-0000-0000-0000-000000000001"
    assert renewed["clientState"] == "new"
    assert renewed["@odata.etag"] != sub["@odata.etag"]
    assert hooks.get(sub["subscriptionId"]) == renewed
    # the old ETag is now stale
    expect_error(409, "Request_EntityChanged", hooks.renew, sub["subscriptionId"], {}, sub["@odata.etag"])


def test_renew_fails_when_handshake_fails(hooks: Webhooks, receiver: Receiver, clock: FakeClock) -> None:
    sub = subscribe(hooks, receiver)
    receiver.handshake_mode = "wrong"
    clock.advance(60)
    expect_error(400, "BadRequest", hooks.renew, sub["subscriptionId"], {}, "*")
    assert hooks.get(sub["subscriptionId"]) == sub


def test_renew_with_new_url_handshakes_the_new_url(hooks: Webhooks, receiver: Receiver) -> None:
    sub = subscribe(hooks, receiver)
    renewed = hooks.renew(sub["subscriptionId"], {**sub, "notificationUrl": receiver.url("/v2")}, sub["@odata.etag"])
    assert receiver.handshakes[-1]["path"] == "/v2"
    assert renewed["notificationUrl"] == receiver.url("/v2")
    with pytest.raises(WebhookError):
        hooks.renew(sub["subscriptionId"], {"notificationUrl": closed_port_url()}, "*")
    assert hooks.get(sub["subscriptionId"])["notificationUrl"] == receiver.url("/v2")


def test_renew_and_delete_missing_subscription(hooks: Webhooks) -> None:
    expect_error(404, "BadRequest_ResourceNotFound", hooks.renew, "0" * 32, {}, "*")
    expect_error(404, "BadRequest_ResourceNotFound", hooks.delete, "0" * 32, "*")


def test_delete(hooks: Webhooks, receiver: Receiver) -> None:
    one = subscribe(hooks, receiver)
    two = subscribe(hooks, receiver)
    expect_error(409, "Request_EntityChanged", hooks.delete, one["subscriptionId"], 'W/"JzE7OTk5MTswMDsn"')
    hooks.delete(one["subscriptionId"], one["@odata.etag"])
    hooks.delete(two["subscriptionId"], None)  # like BC entity deletes: If-Match checked only when sent
    assert hooks.list_subscriptions() == []
    expect_error(404, "BadRequest_ResourceNotFound", hooks.get, one["subscriptionId"])


# ---------------------------------------------------------------------------- notifications


def test_created_updated_deleted_after_the_delay(hooks: Webhooks, receiver: Receiver, clock: FakeClock) -> None:
    sub = subscribe(hooks, receiver, client_state="cs")
    t1, t2, t3 = (START + timedelta(milliseconds=ms) for ms in (100, 250, 400))
    change(hooks, REC_A, "created", t1)
    change(hooks, REC_B, "updated", t2)
    change(hooks, REC_C, "deleted", t3)
    change(hooks, REC_A, "created", t1, company=OTHER_COMPANY)        # other company: not subscribed
    change(hooks, REC_A, "created", t1, entity_set="vendors")         # other set: not subscribed

    assert hooks.flush() == 0  # BC waits after the first change
    clock.advance(4.9)
    assert hooks.flush() == 0
    clock.advance(0.1)
    assert hooks.flush() == 1
    assert hooks.flush() == 0

    [note] = receiver.notifications
    assert note["method"] == "POST" and note["path"] == "/hook"
    assert note["headers"]["Content-Type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f-]{36}", note["headers"]["Clientrequestid"])
    assert note["headers"]["Clientrequestid"] == note["headers"]["X-Ms-Correlation-Id"]
    assert not note["raw"].startswith(b"\xef\xbb\xbf")
    base = f"api/v2.0/companies({COMPANY})/customers"
    head = {"subscriptionId": sub["subscriptionId"], "clientState": "cs",
            "expirationDateTime": sub["expirationDateTime"]}
    assert note["body"] == {"value": [
        {**head, "resource": f"{base}({REC_A})", "changeType": "created", "lastModifiedDateTime": "2026-03-02T09:00:00.1Z"},
        {**head, "resource": f"{base}({REC_B})", "changeType": "updated", "lastModifiedDateTime": "2026-03-02T09:00:00.25Z"},
        {**head, "resource": f"{base}({REC_C})", "changeType": "deleted", "lastModifiedDateTime": "2026-03-02T09:00:00.4Z"},
    ]}
    assert list(note["body"]["value"][0]) == ["subscriptionId", "clientState", "expirationDateTime", "resource",
                                             "changeType", "lastModifiedDateTime"]


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (["created", "updated", "updated"], "created"),
        (["updated", "updated", "updated"], "updated"),
        (["updated", "deleted"], "deleted"),
        (["created", "updated", "deleted"], "deleted"),
    ],
)
def test_repeated_changes_of_one_record_merge(hooks: Webhooks, receiver: Receiver, clock: FakeClock,
                                              sequence: list[str], expected: str) -> None:
    subscribe(hooks, receiver)
    for i, kind in enumerate(sequence):
        clock.advance(1)
        change(hooks, REC_A, kind, START + timedelta(seconds=i + 1))
    clock.advance(5)
    assert hooks.flush() == 1
    [[item]] = receiver.bodies()
    assert item["changeType"] == expected
    assert item["lastModifiedDateTime"] == f"2026-03-02T09:00:0{len(sequence)}Z"


def test_subscriptions_sharing_a_url_share_one_post(hooks: Webhooks, receiver: Receiver, clock: FakeClock) -> None:
    customers = subscribe(hooks, receiver, client_state="c")
    vendors = subscribe(hooks, receiver, f"/api/v2.0/companies({COMPANY})/vendors", client_state="v")
    elsewhere = subscribe(hooks, receiver, path="/other", client_state="o")
    change(hooks, REC_A, "created", START)
    clock.advance(3)
    change(hooks, REC_B, "updated", START, entity_set="vendors")  # joins the window opened by the first change
    clock.advance(2)
    assert hooks.flush() == 2
    by_path = {n["path"]: n["body"]["value"] for n in receiver.notifications}
    assert {(i["subscriptionId"], i["clientState"], i["resource"].rsplit("/", 1)[1]) for i in by_path["/hook"]} == {
        (customers["subscriptionId"], "c", f"customers({REC_A})"),
        (vendors["subscriptionId"], "v", f"vendors({REC_B})"),
    }
    assert [(i["subscriptionId"], i["clientState"]) for i in by_path["/other"]] == [(elsewhere["subscriptionId"], "o")]


def test_collection_item_over_the_threshold(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock, collection_threshold=3)
    sub = subscribe(hooks, receiver)
    small = subscribe(hooks, receiver, f"/api/v2.0/companies({COMPANY})/vendors")
    first = START + timedelta(milliseconds=20)
    for i, record in enumerate([REC_A, REC_B, REC_C, "00000000-0000-0000-0000-00000000000d"]):
        change(hooks, record, "updated", first + timedelta(seconds=i))
    change(hooks, REC_A, "created", START, entity_set="vendors")
    clock.advance(5)
    assert hooks.flush() == 1
    [items] = receiver.bodies()
    collection = [i for i in items if i["subscriptionId"] == sub["subscriptionId"]]
    assert collection == [{
        "subscriptionId": sub["subscriptionId"], "clientState": "secret",
        "expirationDateTime": sub["expirationDateTime"],
        "resource": f"api/v2.0/companies({COMPANY})/customers"
                    "?$filter=lastModifiedDateTime%20gt%202026-03-02T08:59:59.97Z",  # first change - 50 ms
        "changeType": "collection", "lastModifiedDateTime": "2026-03-02T09:00:03.02Z",
    }]
    assert [i["changeType"] for i in items if i["subscriptionId"] == small["subscriptionId"]] == ["created"]


def test_exactly_the_threshold_still_sends_single_items(engine: sa.Engine, clock: FakeClock,
                                                        receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock, collection_threshold=3)
    subscribe(hooks, receiver)
    for record in (REC_A, REC_B, REC_C, REC_A):
        change(hooks, record, "updated", START)
    clock.advance(5)
    hooks.flush()
    assert [i["changeType"] for i in receiver.bodies()[0]] == ["updated"] * 3


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_retryable_failure_is_sent_again_later(hooks: Webhooks, receiver: Receiver, clock: FakeClock,
                                               status: int) -> None:
    sub = subscribe(hooks, receiver)
    receiver.statuses = [status]
    change(hooks, REC_A, "created", START)
    clock.advance(5)
    assert hooks.flush() == 1
    change(hooks, REC_B, "created", START)  # queued while the retry waits: rides along
    clock.advance(9)
    assert hooks.flush() == 0
    clock.advance(1)
    assert hooks.flush() == 1
    assert len(receiver.notifications) == 2
    assert receiver.notifications[0]["body"]["value"] == receiver.notifications[1]["body"]["value"][:1]
    assert [i["resource"][-37:-1] for i in receiver.bodies()[1]] == [REC_A, REC_B]
    assert receiver.notifications[0]["headers"]["Clientrequestid"] != receiver.notifications[1]["headers"][
        "Clientrequestid"]
    assert hooks.get(sub["subscriptionId"])["subscriptionId"] == sub["subscriptionId"]


def test_unreachable_receiver_is_retried(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock)
    sub = subscribe(hooks, receiver)
    change(hooks, REC_A, "created", START)
    receiver.close()
    clock.advance(5)
    assert hooks.flush() == 1
    assert hooks.pending() == 1
    assert hooks.get(sub["subscriptionId"])


def test_exhausted_retries_delete_the_subscription(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    hooks = make_hooks(engine, clock, retry_schedule=(1.0, 2.0))
    sub = subscribe(hooks, receiver)
    keep = subscribe(hooks, receiver, f"/api/v2.0/companies({COMPANY})/vendors", path="/other")
    receiver.statuses = [503, 503, 503]
    change(hooks, REC_A, "created", START)
    clock.advance(5)
    assert hooks.flush() == 1
    clock.advance(1)
    assert hooks.flush() == 1
    clock.advance(2)
    assert hooks.flush() == 1
    assert len(receiver.notifications) == 3
    expect_error(404, "BadRequest_ResourceNotFound", hooks.get, sub["subscriptionId"])
    assert [s["subscriptionId"] for s in hooks.list_subscriptions()] == [keep["subscriptionId"]]
    assert hooks.pending() == 0


@pytest.mark.parametrize("status", [301, 400, 401, 404, 410])
def test_other_failures_delete_the_subscription_without_retry(
    hooks: Webhooks, receiver: Receiver, clock: FakeClock, status: int
) -> None:
    sub = subscribe(hooks, receiver)
    receiver.statuses = [status]
    change(hooks, REC_A, "created", START)
    clock.advance(5)
    assert hooks.flush() == 1
    expect_error(404, "BadRequest_ResourceNotFound", hooks.get, sub["subscriptionId"])
    change(hooks, REC_B, "created", START)
    clock.advance(3600)
    assert hooks.flush() == 0
    assert len(receiver.notifications) == 1


def test_expired_subscription_gets_nothing_and_is_removed(hooks: Webhooks, receiver: Receiver,
                                                          clock: FakeClock) -> None:
    queued = subscribe(hooks, receiver)
    clock.advance(60)
    later = subscribe(hooks, receiver, path="/later")
    change(hooks, REC_A, "created", clock.now)          # queued for both while they are alive
    clock.advance(3 * 24 * 3600 - 60)                    # `queued` expires, `later` has 60 s left
    assert hooks.flush() == 1
    [note] = receiver.notifications
    assert note["path"] == "/later"
    assert [s["subscriptionId"] for s in hooks.list_subscriptions()] == [later["subscriptionId"]]
    expect_error(404, "BadRequest_ResourceNotFound", hooks.get, queued["subscriptionId"])

    clock.advance(60)                                    # now `later` has expired too
    change(hooks, REC_B, "updated", clock.now)
    clock.advance(5)
    assert hooks.flush() == 0
    assert hooks.list_subscriptions() == []
    assert len(receiver.notifications) == 1


def test_background_worker_delivers_without_flush(engine: sa.Engine, receiver: Receiver) -> None:
    hooks = Webhooks(engine, WebhookConfig(delay_seconds=0.05, handshake_timeout=2.0, idle_poll_seconds=0.1))
    subscribe(hooks, receiver)
    hooks.start()
    try:
        change(hooks, REC_A, "updated", datetime.now(UTC))
        deadline = time.monotonic() + 5
        while not receiver.notifications and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        hooks.stop()
    assert [i["changeType"] for i in receiver.bodies()[0]] == ["updated"]
    assert hooks.pending() == 0


def test_subscriptions_survive_a_new_instance(engine: sa.Engine, clock: FakeClock, receiver: Receiver) -> None:
    first = make_hooks(engine, clock)
    sub = subscribe(first, receiver)
    second = make_hooks(engine, clock)
    assert second.list_subscriptions() == [sub]
    assert second.get(sub["subscriptionId"]) == sub
    change(second, REC_A, "created", START)
    clock.advance(5)
    assert second.flush() == 1
    assert receiver.bodies()[0][0]["subscriptionId"] == sub["subscriptionId"]
    second.delete(sub["subscriptionId"], second.etag(sub))
    assert first.list_subscriptions() == []


def test_record_change_rejects_unknown_change_type(hooks: Webhooks) -> None:
    with pytest.raises(ValueError):
        change(hooks, REC_A, "collection", START)
