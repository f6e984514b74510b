"""The HTTP server under each service: cheroot, a threaded WSGI server with keep-alive and TLS.

Werkzeug's development server closes the connection after every response, so each HTTPS request
would pay a new TLS handshake; real clients (requests sessions, MSAL, the SDK) reuse connections,
and so do the real services. Binding happens in the constructor so that port 0 works and the
public URL is known before the app is built.
"""

from __future__ import annotations

import logging
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .tls import TlsFiles

logging.getLogger("cheroot").setLevel(logging.WARNING)


class _Gateway(wsgi.Gateway_10):
    """Exposes the connection's socket, so the fault injector can drop it mid-request."""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["werkzeug.socket"] = self.req.conn.socket
        return environ


class ServiceServer:
    def __init__(self, host: str, port: int, app: Any, tls: TlsFiles | None = None, threads: int = 24) -> None:
        self._server = wsgi.Server((host, port), app, numthreads=threads, timeout=30, shutdown_timeout=2)
        self._server.gateway = _Gateway
        if tls is not None:
            self._server.ssl_adapter = BuiltinSSLAdapter(str(tls.cert_chain), str(tls.private_key))
        self._server.prepare()  # binds and listens now
        self.port: int = self._server.bind_addr[1]

    def serve_forever(self) -> None:
        self._server.serve()

    def shutdown(self) -> None:
        self._server.stop()
