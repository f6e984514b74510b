"""Dataverse authentication over real HTTPS with real JWTs (https://learn.microsoft.com/power-apps/developer/data-platform/authenticate-oauth).

Every bad token gets 401 with the bearer challenge Dataverse sends (`authorization_uri` of the
tenant's authorize endpoint, `resource_id` = the org URL) and a JSON error envelope; a valid token
for an app that has no application user in the org gets 403. Forged tokens are signed with PyJWT,
either with a stranger's key or with the sandbox's own key (expired / other tenant).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from mockservers.identity import load_signing_key

FIXTURE_IDENTITY = Path(__file__).resolve().parents[1] / "fixtures" / "default" / "identity.json"
REPORTING_APP = "5a8d2c1f-9e3b-4f7a-b6c4-2d1e0f9a8b73"
REPORTING_USER = "5e000000-0000-4000-8000-000000000003"
OTHER_TENANT = "0f0f0f0f-1111-4222-8333-444444444444"



def _claims(sandbox, **overrides: Any) -> dict[str, Any]:
    """The claims the sandbox issuer puts in a valid app token (overridable)."""
    real = jwt.decode(sandbox.token(), options={"verify_signature": False})
    real.update(overrides)
    return real


def _sign(claims: dict[str, Any], key: Any, kid: str) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})


def _sandbox_key(sandbox):
    return load_signing_key(sandbox.data_dir)


def _stranger_signed(sandbox) -> str:
    """Right claims and right `kid`, wrong key: the signature cannot verify."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _sign(_claims(sandbox), stranger, _sandbox_key(sandbox).kid)


def _tampered(sandbox) -> str:
    """A real token whose payload was edited after signing."""
    header, payload, signature = sandbox.token().split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["appid"] = str(uuid.uuid4())
    edited = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{edited}.{signature}"


def _expired(sandbox) -> str:
    now = int(time.time())
    key = _sandbox_key(sandbox)
    return _sign(_claims(sandbox, iat=now - 7200, nbf=now - 7200, exp=now - 3600), key.private_key, key.kid)


def _other_tenant(sandbox) -> str:
    key = _sandbox_key(sandbox)
    issuer = f"{sandbox.info['identity']['url']}/{OTHER_TENANT}/v2.0"
    return _sign(_claims(sandbox, tid=OTHER_TENANT, iss=issuer), key.private_key, key.kid)


def _business_central_audience(sandbox) -> str:
    return sandbox.token(scope="https://api.businesscentral.dynamics.com/.default")


def _none_algorithm(sandbox) -> str:
    return jwt.encode(_claims(sandbox), key=None, algorithm="none")


BAD_AUTHORIZATION: list[tuple[str, Callable[[Any], str | None]]] = [
    ("missing header", lambda s: None),
    ("empty bearer", lambda s: "Bearer "),
    ("not a bearer scheme", lambda s: "Basic dXNlcjpwYXNz"),
    ("malformed token", lambda s: "Bearer not-a-jwt"),
    ("three garbage segments", lambda s: "Bearer aaa.bbb.ccc"),
    ("wrongly signed", lambda s: f"Bearer {_stranger_signed(s)}"),
    ("payload tampered after signing", lambda s: f"Bearer {_tampered(s)}"),
    ("unsigned (alg none)", lambda s: f"Bearer {_none_algorithm(s)}"),
    ("expired", lambda s: f"Bearer {_expired(s)}"),
    ("wrong audience (Business Central token)", lambda s: f"Bearer {_business_central_audience(s)}"),
    ("different tenant", lambda s: f"Bearer {_other_tenant(s)}"),
]


@pytest.mark.parametrize(("case", "authorization"), BAD_AUTHORIZATION, ids=[c for c, _ in BAD_AUTHORIZATION])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "accounts?$select=name&$top=1", None),
    ("GET", "WhoAmI()", None),
    ("POST", "accounts", {"name": "Should never exist"}),
], ids=["list", "whoami", "create"])
def test_bad_tokens_get_401_with_the_bearer_challenge(
    sandbox, case: str, authorization: Callable[[Any], str | None], method: str, path: str, body: Any,
) -> None:
    headers = {"Accept": "application/json", "OData-Version": "4.0"}
    value = authorization(sandbox)
    if value is not None:
        headers["Authorization"] = value
    resp = requests.request(method, f"{sandbox.api}/{path}", headers=headers, json=body,
                            verify=sandbox.ca_bundle, timeout=10)

    assert resp.status_code == 401, resp.text
    tenant = sandbox.info["tenant_id"]
    assert resp.headers["WWW-Authenticate"] == (
        f"Bearer authorization_uri={sandbox.info['identity']['url']}/{tenant}/oauth2/authorize, "
        f"resource_id={sandbox.info['dataverse']['url']}/"
    )
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["code"], str) and error["message"]
    assert "Traceback" not in resp.text
    if method == "POST":
        backend = sandbox.sandbox.backends["dataverse"]
        table = backend.store.table(backend.entity("account"))
        with backend.store.read() as conn:
            assert conn.execute(table.select().where(table.c.name == body["name"])).first() is None


def test_rejected_requests_change_nothing(sandbox, dv: requests.Session) -> None:
    """The parametrized POSTs above carried bad tokens: no row may exist."""
    resp = dv.get(f"{sandbox.api}/accounts", params={"$filter": "name eq 'Should never exist'"})
    assert resp.status_code == 200
    assert resp.json()["value"] == []


def test_the_authorize_endpoint_in_the_challenge_exists(sandbox) -> None:
    """A client following the challenge reaches the identity service's tenant, not a 404."""
    resp = requests.get(f"{sandbox.api}/accounts", verify=sandbox.ca_bundle, timeout=10)
    challenge = resp.headers["WWW-Authenticate"]
    authority = challenge.split("authorization_uri=", 1)[1].split(",", 1)[0].rsplit("/oauth2/authorize", 1)[0]
    assert authority == sandbox.info["identity"]["authority"]
    config = requests.get(f"{authority}/v2.0/.well-known/openid-configuration", verify=sandbox.ca_bundle, timeout=10)
    assert config.status_code == 200
    assert config.json()["token_endpoint"] == f"{authority}/oauth2/v2.0/token"


def test_a_valid_token_is_accepted_and_identifies_the_application_user(sandbox, dv: requests.Session) -> None:
    resp = dv.get(f"{sandbox.api}/WhoAmI()")
    assert resp.status_code == 200
    user = resp.json()["UserId"]
    row = dv.get(f"{sandbox.api}/systemusers({user})", params={"$select": "applicationid"}).json()
    assert row["applicationid"] == sandbox.info["app"]["client_id"]


def test_audience_with_or_without_trailing_slash_is_accepted(sandbox) -> None:
    key = _sandbox_key(sandbox)
    token = _sign(_claims(sandbox, aud=sandbox.info["dataverse"]["url"] + "/"), key.private_key, key.kid)
    resp = requests.get(f"{sandbox.api}/WhoAmI()", headers={"Authorization": f"Bearer {token}"},
                        verify=sandbox.ca_bundle, timeout=10)
    assert resp.status_code == 200


def test_app_without_an_application_user_gets_403(sandbox, dv: requests.Session) -> None:
    secret = next(a["client_secret"] for a in json.loads(FIXTURE_IDENTITY.read_text())["apps"]
                  if a["client_id"] == REPORTING_APP)
    token = sandbox.token(client_id=REPORTING_APP, secret=secret)
    reporting = sandbox.session(token)
    assert reporting.get(f"{sandbox.api}/WhoAmI()").json()["UserId"] == REPORTING_USER

    # The org admin removes the app's application user; Entra still issues tokens for the app.
    removed = dv.delete(f"{sandbox.api}/systemusers({REPORTING_USER})")
    assert removed.status_code == 204
    token = sandbox.token(client_id=REPORTING_APP, secret=secret)
    for method, path, body in (("GET", "WhoAmI()", None), ("GET", "accounts?$top=1", None),
                               ("POST", "accounts", {"name": "Reporting write"})):
        resp = sandbox.session(token).request(method, f"{sandbox.api}/{path}", json=body)
        assert resp.status_code == 403, resp.text
        assert "WWW-Authenticate" not in resp.headers
        error = resp.json()["error"]
        assert isinstance(error["code"], str)
        assert REPORTING_APP in error["message"]
    assert dv.get(f"{sandbox.api}/accounts", params={"$filter": "name eq 'Reporting write'"}).json()["value"] == []
