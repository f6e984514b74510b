"""Failures the clients raise: what the service answered, or that it could not be reached."""

from __future__ import annotations

import re

_CORRELATION = re.compile(r"\s+CorrelationId:\s+[0-9a-fA-F-]+\.?\s*$")


def strip_correlation(message: str) -> str:
    """BC appends '  CorrelationId:  <guid>.' to every message; logs are easier to read without it."""
    return _CORRELATION.sub("", message)


class ClientError(Exception):
    """Base class of everything the HTTP clients raise."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthenticationError(ClientError):
    """The identity service refused to issue a token (wrong client id or secret, unknown tenant)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}".strip(": "))
        self.error = error
        self.description = description


class TransportError(ClientError):
    """The service could not be reached, or kept failing after every retry."""


class ServiceError(ClientError):
    """A non-success answer, with the code and message of the service's error envelope."""

    def __init__(self, service: str, status: int, code: str, message: str, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code
        self.method = method
        self.url = url

    def __str__(self) -> str:
        return f"{self.service} answered {self.status} {self.code}: {self.message}".replace(" : ", ": ")

    @property
    def is_concurrency_conflict(self) -> bool:
        """The row changed since it was read: Dataverse answers 412, Business Central 409."""
        return self.status == 412 or (self.status == 409 and self.code == "Request_EntityChanged")

    @property
    def is_not_found(self) -> bool:
        return self.status == 404
