"""In-process mode: requests to the sandbox's URLs answered by its apps without a socket, exactly as a
live sandbox answers them (status, headers, body, journal), other URLs refused or passed through, and
client retries behaving as they do over a socket (dropped connections, Retry-After)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msal
import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from werkzeug.wrappers import Request, Response

from mockservers.testing import RouterBusy, RunningSandbox, start_sandbox
from tests.servers import serve


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningSandbox]]:
    """The same seeded sandbox twice: live (HTTPS) and in process."""
    live = start_sandbox(tmp_path_factory.mktemp("live"), mode="live")
    # the live one's URLs pass through the in-process router to its sockets
    inproc = start_sandbox(tmp_path_factory.mktemp("inprocess"), mode="inprocess",
                           passthrough=[live.info[name]["url"] for name in ("identity", "dataverse", "bc")])
    try:
        yield {"live": live, "inprocess": inproc}
    finally:
        inproc.stop()
        live.stop()


ACCOUNT = "a0000000-0000-4000-8000-000000000006"
COMPANY = "b2a3c4d5-1111-4a2b-9c3d-000000000001"
# (service, method, path relative to the API root, body, headers): read-only or refused requests, so
# both sandboxes stay alike however often they run
REQUESTS: list[tuple[str, str, str, Any, dict[str, str]]] = [
    ("dataverse", "GET", "accounts?$select=name,accountnumber&$filter=statecode eq 0&$orderby=name&$top=3", None, {}),
    ("dataverse", "GET", f"accounts({ACCOUNT})?$select=name&$expand=primarycontactid($select=fullname)", None, {}),
    ("dataverse", "GET", "accounts?$filter=contains(name,'%C3%A4%20%26')&$select=name", None, {}),
    ("dataverse", "GET", "accounts?$filter=nosuchcolumn eq 1", None, {}),
    ("dataverse", "GET", "accounts?$skip=1", None, {}),
    ("dataverse", "GET", f"accounts({ACCOUNT})?$select=name,telephone1", None, {"If-None-Match": "*"}),
    ("dataverse", "PATCH", f"accounts({ACCOUNT})", {"name": "x"}, {"If-Match": 'W/"1"'}),
    ("dataverse", "POST", "accounts", {"name": "y", "nosuchcolumn": 1}, {}),
    ("dataverse", "POST", "accounts", b'{"name": "broken', {"Content-Type": "application/json"}),
    ("dataverse", "GET", "WhoAmI()", None, {}),
    ("dataverse", "DELETE", "accounts(00000000-0000-0000-0000-00000000dead)", None, {}),
    ("bc", "GET", f"companies({COMPANY})/customers?$select=number,displayName&$top=2&$orderby=number", None, {}),
    ("bc", "GET", f"companies({COMPANY})/customers?$filter=displayName eq 'x' or city eq 'y'", None, {}),
    ("bc", "PATCH", f"companies({COMPANY})/customers(c5010000-0000-4000-8000-000000000001)", {"city": "z"}, {}),
    ("bc", "GET", "companies(not-a-guid)/customers", None, {}),
]
COMPARED_HEADERS = ("Content-Type", "OData-Version", "ETag", "Preference-Applied", "OData-EntityId", "Location")


def call(sb: RunningSandbox, service: str, method: str, path: str, body: Any, headers: dict[str, str]) -> requests.Response:
    session = sb.session() if service == "dataverse" else sb.bc_session()
    root = sb.api if service == "dataverse" else sb.bc_api
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    return session.request(method, f"{root}/{path}", **kwargs)


def comparable(sb: RunningSandbox, response: requests.Response) -> dict[str, Any]:
    """Status, the headers that carry protocol, and the body, with this sandbox's URLs made neutral."""
    text = response.text
    for name in ("dataverse", "bc", "identity"):
        text = text.replace(sb.info[name]["url"], f"<{name}>")
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # BC puts a fresh correlation id in
        body["error"]["message"] = body["error"]["message"].split("  CorrelationId:")[0]
    headers = {name: response.headers.get(name) for name in COMPARED_HEADERS}
    for name in ("OData-EntityId", "Location"):
        if headers[name]:
            for service in ("dataverse", "bc"):
                headers[name] = headers[name].replace(sb.info[service]["url"], f"<{service}>")
    return {"status": response.status_code, "headers": headers, "body": body}


@pytest.mark.parametrize(("service", "method", "path", "body", "headers"), REQUESTS,
                         ids=[f"{s}-{m}-{p[:40]}" for s, m, p, _, _ in REQUESTS])
def test_in_process_answers_exactly_as_a_live_sandbox(pair: dict[str, RunningSandbox], service: str, method: str,
                                                      path: str, body: Any, headers: dict[str, str]) -> None:
    live, inproc = pair["live"], pair["inprocess"]
    answers = {mode: call(sb, service, method, path, body, headers) for mode, sb in pair.items()}
    assert comparable(live, answers["live"]) == comparable(inproc, answers["inprocess"])
    journaled = {mode: sb.journal.requests(service)[-1] for mode, sb in pair.items()}
    assert {(r.method, r.path, r.query, r.status, r.body) for r in journaled.values()} == {
        (journaled["live"].method, journaled["live"].path, journaled["live"].query, answers["live"].status_code,
         journaled["live"].body)}


def test_the_url_limit_counts_the_url_as_sent(pair: dict[str, RunningSandbox]) -> None:
    for sb in pair.values():
        session = sb.session()
        prefix, suffix = f"{sb.api}/accounts?$filter=name%20eq%20%27", "%27"
        room = 32_768 - len(prefix) - len(suffix)
        fits = session.get(prefix + "a" * room + suffix)
        over = session.get(prefix + "a" * (room + 1) + suffix)
        assert (len(fits.request.url or ""), fits.status_code) == (32_768, 200)
        assert (len(over.request.url or ""), over.status_code) == (32_769, 414)


def test_msal_and_the_token_endpoint_work_in_process(pair: dict[str, RunningSandbox]) -> None:
    sb = pair["inprocess"]
    app = msal.ConfidentialClientApplication(sb.info["app"]["client_id"], client_credential=sb.info["app"]["client_secret"],
                                             authority=sb.info["identity"]["authority"], instance_discovery=False)
    token = app.acquire_token_for_client([sb.info["bc"]["scope"]])
    assert token["token_type"] == "Bearer", token
    resp = requests.get(f"{sb.bc_api}/companies", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert resp.status_code == 200 and {c["id"] for c in resp.json()["value"]} == set(sb.companies)
    assert requests.get(f"{sb.api}/WhoAmI", headers={"Authorization": f"Bearer {token['access_token']}"}
                        ).status_code == 401  # a BC token on Dataverse, as on the real services
    wrong = msal.ConfidentialClientApplication(sb.info["app"]["client_id"], client_credential="wrong",
                                               authority=sb.info["identity"]["authority"], instance_discovery=False)
    refused = wrong.acquire_token_for_client([sb.info["bc"]["scope"]])
    assert refused["error"] == "invalid_client" and "AADSTS7000215" in refused["error_description"]


@pytest.fixture
def local_server() -> Iterator[str]:
    """A plain HTTP server on a real socket, standing for some other service the code under test calls."""
    @Request.application
    def app(request: Request) -> Response:
        return Response(json.dumps({"path": request.path}), mimetype="application/json")

    with serve(app) as url:
        yield url


def test_other_urls_are_refused_unless_passed_through(tmp_path_factory: pytest.TempPathFactory, local_server: str,
                                                      pair: dict[str, RunningSandbox]) -> None:
    pair["inprocess"].router.stop()  # type: ignore[union-attr]  (one in-process sandbox answers at a time)
    try:
        for passthrough, reaches in ((False, False), (True, True), ([local_server + "/allowed"], "partly")):
            sb = start_sandbox(tmp_path_factory.mktemp("pt"), fixture=None, passthrough=passthrough)
            try:
                assert sb.session().get(f"{sb.api}/WhoAmI").status_code == 200
                for path in ("/allowed/x", "/other"):
                    allowed = reaches is True or (reaches == "partly" and path.startswith("/allowed"))
                    if allowed:
                        assert requests.get(local_server + path, timeout=5).json() == {"path": path}
                    else:
                        with pytest.raises(requests.ConnectionError, match="Connection refused by the in-process sandbox"):
                            requests.get(local_server + path, timeout=5)
                with pytest.raises(RouterBusy):
                    start_sandbox(tmp_path_factory.mktemp("second"), fixture=None)
            finally:
                sb.stop()
    finally:
        pair["inprocess"].router.start()  # type: ignore[union-attr]


def retrying_session(sb: RunningSandbox, **retry: Any) -> requests.Session:
    session = sb.session()
    adapter = HTTPAdapter(max_retries=Retry(**retry))
    session.mount("https://", adapter)
    return session


def test_a_dropped_connection_is_retried_as_urllib3_retries_it(pair: dict[str, RunningSandbox]) -> None:
    sb = pair["inprocess"]
    sb.journal.clear()
    with sb.faults("dataverse", drop_rate=1.0, count=2):
        resp = retrying_session(sb, total=3, backoff_factor=0).get(f"{sb.api}/WhoAmI")
    assert resp.status_code == 200
    assert [r.status for r in sb.journal.requests("dataverse")] == [0, 0, 200]

    with sb.faults("dataverse", drop_rate=1.0, count=1), pytest.raises(requests.ConnectionError, match="aborted"):
        sb.session().get(f"{sb.api}/WhoAmI")  # no retries configured: the client sees the cut
    with sb.faults("dataverse", drop_rate=1.0, count=5), pytest.raises(requests.ConnectionError, match="Max retries"):
        retrying_session(sb, total=2, backoff_factor=0).get(f"{sb.api}/WhoAmI")  # retries exhausted
    sb.journal.clear()
    with sb.faults("dataverse", drop_rate=1.0, count=1), pytest.raises(requests.ConnectionError):
        # urllib3 does not resend a POST whose connection broke after it went out
        retrying_session(sb, total=3, backoff_factor=0).post(f"{sb.api}/accounts", json={"name": f"n {uuid.uuid4()}"})
    assert [r.status for r in sb.journal.requests("dataverse")] == [0]


def test_a_throttled_request_waits_for_retry_after_before_the_retry(pair: dict[str, RunningSandbox]) -> None:
    sb = pair["inprocess"]
    sb.journal.clear()
    session = retrying_session(sb, total=2, status_forcelist=[429], respect_retry_after_header=True, backoff_factor=0)
    started = time.monotonic()
    with sb.faults("bc", throttle_rate=1.0, count=1, retry_after=1):
        resp = session.get(f"{sb.bc_api}/companies", headers={"Authorization": f"Bearer {sb.bc_token()}"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 200
    assert elapsed >= 1.0  # Retry-After: 1 honoured, as urllib3 honours it over a socket
    statuses = [r.status for r in sb.journal.requests("bc")]
    assert statuses == [429, 200]
