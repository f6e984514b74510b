"""Sandbox TLS files: made once, reused, re-issued only for new hosts, and usable by real clients."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import requests
from cryptography import x509
from flask import Flask
from werkzeug.serving import make_server

from mockservers.server.tls import TlsFiles, ensure_certificates, ssl_context


def _snapshot(files: TlsFiles) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (files.ca_bundle, files.cert_chain, files.private_key)}


def _sans(files: TlsFiles) -> list[str]:
    cert = x509.load_pem_x509_certificate(files.cert_chain.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(str(getattr(n.value, "compressed", n.value)) for n in names)


def test_certificates_are_generated_once(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path)
    assert first.ca_bundle.parent == tmp_path / "tls"
    assert first.ca_bundle.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert first.private_key.read_bytes().startswith(b"-----BEGIN")
    assert first.cert_chain.read_bytes().count(b"BEGIN CERTIFICATE") >= 1
    assert _sans(first) == ["127.0.0.1", "::1", "localhost"]
    for secret in (first.private_key, tmp_path / "tls" / "ca-key.pem"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = _snapshot(first)

    second = ensure_certificates(tmp_path)  # a restart
    assert second == first
    assert _snapshot(second) == before


def test_new_host_reissues_server_cert_from_same_ca(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    ca_before = files.ca_bundle.read_bytes()
    leaf_before = files.cert_chain.read_bytes()

    again = ensure_certificates(tmp_path, hosts=("127.0.0.1", "localhost", "::1", "sandbox.local"))
    assert again.ca_bundle.read_bytes() == ca_before  # clients keep trusting the same CA
    assert again.cert_chain.read_bytes() != leaf_before
    assert "sandbox.local" in _sans(again)
    # A subset of the hosts is already covered: nothing changes.
    snapshot = _snapshot(again)
    ensure_certificates(tmp_path, hosts=("localhost",))
    assert _snapshot(again) == snapshot


def test_missing_server_key_is_regenerated(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path)
    ca_before = files.ca_bundle.read_bytes()
    files.private_key.unlink()
    again = ensure_certificates(tmp_path)
    assert again.private_key.exists()
    assert again.ca_bundle.read_bytes() == ca_before


@pytest.fixture
def https_server(tmp_path: Path):
    files = ensure_certificates(tmp_path)
    app = Flask("tls-probe")
    app.add_url_rule("/ping", "ping", lambda: {"ok": True})
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context(files))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield files, server.server_port
    server.shutdown()
    thread.join(5)


def test_https_request_verifies_against_sandbox_ca(https_server, monkeypatch: pytest.MonkeyPatch) -> None:
    files, port = https_server
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    for host in ("127.0.0.1", "localhost"):
        response = requests.get(f"https://{host}:{port}/ping", verify=str(files.ca_bundle), timeout=10)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
    # Without the sandbox CA the certificate is not trusted.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{port}/ping", timeout=10)
