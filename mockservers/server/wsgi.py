"""The HTTP server under each service: cheroot, a threaded WSGI server with keep-alive and TLS.

Werkzeug's development server closes the connection after every response, so each HTTPS request
would pay a new TLS handshake; real clients (requests sessions, MSAL, the SDK) reuse connections,
and so do the real services. Binding happens in the constructor so that port 0 works and the
public URL is known before the app is built.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .tls import TlsFiles

logging.getLogger("cheroot").setLevel(logging.WARNING)


class _FirstWordUpper:
    """A request-line reader that hands cheroot the method upper-cased and remembers how it came."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.method: bytes | None = None

    def readline(self, *args: Any) -> bytes:
        line = self.inner.readline(*args)
        method, space, rest = line.partition(b" ")
        if space and method.isalpha():
            self.method = method
            return method.upper() + space + rest
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Request(cheroot_server.HTTPRequest):
    """cheroot answers a lower-case method (``get``) with its own plain-text 400. Methods are
    case-sensitive tokens, so ``get`` is a well-formed request for a method the services do not
    have: it reaches the app, which answers 405 in its own error envelope."""

    def read_request_line(self) -> bool:
        reader = _FirstWordUpper(self.rfile)
        self.rfile = reader
        try:
            ok = super().read_request_line()
        finally:
            self.rfile = reader.inner
        if ok and reader.method is not None:
            self.method = reader.method
        return ok


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request


class _Gateway(wsgi.Gateway_10):
    """Exposes the connection's socket, so the fault injector can drop it mid-request."""

    # cheroot's bundled stub declares Gateway.get_environ as returning None; it returns the environ dict
    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        environ = super().get_environ()
        environ["werkzeug.socket"] = self.req.conn.socket
        return environ


access_logger = logging.getLogger("mockservers.access")
MAX_REQUEST_HEAD_BYTES = 1024 * 1024


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


class BindError(OSError):
    """A service's socket could not be bound; says which service, host and port, and why."""

    def __init__(self, service: str, host: str, port: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error))
        self.service = service
        self.host = host
        self.port = port
        if error.errno == errno.EADDRINUSE:
            self.reason = f"port {port} is in use"
        elif error.errno == errno.EACCES:
            self.reason = f"port {port} needs privileges this process does not have"
        elif error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
            self.reason = f"cannot listen on host {host!r} ({error.strerror or error})"
        else:
            self.reason = f"cannot listen on {host}:{port} ({error.strerror or error})"

    def __str__(self) -> str:
        return self.reason


def bind(service: str, host: str, port: int, app: Any, tls: TlsFiles | None = None, *,
         reuse_port: bool = False) -> ServiceServer:
    try:
        return ServiceServer(host, port, app, tls=tls, reuse_port=reuse_port)
    except OSError as error:
        raise BindError(service, host, port, error) from None


# Connections waiting in the kernel for the server to accept them (cheroot's default of 5 overflows under
# a burst of new connections: the kernel then drops SYNs and clients wait a second to retry).
LISTEN_BACKLOG = 1024
# Idle keep-alive connections the server keeps open (cheroot's default of 10 closes the 11th client's
# connection after each answer, so 16 steady clients keep reconnecting; a real service keeps them).
KEEP_ALIVE_CONNECTIONS = 1000
WORKER_THREADS = 64


class _PreBoundServer(wsgi.Server):
    """cheroot's WSGI server on a socket bound beforehand.

    cheroot binds, listens, starts its worker threads and opens its selector in one step
    (``prepare``). Here binding comes first, alone, so the port is known and held while no thread
    exists yet: a sandbox that serves a service from another process forks after binding.
    """

    bound: socket.socket | None = None

    def bind(self, family: int, type: int, proto: int = 0) -> socket.socket:  # noqa: A002 (cheroot's names)
        if self.bound is None:
            self.bound = super().bind(family, type, proto)
        self.socket = self.bound
        return self.bound


class ServiceServer:
    def __init__(self, host: str, port: int, app: Any, tls: TlsFiles | None = None,
                 threads: int = WORKER_THREADS, *, reuse_port: bool = False) -> None:
        self._server = _PreBoundServer((host, port), app, numthreads=threads, timeout=30, shutdown_timeout=2,
                                       request_queue_size=LISTEN_BACKLOG)
        self._server.keep_alive_conn_limit = KEEP_ALIVE_CONNECTIONS
        # Request line plus headers: far above the services' own URL limits (which answer in their
        # envelopes), low enough that a 20 MB URL is refused before a worker spends seconds on it.
        self._server.max_request_header_size = MAX_REQUEST_HEAD_BYTES
        self._server.gateway = _Gateway
        self._server.ConnectionClass = _Connection
        if reuse_port:
            port = self._probe(host, port)
            self._server.bind_addr = (host, port)  # cheroot joins no group on port 0: the port is drawn first
            self._server.reuse_port = True
        self._host = host
        self._listen(host, port)  # connections queue from now on; they are accepted once serving
        self.port: int = self._server.bind_addr[1]
        self._serving = False
        if tls is not None:
            self.use_tls(tls)

    def _listen(self, host: str, port: int) -> None:
        """Bind the first address ``host`` resolves to that takes the port (as cheroot would), and
        listen; an OSError here carries the reason's errno (cheroot's own ``prepare`` folds it into text)."""
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        failure: OSError | None = None
        for family, kind, proto, _name, _address in infos:
            try:
                self._server.bind(family, kind, proto).listen(LISTEN_BACKLOG)
                return
            except OSError as error:
                failure = failure or error
                if self._server.bound is not None:
                    self._server.bound.close()
                self._server.bound = None
        raise failure or OSError(errno.EADDRNOTAVAIL, f"no address for {host!r}")

    @staticmethod
    def _probe(host: str, port: int) -> int:
        """The port to serve: bound once without SO_REUSEPORT, so a port another socket holds is refused
        as in use (SO_REUSEPORT alone would join that socket's group and take half its connections),
        and port 0 becomes a free port."""
        family, kind, proto, _name, address = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC,
                                                                 socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            return int(probe.getsockname()[1])

    def listen_again(self) -> None:
        """In one more process serving this port: a listening socket of its own in the port's
        SO_REUSEPORT group, so the kernel spreads new connections over the processes (on one shared
        socket the process that wakes first takes nearly every connection)."""
        assert self._server.reuse_port, "bound without reuse_port"
        if self._server.bound is not None:
            self._server.bound.close()
        self._server.bound = None
        self._listen(self._host, self.port)

    def use_tls(self, tls: TlsFiles) -> None:
        """Serve HTTPS; cheroot wraps each accepted connection, so this may follow the bind."""
        self._server.ssl_adapter = BuiltinSSLAdapter(str(tls.cert_chain), str(tls.private_key))

    def prepare(self) -> None:
        """Start the worker threads and the connection selector: serving begins in this process."""
        if not self._serving:
            self._server.prepare()
            self._serving = True

    def serve_forever(self) -> None:
        self.prepare()
        self._server.serve()

    def release(self) -> None:
        """Let go of the port without serving it: another process serves it from its own copy."""
        if not self._serving and self._server.bound is not None:
            self._server.bound.close()

    def shutdown(self) -> None:
        if self._serving:
            self._server.stop()
        else:
            self.release()
