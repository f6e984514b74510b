"""The Dataverse ``$batch`` protocol (OData v4 multipart/mixed), independent of any table or route.

Three steps, each usable on its own:

* :func:`parse_batch` turns the request body into :class:`InnerRequest` and :class:`Changeset` parts.
  MIME structure is read by the stdlib ``email`` parser; only the small HTTP request line and header
  block inside each ``application/http`` part is read here.
* :func:`run_batch` executes the parts in order through a caller-supplied ``execute`` callable,
  wraps each changeset in the caller's transaction scope, and resolves Content-ID references
  (``$1`` in URLs, ``"$1"`` in ``@odata.bind`` / ``@odata.id`` values) within a changeset.
* :func:`render_batch_response` writes the ``batchresponse_<uuid>`` multipart reply (CRLF).

Choices where the public documentation
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api) is silent:

* A failed changeset is answered with the failing request's response only, as a plain
  ``application/http`` part (not a nested ``changesetresponse``), carrying that request's
  ``Content-ID``. Earlier requests of the changeset were rolled back, so they are not echoed.
* Without ``continue_on_error`` the batch stops after the first failing top-level part; the batch
  status is that part's status and the body holds every response produced so far (earlier
  successes, then the failure). With it, the status is 200 and every part is answered.
* Structural problems (no boundary, unterminated body, missing request line, GET inside a
  changeset, nested batch, too many operations) reject the whole batch with :class:`BatchFormatError`
  before anything executes.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from email import errors as email_errors
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers

from .exceptions import DataverseError

CRLF = "\r\n"
MAX_OPERATIONS = 1000
# A GET too long for the URL limit (32,768) may be sent inside a batch, up to this length:
# https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query/overview
MAX_URL_LENGTH = 65_536
API_ROOT_PATH = "/api/data/v9.2"

_REQUEST_LINE = re.compile(rb"^(?P<method>[A-Za-z]+)[ \t]+(?P<url>\S+)[ \t]+HTTP/\d\.\d[ \t]*$")
_REFERENCE = re.compile(r"^\$(?P<id>[A-Za-z0-9_.\-]+)(?P<rest>(?:[/?(].*)?)$", re.DOTALL)
# `$` segments that are OData system resources, never Content-ID references.
_SYSTEM_SEGMENTS = frozenset({"metadata", "batch", "entity", "crossjoin", "all", "root", "ref", "count"})
_STRUCTURE_DEFECTS = (
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.CloseBoundaryNotFoundDefect,
    email_errors.NoBoundaryInMultipartDefect,
    email_errors.MultipartInvariantViolationDefect,
)


class BatchFormatError(DataverseError):
    """The batch body cannot be executed at all; the app answers ``status`` in the Dataverse envelope."""

    def __init__(self, message: str, *, status: int = 400, code: str = "0x0") -> None:
        super().__init__(status, code, message)

    def envelope(self) -> dict[str, Any]:
        return self.body()


@dataclass
class InnerRequest:
    """One HTTP request carried in an ``application/http`` part.

    ``url`` is kept as written (absolute, host-relative, root-relative or a ``$n`` reference);
    :func:`service_path` maps the first three onto a server path once references are resolved.
    """

    method: str
    url: str
    headers: Headers
    body: bytes
    content_id: str | None = None


@dataclass
class InnerResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass
class Changeset:
    """An atomic group of write requests (Dataverse ExecuteTransaction)."""

    boundary: str
    requests: list[InnerRequest]


BatchPart = InnerRequest | Changeset


@dataclass
class RequestOutcome:
    """The answer to one inner request, with the Content-ID to echo."""

    response: InnerResponse
    content_id: str | None = None


@dataclass
class ChangesetOutcome:
    """The answer to a changeset: every response if committed, only the failing one if rolled back."""

    outcomes: list[RequestOutcome]
    committed: bool


PartOutcome = RequestOutcome | ChangesetOutcome


@dataclass
class BatchResult:
    status: int
    parts: list[PartOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(_outcome_failed(p) for p in self.parts)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def parse_batch(body: bytes, content_type: str) -> list[BatchPart]:
    """Read a ``multipart/mixed`` batch body into parts; any malformation raises BatchFormatError."""
    if "\r" in content_type or "\n" in content_type:
        raise BatchFormatError("The Content-Type header of a $batch request must be a single line.")
    envelope = _header_message(content_type)
    if envelope.get_content_type() != "multipart/mixed":
        raise BatchFormatError(
            f"A $batch request must have Content-Type multipart/mixed, not '{envelope.get_content_type()}'."
        )
    if not envelope.get_boundary():
        raise BatchFormatError("The multipart/mixed Content-Type of the $batch request has no boundary.")

    header = b"Content-Type: " + content_type.encode("utf-8", "replace") + b"\r\n\r\n"
    message = _parse_mime(header + body)
    _reject_structure_defects(message, "batch")

    parts: list[BatchPart] = []
    for index, part in enumerate(_subparts(message), start=1):
        content_type = part.get_content_type()
        if content_type.startswith("multipart/"):
            parts.append(_parse_changeset(part, index))
        else:
            parts.append(_parse_http_part(part, f"part {index}", content_type))
    return parts


def _parse_changeset(part: Message, index: int) -> Changeset:
    where = f"changeset (part {index})"
    if part.get_content_type() != "multipart/mixed":
        raise BatchFormatError(f"The {where} must be multipart/mixed, not '{part.get_content_type()}'.")
    boundary = part.get_boundary()
    if not boundary:
        raise BatchFormatError(f"The {where} has no boundary parameter.")
    _reject_structure_defects(part, where)

    requests: list[InnerRequest] = []
    seen_ids: set[str] = set()
    for number, inner in enumerate(_subparts(part), start=1):
        label = f"request {number} of the {where}"
        content_type = inner.get_content_type()
        if content_type.startswith("multipart/"):
            raise BatchFormatError(f"The {where} contains a nested multipart part; changesets cannot nest.")
        request = _parse_http_part(inner, label, content_type)
        if request.method == "GET":
            raise BatchFormatError(f"GET is not allowed inside a changeset ({label}).")
        if request.content_id is not None:
            if request.content_id in seen_ids:
                raise BatchFormatError(f"Content-ID '{request.content_id}' is declared twice in the {where}.")
            seen_ids.add(request.content_id)
        requests.append(request)
    return Changeset(boundary=boundary, requests=requests)


def _parse_http_part(part: Message, where: str, content_type: str) -> InnerRequest:
    if content_type != "application/http":
        raise BatchFormatError(f"The {where} has Content-Type '{content_type}'; expected application/http.")
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise BatchFormatError(f"The {where} has no readable HTTP request.")
    request = _parse_http_request(payload, where)
    part_content_id = part.get("Content-ID")
    if part_content_id is not None:
        request.content_id = _unfold(part_content_id) or None
    elif request.headers.get("Content-ID"):
        request.content_id = request.headers["Content-ID"].strip() or None
    return request


def _parse_http_request(payload: bytes, where: str) -> InnerRequest:
    """Split ``METHOD URL HTTP/1.1``, header lines, blank line, body; tolerant of LF or CRLF."""
    lines = payload.splitlines(keepends=True)
    position = 0
    while position < len(lines) and not lines[position].strip():
        position += 1
    if position == len(lines):
        raise BatchFormatError(f"The {where} is empty; expected an HTTP request line.")
    match = _REQUEST_LINE.match(lines[position].rstrip(b"\r\n"))
    if match is None:
        raise BatchFormatError(f"The {where} does not start with a request line 'METHOD URL HTTP/1.1'.")
    position += 1

    header_lines: list[bytes] = []
    while position < len(lines) and lines[position].strip(b"\r\n"):
        header_lines.append(lines[position])
        position += 1
    body = b"".join(lines[position + 1 :]).strip(b"\r\n")

    headers = Headers()
    if header_lines:
        parsed = _parse_mime(b"".join(header_lines).rstrip(b"\r\n") + b"\r\n\r\n", headers_only=True)
        if parsed.defects or parsed.get_payload():
            raise BatchFormatError(f"The {where} has a malformed header line.")
        for name, value in parsed.items():
            headers.add(name.strip(), _unfold(value))

    method = match.group("method").decode("ascii").upper()
    url = match.group("url").decode("utf-8", "replace")
    try:
        path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    except ValueError:
        raise BatchFormatError(f"The {where} has a malformed URL.") from None
    if path.rstrip("/").rsplit("/", 1)[-1] == "$batch":
        raise BatchFormatError(f"The {where} is itself a $batch request; batches cannot nest.")
    return InnerRequest(method=method, url=url, headers=headers, body=body)


def _unfold(value: object) -> str:
    """A header value on one line (folded continuation lines joined by a space)."""
    return re.sub(r"[\r\n]+[ \t]*", " ", str(value)).strip()


def _parse_mime(data: bytes, *, headers_only: bool = False) -> Message:
    # The stdlib parser is lenient and records defects, but on pathological input it has raised
    # from deep inside; any such failure still means the client sent a malformed body.
    try:
        parser = BytesHeaderParser if headers_only else BytesParser
        return parser(policy=policy.compat32).parsebytes(data)
    except Exception as exc:  # deliberately total: bad bytes must map to 400
        raise BatchFormatError("The $batch body is not a readable multipart/mixed document.") from exc


def _header_message(content_type: str) -> Message:
    message = Message()
    try:
        message["Content-Type"] = content_type
        message.get_content_type()
        message.get_boundary()
    except Exception as exc:  # see _parse_mime
        raise BatchFormatError("The Content-Type header of the $batch request is malformed.") from exc
    return message


def _reject_structure_defects(message: Message, where: str) -> None:
    for defect in message.defects:
        if isinstance(defect, email_errors.CloseBoundaryNotFoundDefect):
            raise BatchFormatError(f"The {where} is not terminated by its closing '--boundary--' line.")
        if isinstance(defect, _STRUCTURE_DEFECTS):
            raise BatchFormatError(f"The {where} contains no part delimited by its boundary.")
    if not message.is_multipart():
        raise BatchFormatError(f"The {where} contains no part delimited by its boundary.")


def _subparts(message: Message) -> Iterator[Message]:
    payload = message.get_payload()
    if not isinstance(payload, list):
        raise BatchFormatError("The multipart body holds no parts.")
    for part in payload:  # a multipart message's payload is a list of messages
        assert isinstance(part, Message)
        yield part


@functools.lru_cache(maxsize=4096)  # a batch asks twice per request (its run, then the request itself)
def service_path(url: str, api_root_path: str = API_ROOT_PATH) -> str:
    """Map an inner URL (absolute, ``/host-relative`` or ``root-relative``) to ``/path?query``.

    The host of an absolute URL is not checked here; call after Content-ID references are resolved.
    """
    if "://" in url:
        split = urlsplit(url)
        return split.path + (f"?{split.query}" if split.query else "")
    if url.startswith("/"):
        return url
    return f"{api_root_path.rstrip('/')}/{url}"


# ---------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------


class _ChangesetFailed(Exception):
    """Raised inside the caller's changeset scope so that it rolls back."""


def count_operations(parts: list[BatchPart]) -> int:
    return sum(len(p.requests) if isinstance(p, Changeset) else 1 for p in parts)


@dataclass(frozen=True)
class RunTogether:
    """How a caller writes a run of requests at once: ``key`` names the run a request outside a
    changeset may join (None: it runs alone); ``execute`` answers a whole run, or returns None when
    any of it fails (the run's writes are then undone and its requests run one by one)."""

    key: Callable[[InnerRequest], str | None]
    execute: Callable[[list[InnerRequest]], list[InnerResponse] | None]


def run_batch(
    parts: list[BatchPart],
    *,
    continue_on_error: bool,
    execute: Callable[[InnerRequest], InnerResponse],
    changeset_scope: Callable[[], AbstractContextManager[None]],
    request_scope: Callable[[], AbstractContextManager[Callable[[], None]]] | None = None,
    together: RunTogether | None = None,
    max_operations: int = MAX_OPERATIONS,
) -> BatchResult:
    """Execute parts in order; see the module docstring for the stop and rollback rules.

    Exceptions raised by ``execute`` propagate (inside a changeset the scope sees them first):
    turning an application failure into an error response is the caller's job. ``request_scope``, if
    given, surrounds each request outside a changeset and yields the function that undoes its writes,
    called when the request fails. With ``together`` too, consecutive requests outside changesets
    with the same run key go to ``together.execute`` in one scope, answered as one by one.
    """
    total = count_operations(parts)
    if total > max_operations:
        raise BatchFormatError(
            f"The batch contains {total} operations; a $batch request may hold at most {max_operations}."
        )

    result = BatchResult(status=200)
    index = alone_until = 0
    while index < len(parts):
        if together is not None and request_scope is not None and index >= alone_until:
            run = _run_at(parts, index, together)
            if len(run) > 1:
                answered = _execute_run(run, together, request_scope)
                if answered is not None:  # no failures among them: nothing to stop at
                    result.parts.extend(answered)
                    index += len(run)
                    continue
                alone_until = index + len(run)  # one of them fails: the run goes one by one
        part = parts[index]
        index += 1
        if isinstance(part, Changeset):
            outcome: PartOutcome = _run_changeset(part, execute, changeset_scope)
        elif request_scope is None:
            outcome = RequestOutcome(_execute_resolved(part, {}, execute), part.content_id)
        else:
            with request_scope() as undo:
                outcome = RequestOutcome(_execute_resolved(part, {}, execute), part.content_id)
                if outcome.response.status >= 400:
                    undo()
        result.parts.append(outcome)
        if _outcome_failed(outcome) and not continue_on_error:
            result.status = _first_response(outcome).status
            break
    return result


def _run_at(parts: list[BatchPart], index: int, together: RunTogether) -> list[InnerRequest]:
    """The requests from ``index`` on that share one run key (empty when the first has none)."""
    run: list[InnerRequest] = []
    key: str | None = None
    for part in parts[index:]:
        if isinstance(part, Changeset):
            break
        part_key = together.key(part)
        if part_key is None or (key is not None and part_key != key):
            break
        key = part_key
        run.append(part)
    return run


def _execute_run(run: list[InnerRequest], together: RunTogether | None,
                 request_scope: Callable[[], AbstractContextManager[Callable[[], None]]] | None,
                 ) -> list[PartOutcome] | None:
    assert together is not None and request_scope is not None
    with request_scope() as undo:
        responses = together.execute(run)
        if responses is None:
            undo()
            return None
    return [RequestOutcome(response, request.content_id) for request, response in zip(run, responses, strict=True)]


def _run_changeset(
    changeset: Changeset,
    execute: Callable[[InnerRequest], InnerResponse],
    changeset_scope: Callable[[], AbstractContextManager[None]],
) -> ChangesetOutcome:
    outcomes: list[RequestOutcome] = []
    entity_uris: dict[str, str] = {}
    try:
        with changeset_scope():
            for request in changeset.requests:
                response = _execute_resolved(request, entity_uris, execute)
                if response.status >= 400:
                    outcomes = [RequestOutcome(response, request.content_id)]
                    raise _ChangesetFailed
                outcomes.append(RequestOutcome(response, request.content_id))
                if request.content_id is not None:
                    uri = _entity_uri(response)
                    if uri is not None:
                        entity_uris[request.content_id] = uri
    except _ChangesetFailed:
        return ChangesetOutcome(outcomes=outcomes, committed=False)
    return ChangesetOutcome(outcomes=outcomes, committed=True)


def _execute_resolved(
    request: InnerRequest,
    entity_uris: dict[str, str],
    execute: Callable[[InnerRequest], InnerResponse],
) -> InnerResponse:
    try:
        resolved = _resolve_references(request, entity_uris)
    except _UndeclaredReference as missing:
        return error_response(
            400, "0x0", f"Content-ID Reference: '${missing.content_id}' does not exist in the batch context."
        )
    return execute(resolved)


class _UndeclaredReference(Exception):
    def __init__(self, content_id: str) -> None:
        super().__init__(content_id)
        self.content_id = content_id


def _resolve_references(request: InnerRequest, entity_uris: dict[str, str]) -> InnerRequest:
    """Replace ``$n`` at the start of the URL and in bind/id values of a JSON body.

    Raises ``_UndeclaredReference`` when ``$n`` names no earlier request of the same changeset.
    """
    url = _resolve_url(request.url, entity_uris)
    body = request.body
    if b'"$' in body:
        try:
            replaced, changed = _resolve_json(json.loads(body), entity_uris)
        except (ValueError, RecursionError):
            changed = False  # not usable JSON: the executor reports that in its own terms
        if changed:
            body = json.dumps(replaced).encode("utf-8")
    if url == request.url and body is request.body:
        return request
    return replace(request, url=url, body=body)


def _resolve_url(url: str, entity_uris: dict[str, str]) -> str:
    match = _REFERENCE.match(url)
    if match is None:
        return url
    content_id = match.group("id")
    if content_id in entity_uris:
        return entity_uris[content_id] + match.group("rest")
    if content_id.lower() in _SYSTEM_SEGMENTS:
        return url
    raise _UndeclaredReference(content_id)


def _resolve_json(value: Any, entity_uris: dict[str, str]) -> tuple[Any, bool]:
    if isinstance(value, list):
        items = [_resolve_json(item, entity_uris) for item in value]
        return [v for v, _ in items], any(c for _, c in items)
    if not isinstance(value, dict):
        return value, False
    changed = False
    result: dict[str, Any] = {}
    for key, item in value.items():
        if key.endswith("@odata.bind") or key == "@odata.id":
            new_item, item_changed = _resolve_bind_value(item, entity_uris)
        else:
            new_item, item_changed = _resolve_json(item, entity_uris)
        result[key] = new_item
        changed = changed or item_changed
    return result, changed


def _resolve_bind_value(value: Any, entity_uris: dict[str, str]) -> tuple[Any, bool]:
    if isinstance(value, str):
        match = _REFERENCE.match(value)
        if match is None or match.group("rest"):
            return value, False
        content_id = match.group("id")
        if content_id not in entity_uris:
            raise _UndeclaredReference(content_id)
        return entity_uris[content_id], True
    if isinstance(value, list):  # collection-valued navigation bind: ["$1", "/contacts(...)"]
        items = [_resolve_bind_value(item, entity_uris) for item in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def _entity_uri(response: InnerResponse) -> str | None:
    headers = {name.lower(): value for name, value in response.headers}
    return headers.get("odata-entityid") or headers.get("location")


def _outcome_failed(outcome: PartOutcome) -> bool:
    if isinstance(outcome, ChangesetOutcome):
        return not outcome.committed
    return outcome.response.status >= 400


def _first_response(outcome: PartOutcome) -> InnerResponse:
    if isinstance(outcome, ChangesetOutcome):
        return outcome.outcomes[0].response
    return outcome.response


def error_response(status: int, code: str, message: str) -> InnerResponse:
    """A Dataverse error envelope as an inner response (with the REQ_ID header Dataverse adds)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    headers = [
        ("REQ_ID", str(uuid.uuid4())),
        ("Content-Type", "application/json; odata.metadata=minimal"),
        ("OData-Version", "4.0"),
    ]
    return InnerResponse(status=status, headers=headers, body=body)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render_batch_response(result: BatchResult) -> tuple[int, str, bytes]:
    """Serialize a BatchResult as Dataverse does: ``batchresponse_<uuid>``, CRLF, nested changesets."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for outcome in result.parts:
        chunks.append(f"--{boundary}{CRLF}".encode("ascii"))
        if isinstance(outcome, ChangesetOutcome) and outcome.committed:
            chunks.append(_render_changeset(outcome))
        else:
            single = outcome.outcomes[0] if isinstance(outcome, ChangesetOutcome) else outcome
            chunks.append(_render_http_part(single))
        chunks.append(CRLF.encode("ascii"))
    chunks.append(f"--{boundary}--{CRLF}".encode("ascii"))
    return result.status, f"multipart/mixed; boundary={boundary}", b"".join(chunks)


def _render_changeset(outcome: ChangesetOutcome) -> bytes:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    chunks = [f"Content-Type: multipart/mixed; boundary={boundary}{CRLF}{CRLF}".encode("ascii")]
    for item in outcome.outcomes:
        chunks.append(f"--{boundary}{CRLF}".encode("ascii"))
        chunks.append(_render_http_part(item))
        chunks.append(CRLF.encode("ascii"))
    chunks.append(f"--{boundary}--".encode("ascii"))
    return b"".join(chunks)


def _render_http_part(outcome: RequestOutcome) -> bytes:
    part_headers = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if outcome.content_id is not None:
        part_headers.append(f"Content-ID: {outcome.content_id}")
    response = outcome.response
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    head = CRLF.join(part_headers) + CRLF + CRLF + CRLF.join(lines) + CRLF + CRLF
    return head.encode("utf-8") + response.body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
