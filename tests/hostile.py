"""Shared pieces of the hostile-input tests: the envelope invariants, raw HTTP, batch bodies.

`requests` normalises what a hostile client would not (it upper-cases methods, re-encodes URLs),
so a few checks go through `http.client` or a raw TLS socket instead.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

BC_CORRELATION = re.compile(r"  CorrelationId:  ([0-9a-f-]{36})\.$", re.S)


def dataverse_envelope(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """The Dataverse invariant for one answer: below 500; an error is JSON `{"error": {code, message}}`."""
    assert status < 500, (status, body[:300])
    if status < 400:
        return {}
    assert content_type.startswith("application/json"), (status, content_type, body[:300])
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert isinstance(error, dict) and {"code", "message"} <= set(error), payload
    assert isinstance(error["code"], str) and isinstance(error["message"], str), payload
    assert "Traceback" not in error["message"]
    return error


def bc_envelope(status: int, content_type: str, body: bytes, request_id: str | None) -> dict[str, Any]:
    """The BC invariant: below 500; an error is `{"error": {code, message}}` ending in the correlation id."""
    assert status < 500, (status, body[:300])
    if status < 400:
        return {}
    assert content_type.startswith("application/json"), (status, content_type, body[:300])
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, payload
    assert isinstance(error["code"], str) and error["code"], payload
    m = BC_CORRELATION.search(error["message"])
    assert m, payload
    if request_id is not None:
        assert request_id == m.group(1), (request_id, payload)
    return error


def check_dataverse(resp: requests.Response) -> dict[str, Any]:
    return dataverse_envelope(resp.status_code, resp.headers.get("Content-Type", ""), resp.content)


def check_bc(resp: requests.Response) -> dict[str, Any]:
    return bc_envelope(resp.status_code, resp.headers.get("Content-Type", ""), resp.content,
                       resp.headers.get("request-id"))


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def raw_request(url: str, method: str, target: str, *, ca_bundle: str, headers: dict[str, str] | None = None,
                body: bytes | None = None, timeout: float = 20) -> RawResponse:
    """One request exactly as given: the method's case and the target's bytes are not touched."""
    split = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_bundle)
    conn = http.client.HTTPSConnection(split.hostname, split.port, context=context, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def declared_length_only(url: str, target: str, length: int, *, ca_bundle: str, headers: dict[str, str]) -> RawResponse:
    """Announce a body of ``length`` bytes, send none of it, and read what the server answers."""
    split = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_bundle)
    with socket.create_connection((split.hostname, split.port), timeout=20) as plain, \
            context.wrap_socket(plain, server_hostname=split.hostname) as tls:
        head = [f"POST {target} HTTP/1.1", f"Host: {split.netloc}", f"Content-Length: {length}",
                "Content-Type: application/json", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _content_length(data):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    response_headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return RawResponse(int(lines[0].split()[1]), response_headers, body)


def _content_length(data: bytes) -> int:
    m = re.search(rb"(?im)^content-length:\s*(\d+)", data)
    return int(m.group(1)) if m else 0


# -- Dataverse multipart $batch --------------------------------------------------------------------
def batch_body(parts: list[str], boundary: str = "batch_hostile") -> tuple[bytes, str]:
    text = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return text.encode("utf-8", "surrogatepass"), f"multipart/mixed; boundary={boundary}"


def http_part(request_line: str, body: str | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    inner = f"{request_line} HTTP/1.1\r\n"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\r\n"
    return f"{head}\r\n{inner}\r\n{body or ''}\r\n"


def changeset(parts: list[str], boundary: str = "changeset_hostile") -> str:
    inner = "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"
    return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}"


def batch_responses(resp: requests.Response) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, headers, body) of every HTTP response inside a multipart $batch reply, in order."""
    raw = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode() + resp.content
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    out = []
    for part in message.walk():
        if part.get_content_type() != "application/http":
            continue
        payload = part.get_payload(decode=True)
        head, _, body = payload.replace(b"\r\n", b"\n").partition(b"\n\n")
        status_line, *header_lines = head.decode().split("\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        out.append((int(status_line.split()[1]), headers, body.strip()))
    return out


def batch_parts(resp: requests.Response) -> list[tuple[int, str, bytes]]:
    """(status, content type, body) of every response inside a multipart $batch reply."""
    return [(status, headers.get("content-type", ""), body) for status, headers, body in batch_responses(resp)]
