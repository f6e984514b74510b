"""Small HTTP-level pieces both services share: the Prefer header, a transport-neutral response."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Response
from werkzeug.datastructures import Headers

from .errors import QuerySyntaxError

JSON_TYPE = "application/json; odata.metadata=minimal"


class ServiceError(Exception):
    """A request the service refuses; each service renders its own error envelope in ``result()``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its fields (Exception's default passes only the message): a worker process
        # raises the refusal its sandbox's process made (mockservers.rpc)
        return type(self), (self.status, self.code, self.message, self.headers)

    def result(self) -> Result:
        raise NotImplementedError


@dataclass
class Result:
    """A response before it becomes a Flask response (or a `$batch` part)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    encoded: bytes | None = b""  # the body; None while a ``json`` result has not been asked for it
    batch_operations: int | None = None  # for the request journal: operations a $batch carried
    # The JSON value the body encodes, when ``json`` made it: a JSON batch embeds the answer as a value,
    # so the hundred answers of a batch are encoded once, in the batch's body, not once each as well.
    payload: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None,
             content_type: str = JSON_TYPE) -> Result:
        return cls(status, [("Content-Type", content_type), *(headers or [])], None, payload=payload)

    @property
    def has_body(self) -> bool:
        """Whether there is a body, without encoding a ``json`` result's to find out."""
        return self.encoded is None or bool(self.encoded)

    @property
    def body(self) -> bytes:
        if self.encoded is None:
            self.encoded = json.dumps(self.payload).encode()
        return self.encoded

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


def parse_max_page_size(prefs: dict[str, str], server_max: int) -> tuple[int, bool]:
    """`Prefer: odata.maxpagesize` clamped to the server's maximum; (size, whether the client asked)."""
    raw = prefs.get("odata.maxpagesize")
    if raw is None:
        return server_max, False
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise QuerySyntaxError(f"Invalid odata.maxpagesize preference value '{raw}'.")
    return min(int(raw), server_max), True


def parse_prefer(headers: Headers) -> dict[str, str]:
    """`Prefer` preferences by lower-cased name (values keep their quotes stripped of whitespace)."""
    prefs: dict[str, str] = {}
    for value in headers.getlist("Prefer"):
        for part in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", value):
            name, _, setting = part.strip().partition("=")
            if name:
                prefs[name.strip().lower()] = setting.strip()
    return prefs


def to_response(result: Result) -> Response:
    """The WSGI response for a ``Result`` (both services answer with OData-Version 4.0)."""
    response = Response(result.body, status=result.status)
    response.headers.pop("Content-Type", None)
    for name, value in result.headers:
        response.headers.add(name, value)
    response.headers["OData-Version"] = "4.0"
    return response
