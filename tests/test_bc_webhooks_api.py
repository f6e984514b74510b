"""BC webhooks end to end (https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions): subscribe through the real
HTTPS API, change records through it,
and watch what a real local receiver gets.

The sandbox waits 0.2 s after a change before it sends (conftest), so every wait here is a bounded poll.
Each test uses its own receiver (its own notification URL), so notifications of other tests never mix in;
"nothing was sent" is proven by a marker change queued behind it on the same subscription or URL.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import requests
from werkzeug.datastructures import Headers
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from tests.conftest import RunningSandbox

WAIT_SECONDS = 10.0
ETAG = re.compile(r'^W/"[A-Za-z0-9+/=]+"$')
HEX32 = re.compile(r"^[0-9a-f]{32}$")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z$")
SUBSCRIPTION_FIELDS = {
    "@odata.context", "@odata.etag", "subscriptionId", "notificationUrl", "resource", "userId",
    "lastModifiedDateTime", "clientState", "expirationDateTime", "systemCreatedAt", "systemCreatedBy",
    "systemModifiedAt", "systemModifiedBy",
}
ITEM_FIELDS = {"subscriptionId", "clientState", "expirationDateTime", "resource", "changeType",
               "lastModifiedDateTime"}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll until `condition()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Receiver:
    """A subscriber on plain HTTP: echoes (or garbles) validation tokens and records notification POSTs."""

    handshake: str = "echo"          # echo | wrong
    answer: int = 200                # status given to notifications
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/bc/hook"

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item for post in self.posts for item in post["body"]["value"]]

    def items_for(self, resource_suffix: str) -> list[dict[str, Any]]:
        return [i for i in self.items() if i["resource"].endswith(resource_suffix)]

    @Request.application
    def _app(self, request: Request) -> Response:
        token = request.args.get("validationToken")
        if token is not None:
            with self._lock:
                self.handshakes.append({"method": request.method, "path": request.path,
                                        "body": request.get_data()})
            return Response(token if self.handshake == "echo" else "not-" + token, 200, content_type="text/plain")
        raw = request.get_data()
        with self._lock:
            self.posts.append({"method": request.method, "path": request.path, "headers": Headers(request.headers),
                               "raw": raw, "body": json.loads(raw.decode("utf-8"))})
        return Response("", self.answer)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receivers(sandbox: RunningSandbox, bc: requests.Session) -> Iterator[Callable[..., Receiver]]:
    """Factory of receivers; on teardown their subscriptions are deleted and their servers stopped."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    listed = bc.get(f"{sandbox.bc_api}/subscriptions").json()["value"]
    for sub in listed:
        if any(sub["notificationUrl"] == r.url for r in made):
            bc.delete(f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')")
    for r in made:
        r.close()


@pytest.fixture
def receiver(receivers: Callable[..., Receiver]) -> Receiver:
    return receivers()


def resource_of(sandbox: RunningSandbox, company: int = 0, entity_set: str = "customers") -> str:
    return f"/api/v2.0/companies({sandbox.companies[company]})/{entity_set}"


def subscribe(sandbox: RunningSandbox, bc: requests.Session, receiver: Receiver, *,
              resource: str | None = None, client_state: str = "state-42") -> requests.Response:
    return bc.post(f"{sandbox.bc_api}/subscriptions", json={
        "notificationUrl": receiver.url, "resource": resource or resource_of(sandbox), "clientState": client_state})


def subscribed(sandbox: RunningSandbox, bc: requests.Session, receiver: Receiver, **kwargs: Any) -> dict[str, Any]:
    resp = subscribe(sandbox, bc, receiver, **kwargs)
    assert resp.status_code == 201, resp.text
    return resp.json()


def customers_url(sandbox: RunningSandbox, company: int = 0) -> str:
    return f"{sandbox.bc_api}/companies({sandbox.companies[company]})/customers"


def new_customer(sandbox: RunningSandbox, bc: requests.Session, name: str, company: int = 0) -> dict[str, Any]:
    resp = bc.post(customers_url(sandbox, company), json={"displayName": name})
    assert resp.status_code == 201, resp.text
    return resp.json()


def subscription_ids(sandbox: RunningSandbox, bc: requests.Session) -> set[str]:
    resp = bc.get(f"{sandbox.bc_api}/subscriptions")
    assert resp.status_code == 200, resp.text
    return {s["subscriptionId"] for s in resp.json()["value"]}


def assert_bc_error(resp: requests.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code
    assert re.search(r"  CorrelationId:  [0-9a-f-]{36}\.$", error["message"]), error["message"]
    return error["message"]


# -- subscribing ----------------------------------------------------------------------------------------
def test_subscribe_answers_201_after_the_handshake(sandbox: RunningSandbox, bc: requests.Session,
                                                   receiver: Receiver) -> None:
    before = datetime.now(UTC)
    resp = subscribe(sandbox, bc, receiver)
    after = datetime.now(UTC)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    sub_id = body["subscriptionId"]
    assert HEX32.match(sub_id), sub_id
    assert resp.headers["Location"] == f"{sandbox.bc_api}/subscriptions('{sub_id}')"
    assert set(body) == SUBSCRIPTION_FIELDS
    assert body["@odata.context"] == f"{sandbox.bc_api}/$metadata#subscriptions/$entity"
    assert ETAG.match(body["@odata.etag"]), body["@odata.etag"]
    assert body["notificationUrl"] == receiver.url
    assert body["resource"] == resource_of(sandbox)
    assert body["clientState"] == "state-42"
    for name in ("expirationDateTime", "lastModifiedDateTime", "systemCreatedAt", "systemModifiedAt"):
        assert DATETIME.match(body[name]), (name, body[name])
    expires = parse_time(body["expirationDateTime"])
    slack = timedelta(seconds=1)
    assert before + timedelta(days=3) - slack <= expires <= after + timedelta(days=3) + slack
    # exactly one handshake, a POST with an empty body, on the subscriber's own path, before the 201
    assert [(h["method"], h["path"], h["body"]) for h in receiver.handshakes] == [("POST", "/bc/hook", b"")]
    # stored: readable by key and in the list, with the same ETag
    got = bc.get(resp.headers["Location"])
    assert got.status_code == 200
    assert {k: v for k, v in got.json().items() if k != "@odata.context"} == \
        {k: v for k, v in body.items() if k != "@odata.context"}
    assert sub_id in subscription_ids(sandbox, bc)
    assert receiver.posts == []  # subscribing alone notifies nothing


def test_list_and_get_subscriptions(sandbox: RunningSandbox, bc: requests.Session, receiver: Receiver) -> None:
    first = subscribed(sandbox, bc, receiver, client_state="one")
    second = subscribed(sandbox, bc, receiver, resource=resource_of(sandbox, 1, "vendors"), client_state="two")
    resp = bc.get(f"{sandbox.bc_api}/subscriptions")
    assert resp.status_code == 200
    listed = resp.json()
    assert listed["@odata.context"] == f"{sandbox.bc_api}/$metadata#subscriptions"
    mine = {s["subscriptionId"]: s for s in listed["value"] if s["notificationUrl"] == receiver.url}
    assert set(mine) == {first["subscriptionId"], second["subscriptionId"]}
    assert mine[second["subscriptionId"]]["resource"] == resource_of(sandbox, 1, "vendors")
    assert mine[second["subscriptionId"]]["clientState"] == "two"
    for sub in (first, second):
        got = bc.get(f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')")
        assert got.status_code == 200
        assert got.json()["@odata.etag"] == sub["@odata.etag"]
    missing = bc.get(f"{sandbox.bc_api}/subscriptions('{uuid.uuid4().hex}')")
    assert_bc_error(missing, 404, "BadRequest_ResourceNotFound")


@pytest.mark.parametrize("entity_set", ["contacts", "salespeoplePurchasers"])
def test_sets_without_webhooks_are_refused(sandbox: RunningSandbox, bc: requests.Session, receiver: Receiver,
                                           entity_set: str) -> None:
    resp = subscribe(sandbox, bc, receiver, resource=resource_of(sandbox, 0, entity_set))
    message = assert_bc_error(resp, 400, "BadRequest")
    assert entity_set in message
    assert receiver.handshakes == []  # refused before any call to the subscriber
    listed = bc.get(f"{sandbox.bc_api}/subscriptions").json()["value"]
    assert not [s for s in listed if s["notificationUrl"] == receiver.url]


def test_unknown_company_is_refused(sandbox: RunningSandbox, bc: requests.Session, receiver: Receiver) -> None:
    missing = str(uuid.uuid4())
    resp = subscribe(sandbox, bc, receiver, resource=f"/api/v2.0/companies({missing})/customers")
    assert missing in assert_bc_error(resp, 400, "BadRequest")
    assert receiver.handshakes == []


def test_failed_handshake_stores_nothing(sandbox: RunningSandbox, bc: requests.Session,
                                         receivers: Callable[..., Receiver]) -> None:
    wrong = receivers(handshake="wrong")
    before = subscription_ids(sandbox, bc)
    resp = subscribe(sandbox, bc, wrong)
    message = assert_bc_error(resp, 400, "BadRequest")
    assert "validat" in message
    assert len(wrong.handshakes) == 1
    assert subscription_ids(sandbox, bc) == before
    new_customer(sandbox, bc, "Nobody Listens Ltd")  # a change the failed subscriber must never hear of
    control = receivers()
    subscribed(sandbox, bc, control)
    marker = new_customer(sandbox, bc, "Handshake Marker Inc")
    wait_until(lambda: control.items_for(f"customers({marker['id']})"), "the control subscriber's notification")
    assert wrong.posts == []


# -- notifications ----------------------------------------------------------------------------------------
def test_created_updated_deleted_reach_the_receiver(sandbox: RunningSandbox, bc: requests.Session,
                                                    receiver: Receiver) -> None:
    sub = subscribed(sandbox, bc, receiver)
    company = sandbox.companies[0]
    customer = new_customer(sandbox, bc, "Webhook Müller GmbH")
    suffix = f"customers({customer['id']})"
    expected_resource = f"api/v2.0/companies({company})/{suffix}"

    def changes() -> list[str]:
        return [i["changeType"] for i in receiver.items_for(suffix)]

    wait_until(lambda: changes() == ["created"], "the created notification")
    patched = bc.patch(f"{customers_url(sandbox)}({customer['id']})", json={"displayName": "Webhook Müller AG"},
                       headers={"If-Match": customer["@odata.etag"]})
    assert patched.status_code == 200, patched.text
    wait_until(lambda: changes() == ["created", "updated"], "the updated notification")
    deleted = bc.delete(f"{customers_url(sandbox)}({customer['id']})")
    assert deleted.status_code == 204, deleted.text
    wait_until(lambda: changes() == ["created", "updated", "deleted"], "the deleted notification")

    assert len(receiver.posts) == 3
    modified = [customer["lastModifiedDateTime"], patched.json()["lastModifiedDateTime"], None]
    for post, change, last_modified in zip(receiver.posts, ("created", "updated", "deleted"), modified, strict=True):
        assert post["method"] == "POST" and post["path"] == "/bc/hook"
        headers = post["headers"]
        assert headers["Content-Type"].startswith("application/json")
        request_id = headers["clientRequestId"]
        assert uuid.UUID(request_id) and headers["x-ms-correlation-id"] == request_id
        assert not post["raw"].startswith(b"\xef\xbb\xbf")  # UTF-8 without BOM
        [item] = post["body"]["value"]
        assert set(item) == ITEM_FIELDS
        assert item["subscriptionId"] == sub["subscriptionId"]
        assert item["clientState"] == "state-42"
        assert item["expirationDateTime"] == sub["expirationDateTime"]
        assert item["resource"] == expected_resource
        assert item["changeType"] == change
        assert DATETIME.match(item["lastModifiedDateTime"])
        if last_modified is not None:
            assert item["lastModifiedDateTime"] == last_modified
    assert len({p["headers"]["clientRequestId"] for p in receiver.posts}) == 3  # a fresh id per POST


def test_other_company_and_other_sets_are_not_notified(sandbox: RunningSandbox, bc: requests.Session,
                                                       receiver: Receiver) -> None:
    subscribed(sandbox, bc, receiver)
    elsewhere = new_customer(sandbox, bc, "Second Company Customer", company=1)
    vendor = bc.post(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/vendors",
                     json={"displayName": "Not A Customer Supplies"})
    assert vendor.status_code == 201, vendor.text
    contact = bc.post(f"{sandbox.bc_api}/companies({sandbox.companies[0]})/contacts",
                      json={"displayName": "Contact Without Webhooks"})
    assert contact.status_code == 201, contact.text
    marker = new_customer(sandbox, bc, "Isolation Marker Ltd")
    # the marker went through the same subscription and URL after the other writes
    wait_until(lambda: receiver.items_for(f"customers({marker['id']})"), "the marker notification")
    resources = [i["resource"] for i in receiver.items()]
    assert resources == [f"api/v2.0/companies({sandbox.companies[0]})/customers({marker['id']})"]
    assert elsewhere["id"] not in " ".join(resources)


def batch(sandbox: RunningSandbox, bc: requests.Session, requests_: list[dict[str, Any]],
          atomic: bool) -> requests.Response:
    headers = {"Isolation": "snapshot"} if atomic else {}
    return bc.post(f"{sandbox.bc_api}/$batch", json={"requests": requests_}, headers=headers)


def create_op(op_id: str, name: str, company: str) -> dict[str, Any]:
    return {"id": op_id, "method": "POST", "url": f"companies({company})/customers",
            "headers": {"Content-Type": "application/json"}, "body": {"displayName": name}}


def test_rolled_back_snapshot_batch_sends_nothing(sandbox: RunningSandbox, bc: requests.Session,
                                                  receiver: Receiver) -> None:
    company = sandbox.companies[0]
    subscribed(sandbox, bc, receiver)
    name = f"Rolled Back {uuid.uuid4().hex[:8]}"
    failing = {"id": "2", "method": "PATCH", "url": f"companies({company})/customers({uuid.uuid4()})",
               "headers": {"Content-Type": "application/json", "If-Match": "*"}, "body": {"displayName": "x"}}
    resp = batch(sandbox, bc, [create_op("1", name, company), failing], atomic=True)
    assert resp.status_code == 200, resp.text
    statuses = {r["id"]: r["status"] for r in resp.json()["responses"]}
    assert statuses == {"1": 201, "2": 404}
    found = bc.get(customers_url(sandbox), params={"$filter": f"displayName eq '{name}'"})
    assert found.json()["value"] == []  # the create really was rolled back

    marker = new_customer(sandbox, bc, "Rollback Marker Ltd")
    wait_until(lambda: receiver.items_for(f"customers({marker['id']})"), "the marker notification")
    assert [i["resource"].rsplit("/", 1)[1] for i in receiver.items()] == [f"customers({marker['id']})"]


def test_committed_snapshot_batch_notifies_each_record(sandbox: RunningSandbox, bc: requests.Session,
                                                       receiver: Receiver) -> None:
    company = sandbox.companies[0]
    subscribed(sandbox, bc, receiver)
    resp = batch(sandbox, bc, [create_op("a", "Batch One Inc", company), create_op("b", "Batch Two Inc", company)],
                 atomic=True)
    assert resp.status_code == 200, resp.text
    ids = {r["body"]["id"] for r in resp.json()["responses"] if r["status"] == 201}
    assert len(ids) == 2
    wait_until(lambda: {i["resource"].rsplit("(", 1)[1].rstrip(")") for i in receiver.items()} == ids,
               "one created notification per batched record")
    assert {i["changeType"] for i in receiver.items()} == {"created"}


# -- renew, delete, rejection -------------------------------------------------------------------------------
def test_renew_needs_if_match_and_handshakes_again(sandbox: RunningSandbox, bc: requests.Session,
                                                   receiver: Receiver) -> None:
    sub = subscribed(sandbox, bc, receiver)
    url = f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')"
    missing = bc.patch(url, json={})
    assert_bc_error(missing, 400, "BadRequest_InvalidToken")
    assert len(receiver.handshakes) == 1  # refused before calling the subscriber

    time.sleep(0.01)  # expiry has millisecond precision; make the renewal visibly later
    renewed = bc.patch(url, json={"clientState": "renewed"}, headers={"If-Match": sub["@odata.etag"]})
    assert renewed.status_code == 200, renewed.text
    body = renewed.json()
    assert len(receiver.handshakes) == 2
    assert body["subscriptionId"] == sub["subscriptionId"]
    assert body["clientState"] == "renewed"
    assert ETAG.match(body["@odata.etag"]) and body["@odata.etag"] != sub["@odata.etag"]
    assert parse_time(body["expirationDateTime"]) > parse_time(sub["expirationDateTime"])
    assert bc.get(url).json()["@odata.etag"] == body["@odata.etag"]

    stale = bc.patch(url, json={}, headers={"If-Match": sub["@odata.etag"]})
    assert_bc_error(stale, 409, "Request_EntityChanged")
    assert len(receiver.handshakes) == 2

    # the renewed state is what notifications carry
    marker = new_customer(sandbox, bc, "Renewal Marker Ltd")
    [item] = wait_until(lambda: receiver.items_for(f"customers({marker['id']})"), "the renewed notification")
    assert item["clientState"] == "renewed"
    assert item["expirationDateTime"] == body["expirationDateTime"]


def test_renew_to_a_new_url_handshakes_there_first(sandbox: RunningSandbox, bc: requests.Session,
                                                   receivers: Callable[..., Receiver]) -> None:
    old, liar, new = receivers(), receivers(handshake="wrong"), receivers()
    sub = subscribed(sandbox, bc, old)
    url = f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')"
    refused = bc.patch(url, json={"notificationUrl": liar.url}, headers={"If-Match": sub["@odata.etag"]})
    assert_bc_error(refused, 400, "BadRequest")
    assert len(liar.handshakes) == 1
    unchanged = bc.get(url).json()
    assert unchanged["notificationUrl"] == old.url and unchanged["@odata.etag"] == sub["@odata.etag"]

    moved = bc.patch(url, json={"notificationUrl": new.url}, headers={"If-Match": sub["@odata.etag"]})
    assert moved.status_code == 200, moved.text
    assert moved.json()["notificationUrl"] == new.url
    assert len(new.handshakes) == 1 and len(old.handshakes) == 1
    marker = new_customer(sandbox, bc, "Moved Subscription Marker Ltd")
    wait_until(lambda: new.items_for(f"customers({marker['id']})"), "the notification at the new URL")
    assert old.posts == [] and liar.posts == []


def test_deleted_subscription_stops_notifications(sandbox: RunningSandbox, bc: requests.Session,
                                                  receivers: Callable[..., Receiver]) -> None:
    gone, control = receivers(), receivers()
    sub = subscribed(sandbox, bc, gone)
    subscribed(sandbox, bc, control)
    url = f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')"
    resp = bc.delete(url, headers={"If-Match": sub["@odata.etag"]})
    assert resp.status_code == 204 and resp.content == b""
    assert_bc_error(bc.get(url), 404, "BadRequest_ResourceNotFound")
    assert sub["subscriptionId"] not in subscription_ids(sandbox, bc)
    assert_bc_error(bc.delete(url), 404, "BadRequest_ResourceNotFound")

    marker = new_customer(sandbox, bc, "After Delete Marker Ltd")
    wait_until(lambda: control.items_for(f"customers({marker['id']})"), "the control subscriber's notification")
    assert gone.posts == []


def test_receiver_answering_410_loses_its_subscription(sandbox: RunningSandbox, bc: requests.Session,
                                                       receivers: Callable[..., Receiver]) -> None:
    gone = receivers(answer=410)
    sub = subscribed(sandbox, bc, gone)
    customer = new_customer(sandbox, bc, "Gone Receiver Ltd")
    wait_until(lambda: gone.items_for(f"customers({customer['id']})"), "the notification answered with 410")
    wait_until(lambda: sub["subscriptionId"] not in subscription_ids(sandbox, bc), "the subscription's deletion")
    assert_bc_error(bc.get(f"{sandbox.bc_api}/subscriptions('{sub['subscriptionId']}')"), 404,
                    "BadRequest_ResourceNotFound")
    # nothing more is sent to it
    control = receivers()
    subscribed(sandbox, bc, control)
    marker = new_customer(sandbox, bc, "After 410 Marker Ltd")
    wait_until(lambda: control.items_for(f"customers({marker['id']})"), "the control subscriber's notification")
    assert len(gone.posts) == 1
