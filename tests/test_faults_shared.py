"""``FaultInjector.share``: one fault injector for a service served by several forked workers.

Every test forks real processes. A worker runs commands the test sends over a pipe, so the test
decides which process answers which request and in what order.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import pytest

from mockservers.sandbox.faults import MAX_CONFIG_BYTES, FaultConfigError, FaultInjector

FORK = multiprocessing.get_context("fork")
DROP, THROTTLE, ERROR, JITTER = 0.1, 0.2, 0.3, 40
RATES = {"drop_rate": DROP, "throttle_rate": THROTTLE, "error_rate": ERROR, "latency_jitter_ms": JITTER}


def hammer(injector: FaultInjector, threads: int, per_thread: int, start: Any) -> Counter[str]:
    """Decide ``threads * per_thread`` requests from several threads at once: each thread says it is
    ready, then waits for the go, so that all threads of all processes decide together."""
    ready, go = start
    kinds: Counter[str] = Counter()
    lock = threading.Lock()

    def run() -> None:
        ready.release()
        go.wait(10)
        mine = Counter(injector.decide("GET", "/api/items").kind for _ in range(per_thread))
        with lock:
            kinds.update(mine)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert not worker.is_alive(), "a thread is still deciding after a minute"
    return kinds


def serve(injector: FaultInjector, conn: Connection, start: Any) -> None:
    """A worker process: run the commands that arrive until told to stop."""
    while True:
        command, args = conn.recv()
        if command == "stop":
            return
        try:
            if command == "decide":
                answer: Any = [(d.kind, d.delay_ms) for d in (injector.decide("GET", "/api/items")
                                                              for _ in range(args))]
            elif command == "hammer":
                threads, per_thread = args
                answer = hammer(injector, threads, per_thread, start)
            elif command == "configure":
                answer = injector.configure(**args).to_dict()
            elif command == "clear":
                injector.clear()
                answer = None
            else:
                answer = injector.state()
        except Exception as error:  # handed back, so the test sees what went wrong in the worker
            answer = ("raised", type(error).__name__, str(error))
        conn.send(answer)


class Worker:
    def __init__(self, injector: FaultInjector, start: Any) -> None:
        self._conn, theirs = FORK.Pipe()
        self.process = FORK.Process(target=serve, args=(injector, theirs, start), daemon=True)
        self.process.start()
        theirs.close()

    def send(self, command: str, args: Any = None) -> None:
        self._conn.send((command, args))

    def receive(self) -> Any:
        assert self._conn.poll(30), "the worker did not answer"
        return self._conn.recv()

    def __call__(self, command: str, args: Any = None) -> Any:
        self.send(command, args)
        return self.receive()

    def kinds(self, n: int = 1) -> list[str]:
        return [kind for kind, _delay in self("decide", n)]

    def stop(self) -> None:
        self.send("stop")
        self.process.join(10)
        if self.process.is_alive():  # stuck: end it, so the test fails instead of hanging
            self.process.kill()
            self.process.join()
        assert self.process.exitcode == 0


@contextmanager
def workers(injector: FaultInjector, n: int, start: Any = None) -> Iterator[list[Worker]]:
    """``n`` processes forked from this one (after whatever the test set up), stopped afterwards."""
    started = [Worker(injector, start) for _ in range(n)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def shared() -> FaultInjector:
    injector = FaultInjector()
    injector.share()
    return injector


def test_a_config_set_in_any_process_applies_in_every_process_from_the_next_request() -> None:
    injector = FaultInjector()
    injector.configure(error_rate=1.0, count=5)
    injector.share()  # the state it had stays
    with workers(injector, 2) as (first, second):
        assert first("state")["remaining"] == 5
        assert first.kinds(2) == ["error", "error"]
        assert injector.state()["remaining"] == 3
        # set in the parent after the workers were forked (and had read the older config)
        injector.configure(latency_ms=3)
        assert first("decide", 1) == [("latency", 3)]
        assert second("decide", 1) == [("latency", 3)]
        # set in one worker: the parent and the other worker apply it on their next request
        assert first("configure", {"throttle_rate": 1.0, "retry_after": 9}) == injector.config.to_dict()
        decision = injector.decide("GET", "/api/items")
        assert (decision.kind, decision.retry_after) == ("throttle", 9)
        assert second.kinds() == ["throttle"]
        assert first("state") == second("state") == injector.state()


@pytest.mark.parametrize("children", [1, 2])
def test_a_count_covers_exactly_n_requests_across_all_processes(children: int) -> None:
    injector = shared()
    ready, go = FORK.Semaphore(0), FORK.Event()
    with workers(injector, children, (ready, go)) as started:
        injector.configure(error_rate=1.0, count=10_000)
        for worker in started:
            worker.send("hammer", (4, 5000))
        totals: Counter[str] = Counter()
        mine = threading.Thread(target=lambda: totals.update(hammer(injector, 4, 5000, (ready, go))), daemon=True)
        mine.start()
        for _ in range(4 * (children + 1)):
            assert ready.acquire(timeout=10)
        go.set()  # every thread of every process starts deciding at once
        mine.join(90)
        assert not mine.is_alive(), "this process's threads are still deciding"
        per_process = [totals] + [worker.receive() for worker in started]
        assert sum(counts["error"] for counts in per_process) == 10_000
        assert sum(sum(counts.values()) for counts in per_process) == 20_000 * (children + 1)
        # it is spent for everyone: no fault, and nothing left, whichever process answers
        for state in [injector.state()] + [worker("state") for worker in started]:
            assert (state["active"], state["remaining"], state["error_rate"]) == (False, None, 0.0)
        assert all(worker.kinds(20) == ["none"] * 20 for worker in started)
        assert injector.decide("GET", "/api/items").kind == "none"


def test_clear_in_one_process_clears_for_all() -> None:
    injector = shared()
    with workers(injector, 2) as (first, second):
        injector.configure(drop_rate=1.0)
        assert first.kinds() == second.kinds() == ["drop"]
        second("clear")
        assert injector.decide("GET", "/api/items").kind == "none"
        assert first.kinds() == ["none"]
        assert first("state")["active"] is False and injector.state()["active"] is False


SEEDED = {**RATES, "seed": 4242}
UNSEEDED = {"error_rate": 0.5, "latency_jitter_ms": 9}  # no seed of its own: the stream goes on


def from_the_seed(seed: int, n: int) -> list[tuple[str, int]]:
    """What a seed has always given in one process: one ``random.Random(seed)`` stream, each request
    drawing its jitter, then one number across drop / throttle / error."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        delay, draw = rng.randint(0, JITTER), rng.random()
        kind = "latency" if delay else "none"
        for name, rate in (("drop", DROP), ("throttle", THROTTLE), ("error", ERROR)):
            if draw < rate:
                kind = name
                break
            draw -= rate
        out.append((kind, delay))
    return out


def decisions(injector: FaultInjector, n: int) -> list[tuple[str, int]]:
    return [(d.kind, d.delay_ms) for d in (injector.decide("GET", "/api/items") for _ in range(n))]


def test_a_seeded_stream_decides_the_kth_request_the_same_whichever_process_answers() -> None:
    def alone(injector: FaultInjector) -> list[tuple[str, int]]:
        injector.configure(**SEEDED)
        first = decisions(injector, 40)
        injector.configure(**UNSEEDED)
        return first + decisions(injector, 30)

    in_process = alone(FaultInjector())
    assert in_process[:40] == from_the_seed(4242, 40)
    assert len({kind for kind, _delay in in_process[:40]}) == 4  # drop, throttle, error and latency all drawn
    assert alone(shared()) == in_process

    injector = shared()
    with workers(injector, 2) as pair:
        pair[0]("configure", SEEDED)
        alternating = [pair[k % 2]("decide", 1)[0] for k in range(40)]
        pair[1]("configure", UNSEEDED)
        answer = [lambda: decisions(injector, 1)[0], lambda: pair[0]("decide", 1)[0],
                  lambda: pair[1]("decide", 1)[0]]
        alternating += [answer[k % 3]() for k in range(30)]  # the parent takes its turn too
    assert alternating == in_process


def test_the_injectors_own_seed_is_one_stream_for_all_processes() -> None:
    alone = FaultInjector(seed=99)
    alone.configure(**UNSEEDED)
    injector = FaultInjector(seed=99)
    injector.share()
    with workers(injector, 2) as pair:
        pair[1]("configure", UNSEEDED)
        alternating = [pair[k % 2]("decide", 1)[0] for k in range(30)]
        pair[0]("clear")  # back to the injector's seed
        pair[0]("configure", UNSEEDED)
        again = [pair[k % 2]("decide", 1)[0] for k in range(30)]
    assert alternating == again == decisions(alone, 30)


def test_unseeded_configs_draw_differently_in_each_process() -> None:
    injector = shared()
    injector.configure(error_rate=0.5, latency_jitter_ms=1_000_000)
    decisions(injector, 3)  # the parent's own stream is in use before the fork
    with workers(injector, 2) as (first, second):
        streams = [first("decide", 40), second("decide", 40), decisions(injector, 40)]
    assert streams[0] != streams[1] and streams[0] != streams[2] and streams[1] != streams[2]


@pytest.mark.parametrize("share", [False, True])
def test_a_config_too_large_to_share_is_refused_and_the_previous_one_stays(share: bool) -> None:
    injector = FaultInjector()
    if share:
        injector.share()
    injector.configure(error_rate=1.0, count=5)
    too_many = [f"/api/items/{i:06d}/" for i in range(MAX_CONFIG_BYTES // 10)]
    with pytest.raises(FaultConfigError, match=r"bytes as JSON; at most 16384"):
        injector.configure(error_rate=1.0, paths=too_many)
    assert injector.configure(error_rate=1.0, count=5, paths=too_many[:300]).paths is not None  # fits
    injector.configure(error_rate=1.0, count=5)
    with workers(injector, 1) as (worker,):
        refused = worker("configure", {"drop_rate": 1.0, "paths": too_many})
        assert refused[:2] == ("raised", "FaultConfigError")
        assert worker.kinds() == ["error"]
        assert injector.decide("GET", "/api/items").kind == "error"
        assert worker("state")["remaining"] == (3 if share else 4)
    assert injector.state()["remaining"] == (3 if share else 4)
