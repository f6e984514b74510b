"""Sandbox TLS: a local CA and a server certificate, made once per data dir with `trustme`.

MSAL, azure-identity and the Dataverse SDK refuse plain-http authorities, so the sandbox serves
HTTPS with its own CA. Files are reused across restarts so a client configured once with
`REQUESTS_CA_BUNDLE=<data_dir>/tls/ca.pem` keeps working.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

TLS_DIRNAME = "tls"
CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CHAIN = "server.pem"
SERVER_KEY = "server-key.pem"
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")
ORGANIZATION = "bc-dataverse-sandbox"


@dataclass(frozen=True)
class TlsFiles:
    """Paths a server and its clients need: trust `ca_bundle`, serve `cert_chain` + `private_key`."""

    ca_bundle: Path
    cert_chain: Path
    private_key: Path


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write via a temporary name so a crash never leaves half a PEM behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if secret:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _identity(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host.lower())


def _covers(chain_path: Path, hosts: Iterable[str]) -> bool:
    """Whether the existing server certificate names every requested host."""
    try:
        cert = x509.load_pem_x509_certificate(chain_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    present = set(names)
    return all(_identity(h) in present for h in hosts)


def _load_or_create_ca(directory: Path) -> trustme.CA:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca = trustme.CA(organization_name=ORGANIZATION, organization_unit_name="Sandbox local CA")
    _write(key_path, ca.private_key_pem.bytes(), secret=True)
    _write(cert_path, ca.cert_pem.bytes())
    return ca


def ensure_certificates(data_dir: Path | str, hosts: Iterable[str] = DEFAULT_HOSTS) -> TlsFiles:
    """Return the sandbox's TLS files under `<data_dir>/tls/`, generating only what is missing.

    The CA is made once. The server certificate is made once too, and re-issued from the same CA
    only if it is missing or does not name every host asked for; clients keep trusting it either way.
    """
    hosts = tuple(hosts)
    directory = Path(data_dir) / TLS_DIRNAME
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_bundle=directory / CA_CERT,
        cert_chain=directory / SERVER_CHAIN,
        private_key=directory / SERVER_KEY,
    )
    ca_exists = files.ca_bundle.exists() and (directory / CA_KEY).exists()
    leaf_ok = files.cert_chain.exists() and files.private_key.exists() and _covers(files.cert_chain, hosts)
    if ca_exists and leaf_ok:
        return files
    ca = _load_or_create_ca(directory)
    leaf = ca.issue_cert(*hosts, organization_name=ORGANIZATION, organization_unit_name="Sandbox services")
    _write(files.private_key, leaf.private_key_pem.bytes(), secret=True)
    _write(files.cert_chain, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return files


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context for werkzeug (`make_server(..., ssl_context=...)`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert_chain), str(files.private_key))
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client-side context trusting only the sandbox CA (for urllib-based clients)."""
    return ssl.create_default_context(cafile=str(files.ca_bundle))
