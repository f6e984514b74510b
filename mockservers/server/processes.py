"""A service served from a process of its own, forked from the sandbox once every app is built.

One Python process answers its requests on one core at a time (the GIL). Dataverse and BC share
nothing but the sandbox's clock (kept in shared memory, see :meth:`mockservers.clock.Clock.share`),
so serving one of them from a forked process lets a client that talks to both (the connector reads
one while it writes the other) use two cores. Everything that can fail at start (binding, opening
and seeding the databases) has happened before the fork, in the parent, which reports it as ever.

The child stops when the pipe from its parent closes: on a clean stop, and when the parent dies
(``kill -9``), so an orphan never holds a port. Ctrl+C reaches the whole process group; the child
ignores it and stops when its parent does. SIGTERM sent to the child alone stops it cleanly too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

# Called in the child: starts serving and returns what stops it.
Start = Callable[[], Callable[[], None]]


class _Stop(Exception):
    """SIGTERM in the child."""


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stop


@dataclass
class ServiceProcess:
    pid: int
    _hangup: int | None  # our end of the pipe: closing it tells the child to stop

    @classmethod
    def fork(cls, start: Start) -> ServiceProcess:
        """Fork a child that runs ``start`` and serves until told to stop; it never returns to the caller.

        Call it while this process runs no thread of its own: a forked child holds only the thread that
        forked, and a lock another thread held at that moment would never be released in it.
        """
        listen_end, hangup = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(hangup)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, _raise_stop)
                stop = start()
                with contextlib.suppress(_Stop):
                    while os.read(listen_end, 1):  # nothing is ever written: EOF is the parent stopping
                        pass
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                stop()
            except BaseException:  # noqa: BLE001 (the child reports any failure and exits; it never unwinds into the caller)
                if not isinstance(sys.exc_info()[1], _Stop):
                    traceback.print_exc()
                    code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(listen_end)
        return cls(pid, hangup)

    def hang_up(self) -> None:
        """Tell the child to stop (it finishes the requests it is answering)."""
        if self._hangup is not None:
            os.close(self._hangup)
            self._hangup = None

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the child and reap it; its exit status (killed after ``timeout`` seconds: -SIGKILL)."""
        self.hang_up()
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already
                return 0
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            time.sleep(0.02)
