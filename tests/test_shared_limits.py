"""One set of service-protection windows for the worker processes of a service: the windows live in
the sandbox's process (``HostedLimits`` on a ``mockservers.rpc.Host``), each worker asks through a
``RemoteProtection``. Real forked processes, the real Unix socket."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mockservers.rpc import Host
from mockservers.sandbox.limits import (
    BC_LIMITS,
    BC_MESSAGES,
    CONCURRENCY,
    REQUESTS,
    LimitConfigError,
    LimitsHeldOff,
    Rejection,
    ServiceProtection,
    Ticket,
)
from mockservers.sandbox.shared_limits import HostedLimits, RemoteProtection

USER = "5e000000-0000-4000-8000-000000000002"


@dataclass
class Hosted:
    host: Host
    limits: HostedLimits

    def remote(self) -> RemoteProtection:
        return RemoteProtection(self.host, "limits-bc", self.limits)


@pytest.fixture
def hosted() -> Iterator[Hosted]:
    host = Host()
    limits = HostedLimits(ServiceProtection(BC_LIMITS.with_changes({"max_concurrent": 1, "max_queued": 0}),
                                            messages=BC_MESSAGES))
    limits.serve_on(host, "limits-bc")
    host.start()
    yield Hosted(host, limits)
    host.stop()


class Holder:
    """A forked worker that takes a slot, says so, and gives it back when told (after ``delay``)."""

    def __init__(self, hosted: Hosted, delay: float = 0.0) -> None:
        taken, self._taken = os.pipe()
        self._go, go = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                ticket = hosted.remote().admit(USER)
                if isinstance(ticket, Ticket):
                    os.write(self._taken, b"x")
                    os.read(self._go, 1)
                    time.sleep(delay)
                    ticket.release()
                    code = 0
            finally:
                os._exit(code)
        assert os.read(taken, 1) == b"x", "the worker took the slot"
        self._give = go

    def give_back(self) -> None:
        os.write(self._give, b"x")

    def join(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def test_a_slot_taken_in_one_process_is_taken_for_the_others(hosted: Hosted) -> None:
    holder = Holder(hosted)
    refused = hosted.remote().admit(USER)
    assert isinstance(refused, Rejection) and refused.measure == CONCURRENCY
    assert "Maximum (1)" in refused.message
    holder.give_back()
    assert holder.join() == 0
    admitted = hosted.remote().admit(USER)
    assert isinstance(admitted, Ticket)
    admitted.release()
    assert hosted.remote().counters() == {CONCURRENCY: 1}


def test_a_queued_request_waits_for_a_slot_another_process_frees(hosted: Hosted) -> None:
    """BC's queue, in the host: with the one slot taken in a worker, a request of another waits and is
    admitted when the worker's request ends; one more, with slot and queue taken, is refused at once."""
    hosted.remote().configure(max_queued=1, queue_timeout_seconds=10)
    holder = Holder(hosted, delay=0.3)
    outcome: dict[str, object] = {}

    def queue() -> None:
        started = time.monotonic()
        outcome["admission"] = hosted.remote().admit(USER)
        outcome["waited"] = time.monotonic() - started

    waiting = threading.Thread(target=queue)
    waiting.start()
    deadline = time.monotonic() + 5
    while hosted.remote().usage()[USER]["queued"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    full = hosted.remote().admit(USER)
    assert isinstance(full, Rejection) and full.measure == CONCURRENCY
    holder.give_back()
    waiting.join(10)
    assert holder.join() == 0
    admission = outcome["admission"]
    assert isinstance(admission, Ticket)
    assert float(outcome["waited"]) >= 0.25  # type: ignore[arg-type]
    admission.release()
    # A release is sent without waiting for an answer, and the host applies it on the thread that reads
    # that connection: a question asked on another connection may be answered first.
    deadline = time.monotonic() + 5
    while hosted.remote().usage()[USER]["in_flight"] != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hosted.remote().usage()[USER]["in_flight"] == 0


def test_a_change_of_limits_reaches_every_process(hosted: Hosted) -> None:
    """Configured through one worker, read by another on its next request; while they are off, a
    worker counts nothing and asks the host nothing."""
    remote = hosted.remote()
    assert remote.config.max_concurrent == 1
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            hosted.remote().configure(max_requests=2)
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert remote.config.max_requests == 2
    answers = []
    for _ in range(3):
        answers.append(remote.admit(USER))
        if isinstance(answers[-1], Ticket):
            answers[-1].release()
    assert [isinstance(a, Ticket) for a in answers] == [True, True, False]
    assert isinstance(answers[2], Rejection) and answers[2].measure == REQUESTS

    remote.configure(enabled=False)
    remote.reset()
    for _ in range(5):
        ticket = remote.admit(USER)
        assert isinstance(ticket, Ticket)
        ticket.release()
    assert hosted.limits.protection.usage() == {}, "nothing counted while off"


def test_refusals_travel_back_as_themselves(hosted: Hosted) -> None:
    remote = hosted.remote()
    with pytest.raises(LimitConfigError, match="max_requests"):
        remote.configure(max_requests=-1)
    hosted.limits.protection.hold_off("started without service protection (--no-limits)")
    with pytest.raises(LimitsHeldOff, match="--no-limits"):
        remote.configure(enabled=True)
    assert remote.config.enabled is False
