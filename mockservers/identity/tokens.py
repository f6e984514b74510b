"""Issuing and validating the sandbox's access tokens (RS256 JWTs, PyJWT does the JOSE work).

`TokenIssuer` is used by the identity service; `TokenValidator` by each resource service, which
turns an `InvalidToken` into its own 401 answer.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from mockservers.clock import Clock
from mockservers.identity.exceptions import InvalidToken
from mockservers.identity.keys import SigningKey
from mockservers.identity.registrations import AppRegistration

DEFAULT_LIFETIME = 3599
DEFAULT_LEEWAY = 30
VERIFIED_TOKENS = 4096  # tokens whose signature a validator remembers (the least recently used go first)
ALGORITHM = "RS256"


class TokenIssuer:
    """Signs app-only access tokens the way Entra shapes them for client credentials.

    `public_url` is the identity service's base URL; it may be assigned after the server has bound
    its port (tests bind port 0), before the first token is issued. `clock` stamps `iat`/`nbf`/`exp`;
    the validators it hands out judge lifetimes on the same clock.
    """

    def __init__(self, signing_key: SigningKey, public_url: str, lifetime: int = DEFAULT_LIFETIME,
                 clock: Clock | None = None) -> None:
        self.signing_key = signing_key
        self.public_url = public_url
        self.lifetime = lifetime
        self.clock = clock or Clock()

    def issuer_for(self, tenant_id: str) -> str:
        if not self.public_url:
            raise RuntimeError("TokenIssuer.public_url must be set before tokens are issued")
        return f"{self.public_url.rstrip('/')}/{tenant_id}/v2.0"

    def issue(self, app: AppRegistration, resource: str, tenant_id: str, *,
              lifetime: int | None = None, now: float | None = None) -> tuple[str, int]:
        """Return `(access_token, expires_in)`; `aud` is `resource` exactly as given."""
        lifetime = self.lifetime if lifetime is None else lifetime
        issued_at = int(self.clock.time() if now is None else now)
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.issuer_for(tenant_id),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + lifetime,
            "tid": tenant_id,
            "appid": app.client_id,
            "azp": app.client_id,
            "appidacr": "1",
            "oid": app.object_id,
            "sub": app.object_id,
            "idtyp": "app",
            "ver": "1.0",
            "uti": uuid.uuid4().hex,
        }
        if app.roles:
            claims["roles"] = list(app.roles)
        token = jwt.encode(
            claims, self.signing_key.private_key, algorithm=ALGORITHM,
            headers={"kid": self.signing_key.kid, "typ": "JWT"},
        )
        return token, lifetime

    def validator(self, tenant_id: str, leeway: int = DEFAULT_LEEWAY) -> TokenValidator:
        """A validator for this issuer's tokens (what an in-process resource service needs)."""
        return TokenValidator(self.signing_key.jwks(), self.issuer_for(tenant_id), tenant_id, leeway=leeway,
                              clock=self.clock)


class JwksClient(Protocol):
    """The part of `jwt.PyJWKClient` the validator uses (fetching keys over HTTP)."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


KeySource = Mapping[str, Any] | rsa.RSAPublicKey | SigningKey | JwksClient


def bearer_challenge(identity_url: str, tenant_id: str, resource_id: str) -> str:
    """The `WWW-Authenticate` value Dataverse sends with a 401: where to get a token, and for what."""
    return (f"Bearer authorization_uri={identity_url.rstrip('/')}/{tenant_id}/oauth2/authorize, "
            f"resource_id={resource_id.rstrip('/')}/")


def _strip_slash(value: str) -> str:
    return value.rstrip("/")


class TokenValidator:
    """Checks a bearer token as Dataverse and BC do: signature, lifetime, tenant, issuer, audience.

    `keys` is a JWKS document, an RSA public key, a `SigningKey`, or a `jwt.PyJWKClient`. Lifetimes
    (`exp`, `nbf`, `iat`) are judged on `clock`, the sandbox's clock, so that moving it forward expires
    tokens as time passing would.
    """

    def __init__(self, keys: KeySource, issuer: str, tenant_id: str, leeway: int = DEFAULT_LEEWAY,
                 clock: Clock | None = None) -> None:
        self._keys = keys
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()  # token -> claims, newest last
        self.issuer = issuer
        self.tenant_id = tenant_id
        self.leeway = leeway
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._only_key: jwt.PyJWK | None = None
        if isinstance(keys, Mapping):
            key_set = jwt.PyJWKSet.from_dict(dict(keys))
            self._jwks = {k.key_id: k for k in key_set.keys if k.key_id}
            self._only_key = key_set.keys[0] if len(key_set.keys) == 1 else None

    def _key_for(self, token: str, header: Mapping[str, Any]) -> Any:
        keys = self._keys
        if isinstance(keys, SigningKey):
            if header.get("kid") not in (None, keys.kid):
                raise InvalidToken("signature", f"The signing key '{header.get('kid')}' is not known.")
            return keys.public_key
        if isinstance(keys, rsa.RSAPublicKey):
            return keys
        if isinstance(keys, Mapping):
            kid = header.get("kid")
            found = self._jwks.get(kid) if kid else self._only_key
            if found is None:
                raise InvalidToken("signature", f"The signing key '{kid}' is not known.")
            return found
        try:
            return keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as exc:
            raise InvalidToken("signature", f"The signing key could not be found: {exc}") from exc

    def validate(self, token: str | None, audiences: Iterable[str] | str) -> dict[str, Any]:
        """Return the claims of a token valid for one of `audiences`, else raise `InvalidToken`.

        What cannot change for a token (its signature, tenant and issuer) is checked once and
        remembered; its lifetime (on the sandbox's clock) and audience are checked on every call."""
        if isinstance(audiences, str):
            audiences = {audiences}
        if not token or not token.strip():
            raise InvalidToken("missing", "No bearer token was presented.")
        token = token.strip()
        with self._lock:
            claims = self._verified.get(token)
            if claims is not None:
                self._verified.move_to_end(token)
        if claims is None:
            claims = self._verify(token)
            with self._lock:
                self._verified[token] = claims
                while len(self._verified) > VERIFIED_TOKENS:
                    self._verified.popitem(last=False)
        self._check_lifetime(claims)
        wanted = {_strip_slash(a).lower() for a in audiences}
        presented = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if not any(isinstance(a, str) and _strip_slash(a).lower() in wanted for a in presented):
            raise InvalidToken("audience", f"The token audience '{claims['aud']}' is not valid for this "
                                           "resource.")
        return dict(claims)

    def _verify(self, token: str) -> dict[str, Any]:
        """Signature, shape, tenant and issuer: the checks whose outcome a token keeps for life."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed", f"The token is not a well-formed JWT: {exc}") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("signature", f"The token algorithm '{header.get('alg')}' is not accepted.")
        key = self._key_for(token, header)
        try:
            # PyJWT checks the signature and the claims' types; lifetimes are checked on the sandbox's
            # clock, which PyJWT cannot be given.
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM],
                options={"verify_aud": False, "verify_iss": False, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "require": ["exp", "iss", "aud", "tid"]},
            )
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("signature", "The token signature is invalid.") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken("malformed", f"The token is malformed: {exc}") from exc
        self._check_lifetime(claims)  # an expired token is refused as expired, before its tenant
        if claims.get("tid") != self.tenant_id:
            raise InvalidToken("tenant", f"The token was issued for tenant '{claims.get('tid')}', "
                                         f"not '{self.tenant_id}'.")
        if _strip_slash(str(claims.get("iss"))) != _strip_slash(self.issuer):
            raise InvalidToken("issuer", f"The token issuer '{claims.get('iss')}' is not trusted.")
        return claims

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now = self.clock.time()
        times = {name: claims.get(name) for name in ("exp", "nbf", "iat")}
        for name, value in times.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidToken("malformed", f"The token is malformed: the '{name}' claim must be a number.")
        if float(times["exp"]) <= now - self.leeway:  # type: ignore[arg-type]
            raise InvalidToken("expired", "The token is expired.")
        if any(value is not None and float(value) > now + self.leeway for name, value in times.items()
               if name != "exp"):
            raise InvalidToken("expired", "The token is not valid yet (nbf/iat in the future).")

    def validate_authorization(self, header_value: str | None,
                               audiences: Iterable[str] | str) -> dict[str, Any]:
        """Validate an `Authorization` header value (`Bearer <token>`)."""
        if not header_value or not header_value.strip():
            raise InvalidToken("missing", "The request has no Authorization header.")
        scheme, _, token = header_value.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise InvalidToken("missing", f"The Authorization scheme '{scheme}' is not Bearer.")
        return self.validate(token, audiences)
