"""Wire the journal, fault injection and service protection into a service's Flask app.

Order of events for one request (control calls under ``/_sandbox`` skip all of it):

1. ``before_request`` (runs before the app's own hooks): start the clock, ask the fault injector;
   sleep for latency, then answer an injected error/throttle or drop the connection.
2. The app authenticates and calls :func:`sandbox_admit` once it knows the caller; over a limit that
   ends the request with the service's own 429 (or BC's 503 after a queue timeout).
3. ``after_request`` (runs after the app's own hooks): add remaining-budget headers, record the
   journal entry with duration and sizes.
4. ``teardown_request``: release the service-protection ticket, even when the view raised.

An app that never calls ``sandbox_admit`` still gets the journal and faults.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import unquote

from flask import Flask, Response, abort, current_app, g, request
from werkzeug.http import http_date

from .faults import FaultDecision
from .journal import JournalEntry, body_text, mask_headers
from .limits import REQUESTS, Budget, Rejection, Ticket
from .services import SandboxServices, is_control_path

EXTENSION_KEY = "mockservers.sandbox"
CLIENT_REQUEST_ID_HEADERS = ("x-ms-client-request-id", "client-request-id")

RenderError = Callable[[int, str, str, dict[str, str]], Response]
PrincipalLookup = Callable[[], str | None]
BudgetHeaders = Callable[[Budget], dict[str, str]]


@dataclass
class _RequestState:
    started: float
    fault: str | None = None
    ticket: Ticket | None = None
    admitted: bool = False
    rejected_by: str | None = None
    principal: str | None = None
    batch_operations: int | None = None
    recorded: bool = False


@dataclass
class SandboxHooks:
    """What :func:`install_sandbox_hooks` attached to an app (kept in ``app.extensions``)."""

    sandbox: SandboxServices
    service: str
    principal: PrincipalLookup
    render_error: RenderError
    budget_headers: BudgetHeaders | None = None

    def admit(self, principal: str | None = None) -> None:
        """Count this request against ``principal``'s limits; abort with the service's 429 if over.

        Without an argument the app's principal lookup is asked. No principal (an unauthenticated
        request) means nothing is counted. A second call in the same request does nothing, so a
        ``$batch`` counts once however many operations it carries.
        """
        state = _state()
        if state is None or state.admitted:
            return
        who = principal if principal is not None else _safe_principal(self.principal)
        if who is None:
            return
        state.admitted = True
        state.principal = who
        admission = self.sandbox.limits.admit(who)
        if isinstance(admission, Rejection):
            state.rejected_by = admission.measure
            _abort_with(self._render_rejection(admission))
        state.ticket = admission

    def _render_rejection(self, rejection: Rejection) -> Response:
        headers = {"Retry-After": str(rejection.retry_after_seconds)}
        return self.render_error(rejection.status, rejection.code, rejection.message, headers)


def install_sandbox_hooks(
    app: Flask,
    sandbox: SandboxServices,
    *,
    service: str,
    principal: PrincipalLookup,
    render_error: RenderError,
    budget_headers: BudgetHeaders | None = None,
) -> SandboxHooks:
    """Register the sandbox request hooks on ``app``; returns the object behind :func:`sandbox_admit`.

    ``principal`` returns the caller's oid/appid once authentication ran (else None); it is asked
    again when the journal entry is written. ``render_error(status, code, message, headers)`` builds
    the service's own error envelope. ``budget_headers`` turns the remaining budget into response
    headers (Dataverse: :func:`~mockservers.sandbox.limits.dataverse_budget_headers`).
    """
    hooks = SandboxHooks(sandbox, service, principal, render_error, budget_headers)
    app.extensions[EXTENSION_KEY] = hooks

    def begin() -> Response | None:
        if is_control_path(request.path):
            return None
        state = _RequestState(started=time.perf_counter())
        g.sandbox_request = state
        length = _url_length()
        if length > sandbox.url_limit.max_length:  # refused before anything parses the query
            return hooks.render_error(414, sandbox.url_limit.code, sandbox.url_limit.message(length), {})
        decision = sandbox.faults.decide(request.method, request.path)
        return _apply_fault(hooks, state, decision)

    def finish(response: Response) -> Response:
        state = _state()
        if state is None or state.recorded:
            return response
        if state.ticket is not None and hooks.budget_headers is not None:
            for name, value in hooks.budget_headers(state.ticket.budget).items():
                response.headers.setdefault(name, value)
        # the services' own clock, as a real service's Date is its clock (the HTTP server adds none then)
        response.headers.setdefault("Date", _http_date(sandbox.clock.time()))
        _record(hooks, state, response)
        return response

    def teardown(_error: BaseException | None) -> None:
        state = _state()
        if state is None:
            return
        if state.ticket is not None:
            state.ticket.release()
            state.ticket = None
        if not state.recorded:  # after_request never ran (a hook of the app itself failed)
            _record(hooks, state, None)

    # Our before hook runs first whenever the app registers its own (faults and timing precede the
    # app's auth); app-level after-hooks run in reverse order, so index 0 runs last and records the
    # final response, headers added by the app included.
    app.before_request_funcs.setdefault(None, []).insert(0, begin)
    app.after_request_funcs.setdefault(None, []).insert(0, finish)
    app.teardown_request(teardown)
    return hooks


_last_date: tuple[int, str] = (-1, "")


def _http_date(now: float) -> str:
    """The Date header for ``now``: whole seconds, so one second's text serves every answer in it
    (formatting it costs as much as a tenth of what a keyed GET spends in the service)."""
    global _last_date
    second = int(now)
    last = _last_date
    if last[0] != second:
        last = _last_date = (second, http_date(second))
    return last[1]


def sandbox_admit(principal: str | None = None) -> None:
    """Count the current request against its caller's service-protection limits (see SandboxHooks.admit)."""
    hooks = current_app.extensions.get(EXTENSION_KEY)
    if hooks is not None:
        hooks.admit(principal)


def note_batch_operations(count: int) -> None:
    """Tell the journal how many operations the current ``$batch`` carried."""
    state = _state()
    if state is not None:
        state.batch_operations = count


def note_principal(principal: str | None) -> None:
    """Tell the journal who called, for requests that never reach :func:`sandbox_admit`."""
    state = _state()
    if state is not None and principal is not None:
        state.principal = principal


def _url_length() -> int:
    """Characters of the URL as the client sent it (scheme, host and the raw, still-encoded target)."""
    target = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")
    if target is None:
        query = request.environ.get("QUERY_STRING", "")
        target = request.environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
    return len(request.host_url) - 1 + len(target)


def _state() -> _RequestState | None:
    return g.get("sandbox_request")


def _safe_principal(lookup: PrincipalLookup) -> str | None:
    # The lookup belongs to the app; a journal entry must not fail because of it.
    try:
        return lookup()
    except Exception:
        return None


def _abort_with(response: Response) -> NoReturn:
    # An HTTPException carrying a ready response: Flask sends it as is, bypassing the app's
    # error handlers, so the 429 envelope is exactly what render_error built.
    abort(response)


def _apply_fault(hooks: SandboxHooks, state: _RequestState, decision: FaultDecision) -> Response | None:
    if decision.kind == "none":
        return None
    state.fault = decision.kind
    if decision.delay_ms:
        time.sleep(decision.delay_ms / 1000.0)
    if decision.kind == "error":
        return hooks.render_error(decision.status or 503, "", "Injected fault", {})
    if decision.kind == "throttle":
        rejection = hooks.sandbox.limits.rejection_for(REQUESTS, decision.retry_after or 1)
        return hooks._render_rejection(rejection)
    if decision.kind == "drop":
        _record(hooks, state, None)  # journaled before the cut, so a client that saw it finds it there
        return _drop_connection()
    return None


# environ key of a callable that cuts the connection where there is no socket to cut (in process)
CUT_CONNECTION = "mockservers.sandbox.cut_connection"


def _drop_connection() -> Response:
    """Cut the TCP connection under the client, as a network failure would.

    Without a socket (the testing kit's in-process mode) the environ's ``CUT_CONNECTION`` callable is
    called instead, and the caller raises the connection error a client would see.

    werkzeug's dev server puts the socket in the environ. Shutting it down sends FIN at once (the
    socket object cannot be closed here: werkzeug still holds file objects on it), so the client
    reads no status line; werkzeug's attempt to write the placeholder response below then fails
    with a broken pipe, which it treats as a dropped connection and logs quietly.
    """
    cut = request.environ.get(CUT_CONNECTION)
    if cut is not None:
        cut()
        return Response("", status=503)
    sock: socket.socket | None = request.environ.get("werkzeug.socket")
    if sock is None:
        # Another WSGI server: no socket access. Signal the fault as loudly as we can.
        return Response("", status=503)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset on close
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    return Response("", status=503)


def _record(hooks: SandboxHooks, state: _RequestState, response: Response | None) -> None:
    state.recorded = True
    if state.fault == "drop":
        status, size = 0, 0
    elif response is None:
        status, size = 500, None
    else:
        status, size = response.status_code, _response_size(response)
    principal = state.principal or _safe_principal(hooks.principal)
    rule = request.url_rule
    entry = JournalEntry(
        service=hooks.service,
        method=request.method,
        path=request.path,
        query=unquote(request.query_string.decode("latin-1")),
        status=status,
        duration_ms=round((time.perf_counter() - state.started) * 1000.0, 3),
        request_bytes=request.content_length or 0,
        response_bytes=size,
        principal=principal,
        client_request_id=_client_request_id(),
        batch_operations=state.batch_operations,
        template=rule.rule if rule is not None else None,
        fault=state.fault,
        rejected_by=state.rejected_by,
        query_options=request.args.to_dict(flat=True),
        headers=mask_headers(request.headers.items()),
    )
    entry.body, entry.body_truncated = body_text(_request_body(), hooks.sandbox.journal.body_limit)
    hooks.sandbox.journal.record(entry)


def _request_body() -> bytes:
    """The request body, as far as the app accepts one (a body refused as too large stays unread)."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and (request.content_length or 0) > limit:
        return b""
    try:
        return request.get_data(cache=True)
    except Exception:  # a body that cannot be read (client gone, over the limit while streaming)
        return b""


def _response_size(response: Response) -> int | None:
    length = response.calculate_content_length()
    if length is not None:
        return length
    return None if response.is_streamed else len(response.get_data())


def _client_request_id() -> str | None:
    for name in CLIENT_REQUEST_ID_HEADERS:
        value = request.headers.get(name)
        if value:
            return value
    return None
