"""Connector configuration (file, environment, sandbox.json) and the client core's failure modes."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from connector import config as config_module
from connector.clients import HttpCore, RetrySettings, TokenSource, TransportError
from connector.clients.batch import BatchOp, decode_json, decode_multipart, encode_json, encode_multipart
from tests.conftest import RunningSandbox


def _sandbox_dir(tmp_path: Path) -> Path:
    info = {
        "tenant_id": "t", "identity": {"url": "https://id", "authority": "https://id/t"},
        "dataverse": {"url": "https://dv"}, "app": {"client_id": "c", "client_secret": "s"},
        "bc": {"api_root": "https://bc/v2.0/t/production/api/v2.0", "scope": "https://api.businesscentral.dynamics.com/.default",
               "companies": [{"id": "B2A3C4D5-1111-4A2B-9C3D-000000000001", "name": "CRONUS USA, Inc."},
                             {"id": "b2a3c4d5-2222-4a2b-9c3d-000000000002", "name": "My Company"}]},
        "ca_bundle": "/ca.pem",
    }
    directory = tmp_path / "sandbox"
    directory.mkdir()
    (directory / "sandbox.json").write_text(json.dumps(info))
    return directory


def test_init_document_from_sandbox_json_picks_the_company_by_name_or_id(tmp_path: Path) -> None:
    directory = _sandbox_dir(tmp_path)
    by_name = config_module.from_sandbox(directory, "my company")
    assert by_name["bc"]["company_id"] == "b2a3c4d5-2222-4a2b-9c3d-000000000002"
    assert by_name["bc"]["custom_api_root"] == "https://bc/v2.0/t/production/api/bcsandbox/integration/v1.0"
    assert config_module.from_sandbox(directory, None)["bc"]["company_name"] == "CRONUS USA, Inc."
    with pytest.raises(config_module.ConfigError, match="no BC company 'Nope'"):
        config_module.from_sandbox(directory, "Nope")
    with pytest.raises(config_module.ConfigError, match="sandbox.json not found"):
        config_module.from_sandbox(tmp_path, None)


def test_config_file_is_private_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    config_module.write(path, config_module.from_sandbox(_sandbox_dir(tmp_path), None))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the client secret
    monkeypatch.setenv("CONNECTOR_IDENTITY_CLIENT_SECRET", "from-env")
    monkeypatch.setenv("CONNECTOR_SYNC_PAGE_SIZE", "25")
    loaded = config_module.load(path)
    assert (loaded.client_secret, loaded.page_size, loaded.instance_discovery) == ("from-env", 25, False)
    assert loaded.state_url == f"sqlite:///{(tmp_path / 'c.state.db').resolve()}"
    assert loaded.dataverse_api_root == "https://dv/api/data/v9.2"
    monkeypatch.setenv("CONNECTOR_SYNC_PAGE_SIZE", "many")
    with pytest.raises(config_module.ConfigError, match="sync.page_size: expected a whole number"):
        config_module.load(path)


def test_missing_configuration_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONNECTOR_CONFIG", "CONNECTOR_IDENTITY_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(config_module.ConfigError, match=r"identity.authority.*connector init"):
        config_module.load(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[identity\n")
    with pytest.raises(config_module.ConfigError, match="not valid TOML"):
        config_module.load(tmp_path / "bad.toml")


def test_multipart_batch_codec_reads_plain_and_change_set_responses() -> None:
    content_type, body = encode_multipart([BatchOp("PATCH", "accounts(1)", {"name": "A"}, {"If-Match": "*"})],
                                          "https://org/api/data/v9.2")
    assert content_type.startswith("multipart/mixed; boundary=batch_")
    assert b"PATCH https://org/api/data/v9.2/accounts(1) HTTP/1.1\r\nIf-Match: *\r\n" in body
    response = (
        b"--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal\r\nETag: W/\"7\"\r\n\r\n"
        b'{"accountid":"1","@odata.etag":"W/\\"7\\""}\r\n'
        b"--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
        b"--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\r\n"
        b'{"error":{"code":"0x80060882","message":"The version of the existing record doesn\'t match."}}\r\n'
        b"--changesetresponse_2--\r\n--batchresponse_1--\r\n")
    results = decode_multipart("multipart/mixed; boundary=batchresponse_1", response)
    assert [r.status for r in results] == [200, 412]
    assert results[0].etag == 'W/"7"' and results[0].body["accountid"] == "1"
    error = results[1].error
    assert error is not None and error.is_concurrency_conflict and error.code == "0x80060882"


@pytest.mark.parametrize(("part", "status", "headers", "body"), [
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, {}, None),
    (b"HTTP/1.1 204 No Content\r\nOData-EntityId: https://dv/accounts(1)\r\n\r\n", 204,
     {"odata-entityid": "https://dv/accounts(1)"}, None),
    (b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nETag: W/"9"\r\n\r\n{"name": "A\\r\\nB"}', 201,
     {"content-type": "application/json", "etag": 'W/"9"'}, {"name": "A\r\nB"}),
    (b'HTTP/1.1 200 OK\nContent-Type: application/json\n\n{"a": 1}', 200, {"content-type": "application/json"},
     {"a": 1}),
    (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nnot json\r\n", 500,
     {"content-type": "text/plain"}, "not json\r\n"),
])
def test_multipart_parts_read_as_sent(part: bytes, status: int, headers: dict[str, str], body: object) -> None:
    """Each part's status, headers and body: with or without headers or body, CRLF or LF line ends."""
    response = (b"--b1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n" + part
                + b"\r\n--b1--\r\n")
    [result] = decode_multipart("multipart/mixed; boundary=b1", response)
    assert (result.status, result.headers, result.body) == (status, headers, body)


def test_json_batch_codec_keeps_the_order_of_operations() -> None:
    encoded = encode_json([BatchOp("POST", "companies(c)/customers", {"displayName": "A"}),
                           BatchOp("PATCH", "companies(c)/customers(1)", {"city": "B"}, {"If-Match": "W/\"x\""})])
    assert [r["id"] for r in encoded["requests"]] == ["0", "1"]
    assert encoded["requests"][1]["headers"] == {"If-Match": "W/\"x\"", "Content-Type": "application/json"}
    results = decode_json({"responses": [
        {"id": "1", "status": 409, "headers": {}, "body": {"error": {"code": "Request_EntityChanged",
                                                                     "message": "Changed.  CorrelationId:  abc-1."}}},
        {"id": "0", "status": 201, "headers": {"ETag": "W/\"y\""}, "body": {"id": "n"}}]}, 2)
    assert [r.status for r in results] == [201, 409] and results[0].etag == 'W/"y"'
    error = results[1].error
    assert error is not None and error.is_concurrency_conflict and error.message == "Changed."


def test_an_untrusted_certificate_fails_at_once_instead_of_being_retried(sandbox: RunningSandbox) -> None:
    tokens = TokenSource(authority=sandbox.info["identity"]["authority"], client_id=sandbox.info["app"]["client_id"],
                         client_secret=sandbox.info["app"]["client_secret"], verify=True, instance_discovery=False)
    core = HttpCore(service="dataverse", root=sandbox.api, scope=sandbox.info["dataverse"]["scope"], tokens=tokens,
                    verify=True, retries=RetrySettings(attempts=8, backoff_factor=1.0))
    started = time.monotonic()
    with pytest.raises(TransportError, match="certificate verify failed"):
        core.send("GET", "WhoAmI")
    assert time.monotonic() - started < 3


@pytest.mark.both_modes  # against a live sandbox, and in process
def test_setup_creates_this_company_row_when_dataverse_has_none(sandbox: RunningSandbox, tmp_path: Path) -> None:
    from tests.conftest import start_connector

    dv = sandbox.session()
    company = sandbox.info["bc"]["companies"][1]
    rows = dv.get(f"{sandbox.api}/bcbi_companies?$filter=bcbi_externalid eq '{company['id']}'").json()["value"]
    for row in rows:
        assert dv.delete(f"{sandbox.api}/bcbi_companies({row['bcbi_companyid']})").status_code == 204
    env = start_connector(sandbox, tmp_path, company_index=1)
    created = dv.get(f"{sandbox.api}/bcbi_companies?$filter=bcbi_externalid eq '{company['id']}'").json()["value"]
    assert [r["bcbi_name"] for r in created] == [company["name"]]
    customer = env.run("mappings", "show", "CUSTOMER")
    assert f"_bcbi_companyid_value eq {created[0]['bcbi_companyid']}" in customer["integration_table_filter"]
    env.run("setup", "defaults")  # found again, not created twice
    again = dv.get(f"{sandbox.api}/bcbi_companies?$filter=bcbi_externalid eq '{company['id']}'").json()["value"]
    assert len(again) == 1
