"""Calls from a service's worker processes to objects that must exist once: the service-protection
windows of a user, BC's webhook outbox. The sandbox's own process keeps them and answers over a Unix
socket; each worker thread holds a connection of its own.

The socket has an abstract address (Linux; no file to clean up) and the connections are
authenticated with a key the workers inherit by fork, so no other local process can call in.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import threading
from collections.abc import Iterable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any


class RemoteError(RuntimeError):
    """An error the host raised that could not travel back as itself."""


class Host:
    """Objects (by name) whose listed methods workers may call. Create it before forking the workers,
    call :meth:`forget` in each worker and :meth:`start` in this process once they are forked."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[Any, frozenset[str]]] = {}
        self.authkey = secrets.token_bytes(32)
        self.address = f"\0bc-dataverse-sandbox-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener: Listener | None = Listener(self.address, family="AF_UNIX", backlog=256, authkey=self.authkey)
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()

    def serve(self, name: str, target: Any, methods: Iterable[str]) -> None:
        self._objects[name] = (target, frozenset(methods))

    def start(self) -> None:
        threading.Thread(target=self._accept, name="sandbox-host", daemon=True).start()

    def forget(self) -> None:
        """In a forked worker: close its copy of the listening socket."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def stop(self) -> None:
        self.forget()
        with self._lock:  # taken out of the set: from here on stop() is the one that closes them
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 (closed by stop(), or a caller that failed the handshake)
                continue
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._answer, args=(conn,), name="sandbox-host-caller", daemon=True).start()

    def _answer(self, conn: Connection) -> None:
        try:
            while True:
                name, method, args, kwargs, wait = conn.recv()
                try:
                    result: tuple[str, Any] = ("ok", self._call(name, method, args, kwargs))
                except Exception as error:  # noqa: BLE001 (raised again in the worker)
                    result = ("error", _portable(error))
                if wait:
                    conn.send(result)
        except (EOFError, OSError):
            pass
        finally:
            with self._lock:  # closed once, by whoever takes it out of the set (this thread or stop())
                ours = conn in self._connections
                self._connections.discard(conn)
            if ours:
                conn.close()

    def _call(self, name: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        target, methods = self._objects[name]
        if method not in methods:
            raise AttributeError(f"{name}.{method} cannot be called from a worker")
        return getattr(target, method)(*args, **kwargs)


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling as itself, else a RemoteError saying what it was."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 (any error that cannot be rebuilt)
        return RemoteError(f"{type(error).__name__}: {error}")
    return error


class Remote:
    """A worker's handle on one object a :class:`Host` serves."""

    def __init__(self, host: Host, name: str) -> None:
        self._address, self._authkey, self._name = host.address, host.authkey, name
        self._local = threading.local()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call and wait for the answer (an error the host raised is raised here)."""
        conn = self._connection()
        conn.send((self._name, method, args, kwargs, True))
        status, value = conn.recv()
        if status == "error":
            raise value
        return value

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call without waiting (the host answers nothing)."""
        self._connection().send((self._name, method, args, kwargs, False))

    def _connection(self) -> Connection:
        """This thread's connection, opened in this process (none crosses a fork)."""
        local = self._local
        conn: Connection | None = getattr(local, "conn", None)
        if conn is None or getattr(local, "pid", None) != os.getpid():
            conn = Client(self._address, family="AF_UNIX", authkey=self._authkey)
            local.conn, local.pid = conn, os.getpid()
        return conn
