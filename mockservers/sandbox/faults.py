"""Fault injection: make a healthy mock misbehave on purpose, so clients' retry paths get exercised.

One active :class:`FaultConfig` per service. Each matching request gets one random draw that picks at
most one of drop / throttle / error (their rates are slices of one [0, 1) interval, so they must sum
to at most 1); latency is added on top of whatever was picked. ``count`` turns the config into
"the next N matching requests" and switches it off afterwards.

A service served by several forked worker processes keeps one injector for all of them:
:meth:`FaultInjector.share`, called before forking, moves its state into memory the workers share.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import random
import struct
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple, Protocol

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
    """Holder of a service's active fault config and its random stream: thread-safe in one process,
    and after :meth:`share` one injector for every process forked from here (a config set through any
    worker's control API, a ``count``, ``clear()`` and a seeded stream all span the workers).

    Seeds work as they always have: a config with a ``seed`` restarts the stream from it, one without
    continues the stream, ``clear()`` restarts it from the injector's own seed. Deciding and drawing
    is the same code either way; only where the state lives differs (``_LocalState`` or
    ``_SharedState``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._default_seed = seed
        self._state: _FaultState = _LocalState(seed)
        self._share_lock = threading.Lock()

    def share(self) -> None:
        """Move the state where processes forked from here on read and change the same injector.
        Call it in the parent before forking; calling it again does nothing."""
        with self._share_lock:
            if isinstance(self._state, _LocalState):
                self._state = _SharedState(*self._state.export())

    @property
    def config(self) -> FaultConfig:
        return self._state.read()[0]

    def state(self) -> dict[str, Any]:
        """Config plus how many matching requests it still applies to (``None`` = unlimited)."""
        config, remaining = self._state.read()
        return {**config.to_dict(), "active": config.active, "remaining": remaining}

    def configure(self, **kw: Any) -> FaultConfig:
        """Replace the active config (fields not given take their defaults)."""
        config = FaultConfig.from_mapping(kw)
        blob = _encode(config)  # refuses, before anything changes, a config that would not fit
        self._state.replace(config, blob, reseed=config.seed is not None, seed=config.seed)
        return config

    def clear(self) -> None:
        config = FaultConfig()
        self._state.replace(config, _encode(config), reseed=True, seed=self._default_seed)

    def decide(self, method: str, path: str) -> FaultDecision:
        armed = self._state.armed()  # the hot path: with nothing armed this is all a request costs
        if armed is None or not armed.config.applies_to(method, path):
            return NO_FAULT
        return self._state.draw(armed, method, path)


class _Armed(NamedTuple):
    """An active config, and whether a request it matches must be decided under the lock (to count
    it off, or to draw from a stream that others draw from too)."""

    config: FaultConfig
    exclusive: bool


def _decision(config: FaultConfig, rng: random.Random) -> FaultDecision:
    """One matching request's fault: the jitter first, then one draw across drop / throttle / error.
    The order of draws is part of what a seed reproduces, so it does not change."""
    delay = config.latency_ms
    if config.latency_jitter_ms:
        delay += rng.randint(0, config.latency_jitter_ms)
    draw = rng.random()
    if draw < config.drop_rate:
        return FaultDecision("drop", delay)
    draw -= config.drop_rate
    if draw < config.throttle_rate:
        return FaultDecision("throttle", delay, status=429, retry_after=config.retry_after)
    draw -= config.throttle_rate
    if draw < config.error_rate:
        return FaultDecision("error", delay, status=config.error_status)
    return FaultDecision("latency", delay) if delay else NO_FAULT


# The longest config the shared state holds, as compact JSON: thousands of path prefixes, far more
# than any test needs. Held to without share() as well, so a sandbox accepts the same configs
# whether it serves a service from one process or several.
MAX_CONFIG_BYTES = 16 * 1024


def _encode(config: FaultConfig) -> bytes:
    blob = json.dumps(config.to_dict(), separators=(",", ":"), sort_keys=True).encode()
    if len(blob) > MAX_CONFIG_BYTES:
        raise FaultConfigError(
            f"The fault config is {len(blob)} bytes as JSON; at most {MAX_CONFIG_BYTES} are kept. "
            "Use fewer or shorter 'paths' (they are prefixes, so one can cover many)."
        )
    return blob


class _FaultState(Protocol):
    """Where an injector keeps its config, remaining count and random stream."""

    def armed(self) -> _Armed | None:
        """The config if it is active, else None; runs on every request, so takes no lock."""

    def read(self) -> tuple[FaultConfig, int | None]:
        """A consistent (config, remaining)."""

    def replace(self, config: FaultConfig, blob: bytes, *, reseed: bool, seed: int | None) -> None:
        """Make ``config`` the active one, its remaining count its ``count``; with ``reseed`` the
        stream restarts from ``seed`` (None: from the OS, and no longer shared between processes)."""

    def draw(self, armed: _Armed, method: str, path: str) -> FaultDecision:
        """Decide a request ``armed`` matched: when exclusive, under the lock, against the config as
        it stands by then, counting it off (switching the config off after the last)."""


class _LocalState:
    """The state of an injector that serves one process: plain attributes behind a thread lock."""

    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._armed: _Armed | None = None  # replaced whole with _config, so reading it needs no lock
        self._remaining: int | None = None
        self._random = random.Random(seed)
        self._seeded = seed is not None

    def export(self) -> tuple[FaultConfig, int | None, random.Random, bool]:
        with self._lock:
            return self._config, self._remaining, self._random, self._seeded

    def armed(self) -> _Armed | None:
        return self._armed

    def read(self) -> tuple[FaultConfig, int | None]:
        with self._lock:
            return self._config, self._remaining

    def replace(self, config: FaultConfig, blob: bytes, *, reseed: bool, seed: int | None) -> None:
        with self._lock:
            self._set(config, config.count)
            if reseed:
                self._random, self._seeded = random.Random(seed), seed is not None

    def draw(self, armed: _Armed, method: str, path: str) -> FaultDecision:
        with self._lock:  # every draw: the threads share one stream
            current = self._armed
            if current is None or not current.config.applies_to(method, path):
                return NO_FAULT
            if self._remaining is not None:
                if self._remaining > 1:
                    self._remaining -= 1
                else:  # this request is the last one the config applies to
                    self._set(FaultConfig(), None)
            return _decision(current.config, self._random)

    def _set(self, config: FaultConfig, remaining: int | None) -> None:
        self._config, self._remaining = config, remaining
        self._armed = _Armed(config, True) if config.active else None


# One generation's config as a process caches it: (generation, config, armed or None).
_Cached = tuple[int, FaultConfig, _Armed | None]


class _SharedState:
    """The state in anonymous shared memory, which processes forked after its creation all map.

    Layout: generation; remaining count (-1 = unlimited); stream version; config length; whether the
    stream is shared; the shared stream (a Mersenne Twister state); the config as JSON.

    The generation changes with every config written (configure, clear, a count run out) and doubles
    as a sequence count: odd while a config is being written, so a reader without the lock copies the
    bytes, then checks that it stood still and even. Each process keeps the config it decoded with
    the generation it read it at, so a request reads one number when nothing changed.

    A seeded stream lives here and is advanced under ``lock``, so the k-th matching request overall
    draws what it would in one process, whichever process answers it. The version (bumped with every
    draw and restart) tells a process whether its own copy of the stream is still the current one,
    sparing the load when it made the last draw. Unseeded streams are each process's own.
    """

    _HEADER = struct.Struct("<QqQII")  # generation, remaining, version, config length, shared stream?
    _GENERATION = struct.Struct("<Q")  # at 0, and the fields written on their own after it:
    _REMAINING, _REMAINING_AT = struct.Struct("<q"), 8
    _VERSION, _VERSION_AT = struct.Struct("<Q"), 16
    _STREAM = struct.Struct("<625I")  # what Random.getstate() holds of the generator: 624 words and a position
    _STREAM_AT = _HEADER.size
    _CONFIG_AT = _STREAM_AT + _STREAM.size

    def __init__(self, config: FaultConfig, remaining: int | None, stream: random.Random, seeded: bool) -> None:
        self._memory = mmap.mmap(-1, self._CONFIG_AT + MAX_CONFIG_BYTES)  # MAP_SHARED: children see writes
        self.lock = multiprocessing.get_context("fork").Lock()
        self._cache: _Cached = (-1, config, None)
        self._stream, self._stream_version = stream, 0  # this process's copy, and the version it is at
        self._own_random, self._own_pid = (random.Random() if seeded else stream), os.getpid()
        self._write(config, _encode(config), remaining, shared_stream=seeded)
        if seeded:
            self._restart_stream(stream)

    def armed(self) -> _Armed | None:
        cache = self._cache
        if self._GENERATION.unpack_from(self._memory)[0] == cache[0]:
            return cache[2]
        return self._reload()[2]

    def read(self) -> tuple[FaultConfig, int | None]:
        with self.lock:
            remaining = self._HEADER.unpack_from(self._memory)[1]
            return self._current()[1], (None if remaining < 0 else remaining)

    def replace(self, config: FaultConfig, blob: bytes, *, reseed: bool, seed: int | None) -> None:
        with self.lock:  # a draw that sees the shared stream switched on waits here for the stream itself
            self._write(config, blob, config.count, shared_stream=(seed is not None) if reseed else None)
            if reseed and seed is not None:
                self._restart_stream(random.Random(seed))

    def draw(self, armed: _Armed, method: str, path: str) -> FaultDecision:
        if not armed.exclusive:  # no count and each process's own stream: nothing to agree on
            return _decision(armed.config, self._process_random())
        with self.lock:
            current = self._current()[2]
            if current is None or not current.config.applies_to(method, path):
                return NO_FAULT
            _generation, remaining, version, _length, shared_stream = self._HEADER.unpack_from(self._memory)
            if remaining == 1:  # this request is the last one the config applies to, in whichever process
                off = FaultConfig()
                self._write(off, _encode(off), None)
            elif remaining > 1:
                self._REMAINING.pack_into(self._memory, self._REMAINING_AT, remaining - 1)
            if not shared_stream:
                return _decision(current.config, self._process_random())
            stream = self._stream
            if version != self._stream_version:  # another process drew since: take up the stream where it stands
                stream.setstate((3, self._STREAM.unpack_from(self._memory, self._STREAM_AT), None))
            decision = _decision(current.config, stream)
            self._store_stream(stream, version + 1)
            return decision

    def _process_random(self) -> random.Random:
        """This process's own stream: a forked child must not replay its parent's (nor its siblings'),
        so the first unseeded draw in a new process reseeds from the OS."""
        pid = os.getpid()
        if pid != self._own_pid:
            self._own_random, self._own_pid = random.Random(), pid
        return self._own_random

    def _restart_stream(self, stream: random.Random) -> None:
        """Under ``lock``: the shared stream starts over as ``stream`` stands."""
        self._stream = stream
        self._store_stream(stream, self._HEADER.unpack_from(self._memory)[2] + 1)

    def _store_stream(self, stream: random.Random, version: int) -> None:
        """Under ``lock``."""
        self._STREAM.pack_into(self._memory, self._STREAM_AT, *stream.getstate()[1])
        self._VERSION.pack_into(self._memory, self._VERSION_AT, version)
        self._stream_version = version

    def _current(self) -> _Cached:
        """The config as it stands, with its generation; under ``lock``, so no writer is half way.
        Returns the entry it checked rather than ``_cache`` again, which a lock-free reader in another
        thread may meanwhile have set to an older generation."""
        generation, _remaining, _version, length, shared_stream = self._HEADER.unpack_from(self._memory)
        cache = self._cache
        if generation != cache[0]:
            cache = self._remember(generation, self._memory[self._CONFIG_AT:self._CONFIG_AT + length],
                                   bool(shared_stream))
        return cache

    def _reload(self) -> _Cached:
        """Read a config another process wrote, without the lock (retrying while a write is under way)."""
        memory = self._memory
        while True:
            generation, _remaining, _version, length, shared_stream = self._HEADER.unpack_from(memory)
            if not generation & 1:
                blob = memory[self._CONFIG_AT:self._CONFIG_AT + min(length, MAX_CONFIG_BYTES)]
                if self._GENERATION.unpack_from(memory)[0] == generation:
                    return self._remember(generation, blob, bool(shared_stream))
            time.sleep(0)  # a writer is between its two generation bumps: let it finish

    def _remember(self, generation: int, blob: bytes, shared_stream: bool) -> _Cached:
        config = FaultConfig.from_mapping(json.loads(blob))
        cache = (generation, config, self._armed(config, shared_stream))
        self._cache = cache  # tagged with its generation, so a stale one written late is just read again
        return cache

    @staticmethod
    def _armed(config: FaultConfig, shared_stream: bool) -> _Armed | None:
        return _Armed(config, config.count is not None or shared_stream) if config.active else None

    def _write(self, config: FaultConfig, blob: bytes, remaining: int | None,
               shared_stream: bool | None = None) -> None:
        """Under ``lock`` (or before any other process exists): a new config, and whether the stream
        is shared (None: as it was), as one change of generation."""
        memory = self._memory
        generation, _remaining, version, _length, was_shared = self._HEADER.unpack_from(memory)
        shared = bool(was_shared) if shared_stream is None else shared_stream
        self._GENERATION.pack_into(memory, 0, generation + 1)
        memory[self._CONFIG_AT:self._CONFIG_AT + len(blob)] = blob
        self._HEADER.pack_into(memory, 0, generation + 1, -1 if remaining is None else remaining, version,
                               len(blob), shared)
        self._GENERATION.pack_into(memory, 0, generation + 2)
        self._cache = (generation + 2, config, self._armed(config, shared))


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
