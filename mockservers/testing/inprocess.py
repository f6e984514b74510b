"""In-process mode: what ``requests`` sends to a sandbox's URLs is answered by its Flask apps directly.

Built on ``responses`` (it replaces ``HTTPAdapter.send`` while active), so anything that speaks HTTP
through ``requests`` — MSAL, azure-identity, Microsoft's Dataverse SDK, the connector, your own code —
runs unchanged and without a socket. The request becomes a WSGI environ (werkzeug's
``EnvironBuilder``), the app's answer becomes the response; the journal, faults, limits and clock
behave exactly as they do behind a socket.

Two things a socket would do are done here on purpose, so a client meets the same behaviour in both
modes: a dropped-connection fault raises the ``ConnectionError`` a cut socket causes, and retries
configured on the adapter (urllib3's ``Retry``) wait their backoff and ``Retry-After`` and retry
dropped connections, as urllib3 does (``responses`` alone retries statuses without waiting).
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
import responses
from urllib3.exceptions import MaxRetryError, ProtocolError
from werkzeug.test import EnvironBuilder, run_wsgi_app

from ..sandbox.hooks import CUT_CONNECTION

METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS")
WsgiApp = Callable[..., Iterable[bytes]]


class DroppedConnection(requests.ConnectionError):
    """The sandbox cut the connection (a ``drop`` fault): what a client sees when a socket dies."""


class RouterBusy(RuntimeError):
    """Another in-process sandbox is routing requests already (``responses`` patches one adapter)."""


_active: SandboxRouter | None = None
_active_lock = threading.Lock()


class SandboxRouter(responses.RequestsMock):
    """A ``responses.RequestsMock`` that answers each mounted base URL with a WSGI app.

    Other URLs are refused (``requests.ConnectionError``) unless ``passthrough`` lets them through:
    ``True`` for every URL, or a list of URL prefixes. Register mocks for other services on the router
    itself (``router.add(...)``), as with any ``RequestsMock``; a second active mock would replace it.
    """

    def __init__(self, apps: Mapping[str, WsgiApp] | None = None, *,
                 passthrough: bool | Sequence[str] = False) -> None:
        prefixes: tuple[str, ...] = ("",) if passthrough is True else tuple(passthrough or ())
        super().__init__(assert_all_requests_are_fired=False, passthru_prefixes=prefixes,
                         response_callback=self._remember)
        self.apps: dict[str, WsgiApp] = {}
        self._local = threading.local()
        self.mount(apps or {})

    def mount(self, apps: Mapping[str, WsgiApp]) -> None:
        """Answer every request under each base URL (scheme, host and port) with its WSGI app."""
        for base, app in apps.items():
            base = base.rstrip("/")
            self.apps[base] = app
            pattern = re.compile(re.escape(base) + r"(?:[/?#].*)?\Z", re.DOTALL)
            for method in METHODS:
                self.add_callback(method, pattern, callback=self._dispatcher(base, app), content_type=None)

    # -- lifecycle: one active router per process -------------------------------------------------
    def start(self) -> None:
        global _active
        with _active_lock:
            if _active is not None and _active is not self:
                raise RouterBusy("another in-process sandbox is already answering requests; stop it first "
                                 "(one in-process sandbox at a time: responses patches the one HTTPAdapter)")
            super().start()
            _active = self

    def stop(self, allow_assert: bool = True) -> None:
        global _active
        with _active_lock:
            super().stop(allow_assert=allow_assert)
            if _active is self:
                _active = None

    # -- dispatch ---------------------------------------------------------------------------------
    def _dispatcher(self, base: str, app: WsgiApp) -> Callable[[requests.PreparedRequest], Any]:
        def dispatch(request: requests.PreparedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
            environ = _environ(base, request)
            cut: list[bool] = []
            environ[CUT_CONNECTION] = lambda: cut.append(True)
            app_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
            try:
                body = b"".join(app_iter)
            finally:
                close = getattr(app_iter, "close", None)
                if close is not None:
                    close()
            if cut:
                raise DroppedConnection(
                    ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer")),
                    request=request)
            return int(status.split(" ", 1)[0]), list(headers.to_wsgi_list()), body

        return dispatch

    def _remember(self, response: requests.Response) -> requests.Response:
        self._local.last = response
        return response

    def _on_request(self, adapter: Any, request: requests.PreparedRequest, *,
                    retries: Any = None, **kwargs: Any) -> requests.Response:
        if retries is not None and retries.history:  # a retry: wait as urllib3 would before sending again
            last = getattr(self._local, "last", None)
            self._local.last = None
            retries.sleep(last.raw if last is not None else None)
        try:
            return super()._on_request(adapter, request, retries=retries, **kwargs)
        except DroppedConnection as dropped:
            policy = retries or adapter.max_retries
            try:  # urllib3's rules for a connection lost after the request went out (a read error)
                policy = policy.increment(method=request.method, url=request.url, error=dropped.args[0])
            except (MaxRetryError, ProtocolError) as error:
                # a plain ConnectionError, as requests raises it: outer retry frames must not count it again
                raise requests.ConnectionError(error, request=request) from None
            self._local.last = None
            return self._on_request(adapter, request, retries=policy, **kwargs)
        except requests.ConnectionError as refused:
            if not str(refused).startswith("Connection refused by Responses"):
                raise
            raise requests.ConnectionError(
                f"Connection refused by the in-process sandbox: {request.method} {request.url} is not one of its "
                f"URLs ({', '.join(self.apps) or 'none mounted'}) nor let through (passthrough=True, or a list of "
                "URL prefixes, lets other URLs reach the network)", request=request) from None


def _environ(base: str, request: requests.PreparedRequest) -> dict[str, Any]:
    """The WSGI environ a server would build for ``request`` (the raw target kept as REQUEST_URI)."""
    url = urlsplit(request.url or "")
    target = url.path or "/"
    headers = dict(request.headers or {})
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    body = _body_bytes(request.body)
    builder = EnvironBuilder(
        path=target,
        base_url=base,
        query_string=url.query,
        method=request.method or "GET",
        headers=[(k, v) for k, v in headers.items() if k.lower() not in ("content-type", "content-length", "host")],
        # a server sets CONTENT_LENGTH only when the client sent a body or the header (GETs send neither)
        input_stream=io.BytesIO(body) if body or "content-length" in {k.lower() for k in headers} else None,
        content_type=content_type,
        environ_overrides={"REQUEST_URI": target + (f"?{url.query}" if url.query else ""),
                           "RAW_URI": target + (f"?{url.query}" if url.query else "")},
        multithread=True,
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _body_bytes(body: Any) -> bytes:
    """The bytes a client would put on the wire for ``request.body``."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("iso-8859-1")  # what http.client does with a str body
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("iso-8859-1") if isinstance(data, str) else bytes(data)
    return b"".join(part.encode("iso-8859-1") if isinstance(part, str) else bytes(part) for part in body)
