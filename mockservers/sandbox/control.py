"""Control API under ``/_sandbox``: what tests and benchmarks use to steer and inspect a service.

Not part of the emulated surface: plain JSON, its own admin token, never journaled or throttled.
Errors use ``{"error": {"code", "message"}}`` like the services, with a 4xx for any bad input.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ..clock import ClockError, parse_instant
from ..odata.jsonbody import InvalidJson, parse_json
from .faults import FaultConfigError
from .journal import JournalQuery, JournalQueryError
from .limits import LimitConfigError, LimitsHeldOff
from .services import CONTROL_PREFIX, SandboxServices

ADMIN_TOKEN_HEADER = "X-Sandbox-Admin-Token"


class ControlError(Exception):
    """A control call that cannot be honoured; becomes a JSON error with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def control_blueprint(
    sandbox: SandboxServices,
    *,
    reset: Callable[[], None],
    seed: Callable[[str, dict[str, Any] | None], dict[str, Any]],
    counters: Callable[[], dict[str, Any]] | None = None,
) -> Blueprint:
    """The ``/_sandbox`` blueprint for one service.

    ``reset`` empties the service's data; ``seed(fixture, document)`` loads a named fixture set, or the
    fixture content ``document`` given inline, and returns a summary (raise ``LookupError`` for an
    unknown fixture, ``ValueError`` for unusable input);
    ``counters`` adds service-specific figures to ``GET /_sandbox/counters``.
    """
    bp = Blueprint("sandbox_control", __name__, url_prefix=CONTROL_PREFIX)

    @bp.errorhandler(ControlError)
    def control_error(error: ControlError) -> tuple[Response, int]:
        return _error(error.code, error.message), error.status

    @bp.before_request
    def require_admin_token() -> tuple[Response, int] | None:
        if request.endpoint == f"{bp.name}.health":
            return None
        if not _token_matches(sandbox.admin_token):
            response = _error("Unauthorized", "The sandbox control API needs the admin token: send "
                              f"'Authorization: Bearer <admin_token>' or '{ADMIN_TOKEN_HEADER}: <admin_token>'.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sandbox-control"'
            return response, 401
        return None

    @bp.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    @bp.post("/reset")
    def reset_all() -> Response:
        """Data, journal, faults and limit windows back to a fresh start (limit config to its default)."""
        reset()
        sandbox.journal.clear()
        sandbox.faults.clear()
        sandbox.limits.restore_defaults()
        return jsonify(status="reset")

    @bp.post("/seed")
    def seed_fixture() -> Response:
        body = _json_object(required=False)
        unknown = sorted(set(body) - {"fixture", "data"})
        if unknown:
            raise ControlError(400, "BadRequest", f"Unknown seed field(s) {', '.join(map(repr, unknown))}; "
                                                  "expected 'fixture' (a fixture set's name) or 'data' (its content).")
        if "fixture" in body and "data" in body:
            raise ControlError(400, "BadRequest", "Give 'fixture' or 'data', not both.")
        document = body.get("data")
        if "data" in body and not isinstance(document, dict):
            raise ControlError(400, "BadRequest", "'data' must be a JSON object in the service's fixture format.")
        fixture = body.get("fixture", "default")
        if not isinstance(fixture, str) or not fixture:
            raise ControlError(400, "BadRequest", "'fixture' must be a non-empty string naming a fixture set.")
        shown = "inline data" if document is not None else repr(fixture if len(fixture) <= 80 else fixture[:80] + "...")
        try:
            result = seed(fixture, document)
        except LookupError as exc:
            raise ControlError(404, "FixtureNotFound", f"Unknown fixture: {_reason(exc)}") from exc
        except ValueError as exc:
            raise ControlError(400, "BadRequest", f"Fixture {shown} could not be loaded: {exc}") from exc
        return jsonify(result)

    @bp.get("/journal")
    def read_journal() -> Response:
        """Entries matching every filter given (``JournalQuery.from_args`` names them)."""
        try:
            query = JournalQuery.from_args(request.args.to_dict(flat=False))
        except JournalQueryError as exc:
            raise ControlError(400, "BadRequest", str(exc)) from exc
        return jsonify(value=[e.to_dict() for e in sandbox.journal.select(query)])

    @bp.delete("/journal")
    def clear_journal() -> Response:
        sandbox.journal.clear()
        return Response(status=204)

    @bp.get("/faults")
    def read_faults() -> Response:
        return jsonify(sandbox.faults.state())

    @bp.put("/faults")
    def set_faults() -> Response:
        try:
            sandbox.faults.configure(**_json_object(required=True))
        except FaultConfigError as exc:
            raise ControlError(400, "BadRequest", str(exc)) from exc
        return jsonify(sandbox.faults.state())

    @bp.delete("/faults")
    def clear_faults() -> Response:
        sandbox.faults.clear()
        return Response(status=204)

    @bp.get("/clock")
    def read_clock() -> Response:
        return jsonify(sandbox.clock.state().to_dict())

    @bp.put("/clock")
    def set_clock() -> Response:
        """Move the sandbox's clock forward (``now`` or ``advance_seconds``) and/or freeze or resume it.

        The clock is the whole sandbox's: identity and both services read it."""
        body = _json_object(required=True)
        unknown = sorted(set(body) - {"now", "advance_seconds", "frozen"})
        if unknown:
            raise ControlError(400, "BadRequest", f"Unknown clock field(s) {', '.join(map(repr, unknown))}; "
                                                  "expected some of 'now', 'advance_seconds', 'frozen'.")
        frozen = body.get("frozen")
        if frozen is not None and not isinstance(frozen, bool):
            raise ControlError(400, "BadRequest", f"'frozen' must be true or false; got {frozen!r}.")
        try:
            target = parse_instant(body["now"]) if "now" in body else None
            state = sandbox.clock.adjust(now=target, advance_seconds=body.get("advance_seconds"), frozen=frozen)
        except ClockError as exc:
            raise ControlError(400, "BadRequest", str(exc)) from exc
        return jsonify(state.to_dict())

    @bp.get("/limits")
    def read_limits() -> Response:
        return jsonify(_limits_state(sandbox))

    @bp.put("/limits")
    def set_limits() -> Response:
        try:
            sandbox.limits.configure(**_json_object(required=True))
        except LimitsHeldOff as exc:
            raise ControlError(409, "Conflict", str(exc)) from exc
        except LimitConfigError as exc:
            raise ControlError(400, "BadRequest", str(exc)) from exc
        return jsonify(_limits_state(sandbox))

    @bp.post("/limits/reset")
    def reset_limits() -> Response:
        sandbox.limits.reset()
        return jsonify(_limits_state(sandbox))

    @bp.get("/counters")
    def read_counters() -> Response:
        return jsonify(
            requests=sandbox.journal.counters(),
            throttled=sandbox.limits.counters(),
            service=counters() if counters is not None else {},
        )

    return bp


def _error(code: str, message: str) -> Response:
    return jsonify(error={"code": code, "message": message})


def _token_matches(expected: str) -> bool:
    supplied = request.headers.get(ADMIN_TOKEN_HEADER, "")
    if not supplied:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        supplied = credentials.strip() if scheme.lower() == "bearer" else ""
    return bool(supplied) and hmac.compare_digest(supplied.encode(), expected.encode())


def _json_object(*, required: bool) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ControlError(400, "BadRequest", "A JSON object body is required.")
        return {}
    try:
        body = parse_json(raw)
    except InvalidJson as exc:
        raise ControlError(400, "BadRequest", exc.message) from exc
    if not isinstance(body, dict):
        raise ControlError(400, "BadRequest", "The body must be a JSON object.")
    return body


def _limits_state(sandbox: SandboxServices) -> dict[str, Any]:
    return {**sandbox.limits.config.to_dict(), "principals": sandbox.limits.usage()}


def _reason(exc: BaseException) -> str:
    # KeyError's str() adds quotes around its argument; the argument itself reads better.
    return str(exc.args[0]) if exc.args else type(exc).__name__
