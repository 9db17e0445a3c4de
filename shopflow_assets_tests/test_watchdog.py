"""The watchdog never kills a live run. Real processes: a run worker started
as Dagster's code server starts one (a multiprocessing "spawn" child) that writes its run's
RUN_START into a real Dagster instance (SQLite, shared by the processes), and the watchdog's own
code (`check_runs`, and the sensor itself) on that instance. The wall clock is moved by passing
`now`, and /proc's boot time by a /proc view whose `stat` says another btime: neither may make a
live worker look dead. Dead, zombie and reused pids still get their run marked failed."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    EventLogEntry,
    build_sensor_context,
    job,
    op,
)

from shopflow_assets.defs.operations.watchdog import check_runs, read_process

from .conftest import run_watchdog_sensor

HOUR = 3600.0


@op
def ingest():
    pass


@job
def daily():
    ingest()


def _worker(instance_ref, run_id: str, job_name: str, also: list[str]) -> None:
    """A run worker: writes its run's RUN_START and a STEP_START with its own pid, then runs until
    killed. `also`: runs whose RUN_START it writes later (as if their worker got its pid)."""
    with DagsterInstance.from_ref(instance_ref) as instance:
        for run in [run_id, *also]:
            instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, job_name, pid=os.getpid()), run)
            instance.report_dagster_event(
                DagsterEvent(DagsterEventType.STEP_START.value, job_name, pid=os.getpid(), step_key="ingest"), run
            )
    time.sleep(300)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster_home")) as instance:
        yield instance


class Workers:
    def __init__(self, instance: DagsterInstance):
        self.instance = instance
        self.context = multiprocessing.get_context("spawn")  # as Dagster's code server starts them
        self.started: list[multiprocessing.Process] = []

    def queued_run(self) -> str:
        """A run that went through the run queue, as the daemon's runs do. (Its RUN_ENQUEUED is
        stored as a record only: the QUEUED status wants the origin of a code server's job.)"""
        run = self.instance.create_run_for_job(daily)
        event = DagsterEvent(DagsterEventType.RUN_ENQUEUED.value, daily.name)
        self.instance.store_event(EventLogEntry(None, logging.INFO, "", run.run_id, time.time(), job_name=daily.name, dagster_event=event))
        return run.run_id

    def start(self, run_id: str, also: list[str] = ()) -> multiprocessing.Process:
        process = self.context.Process(target=_worker, args=(self.instance.get_ref(), run_id, daily.name, list(also)))
        process.start()
        self.started.append(process)
        deadline = time.monotonic() + 60
        while self.status(*also, run_id) != {DagsterRunStatus.STARTED}:
            assert process.is_alive() and time.monotonic() < deadline, "the worker did not start its run"
            time.sleep(0.1)
        return process

    def status(self, *run_ids: str) -> set:
        return {self.instance.get_run_by_id(r).status for r in run_ids}

    def close(self) -> None:
        for process in self.started:
            process.kill()
            process.join()


@pytest.fixture
def workers(home):
    pool = Workers(home)
    yield pool
    pool.close()


def proc_view(tmp_path: Path, pid: int, btime_shift: float) -> Path:
    """A /proc of this host whose boot time (/proc/stat btime) reads `btime_shift` seconds off, as
    after a wall-clock step: process `pid` is the real one."""
    view = tmp_path / f"proc{btime_shift:+.0f}"
    view.mkdir()
    (view / str(pid)).symlink_to(f"/proc/{pid}")
    lines = Path("/proc/stat").read_text().splitlines()
    shifted = [f"btime {int(l.split()[1]) + int(btime_shift)}" if l.startswith("btime ") else l for l in lines]
    (view / "stat").write_text("\n".join(shifted) + "\n")
    (view / "uptime").write_text(Path("/proc/uptime").read_text())
    return view


def lost_worker_events(instance: DagsterInstance, run_id: str) -> list[str]:
    return [
        e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT) if "Run worker lost" in (e.message or "")
    ]


def test_a_live_worker_stays_alive_when_the_wall_clock_or_the_boot_time_jumps(workers, home, tmp_path):
    run_id = workers.queued_run()
    worker = workers.start(run_id)

    cursor = None
    for shift in (0.0, HOUR, -HOUR, 24 * HOUR, -HOUR):
        tick = check_runs(home, cursor, now=lambda: time.time() + shift)
        assert tick.lost == [] and tick.suspects == [], shift
        cursor = tick.cursor
    for shift in (HOUR, -HOUR):
        view = proc_view(tmp_path, worker.pid, shift)
        tick = check_runs(home, cursor, now=lambda: time.time() + shift, proc=view)
        assert tick.lost == [] and tick.suspects == [], shift
        # and seen for the first time after the step (a restarted daemon): alive too
        first = check_runs(home, None, now=lambda: time.time() - shift, proc=view)
        assert first.lost == [] and first.suspects == [], shift
        cursor = tick.cursor
    assert workers.status(run_id) == {DagsterRunStatus.STARTED} and lost_worker_events(home, run_id) == []


def test_dead_zombie_and_reused_pids_get_their_run_marked_failed_on_the_second_tick(workers, home):
    killed, reused, restarted, alive = (workers.queued_run() for _ in range(4))
    dead_worker = workers.start(killed)
    workers.start(restarted)
    workers.start(alive)
    sleeper = subprocess.Popen(["sleep", "300"])  # a pid held by a process that is no run worker
    try:
        home.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value, daily.name, pid=sleeper.pid), reused)
        first = check_runs(home, None)
        assert first.suspects == [reused] and first.lost == []
        # the worker of `restarted` remembered with another start: its pid now holds another process
        state = json.loads(first.cursor)
        state["workers"][restarted][1] -= 1
        os.kill(dead_worker.pid, signal.SIGKILL)  # not reaped: a zombie
        time.sleep(0.5)

        second = check_runs(home, json.dumps(state))
        assert second.lost == [reused]  # a suspect on the first tick, still gone
        assert set(second.suspects) == {killed, restarted}  # gone since: judged on the next tick
        third = check_runs(home, second.cursor)
        assert set(third.lost) == {killed, restarted}
        dead_worker.join()  # reaped: the pid is free
        assert check_runs(home, third.cursor).lost == []
    finally:
        sleeper.kill()
        sleeper.wait()

    assert workers.status(killed, reused, restarted) == {DagsterRunStatus.FAILURE}
    assert workers.status(alive) == {DagsterRunStatus.STARTED}
    (event,) = lost_worker_events(home, killed)
    assert f"(pid {dead_worker.pid}) is gone" in event and "It was in step ingest." in event


def test_two_runs_naming_one_live_worker_never_fail_the_live_one(workers, home):
    """A worker died and its pid went to a later run's worker before the watchdog first saw either
    (the daemon was down): the process cannot say whose it is without a clock, so both wait; when
    it exits, its own run has recorded its end, and only the other run is marked failed."""
    dead_run, live_run = workers.queued_run(), workers.queued_run()
    worker = workers.start(dead_run, also=[live_run])
    tick = check_runs(home, None)
    assert tick.lost == [] and tick.suspects == []
    tick = check_runs(home, tick.cursor, now=lambda: time.time() - HOUR)
    assert tick.lost == [] and tick.suspects == []

    home.report_dagster_event(DagsterEvent(DagsterEventType.RUN_SUCCESS.value, daily.name, pid=worker.pid), live_run)
    worker.kill()
    worker.join()
    tick = check_runs(home, tick.cursor)
    assert tick.suspects == [dead_run]
    assert check_runs(home, tick.cursor).lost == [dead_run]
    assert workers.status(dead_run) == {DagsterRunStatus.FAILURE}
    assert workers.status(live_run) == {DagsterRunStatus.SUCCESS}


def test_the_sensor_runs_the_check_on_the_instance(workers, home):
    run_id = workers.queued_run()
    worker = workers.start(run_id)
    context = build_sensor_context(instance=home)
    assert "every started run has a live worker" in str(run_watchdog_sensor(context))
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    assert read_process(worker.pid) is None
    context = build_sensor_context(instance=home, cursor=context.cursor)
    assert "checked again next tick" in str(run_watchdog_sensor(context))
    context = build_sensor_context(instance=home, cursor=context.cursor)
    assert "marked failed (worker lost)" in str(run_watchdog_sensor(context))
    assert workers.status(run_id) == {DagsterRunStatus.FAILURE}
