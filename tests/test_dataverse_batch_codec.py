"""The Dataverse $batch codec: parsing what real clients send, executing, and replying.

Batch requests: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api; the bytes
PowerPlatform-Dataverse-Client (https://pypi.org/project/PowerPlatform-Dataverse-Client/) sends and parses;
the error envelope of https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors.
"""

from __future__ import annotations

import email.policy
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from email.parser import BytesParser
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from mockservers.dataverse.batch import (
    BatchFormatError,
    BatchResult,
    Changeset,
    ChangesetOutcome,
    InnerRequest,
    InnerResponse,
    RequestOutcome,
    parse_batch,
    render_batch_response,
    run_batch,
    service_path,
)

ORG = "https://127.0.0.1:5001"
ROOT = f"{ORG}/api/data/v9.2"
BATCH = "batch_119a5dc0-5b8e-4d7e-9a39-0d3c1b2f4a10"
CHANGESET = "changeset_d721802f-3c0a-4a55-8f6c-7a1e2b9d0c44"

# The exact body PowerPlatform-Dataverse-Client 1.1.0 sends (placeholders filled in).
SDK_BODY_CRLF = (
    f"--{BATCH}\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    f"POST {ROOT}/accounts HTTP/1.1\r\n"
    "Content-Type: application/json; type=entry\r\n"
    "\r\n"
    '{"name": "B1"}\r\n'
    f"--{BATCH}\r\n"
    f'Content-Type: multipart/mixed; boundary="{CHANGESET}"\r\n'
    "\r\n"
    f"--{CHANGESET}\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n"
    "\r\n"
    f"POST {ROOT}/accounts HTTP/1.1\r\n"
    "Content-Type: application/json; type=entry\r\n"
    "\r\n"
    '{"name": "B2"}\r\n'
    f"--{CHANGESET}\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 2\r\n"
    "\r\n"
    "PATCH $1 HTTP/1.1\r\n"
    "Content-Type: application/json; type=entry\r\n"
    "If-Match: *\r\n"
    "\r\n"
    '{"name": "B2b"}\r\n'
    f"--{CHANGESET}--\r\n"
    "\r\n"
    f"--{BATCH}--\r\n"
).encode()
SDK_CONTENT_TYPE = f'multipart/mixed; boundary="{BATCH}"'


def _assert_sdk_parts(parts: list) -> None:
    assert len(parts) == 2
    first, changeset = parts
    assert isinstance(first, InnerRequest)
    assert (first.method, first.url, first.body, first.content_id) == (
        "POST",
        f"{ROOT}/accounts",
        b'{"name": "B1"}',
        None,
    )
    assert first.headers.get("content-type") == "application/json; type=entry"
    assert isinstance(changeset, Changeset)
    assert changeset.boundary == CHANGESET
    create, update = changeset.requests
    assert (create.method, create.url, create.content_id, create.body) == (
        "POST",
        f"{ROOT}/accounts",
        "1",
        b'{"name": "B2"}',
    )
    assert (update.method, update.url, update.content_id, update.body) == ("PATCH", "$1", "2", b'{"name": "B2b"}')
    assert update.headers["if-match"] == "*"
    assert update.headers["IF-MATCH"] == "*"


@pytest.mark.parametrize("line_ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_parses_the_sdk_request_bytes(line_ending: bytes) -> None:
    body = SDK_BODY_CRLF.replace(b"\r\n", line_ending)
    _assert_sdk_parts(parse_batch(body, SDK_CONTENT_TYPE))


def test_tolerates_trailing_blank_lines_and_whitespace() -> None:
    _assert_sdk_parts(parse_batch(SDK_BODY_CRLF + b"\r\n\r\n  \r\n\n", SDK_CONTENT_TYPE))


def test_parses_what_the_sdk_serializer_builds_today() -> None:
    """Feed the installed SDK's own multipart writer, so a change in its format shows up here."""
    batch_base = pytest.importorskip("PowerPlatform.Dataverse.data._batch_base")
    raw = pytest.importorskip("PowerPlatform.Dataverse.data._raw_request")
    resolved = [
        raw._RawRequest("GET", f"{ROOT}/accounts(00000000-0000-0000-0000-000000000001)?$select=name"),
        batch_base._ChangeSetBatchItem(
            requests=[
                raw._RawRequest("POST", f"{ROOT}/contacts", body='{"firstname": "Alice"}', content_id=1),
                raw._RawRequest(
                    "PATCH",
                    f"{ROOT}/accounts(00000000-0000-0000-0000-000000000001)",
                    body='{"primarycontactid@odata.bind": "$1"}',
                    headers={"If-Match": "*"},
                    content_id=2,
                ),
                raw._RawRequest("DELETE", "$1", headers={"If-Match": "*"}, content_id=3),
            ]
        ),
    ]
    body = batch_base._BatchBase(None)._build_batch_body(resolved, BATCH).encode()
    parts = parse_batch(body, SDK_CONTENT_TYPE)

    get, changeset = parts
    assert (get.method, get.url, get.body) == ("GET", f"{ROOT}/accounts(00000000-0000-0000-0000-000000000001)?$select=name", b"")
    assert [(r.method, r.url, r.content_id) for r in changeset.requests] == [
        ("POST", f"{ROOT}/contacts", "1"),
        ("PATCH", f"{ROOT}/accounts(00000000-0000-0000-0000-000000000001)", "2"),
        ("DELETE", "$1", "3"),
    ]
    assert json.loads(changeset.requests[1].body) == {"primarycontactid@odata.bind": "$1"}
    assert changeset.requests[2].headers["If-Match"] == "*"
    assert changeset.requests[2].body == b""


def _dva_part(batch_id: str, method: str, url: str, data: dict | None) -> str:
    """The shape dataverse-api 1.4 writes: LF only, an empty extra-header line, JSON or empty body."""
    content_type = "Content-Type: application/json" + ("; type=entry" if method == "POST" else "")
    payload = "" if data is None else json.dumps(data)
    return dedent(
        f"""\
        --{batch_id}
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        {method} {url} HTTP/1.1
        {content_type}
        \n
        {payload}
        """
    )


def test_parses_a_dva_style_lf_batch() -> None:
    batch_id = "batch_4f6c0a8e"
    body = "\n".join(
        [
            _dva_part(batch_id, "POST", f"{ROOT}/accounts", {"name": "A"}),
            _dva_part(batch_id, "PATCH", f"{ROOT}/accounts(accountnumber='A%2D1')", {"name": "B"}),
            _dva_part(batch_id, "DELETE", f"{ROOT}/accounts(00000000-0000-0000-0000-000000000002)", None),
            f"\n\n--{batch_id}--\n\n",
        ]
    ).encode()
    assert b"\r" not in body

    parts = parse_batch(body, f'multipart/mixed; boundary="{batch_id}"')

    assert [(p.method, p.url) for p in parts] == [
        ("POST", f"{ROOT}/accounts"),
        ("PATCH", f"{ROOT}/accounts(accountnumber='A%2D1')"),
        ("DELETE", f"{ROOT}/accounts(00000000-0000-0000-0000-000000000002)"),
    ]
    assert [json.loads(p.body) for p in parts[:2]] == [{"name": "A"}, {"name": "B"}]
    assert parts[2].body == b""
    assert parts[0].headers["Content-Type"] == "application/json; type=entry"


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed; boundary=batch_AAA123",
        'multipart/mixed; boundary="batch_AAA123"',
        "multipart/mixed;boundary=batch_AAA123",
        'Multipart/Mixed; charset=utf-8; BOUNDARY="batch_AAA123"',
    ],
)
def test_boundary_quoted_or_not(content_type: str) -> None:
    body = (
        b"--batch_AAA123\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"GET accounts?$select=name HTTP/1.1\r\nAccept: application/json\r\n\r\n\r\n--batch_AAA123--\r\n"
    )
    [request] = parse_batch(body, content_type)
    assert (request.method, request.url, request.body) == ("GET", "accounts?$select=name", b"")
    assert request.headers["accept"] == "application/json"


def test_keeps_non_ascii_body_bytes() -> None:
    body = (
        "--b\r\nContent-Type: application/http\r\n\r\nPOST /api/data/v9.2/accounts HTTP/1.1\r\n"
        'Content-Type: application/json\r\n\r\n{"name": "Müller & Søn"}\r\n--b--\r\n'
    ).encode()
    [request] = parse_batch(body, "multipart/mixed; boundary=b")
    assert json.loads(request.body) == {"name": "Müller & Søn"}


@pytest.mark.parametrize(
    ("url", "path"),
    [
        (f"{ROOT}/tasks", "/api/data/v9.2/tasks"),
        (f"{ROOT}/accounts?$select=name&$top=2", "/api/data/v9.2/accounts?$select=name&$top=2"),
        ("/api/data/v9.2/tasks", "/api/data/v9.2/tasks"),
        ("tasks", "/api/data/v9.2/tasks"),
        ("accounts(accountnumber='A1')", "/api/data/v9.2/accounts(accountnumber='A1')"),
    ],
)
def test_service_path_for_each_url_form(url: str, path: str) -> None:
    assert service_path(url) == path


def _one_part(request_text: str, *, part_headers: str = "Content-Type: application/http\r\n") -> bytes:
    return f"--b\r\n{part_headers}\r\n{request_text}\r\n--b--\r\n".encode()


def _changeset_body(*requests: str) -> bytes:
    inner = "".join(
        f"--cs\r\nContent-Type: application/http\r\nContent-ID: {n}\r\n\r\n{text}\r\n"
        for n, text in enumerate(requests, start=1)
    )
    return f"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n{inner}--cs--\r\n--b--\r\n".encode()


MALFORMED = [
    ("no boundary", b"--b\r\n\r\nGET x HTTP/1.1\r\n--b--", "multipart/mixed", "no boundary"),
    ("not multipart", b"{}", "application/json", "multipart/mixed"),
    ("garbage", b"\x00\xff garbage \r\n\r\n", "multipart/mixed; boundary=b", "no part"),
    ("empty body", b"", "multipart/mixed; boundary=b", "no part"),
    ("only close delimiter", b"--b--\r\n", "multipart/mixed; boundary=b", "no part"),
    ("unterminated", b"--b\r\nContent-Type: application/http\r\n\r\nGET x HTTP/1.1\r\n", "multipart/mixed; boundary=b",
     "closing"),
    ("missing request line", _one_part("Content-Type: application/json\r\n\r\n{}"), "multipart/mixed; boundary=b",
     "request line"),
    ("request line without version", _one_part("GET accounts"), "multipart/mixed; boundary=b", "request line"),
    ("empty http part", _one_part(""), "multipart/mixed; boundary=b", "empty"),
    ("part is not application/http", _one_part("GET x HTTP/1.1", part_headers="Content-Type: text/plain\r\n"),
     "multipart/mixed; boundary=b", "application/http"),
    ("part without headers", b"--b\r\nGET x HTTP/1.1\r\n\r\n--b--\r\n", "multipart/mixed; boundary=b",
     "application/http"),
    ("malformed inner header", _one_part("GET x HTTP/1.1\r\nthis is not a header\r\n\r\n"),
     "multipart/mixed; boundary=b", "header"),
    ("GET in changeset", _changeset_body("GET accounts HTTP/1.1\r\n"), "multipart/mixed; boundary=b",
     "GET is not allowed"),
    ("nested $batch", _one_part("POST /api/data/v9.2/$batch HTTP/1.1\r\n"), "multipart/mixed; boundary=b",
     "cannot nest"),
    ("nested changeset",
     b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\nContent-Type: multipart/mixed; boundary=x\r\n"
     b"\r\n--x\r\nContent-Type: application/http\r\n\r\nPOST a HTTP/1.1\r\n--x--\r\n--cs--\r\n--b--\r\n",
     "multipart/mixed; boundary=b", "cannot nest"),
    ("changeset without boundary",
     b"--b\r\nContent-Type: multipart/mixed\r\n\r\nPOST a HTTP/1.1\r\n--b--\r\n", "multipart/mixed; boundary=b",
     "boundary"),
    ("duplicate Content-ID",
     b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n"
     b"--cs\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nPOST a HTTP/1.1\r\n"
     b"--cs\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nPOST a HTTP/1.1\r\n--cs--\r\n--b--\r\n",
     "multipart/mixed; boundary=b", "declared twice"),
    ("header injection in content type", b"--b\r\n--b--", "multipart/mixed; boundary=b\r\nX: y", "single line"),
]


@pytest.mark.parametrize(("body", "content_type", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_batches_raise_batch_format_error(body: bytes, content_type: str, fragment: str) -> None:
    with pytest.raises(BatchFormatError) as caught:
        parse_batch(body, content_type)
    assert fragment in caught.value.message
    assert caught.value.status == 400
    assert caught.value.envelope() == {"error": {"code": "0x0", "message": caught.value.message}}


# ---------------------------------------------------------------------------------------------
# run_batch against a small dict-backed table store
# ---------------------------------------------------------------------------------------------

_ENTITY_URL = re.compile(
    r"^/api/data/v9\.2/(?P<set>\w+)(?:\((?P<id>[0-9a-f-]{36})\))?(?:/(?P<prop>\w+))?(?P<ref>/\$ref)?$"
)


@dataclass
class ToyService:
    """Just enough of a Web API to show the batch rules: sets of records keyed by GUID."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {"accounts": {}, "contacts": {}})
    seen: list[InnerRequest] = field(default_factory=list)
    scope_events: list[str] = field(default_factory=list)
    scope_exceptions: list[BaseException | None] = field(default_factory=list)

    def execute(self, request: InnerRequest) -> InnerResponse:
        self.seen.append(request)
        match = _ENTITY_URL.match(service_path(request.url))
        if match is None or match["set"] not in self.tables:
            return _error(404, "0x8006088a", "Resource not found for the segment.")
        table = self.tables[match["set"]]
        body = json.loads(request.body) if request.body else {}
        if request.method == "POST" and match["id"] is None:
            if body.get("name") == "fail":
                return _error(400, "0x80044331", "A validation error occurred.")
            for key, value in body.items():
                if key.endswith("@odata.bind") and not self._exists(value):
                    return _error(400, "0x80048d19", f"Bad bind {value}")
            new_id = str(uuid.uuid4())
            table[new_id] = body
            uri = f"{ROOT}/{match['set']}({new_id})"
            return InnerResponse(204, [("OData-Version", "4.0"), ("Location", uri), ("OData-EntityId", uri)])
        record = table.get(match["id"] or "")
        if record is None:
            return _error(404, "0x80040217", "Entity Does Not Exist")
        if request.method == "GET":
            return InnerResponse(200, [("Content-Type", "application/json")], json.dumps(record).encode())
        if request.method == "POST" and match["ref"]:
            if not self._exists(body.get("@odata.id", "")):
                return _error(400, "0x0", "Bad @odata.id")
            record.setdefault(match["prop"], []).append(body["@odata.id"])
            return InnerResponse(204, [])
        if request.method == "PUT" and match["prop"]:
            record[match["prop"]] = body["value"]
            return InnerResponse(204, [("OData-Version", "4.0")])
        if request.method == "PATCH":
            record.update(body)
            uri = f"{ROOT}/{match['set']}({match['id']})"
            return InnerResponse(204, [("OData-Version", "4.0"), ("OData-EntityId", uri)])
        if request.method == "DELETE":
            del table[match["id"]]
            return InnerResponse(204, [])
        return _error(405, "0x0", "Method not allowed")

    def _exists(self, uri: str) -> bool:
        match = _ENTITY_URL.match(service_path(uri))
        return bool(match and match["id"] in self.tables.get(match["set"], {}))

    @contextmanager
    def changeset_scope(self) -> Iterator[None]:
        snapshot = deepcopy(self.tables)
        self.scope_events.append("begin")
        try:
            yield
        except BaseException as exc:
            self.tables = snapshot
            self.scope_events.append("rollback")
            self.scope_exceptions.append(exc)
            raise
        self.scope_events.append("commit")
        self.scope_exceptions.append(None)

    def run(self, parts: list, *, continue_on_error: bool = False, **kwargs: Any) -> BatchResult:
        return run_batch(
            parts,
            continue_on_error=continue_on_error,
            execute=self.execute,
            changeset_scope=self.changeset_scope,
            **kwargs,
        )

    def add(self, set_name: str, **record: Any) -> str:
        new_id = str(uuid.uuid4())
        self.tables[set_name][new_id] = dict(record)
        return new_id


def _error(status: int, code: str, message: str) -> InnerResponse:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return InnerResponse(status, [("Content-Type", "application/json")], body)


def _req(method: str, url: str, body: dict | None = None, content_id: str | None = None) -> InnerRequest:
    raw = json.dumps(body).encode() if body is not None else b""
    return InnerRequest(method, url, Headers([("Content-Type", "application/json")]), raw, content_id)


def _statuses(result: BatchResult) -> list[Any]:
    out: list[Any] = []
    for part in result.parts:
        if isinstance(part, ChangesetOutcome):
            out.append([(o.content_id, o.response.status) for o in part.outcomes])
        else:
            out.append(part.response.status)
    return out


def test_sdk_batch_runs_and_substitutes_content_id_in_url() -> None:
    service = ToyService()
    result = service.run(parse_batch(SDK_BODY_CRLF, SDK_CONTENT_TYPE), continue_on_error=True)

    assert result.status == 200
    assert _statuses(result) == [204, [("1", 204), ("2", 204)]]
    created = result.parts[1].outcomes[0].response
    entity_uri = dict(created.headers)["OData-EntityId"]
    assert service.seen[2].url == entity_uri  # PATCH $1 went to the created account
    assert sorted(r["name"] for r in service.tables["accounts"].values()) == ["B1", "B2b"]
    assert service.scope_events == ["begin", "commit"]


def test_content_id_in_bind_odata_id_and_url_suffix() -> None:
    service = ToyService()
    changeset = Changeset(
        "cs",
        [
            _req("POST", "contacts", {"lastname": "Ng"}, "1"),
            _req("POST", "/api/data/v9.2/accounts", {"name": "Acme", "primarycontactid@odata.bind": "$1"}, "2"),
            _req("PUT", "$1/lastname", {"value": "Nguyen"}, "3"),
            _req("POST", "$2/contact_customer_accounts/$ref", {"@odata.id": "$1"}, "4"),
        ],
    )
    result = service.run([changeset])

    contact_uri = dict(result.parts[0].outcomes[0].response.headers)["OData-EntityId"]
    account_uri = dict(result.parts[0].outcomes[1].response.headers)["OData-EntityId"]
    assert json.loads(service.seen[1].body) == {"name": "Acme", "primarycontactid@odata.bind": contact_uri}
    assert service.seen[2].url == f"{contact_uri}/lastname"
    assert service.seen[3].url == f"{account_uri}/contact_customer_accounts/$ref"
    assert json.loads(service.seen[3].body) == {"@odata.id": contact_uri}
    [contact] = service.tables["contacts"].values()
    assert contact == {"lastname": "Nguyen"}
    [account] = service.tables["accounts"].values()
    assert account["contact_customer_accounts"] == [contact_uri]


def test_failing_changeset_rolls_back_and_answers_the_failing_request_only() -> None:
    service = ToyService()
    before = deepcopy(service.tables)
    parts = [
        Changeset(
            "cs",
            [
                _req("POST", "accounts", {"name": "kept?"}, "1"),
                _req("POST", "accounts", {"name": "fail"}, "2"),
                _req("PATCH", "$1", {"name": "never"}, "3"),
            ],
        ),
        _req("POST", "accounts", {"name": "after"}),
    ]
    result = service.run(parts)

    assert service.tables == before  # the first create was rolled back, the trailing part never ran
    assert service.scope_events == ["begin", "rollback"]
    assert isinstance(service.scope_exceptions[0], Exception)
    [changeset] = result.parts
    assert changeset.committed is False
    assert [(o.content_id, o.response.status) for o in changeset.outcomes] == [("2", 400)]
    assert result.status == 400
    assert [r.body for r in service.seen] == [b'{"name": "kept?"}', b'{"name": "fail"}']


def test_failing_changeset_with_continue_on_error_keeps_going() -> None:
    service = ToyService()
    parts = [
        Changeset("cs", [_req("POST", "accounts", {"name": "x"}, "1"), _req("POST", "accounts", {"name": "fail"}, "2")]),
        _req("POST", "accounts", {"name": "after"}),
    ]
    result = service.run(parts, continue_on_error=True)
    assert result.status == 200
    assert _statuses(result) == [[("2", 400)], 204]
    assert [r["name"] for r in service.tables["accounts"].values()] == ["after"]


UNDECLARED = {"error": {"code": "0x0", "message": "Content-ID Reference: '$1' does not exist in the batch context."}}


def test_undeclared_content_id_reference_is_a_400_in_the_dataverse_envelope() -> None:
    service = ToyService()
    result = service.run([Changeset("cs", [_req("PATCH", "$1", {"name": "x"}, "2")])])

    assert result.status == 400
    failing = result.parts[0].outcomes[0].response
    assert failing.status == 400
    assert json.loads(failing.body) == UNDECLARED
    assert dict(failing.headers)["Content-Type"].startswith("application/json")
    assert service.seen == []  # never reached the executor
    assert service.scope_events == ["begin", "rollback"]


def test_content_ids_do_not_cross_changesets_or_reach_top_level_requests() -> None:
    service = ToyService()
    parts = [
        Changeset("a", [_req("POST", "contacts", {"lastname": "A"}, "1")]),
        Changeset("b", [_req("POST", "accounts", {"name": "x", "primarycontactid@odata.bind": "$1"}, "1")]),
        _req("PATCH", "$1", {"name": "y"}),
    ]
    result = service.run(parts, continue_on_error=True)

    assert _statuses(result) == [[("1", 204)], [("1", 400)], 400]
    assert json.loads(result.parts[1].outcomes[0].response.body) == UNDECLARED
    assert json.loads(result.parts[2].response.body) == UNDECLARED
    assert service.tables["accounts"] == {}


def test_system_dollar_segments_are_not_references() -> None:
    service = ToyService()
    result = service.run([_req("GET", "$metadata")])
    assert _statuses(result) == [404]  # reached the executor unchanged
    assert service.seen[0].url == "$metadata"


@pytest.mark.parametrize(
    ("continue_on_error", "status", "statuses", "names"),
    [
        (False, 404, [204, 404], ["first"]),
        (True, 200, [204, 404, 204], ["first", "third"]),
    ],
    ids=["stop-at-first-failure", "continue-on-error"],
)
def test_stop_or_continue_on_error(continue_on_error: bool, status: int, statuses: list, names: list) -> None:
    service = ToyService()
    parts = [
        _req("POST", "accounts", {"name": "first"}),
        _req("PATCH", f"accounts({uuid.uuid4()})", {"name": "missing"}),
        _req("POST", "accounts", {"name": "third"}),
    ]
    result = service.run(parts, continue_on_error=continue_on_error)
    assert result.status == status
    assert result.failed is True
    assert _statuses(result) == statuses
    assert [r["name"] for r in service.tables["accounts"].values()] == names


def test_all_successful_batch_is_200() -> None:
    service = ToyService()
    account = service.add("accounts", name="seed")
    result = service.run([_req("GET", f"accounts({account})"), _req("DELETE", f"{ROOT}/accounts({account})")])
    assert (result.status, result.failed, _statuses(result)) == (200, False, [200, 204])
    assert service.tables["accounts"] == {}


@pytest.mark.parametrize(
    ("top_level", "in_changeset", "accepted"),
    [(1000, 0, True), (1001, 0, False), (600, 400, True), (600, 401, False)],
)
def test_operation_limit(top_level: int, in_changeset: int, accepted: bool) -> None:
    """Requests inside changesets count one by one towards the 1,000-operation limit."""
    service = ToyService()
    parts: list = [_req("GET", "accounts(00000000-0000-0000-0000-000000000000)")] * top_level
    if in_changeset:
        parts.append(Changeset("cs", [_req("POST", "accounts", {"name": "n"}, str(i)) for i in range(in_changeset)]))
    if accepted:
        assert service.run(parts, continue_on_error=True).status == 200
        assert len(service.seen) == top_level + in_changeset
        return
    with pytest.raises(BatchFormatError, match=rf"contains {top_level + in_changeset} operations; .* at most 1000"):
        service.run(parts, continue_on_error=True)
    assert service.seen == []


def test_executor_exception_propagates_through_the_changeset_scope() -> None:
    service = ToyService()

    def explode(request: InnerRequest) -> InnerResponse:
        raise RuntimeError("storage down")

    with pytest.raises(RuntimeError):
        run_batch(
            [Changeset("cs", [_req("POST", "accounts", {"name": "x"}, "1")])],
            continue_on_error=False,
            execute=explode,
            changeset_scope=service.changeset_scope,
        )
    assert service.scope_events == ["begin", "rollback"]
    assert isinstance(service.scope_exceptions[0], RuntimeError)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _sample_result() -> BatchResult:
    created = f"{ROOT}/accounts(6b2d7a3e-1f6d-4f5e-9b3a-2c1d0e9f8a7b)"
    return BatchResult(
        status=200,
        parts=[
            ChangesetOutcome(
                outcomes=[
                    RequestOutcome(
                        InnerResponse(204, [("OData-Version", "4.0"), ("Location", created), ("OData-EntityId", created)]),
                        "1",
                    ),
                    RequestOutcome(InnerResponse(204, [("OData-Version", "4.0")]), "2"),
                ],
                committed=True,
            ),
            RequestOutcome(
                InnerResponse(
                    200,
                    [("Content-Type", "application/json; odata.metadata=minimal"), ("OData-Version", "4.0")],
                    b'{"@odata.context":"x","value":[{"name":"A"}]}',
                )
            ),
            ChangesetOutcome(
                outcomes=[RequestOutcome(_error(400, "0x80044331", "A validation error occurred."), "7")],
                committed=False,
            ),
            RequestOutcome(_error(404, "0x80040217", "Entity Does Not Exist")),
        ],
    )


def test_rendered_response_structure() -> None:
    status, content_type, body = render_batch_response(_sample_result())

    assert status == 200
    boundary = re.fullmatch(r"multipart/mixed; boundary=(batchresponse_[0-9a-f-]{36})", content_type)[1]
    assert re.search(rb"(?<!\r)\n", body) is None, "only CRLF line endings"
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())

    message = BytesParser(policy=email.policy.compat32).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.defects == []
    changeset, query, failed_changeset, not_found = message.get_payload()

    assert changeset.get_content_type() == "multipart/mixed"
    assert changeset.get_boundary().startswith("changesetresponse_")
    inner = changeset.get_payload()
    assert [p["Content-ID"] for p in inner] == ["1", "2"]
    assert [p["Content-Transfer-Encoding"] for p in inner] == ["binary", "binary"]
    first = inner[0].get_payload(decode=True)
    assert first.startswith(b"HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: ")
    assert b"OData-EntityId: " + ROOT.encode() + b"/accounts(6b2d7a3e" in first

    assert query.get_content_type() == "application/http"
    assert query.get_payload(decode=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n"
        b'{"@odata.context":"x","value":[{"name":"A"}]}'
    )
    # A rolled-back changeset is answered by its failing request alone, not a nested multipart.
    assert failed_changeset.get_content_type() == "application/http"
    assert failed_changeset["Content-ID"] == "7"
    assert failed_changeset.get_payload(decode=True).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert not_found.get_payload(decode=True).startswith(b"HTTP/1.1 404 Not Found\r\n")


class _SdkResponse:
    """The two attributes the SDK's parser reads from a requests.Response."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status_code = status
        self.headers = {"Content-Type": content_type}
        self.text = body.decode("utf-8")


def _sdk_parse(status: int, content_type: str, body: bytes) -> Any:
    batch_base = pytest.importorskip("PowerPlatform.Dataverse.data._batch_base")
    return batch_base._BatchBase(None)._parse_batch_response(_SdkResponse(status, content_type, body))


def test_microsoft_sdk_parses_the_rendered_response() -> None:
    parsed = _sdk_parse(*render_batch_response(_sample_result()))

    assert [(r.status_code, r.content_id) for r in parsed.responses] == [
        (204, "1"),
        (204, "2"),
        (200, None),
        (400, "7"),
        (404, None),
    ]
    assert parsed.responses[0].entity_id == "6b2d7a3e-1f6d-4f5e-9b3a-2c1d0e9f8a7b"
    assert parsed.responses[2].data == {"@odata.context": "x", "value": [{"name": "A"}]}
    assert (parsed.responses[3].error_code, parsed.responses[3].error_message) == (
        "0x80044331",
        "A validation error occurred.",
    )
    assert parsed.responses[4].error_code == "0x80040217"


def test_round_trip_sdk_bytes_to_sdk_result_stopping_at_first_failure() -> None:
    """SDK request bytes → parse → run (a missing record fails) → render → the SDK's own parser."""
    service = ToyService()
    missing = uuid.uuid4()
    body = SDK_BODY_CRLF.replace(
        f"POST {ROOT}/accounts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n"
        '{"name": "B1"}'.encode(),
        f"PATCH {ROOT}/accounts({missing}) HTTP/1.1\r\nIf-Match: *\r\n\r\n"
        '{"name": "B1"}'.encode(),
        1,
    )
    result = service.run(parse_batch(body, SDK_CONTENT_TYPE), continue_on_error=False)
    status, content_type, rendered = render_batch_response(result)

    assert status == 404
    parsed = _sdk_parse(status, content_type, rendered)
    assert [(r.status_code, r.error_code) for r in parsed.responses] == [(404, "0x80040217")]
    assert service.tables["accounts"] == {}  # the changeset after the failure never ran

    result = ToyService().run(parse_batch(SDK_BODY_CRLF, SDK_CONTENT_TYPE), continue_on_error=False)
    parsed = _sdk_parse(*render_batch_response(result))
    assert [(r.status_code, r.content_id, r.entity_id is not None) for r in parsed.responses] == [
        (204, None, True),
        (204, "1", True),
        (204, "2", True),
    ]


# ---------------------------------------------------------------------------------------------
# Robustness: nothing but BatchFormatError may escape parse_batch
# ---------------------------------------------------------------------------------------------


def _parse_or_format_error(body: bytes, content_type: str) -> None:
    try:
        parts = parse_batch(body, content_type)
    except BatchFormatError as error:
        assert error.message and error.status == 400
        return
    assert all(isinstance(p, InnerRequest | Changeset) for p in parts)


_CONTENT_TYPES = st.one_of(
    st.just("multipart/mixed; boundary=b"),
    st.just('multipart/mixed; boundary="b"'),
    st.text(max_size=60),
    st.builds(lambda s: f"multipart/mixed; boundary={s}", st.text(max_size=20)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400), content_type=_CONTENT_TYPES)
def test_random_bytes_only_raise_batch_format_error(body: bytes, content_type: str) -> None:
    _parse_or_format_error(body, content_type)


_FRAGMENTS = st.sampled_from(
    [
        "--b", "--b--", "--cs", "--cs--", "", " ", "Content-Type: application/http",
        "Content-Type: multipart/mixed; boundary=cs", "Content-Type: multipart/mixed", "Content-ID: 1",
        "Content-ID: ", "Content-Transfer-Encoding: base64", "Content-Transfer-Encoding: binary",
        "POST accounts HTTP/1.1", "GET $1 HTTP/1.1", "PATCH $1/x HTTP/1.1", "DELETE /api/data/v9.2/$batch HTTP/1.1",
        "If-Match: *", "X: a\r\n b", ": novalue", "no colon here", '{"a@odata.bind": "$1"}', "\x00\xff",
        "Content-Type: application/http; msgtype=request", "\tfolded", "=?utf-8?q?x?=", "HTTP/1.1",
    ]
)


_PART_HEADERS = st.just(["Content-Type: application/http", "Content-Transfer-Encoding: binary"]) | st.lists(
    st.sampled_from(
        [
            "Content-Type: application/http", "Content-Transfer-Encoding: binary", "Content-ID: 1", "Content-ID: 2",
            "Content-Transfer-Encoding: base64", "Content-Type: text/plain", "no colon here", "\tfolded",
        ]
    ),
    max_size=4,
)
_REQUEST_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "POST accounts HTTP/1.1", "GET $1 HTTP/1.1", "PATCH $1/x HTTP/1.1", "PUT $2 HTTP/1.1",
                "DELETE /api/data/v9.2/$batch HTTP/1.1", "If-Match: *", "X: a\r\n b", ": novalue", "", "",
                '{"a@odata.bind": "$1"}', "Content-Type: application/json", "=?utf-8?q?x?=", "HTTP/1.1",
            ]
        ),
        st.text(max_size=12),
    ),
    max_size=6,
).map(lambda lines: ["POST accounts HTTP/1.1", *lines] if lines and lines[0] == "" else lines)


@st.composite
def _near_valid_batches(draw: st.DrawFn) -> list[str]:
    """Well-delimited batches and changesets whose part headers and inner requests are scrambled."""
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        lines.append("--b")
        if draw(st.booleans()):
            lines += ["Content-Type: multipart/mixed; boundary=cs", ""]
            for _ in range(draw(st.integers(0, 3))):
                lines += ["--cs", *draw(_PART_HEADERS), "", *draw(_REQUEST_LINES)]
            lines.append(draw(st.sampled_from(["--cs--"] * 5 + [""])))
        else:
            lines += [*draw(_PART_HEADERS), "", *draw(_REQUEST_LINES)]
    lines.append(draw(st.sampled_from(["--b--"] * 5 + ["--b", ""])))
    return lines


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.one_of(_near_valid_batches(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=12)), max_size=30)),
       crlf=st.booleans())
def test_near_valid_batches_only_raise_batch_format_error(lines: list[str], crlf: bool) -> None:
    body = ("\r\n" if crlf else "\n").join(lines).encode("utf-8", "surrogateescape")
    _parse_or_format_error(body, "multipart/mixed; boundary=b")
