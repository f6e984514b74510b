"""Fault injection: make a healthy mock misbehave on purpose, so clients' retry paths get exercised.

One active :class:`FaultConfig` per service. Each matching request gets one random draw that picks at
most one of drop / throttle / error (their rates are slices of one [0, 1) interval, so they must sum
to at most 1); latency is added on top of whatever was picked. ``count`` turns the config into
"the next N matching requests" and switches it off afterwards.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

FaultKind = Literal["none", "latency", "error", "throttle", "drop"]


class FaultConfigError(ValueError):
    """A fault setting that cannot be applied; the message says which field and why."""


@dataclass(frozen=True)
class FaultConfig:
    latency_ms: int = 0
    latency_jitter_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 503
    throttle_rate: float = 0.0
    retry_after: int = 5
    drop_rate: float = 0.0
    paths: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    count: int | None = None
    seed: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.latency_ms or self.latency_jitter_ms or self.error_rate or self.throttle_rate
                    or self.drop_rate)

    def applies_to(self, method: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.paths is None or any(path.startswith(prefix) for prefix in self.paths)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("paths", "methods"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> FaultConfig:
        """Build a validated config from JSON-ish input; unknown or ill-typed fields raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FaultConfigError(
                f"Unknown fault field(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(sorted(known))}."
            )
        kw: dict[str, Any] = {}
        for name in ("latency_ms", "latency_jitter_ms", "retry_after"):
            if name in values:
                kw[name] = _int(name, values[name], minimum=0)
        if "error_status" in values:
            kw["error_status"] = _int("error_status", values["error_status"], minimum=400, maximum=599)
        for name in ("error_rate", "throttle_rate", "drop_rate"):
            if name in values:
                kw[name] = _rate(name, values[name])
        for name in ("count", "seed"):
            if values.get(name) is not None:
                kw[name] = _int(name, values[name], minimum=0 if name == "seed" else 1)
        if values.get("paths") is not None:
            paths = _strings("paths", values["paths"])
            bad = [p for p in paths if not p.startswith("/")]
            if bad:
                raise FaultConfigError(f"paths must be URL path prefixes starting with '/'; got {bad[0]!r}.")
            kw["paths"] = paths
        if values.get("methods") is not None:
            kw["methods"] = tuple(m.upper() for m in _strings("methods", values["methods"]))
        config = cls(**kw)
        total = config.error_rate + config.throttle_rate + config.drop_rate
        if total > 1.0 + 1e-9:
            raise FaultConfigError(
                f"error_rate + throttle_rate + drop_rate must not exceed 1 (got {total:g}): each request "
                "gets at most one of these faults."
            )
        return config


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one request. ``delay_ms`` applies whatever the kind."""

    kind: FaultKind = "none"
    delay_ms: int = 0
    status: int | None = None
    retry_after: int | None = None


NO_FAULT = FaultDecision()


class FaultInjector:
    """Thread-safe holder of the active fault config and its random source."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._remaining: int | None = None
        self._random = random.Random(seed)
        self._default_seed = seed

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def state(self) -> dict[str, Any]:
        """Config plus how many matching requests it still applies to (``None`` = unlimited)."""
        with self._lock:
            return {**self._config.to_dict(), "active": self._config.active, "remaining": self._remaining}

    def configure(self, **kw: Any) -> FaultConfig:
        """Replace the active config (fields not given take their defaults)."""
        config = FaultConfig.from_mapping(kw)
        with self._lock:
            self._config = config
            self._remaining = config.count
            if config.seed is not None:
                self._random = random.Random(config.seed)
        return config

    def clear(self) -> None:
        with self._lock:
            self._config = FaultConfig()
            self._remaining = None
            self._random = random.Random(self._default_seed)

    def decide(self, method: str, path: str) -> FaultDecision:
        with self._lock:
            config = self._config
            if not config.active or not config.applies_to(method, path):
                return NO_FAULT
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:  # this request is the last one the config applies to
                    self._config = FaultConfig()
                    self._remaining = None
            delay = config.latency_ms
            if config.latency_jitter_ms:
                delay += self._random.randint(0, config.latency_jitter_ms)
            draw = self._random.random()
        if draw < config.drop_rate:
            return FaultDecision("drop", delay)
        draw -= config.drop_rate
        if draw < config.throttle_rate:
            return FaultDecision("throttle", delay, status=429, retry_after=config.retry_after)
        draw -= config.throttle_rate
        if draw < config.error_rate:
            return FaultDecision("error", delay, status=config.error_status)
        return FaultDecision("latency", delay) if delay else NO_FAULT


def _int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultConfigError(f"{name} must be an integer; got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise FaultConfigError(f"{name} must be at least {minimum}{upper}; got {value}.")
    return value


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultConfigError(f"{name} must be a number between 0 and 1; got {value!r}.")
    if not 0.0 <= float(value) <= 1.0:
        raise FaultConfigError(f"{name} must be between 0 and 1; got {value}.")
    return float(value)


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise FaultConfigError(f"{name} must be a list of non-empty strings; got {value!r}.")
    return tuple(value)
