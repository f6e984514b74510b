"""Batched writes: one operation, its result, and the two wire formats (multipart and JSON).

Dataverse takes ``multipart/mixed`` batches of up to 1,000 operations
(https://learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api);
Business Central takes JSON batches of up to 100
(https://learn.microsoft.com/dynamics365/business-central/dev-itpro/developer/devenv-connect-apps-tips#batch).
The response of a multipart batch is parsed with the standard library's ``email`` parser.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from .errors import ServiceError, strip_correlation


@dataclass
class BatchOp:
    """One request inside a batch; ``path`` is relative to the service's API root."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchResult:
    status: int
    headers: dict[str, str]
    body: Any
    service: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> ServiceError | None:
        if self.ok:
            return None
        code, message = "", f"HTTP {self.status}"
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = str(self.body["error"].get("code", ""))
            message = str(self.body["error"].get("message", message))
        return ServiceError(self.service, self.status, code, strip_correlation(message))

    @property
    def etag(self) -> str | None:
        if isinstance(self.body, dict) and self.body.get("@odata.etag"):
            return str(self.body["@odata.etag"])
        return self.headers.get("etag")


# -- Dataverse: multipart/mixed -----------------------------------------------------------------


def encode_multipart(ops: list[BatchOp], api_root: str) -> tuple[str, bytes]:
    """The body of a Dataverse ``$batch`` with independent operations (no change set)."""
    boundary = f"batch_{uuid.uuid4()}"
    lines: list[str] = []
    for op in ops:
        lines += [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary", ""]
        lines.append(f"{op.method} {api_root}/{op.path} HTTP/1.1")
        headers = dict(op.headers)
        if op.body is not None:
            headers.setdefault("Content-Type", "application/json")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append("")
        lines.append(json.dumps(op.body) if op.body is not None else "")
    lines.append(f"--{boundary}--")
    lines.append("")
    return f"multipart/mixed; boundary={boundary}", "\r\n".join(lines).encode("utf-8")


def _http_response(raw: bytes, service: str) -> BatchResult:
    newline = b"\r\n" if b"\r\n" in raw else b"\n"
    head, _, rest = raw.partition(newline)
    parts = head.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    # The email parser reads the response's headers; the body after the blank line is the JSON as sent
    # (an HTTP body has no transfer encoding to undo), so it is not fed through the parser line by line.
    if rest.startswith(newline):
        fields, content = b"", rest[len(newline):]
    else:
        fields, blank, content = rest.partition(newline * 2)
        fields += blank
    message = message_from_bytes(fields)
    headers = {k.lower(): v for k, v in message.items()}
    text = content.decode("utf-8")
    body: Any = None
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    return BatchResult(status, headers, body, service)


def _collect(message: Message, service: str, out: list[BatchResult]) -> None:
    for part in message.get_payload() or []:
        assert isinstance(part, Message)
        if part.is_multipart():  # a change set's responses
            _collect(part, service, out)
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload.strip():
            out.append(_http_response(payload.lstrip(), service))


def decode_multipart(content_type: str, body: bytes, service: str = "dataverse") -> list[BatchResult]:
    message = message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    results: list[BatchResult] = []
    _collect(message, service, results)
    return results


# -- Business Central: JSON -------------------------------------------------------------------


def encode_json(ops: list[BatchOp]) -> dict[str, Any]:
    requests = []
    for index, op in enumerate(ops):
        item: dict[str, Any] = {"id": str(index), "method": op.method, "url": op.path}
        headers = dict(op.headers)
        if op.body is not None:
            headers.setdefault("Content-Type", "application/json")
            item["body"] = op.body
        if headers:
            item["headers"] = headers
        requests.append(item)
    return {"requests": requests}


def decode_json(body: dict[str, Any], count: int, service: str = "bc") -> list[BatchResult]:
    by_id = {str(r.get("id")): r for r in body.get("responses", [])}
    results = []
    for index in range(count):
        item = by_id.get(str(index), {"status": 500, "headers": {}, "body": None})
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        results.append(BatchResult(int(item.get("status", 500)), headers, item.get("body"), service))
    return results
