"""The HTTP server under each service: cheroot, a threaded WSGI server with keep-alive and TLS.

Werkzeug's development server closes the connection after every response, so each HTTPS request
would pay a new TLS handshake; real clients (requests sessions, MSAL, the SDK) reuse connections,
and so do the real services. Binding happens in the constructor so that port 0 works and the
public URL is known before the app is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
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


access_logger = logging.getLogger("mockservers.access")


class AccessLog:
    """WSGI middleware: one line per request (service, method, path and query, status, duration)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], service: str) -> None:
        self.app = app
        self.service = service

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[str] = []

        def recording_start_response(code: str, headers: list, *args: Any) -> Any:
            status.append(code.split(" ", 1)[0])
            return start_response(code, headers, *args)

        try:
            return self.app(environ, recording_start_response)
        finally:
            target = environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                target += "?" + environ["QUERY_STRING"]
            access_logger.info("%-9s %-6s %s %s %.1f ms", self.service, environ.get("REQUEST_METHOD", ""), target,
                               status[0] if status else "---", (time.perf_counter() - started) * 1000)


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
