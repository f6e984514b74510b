"""Shared fixtures: a real sandbox (HTTPS, real JWTs, SQLite files) on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from mockservers.server import Sandbox, SandboxConfig


@dataclass
class RunningSandbox:
    sandbox: Sandbox
    info: dict[str, Any]
    data_dir: Path

    @property
    def ca_bundle(self) -> str:
        return self.info["ca_bundle"]

    @property
    def api(self) -> str:
        return self.info["dataverse"]["api_root"]

    def token(self, scope: str | None = None, client_id: str | None = None, secret: str | None = None) -> str:
        resp = requests.post(
            f"{self.info['identity']['authority']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id or self.info["app"]["client_id"],
                "client_secret": secret or self.info["app"]["client_secret"],
                "scope": scope or self.info["dataverse"]["scope"],
            },
            verify=self.ca_bundle,
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()["access_token"]

    def session(self, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.verify = self.ca_bundle
        s.headers.update({
            "Authorization": f"Bearer {token or self.token()}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        })
        return s

    @property
    def bc_api(self) -> str:
        return self.info["bc"]["api_root"]

    @property
    def companies(self) -> list[str]:
        """BC company ids, CRONUS USA first."""
        return [c["id"] for c in self.info["bc"]["companies"]]

    def bc_token(self) -> str:
        return self.token(scope=self.info["bc"]["scope"])

    def bc_session(self) -> requests.Session:
        s = requests.Session()
        s.verify = self.ca_bundle
        s.headers.update({"Authorization": f"Bearer {self.bc_token()}", "Accept": "application/json"})
        return s

    def control(self, method: str, path: str, service: str = "dataverse", **kwargs: Any) -> requests.Response:
        url = f"{self.info[service]['url']}/_sandbox/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.info['admin_token']}"}
        return requests.request(method, url, headers=headers, verify=self.ca_bundle, timeout=10, **kwargs)


def start_sandbox(data_dir: Path, *, seed: bool = True) -> RunningSandbox:
    config = SandboxConfig(data_dir=data_dir, identity_port=0, dataverse_port=0, bc_port=0, tls=True, seed=seed,
                           webhook_delay_seconds=0.2)
    sandbox = Sandbox(config)
    info = sandbox.start()
    return RunningSandbox(sandbox, info, data_dir)


@pytest.fixture(scope="session", autouse=True)
def _no_foreign_ca_bundle() -> Iterator[None]:
    """requests lets these variables override `verify=`; tests must use the sandbox CA they pass.

    Session-scoped so that module-scoped fixtures (which start sandboxes) run without them too.
    """
    saved = {name: os.environ.pop(name) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """One seeded sandbox per test module (tests that change data use their own records)."""
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    try:
        yield running
    finally:
        running.sandbox.stop()


@pytest.fixture(scope="module")
def dv(sandbox: RunningSandbox) -> requests.Session:
    """An authenticated session for the Dataverse Web API of the module's sandbox."""
    return sandbox.session()


@pytest.fixture(scope="module")
def bc(sandbox: RunningSandbox) -> requests.Session:
    """An authenticated session for the BC API of the module's sandbox."""
    return sandbox.bc_session()
