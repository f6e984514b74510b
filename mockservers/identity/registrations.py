"""The sandbox directory: one tenant, its app registrations and the resources tokens can target.

Apps come from a fixture file (data, not code). Resources are added at runtime by the server,
because the Dataverse org URL depends on the host and port it is served on.
"""

from __future__ import annotations

import hmac
import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "default" / "identity.json"
BUSINESS_CENTRAL_RESOURCE = "https://api.businesscentral.dynamics.com"
# Tenant path segments Entra accepts in place of a tenant id; the sandbox maps them to its one tenant.
MULTI_TENANT_ALIASES = frozenset({"organizations", "common"})


def _normalize_resource(uri: str) -> str:
    return uri.strip().rstrip("/")


@dataclass(frozen=True)
class AppRegistration:
    """An app registration with one client secret, and its service principal in the tenant."""

    client_id: str
    client_secret: str
    display_name: str
    object_id: str
    roles: tuple[str, ...] = ()

    def secret_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(self.client_secret.encode(), candidate.encode())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppRegistration:
        return cls(
            client_id=str(uuid.UUID(data["client_id"])),
            client_secret=data["client_secret"],
            display_name=data["display_name"],
            object_id=str(uuid.UUID(data["object_id"])),
            roles=tuple(data.get("roles", ())),
        )


@dataclass
class Directory:
    """One Entra tenant as the sandbox knows it."""

    tenant_id: str
    apps: dict[str, AppRegistration]
    domains: tuple[str, ...] = ()
    display_name: str = "Sandbox"
    integration_client_id: str | None = None
    _resources: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Directory:
        apps = [AppRegistration.from_dict(item) for item in data.get("apps", ())]
        directory = cls(
            tenant_id=str(uuid.UUID(data["tenant_id"])),
            apps={app.client_id: app for app in apps},
            domains=tuple(d.lower() for d in data.get("domains", ())),
            display_name=data.get("display_name", "Sandbox"),
            integration_client_id=data.get("integration_app"),
        )
        if directory.integration_client_id and directory.integration_client_id not in directory.apps:
            raise ValueError(f"integration_app {directory.integration_client_id} is not among the apps")
        for uri in data.get("resources", ()):
            directory.add_resource(uri)
        return directory

    @classmethod
    def from_file(cls, path: Path | str = DEFAULT_FIXTURE) -> Directory:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def integration_app(self) -> AppRegistration:
        """The registration the connector signs in with (the one `sandbox.json` publishes)."""
        if self.integration_client_id is None:
            raise LookupError("the directory names no integration app")
        return self.apps[self.integration_client_id]

    @property
    def resources(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._resources.values())

    def add_resource(self, uri: str) -> str:
        """Register a resource (application ID URI); returns the form used as token `aud`."""
        registered = _normalize_resource(uri)
        if not registered:
            raise ValueError("a resource URI must not be empty")
        with self._lock:
            return self._resources.setdefault(registered.lower(), registered)

    def find_resource(self, uri: str) -> str | None:
        """The registered form of `uri`, ignoring case and a trailing slash (as Entra does)."""
        with self._lock:
            return self._resources.get(_normalize_resource(uri).lower())

    def find_app(self, client_id: str) -> AppRegistration | None:
        try:
            return self.apps.get(str(uuid.UUID(client_id)))
        except ValueError:
            return None

    def resolve_tenant(self, segment: str) -> str | None:
        """Map a tenant path segment (GUID, verified domain, `organizations`) to the tenant id."""
        lowered = segment.strip().lower()
        if lowered in MULTI_TENANT_ALIASES or lowered in self.domains:
            return self.tenant_id
        try:
            return self.tenant_id if str(uuid.UUID(lowered)) == self.tenant_id else None
        except ValueError:
            return None

    def add_app(self, app: AppRegistration) -> None:
        self.apps[app.client_id] = app

    def register_resources(self, uris: Iterable[str]) -> None:
        for uri in uris:
            self.add_resource(uri)


def load_default_directory() -> Directory:
    """The directory of `fixtures/default/identity.json`."""
    return Directory.from_file(DEFAULT_FIXTURE)
