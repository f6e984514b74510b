"""Mock Entra ID over real HTTP(S): discovery, token endpoint, errors, JWT validation, key persistence."""

from __future__ import annotations

import base64
import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import msal
import pytest
import requests
from azure.identity import ClientSecretCredential
from werkzeug.serving import BaseWSGIServer, make_server

from mockservers.identity import (
    BUSINESS_CENTRAL_RESOURCE,
    AppRegistration,
    Directory,
    InvalidToken,
    TokenIssuer,
    TokenValidator,
    create_app,
    load_default_directory,
    load_signing_key,
)
from mockservers.identity.keys import KEY_FILENAME, generate_signing_key
from mockservers.identity.tokens import bearer_challenge
from mockservers.server.tls import TlsFiles, client_context, ensure_certificates, ssl_context

DATAVERSE_RESOURCE = "https://127.0.0.1:5001"


@dataclass
class IdentityService:
    https_url: str
    http_url: str
    directory: Directory
    issuer: TokenIssuer
    tls: TlsFiles

    @property
    def tenant(self) -> str:
        return self.directory.tenant_id

    @property
    def app(self) -> AppRegistration:
        return self.directory.integration_app

    def token_url(self, tenant: str | None = None, v2: bool = True) -> str:
        path = "oauth2/v2.0/token" if v2 else "oauth2/token"
        return f"{self.https_url}/{tenant or self.tenant}/{path}"

    def validator(self) -> TokenValidator:
        return self.issuer.validator(self.tenant)


def _serve(app, ssl=None) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityService]:
    data_dir = tmp_path_factory.mktemp("sandbox")
    directory = load_default_directory()
    directory.add_resource(BUSINESS_CENTRAL_RESOURCE)
    directory.add_resource(DATAVERSE_RESOURCE)
    issuer = TokenIssuer(load_signing_key(data_dir), public_url="")
    tls = ensure_certificates(data_dir)
    app = create_app(directory, issuer)
    https_server, https_thread = _serve(app, ssl_context(tls))
    http_server, http_thread = _serve(app)
    https_url = f"https://127.0.0.1:{https_server.server_port}"
    issuer.public_url = https_url
    yield IdentityService(https_url, f"http://127.0.0.1:{http_server.server_port}", directory, issuer, tls)
    for server, thread in ((https_server, https_thread), (http_server, http_thread)):
        server.shutdown()
        thread.join(5)


def _post_token(service: IdentityService, form: dict[str, str], **kwargs) -> requests.Response:
    kwargs.setdefault("url", service.token_url())
    return requests.post(data=form, verify=str(service.tls.ca_bundle), timeout=10, **kwargs)


def _client_form(service: IdentityService, scope: str = f"{BUSINESS_CENTRAL_RESOURCE}/.default") -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": service.app.client_id,
            "client_secret": service.app.client_secret, "scope": scope}


# --- real clients ---------------------------------------------------------------------------------

@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's `verify`; clear them so
    the `verify=`/`connection_verify=` arguments are what is tested."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.mark.usefixtures("no_ca_env")
def test_msal_client_credentials_token_is_valid_for_bc_only(service: IdentityService) -> None:
    client = msal.ConfidentialClientApplication(
        service.app.client_id, client_credential=service.app.client_secret,
        authority=f"{service.https_url}/{service.tenant}", instance_discovery=False,
        verify=str(service.tls.ca_bundle),
    )
    result = client.acquire_token_for_client(scopes=[f"{BUSINESS_CENTRAL_RESOURCE}/.default"])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    assert 3500 <= result["expires_in"] <= 3599

    claims = service.validator().validate(result["access_token"], {BUSINESS_CENTRAL_RESOURCE})
    assert claims["aud"] == BUSINESS_CENTRAL_RESOURCE
    assert claims["iss"] == f"{service.https_url}/{service.tenant}/v2.0"
    assert claims["tid"] == service.tenant
    assert claims["appid"] == claims["azp"] == service.app.client_id
    assert claims["oid"] == claims["sub"] == service.app.object_id
    assert claims["idtyp"] == "app" and claims["ver"] == "1.0"
    assert claims["exp"] - claims["iat"] == 3599
    assert claims["roles"] == list(service.app.roles)
    header = jwt.get_unverified_header(result["access_token"])
    assert header["alg"] == "RS256" and header["kid"] == service.issuer.signing_key.kid

    with pytest.raises(InvalidToken) as caught:
        service.validator().validate(result["access_token"], {DATAVERSE_RESOURCE})
    assert caught.value.reason == "audience"


@pytest.mark.usefixtures("no_ca_env")
def test_msal_reports_entra_error_for_wrong_secret(service: IdentityService) -> None:
    client = msal.ConfidentialClientApplication(
        service.app.client_id, client_credential="not-the-secret",
        authority=f"{service.https_url}/{service.tenant}", instance_discovery=False,
        verify=str(service.tls.ca_bundle),
    )
    result = client.acquire_token_for_client(scopes=[f"{BUSINESS_CENTRAL_RESOURCE}/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]


@pytest.mark.parametrize("via_env", [False, True])
def test_azure_identity_client_secret_credential(service: IdentityService, monkeypatch: pytest.MonkeyPatch,
                                                 via_env: bool) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    options: dict[str, str] = {}
    if via_env:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(service.tls.ca_bundle))
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        options["connection_verify"] = str(service.tls.ca_bundle)
    credential = ClientSecretCredential(
        service.tenant, service.app.client_id, service.app.client_secret,
        authority=service.https_url, disable_instance_discovery=True, **options,
    )
    token = credential.get_token(f"{DATAVERSE_RESOURCE}/.default")
    claims = service.validator().validate(token.token, {DATAVERSE_RESOURCE + "/"})
    assert claims["aud"] == DATAVERSE_RESOURCE
    assert token.expires_on > claims["iat"] + 3000


def test_jwks_endpoint_serves_the_signing_key(service: IdentityService) -> None:
    doc = requests.get(f"{service.https_url}/{service.tenant}/v2.0/.well-known/openid-configuration",
                       verify=str(service.tls.ca_bundle), timeout=10).json()
    jwks = requests.get(doc["jwks_uri"], verify=str(service.tls.ca_bundle), timeout=10).json()
    assert [k["kid"] for k in jwks["keys"]] == [service.issuer.signing_key.kid]
    assert jwks["keys"][0]["kty"] == "RSA" and jwks["keys"][0]["use"] == "sig"

    token = _post_token(service, _client_form(service)).json()["access_token"]
    from_document = TokenValidator(jwks, doc["issuer"], service.tenant)
    assert from_document.validate(token, {BUSINESS_CENTRAL_RESOURCE})["appid"] == service.app.client_id
    # A resource service in another process can fetch the keys itself.
    remote = jwt.PyJWKClient(doc["jwks_uri"], ssl_context=client_context(service.tls))
    assert TokenValidator(remote, doc["issuer"], service.tenant).validate(token, {BUSINESS_CENTRAL_RESOURCE})


# --- discovery ------------------------------------------------------------------------------------

@pytest.mark.parametrize("v2", [True, False])
def test_openid_configuration_uses_request_host(service: IdentityService, v2: bool) -> None:
    for base, verify in ((service.https_url, str(service.tls.ca_bundle)), (service.http_url, True)):
        path = "v2.0/.well-known/openid-configuration" if v2 else ".well-known/openid-configuration"
        response = requests.get(f"{base}/sandbox.onmicrosoft.com/{path}", verify=verify, timeout=10)
        assert response.status_code == 200
        doc = response.json()
        oauth = f"{base}/{service.tenant}/oauth2/v2.0" if v2 else f"{base}/{service.tenant}/oauth2"
        assert doc["token_endpoint"] == f"{oauth}/token"
        assert doc["authorization_endpoint"] == f"{oauth}/authorize"
        assert doc["issuer"] == service.issuer.issuer_for(service.tenant)
        assert doc["jwks_uri"].startswith(f"{base}/{service.tenant}/discovery/")
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]
        assert doc["tenant_region_scope"]


def test_discovery_for_unknown_tenant_is_entra_error(service: IdentityService) -> None:
    response = requests.get(f"{service.http_url}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration",
                            timeout=10)
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


# --- token endpoint -------------------------------------------------------------------------------

OTHER_TENANT = "0eb5fd97-3f8a-416c-890d-bf33510cce51"
UNKNOWN_CLIENT = "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(
    ("case", "change", "status", "error", "code"),
    [
        ("unknown client", {"client_id": UNKNOWN_CLIENT}, 400, "unauthorized_client", 700016),
        ("client id not a guid", {"client_id": "my-app"}, 400, "unauthorized_client", 700016),
        ("wrong secret", {"client_secret": "x" * 40}, 401, "invalid_client", 7000215),
        ("no secret", {"client_secret": None}, 401, "invalid_client", 7000218),
        ("no client id", {"client_id": None}, 400, "invalid_request", 900144),
        ("scope not .default", {"scope": f"{BUSINESS_CENTRAL_RESOURCE}/user_impersonation"},
         400, "invalid_scope", 1002012),
        ("two resource scopes", {"scope": f"{BUSINESS_CENTRAL_RESOURCE}/.default {DATAVERSE_RESOURCE}/.default"},
         400, "invalid_scope", 70011),
        ("missing scope", {"scope": None}, 400, "invalid_request", 900144),
        ("unknown resource", {"scope": "https://graph.microsoft.com/.default"}, 400, "invalid_resource", 500011),
        ("unsupported grant", {"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ("missing grant", {"grant_type": None}, 400, "invalid_request", 900144),
        ("other tenant", {"_tenant": OTHER_TENANT}, 400, "invalid_request", 90002),
        ("tenant name unknown", {"_tenant": "contoso.onmicrosoft.com"}, 400, "invalid_request", 90002),
    ],
)
def test_token_errors(service: IdentityService, case: str, change: dict[str, str | None],
                      status: int, error: str, code: int) -> None:
    form = _client_form(service)
    tenant = change.pop("_tenant", None) if "_tenant" in change else None
    for key, value in change.items():
        if value is None:
            form.pop(key)
        else:
            form[key] = value
    response = _post_token(service, form, url=service.token_url(tenant),
                           headers={"client-request-id": "6d3e0c35-7e1c-4b45-9c62-0d1f0f2bd3b1"})
    assert response.status_code == status, case
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert f"Trace ID: {body['trace_id']}" in body["error_description"]
    assert body["correlation_id"] == "6d3e0c35-7e1c-4b45-9c62-0d1f0f2bd3b1"
    assert body["error_uri"].endswith(f"/error?code={code}")
    assert "access_token" not in body


def test_basic_auth_and_tenant_aliases_succeed(service: IdentityService) -> None:
    form = {"grant_type": "client_credentials", "scope": f"{DATAVERSE_RESOURCE}/.default"}
    for tenant in (service.tenant, service.tenant.upper(), "sandbox.onmicrosoft.com", "organizations"):
        response = _post_token(service, form, url=service.token_url(tenant),
                               auth=(service.app.client_id, service.app.client_secret))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == body["ext_expires_in"] == 3599
        assert response.headers["Cache-Control"] == "no-store, no-cache"
        claims = service.validator().validate(body["access_token"], {DATAVERSE_RESOURCE})
        assert claims["tid"] == service.tenant


def test_second_app_gets_its_own_identity(service: IdentityService) -> None:
    reporting = next(a for a in service.directory.apps.values() if a.client_id != service.app.client_id)
    form = _client_form(service) | {"client_id": reporting.client_id, "client_secret": reporting.client_secret}
    token = _post_token(service, form).json()["access_token"]
    claims = service.validator().validate(token, {BUSINESS_CENTRAL_RESOURCE})
    assert claims["appid"] == reporting.client_id and claims["oid"] == reporting.object_id
    # Each app's secret is its own.
    form["client_secret"] = service.app.client_secret
    assert _post_token(service, form).status_code == 401


def test_scope_with_trailing_slash_resource_gets_registered_audience(service: IdentityService) -> None:
    response = _post_token(service, _client_form(service, scope=f"{DATAVERSE_RESOURCE}//.default"))
    assert response.status_code == 200
    assert jwt.decode(response.json()["access_token"], options={"verify_signature": False})["aud"] == \
        DATAVERSE_RESOURCE


def test_v1_token_endpoint_takes_resource(service: IdentityService) -> None:
    form = _client_form(service)
    del form["scope"]
    form["resource"] = BUSINESS_CENTRAL_RESOURCE + "/"
    response = _post_token(service, form, url=service.token_url(v2=False))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resource"] == BUSINESS_CENTRAL_RESOURCE
    assert body["expires_in"] == "3599"
    assert int(body["expires_on"]) - int(body["not_before"]) == 3599
    assert service.validator().validate(body["access_token"], {BUSINESS_CENTRAL_RESOURCE})

    form["resource"] = "https://graph.microsoft.com"
    response = _post_token(service, form, url=service.token_url(v2=False))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_resource")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/{tenant}/oauth2/v2.0/token", {}, 400, 900561),
        ("POST", "/{tenant}/oauth2/v2.0/token", {"json": {"grant_type": "client_credentials"}}, 400, 900144),
        ("POST", "/{tenant}/oauth2/v2.0/token", {"data": {"grant_type": "x" * 70_000}}, 413, None),
        ("PUT", "/{tenant}/oauth2/v2.0/token", {}, 405, None),
        ("GET", "/{tenant}/no/such/endpoint", {}, 404, None),
        ("GET", "/{tenant}/oauth2/v2.0/authorize", {}, 400, None),
    ],
)
def test_bad_requests_get_entra_shaped_errors(service: IdentityService, method: str, path: str,
                                              kwargs: dict, status: int, code: int | None) -> None:
    response = requests.request(method, service.http_url + path.format(tenant=service.tenant), timeout=10,
                                **kwargs)
    assert response.status_code == status
    body = response.json()
    assert body["error"] and body["trace_id"] and "Traceback" not in response.text
    assert body["error_codes"] == ([code] if code else [])


# --- validation -----------------------------------------------------------------------------------

def _issue(service: IdentityService, **kwargs) -> str:
    return service.issuer.issue(service.app, BUSINESS_CENTRAL_RESOURCE, service.tenant, **kwargs)[0]


def _reason(validator: TokenValidator, token: str | None, audience: str = BUSINESS_CENTRAL_RESOURCE) -> str:
    with pytest.raises(InvalidToken) as caught:
        validator.validate(token, {audience})
    assert caught.value.message
    return caught.value.reason


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_expired_token_fails_even_with_leeway(service: IdentityService) -> None:
    assert _reason(service.validator(), _issue(service, lifetime=-120)) == "expired"
    # Within the 30 s clock leeway it is still accepted.
    assert service.validator().validate(_issue(service, lifetime=-5), {BUSINESS_CENTRAL_RESOURCE})


def test_tampered_and_foreign_tokens_fail_signature(service: IdentityService) -> None:
    token = _issue(service)
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged_payload = _b64(claims | {"appid": UNKNOWN_CLIENT})
    assert _reason(service.validator(), f"{header}.{forged_payload}.{signature}") == "signature"

    impostor = TokenIssuer(generate_signing_key(), service.issuer.public_url)
    assert _reason(service.validator(), impostor.issue(service.app, BUSINESS_CENTRAL_RESOURCE,
                                                         service.tenant)[0]) == "signature"
    same_kid = jwt.encode(claims, generate_signing_key().private_key, algorithm="RS256",
                          headers={"kid": service.issuer.signing_key.kid})
    assert _reason(service.validator(), same_kid) == "signature"
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    assert _reason(service.validator(), unsigned) == "signature"
    hmac_forged = jwt.encode(claims, "secret-that-is-long-enough-for-hs256!", algorithm="HS256",
                             headers={"kid": service.issuer.signing_key.kid})
    assert _reason(service.validator(), hmac_forged) == "signature"


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "missing"), ("", "missing"), ("   ", "missing"), ("not-a-jwt", "malformed"),
     ("a.b.c", "malformed")],
)
def test_missing_and_malformed_tokens(service: IdentityService, token: str | None, reason: str) -> None:
    assert _reason(service.validator(), token) == reason


def test_tenant_issuer_and_audience_checks(service: IdentityService) -> None:
    other_tenant = service.issuer.issue(service.app, BUSINESS_CENTRAL_RESOURCE, OTHER_TENANT)[0]
    assert _reason(service.validator(), other_tenant) == "tenant"

    token = _issue(service)
    wrong_issuer = TokenValidator(service.issuer.signing_key.jwks(), "https://login.example/x/v2.0",
                                  service.tenant)
    assert _reason(wrong_issuer, token) == "issuer"
    assert _reason(service.validator(), token, audience=DATAVERSE_RESOURCE) == "audience"
    for audience in (BUSINESS_CENTRAL_RESOURCE, BUSINESS_CENTRAL_RESOURCE + "/"):
        assert service.validator().validate(token, {audience, DATAVERSE_RESOURCE})["aud"] == \
            BUSINESS_CENTRAL_RESOURCE
    # Key sources: a public key and a SigningKey behave like the JWKS document.
    for keys in (service.issuer.signing_key.public_key, service.issuer.signing_key):
        validator = TokenValidator(keys, service.issuer.issuer_for(service.tenant), service.tenant)
        assert validator.validate(token, {BUSINESS_CENTRAL_RESOURCE})


def test_bearer_challenge_points_at_identity_service(service: IdentityService) -> None:
    challenge = bearer_challenge(service.https_url, service.tenant, DATAVERSE_RESOURCE)
    assert challenge == (f"Bearer authorization_uri={service.https_url}/{service.tenant}/oauth2/authorize, "
                         f"resource_id={DATAVERSE_RESOURCE}/")


def test_issuer_needs_public_url() -> None:
    directory = load_default_directory()
    with pytest.raises(RuntimeError):
        TokenIssuer(generate_signing_key(), "").issue(directory.integration_app, BUSINESS_CENTRAL_RESOURCE,
                                                      directory.tenant_id)


def test_authorization_header_parsing(service: IdentityService) -> None:
    token = _issue(service)
    validator = service.validator()
    assert validator.validate_authorization(f"Bearer {token}", {BUSINESS_CENTRAL_RESOURCE})
    assert validator.validate(token, BUSINESS_CENTRAL_RESOURCE)  # a single audience string works too
    for header in (None, "", f"Basic {token}"):
        with pytest.raises(InvalidToken) as caught:
            validator.validate_authorization(header, {BUSINESS_CENTRAL_RESOURCE})
        assert caught.value.reason == "missing"


# --- keys and registrations -----------------------------------------------------------------------

def test_signing_key_persists_across_restarts(tmp_path: Path) -> None:
    before = load_signing_key(tmp_path)
    key_file = tmp_path / KEY_FILENAME
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    directory = load_default_directory()
    token, _ = TokenIssuer(before, "https://127.0.0.1:5000").issue(
        directory.integration_app, BUSINESS_CENTRAL_RESOURCE, directory.tenant_id)

    after = load_signing_key(tmp_path)  # "restart"
    assert after.kid == before.kid
    assert after.private_pem() == before.private_pem()
    validator = TokenIssuer(after, "https://127.0.0.1:5000").validator(directory.tenant_id)
    assert validator.validate(token, {BUSINESS_CENTRAL_RESOURCE})["appid"] == directory.integration_client_id
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILENAME]  # no temp files left behind

    assert load_signing_key(None).kid != load_signing_key(None).kid


def test_default_directory_fixture() -> None:
    directory = load_default_directory()
    assert directory.integration_app.display_name == "BC Dataverse Integration"
    assert len(directory.apps) == 2
    for app in directory.apps.values():
        assert len(app.client_secret) == 40 and app.object_id != app.client_id
    assert directory.resolve_tenant("SANDBOX.onmicrosoft.com") == directory.tenant_id
    assert directory.resolve_tenant("organizations") == directory.tenant_id
    assert directory.resolve_tenant(OTHER_TENANT) is None
    assert directory.resolve_tenant("contoso") is None
    assert directory.find_resource(BUSINESS_CENTRAL_RESOURCE) is None
    assert directory.add_resource("https://127.0.0.1:5001/") == DATAVERSE_RESOURCE
    assert directory.find_resource("HTTPS://127.0.0.1:5001/") == DATAVERSE_RESOURCE
    assert directory.resources == (DATAVERSE_RESOURCE,)
