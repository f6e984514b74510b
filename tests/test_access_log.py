"""`mockservers serve` prints one line per request; the middleware behind it logs what was served."""

from __future__ import annotations

import logging

import pytest
import requests

from mockservers.server import Sandbox, SandboxConfig


def test_access_log_has_one_line_per_request(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    sandbox = Sandbox(SandboxConfig(data_dir=tmp_path, identity_port=0, dataverse_port=0, bc_port=0,
                                    access_log=True))
    info = sandbox.start()
    try:
        with caplog.at_level(logging.INFO, logger="mockservers.access"):
            assert requests.get(f"{info['dataverse']['api_root']}/accounts?$top=1", timeout=10).status_code == 401
            assert requests.get(f"{info['bc']['api_root']}/companies", timeout=10).status_code == 401
    finally:
        sandbox.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "mockservers.access"]
    assert len(lines) == 2
    assert lines[0].split()[:4] == ["dataverse", "GET", "/api/data/v9.2/accounts?$top=1", "401"]
    assert lines[1].split()[:2] == ["bc", "GET"] and lines[1].split()[3] == "401"
    assert lines[0].endswith(" ms")
