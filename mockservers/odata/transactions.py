"""Request-scoped transactions: one per HTTP request, or one shared by a batch/changeset.

Work that must only happen once data is committed (webhook notifications) registers with
``after_commit``; it runs when the outermost transaction commits and is dropped on rollback.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from .storage import Store


class Transactions:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._shared: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
            f"shared_conn_{id(self)}", default=None
        )
        self._pending: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
            f"after_commit_{id(self)}", default=None
        )

    @contextmanager
    def connection(self, write: bool) -> Iterator[Connection]:
        """The batch's shared connection if one is open, else a new transaction of the right kind."""
        shared = self._shared.get()
        if shared is not None:
            yield shared
            return
        if not write:
            with self.store.read() as conn:
                yield conn
            return
        with self.shared() as conn:
            yield conn

    @contextmanager
    def shared(self) -> Iterator[Connection]:
        """One write transaction that nested ``connection()`` calls join (a changeset / atomic batch)."""
        outer = self._shared.get()
        if outer is not None:
            yield outer
            return
        callbacks: list[Callable[[], None]] = []
        pending_token = self._pending.set(callbacks)
        try:
            with self.store.write() as conn:
                token = self._shared.set(conn)
                try:
                    yield conn
                finally:
                    self._shared.reset(token)
        finally:
            self._pending.reset(pending_token)
        for callback in callbacks:  # only reached when the transaction committed
            callback()

    @contextmanager
    def apart(self) -> Iterator[Callable[[], None]]:
        """Inside ``shared``: work whose writes and after-commit work can be undone on their own (a batch
        operation that fails alone). Yields the function that undoes them when the block ends."""
        conn, pending = self._shared.get(), self._pending.get()
        assert conn is not None and pending is not None, "apart() runs inside shared()"
        mark = len(pending)
        undone: list[bool] = []
        try:
            with self.store.savepoint(conn):
                yield lambda: undone.append(True)
                if undone:
                    raise _Undone()
        except BaseException as error:
            del pending[mark:]  # the after-commit work of what was rolled back
            if not isinstance(error, _Undone):
                raise

    @contextmanager
    def unit(self) -> Iterator[None]:
        """Writes that commit or roll back as a whole (a changeset): a transaction of their own, or a
        savepoint when a shared transaction is open."""
        if self._shared.get() is None:
            with self.shared():
                yield
        else:
            with self.apart():
                yield

    def after_commit(self, callback: Callable[[], None]) -> None:
        pending = self._pending.get()
        if pending is None:
            callback()
        else:
            pending.append(callback)


class _Undone(Exception):
    """Rolls an ``apart`` block back."""
