"""The identity service's token-signing key.

The key is kept as PEM in the data dir so tokens issued before a restart still validate after it
(a client's cached token must not turn invalid because the sandbox was restarted).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

KEY_FILENAME = "identity-key.pem"
KEY_SIZE = 2048


@dataclass(frozen=True)
class SigningKey:
    """An RSA key plus the `kid` under which its public half is published."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK, in the form Entra lists it under `keys`."""
        jwk = RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {"kty": jwk["kty"], "use": "sig", "alg": "RS256", "kid": self.kid, "n": jwk["n"], "e": jwk["e"]}

    def jwks(self) -> dict[str, Any]:
        """The JWKS document served at `/discovery/v2.0/keys`."""
        return {"keys": [self.public_jwk()]}

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 thumbprint: stable for a key, so the `kid` survives restarts without being stored."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _from_private_key(private_key: rsa.RSAPrivateKey) -> SigningKey:
    return SigningKey(private_key=private_key, kid=jwk_thumbprint(private_key.public_key()))


def generate_signing_key() -> SigningKey:
    """A fresh in-memory key (used when there is no data dir)."""
    return _from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE))


def _read_key(path: Path) -> SigningKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return _from_private_key(loaded)


def load_signing_key(data_dir: Path | str | None) -> SigningKey:
    """Load `<data_dir>/identity-key.pem`, creating it on first use; `None` gives an in-memory key.

    The file is written to a temporary name and hard-linked into place, so two processes starting
    on the same data dir at once agree on one key instead of overwriting each other.
    """
    if data_dir is None:
        return generate_signing_key()
    directory = Path(data_dir)
    path = directory / KEY_FILENAME
    if path.exists():
        return _read_key(path)
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key()
    fd, tmp_name = tempfile.mkstemp(prefix=".identity-key-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_pem())
        os.chmod(tmp_name, 0o600)
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return _read_key(path)
    finally:
        os.unlink(tmp_name)
    return key
