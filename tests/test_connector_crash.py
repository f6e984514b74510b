"""Crash safety: a bulk Create in Dataverse killed at random moments and restarted loses and
duplicates nothing (DESIGN.md "Rules that keep it safe": the chosen id is recorded first)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.store import SyncJob
from tests.conftest import ConnectorEnv

N = 500
KILLS = 10


@pytest.fixture(scope="module")
def env(own_connector: ConnectorEnv) -> ConnectorEnv:
    return own_connector


def _command(config: Path, numbers: list[str]) -> list[str]:
    return [sys.executable, "-m", "connector.cli", "--config", str(config), "create-in-dataverse", "CUSTOMER",
            *numbers, "--json"]


def _progress(env: Any, ours: set[str]) -> tuple[int, int]:
    """(jobs in the log, couplings of our records, pending or not), read from the state file."""
    state = env.state()
    try:
        with state.session() as session:
            jobs = len(list(session.scalars(select(SyncJob.id))))
    finally:
        state.close()
    return jobs, sum(1 for c in env.couplings("customers") if c.bc_id in ours)


def _latest_job_unfinished(env: Any) -> int:
    state = env.state()
    try:
        with state.session() as session:
            job = session.scalars(select(SyncJob).order_by(SyncJob.started_at.desc()).limit(1)).first()
    finally:
        state.close()
    return int(job is not None and job.finished_at is None)


def test_killed_and_restarted_create_in_dataverse_leaves_one_row_and_one_coupling_each(env: Any) -> None:
    bc = env.sandbox.bc_session()
    tag = uuid.uuid4().hex[:6]
    records = env.create_customers(bc, [f"Crash {tag} {i:03d}" for i in range(N)])
    numbers = [r["number"] for r in records]
    env.set_sync(page_size=5, dataverse_batch_size=5)  # many chunks: many moments to die in
    rng = random.Random(1201)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ours = {r["id"] for r in records}
    kills = interrupted_creates = killed_mid_run = 0
    started = time.monotonic()
    while kills < KILLS:
        jobs_before, coupled_before = _progress(env, ours)
        if coupled_before >= N:
            break
        process = subprocess.Popen(_command(env.config_path, numbers), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=environment)
        while process.poll() is None and _progress(env, ours) <= (jobs_before, coupled_before):
            time.sleep(0.05)  # wait until this run is writing: its job exists and couplings grow
        time.sleep(rng.uniform(0.0, 0.25))
        if process.poll() is not None:  # finished before we struck
            assert process.returncode == 0, process.stderr.read() if process.stderr else ""
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        killed_mid_run += _latest_job_unfinished(env)  # (a kill may land just after the job finished)
        interrupted_creates += sum(1 for c in env.couplings("customers") if c.bc_id in ours and c.pending)
        assert time.monotonic() - started < 400
    final = subprocess.run(_command(env.config_path, numbers), capture_output=True, text=True, env=environment,
                           timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills >= KILLS, f"the runs finished before {KILLS} kills; make the chunks smaller"
    assert interrupted_creates > 0  # some kills struck between recording an id and finishing its write

    assert env.account_names(f"Crash {tag}") == Counter({r["displayName"]: 1 for r in records})  # every customer exactly once

    couplings = [c for c in env.couplings("customers") if c.bc_id in ours]
    assert len(couplings) == N and len({c.dataverse_id for c in couplings}) == N
    assert not any(c.pending for c in couplings)
    state = env.state()
    try:
        with state.session() as session:
            jobs = list(session.scalars(select(SyncJob).where(SyncJob.mapping_name == "CUSTOMER")
                                        .order_by(SyncJob.started_at)))
    finally:
        state.close()
    # the job log shows the killed runs (never finished) and the one that completed the work
    assert sum(1 for j in jobs if j.finished_at is None) == killed_mid_run >= KILLS // 2
    assert jobs[-1].finished_at is not None and jobs[-1].failed == 0
    assert sum(j.inserted for j in jobs) >= N
