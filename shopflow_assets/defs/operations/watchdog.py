"""No day stuck behind a dead run: a run whose worker died with nobody to report it is marked failed.

Dagster's run monitoring (dagster.yaml `run_monitoring`) can only tell a dead run worker from a live
one through its run launcher (`check_run_worker_health`), and DefaultRunLauncher, the launcher here,
has no such check: for a STARTED run it only enforces `max_runtime_seconds`. When a run worker dies,
its code server notices within a second and marks the run failed; when the code server dies with it
(or is killed first), nobody does, and the run holds the warehouse pool slot for two hours while
every later day waits behind it.

This sensor is the missing check, and nothing more. Every tick it looks at the STARTED runs the
daemon launched (they went through the run queue: RUN_ENQUEUED), whose worker is a process of this
host: DefaultRunLauncher has the daemon's code server (where sensors run too) start it as a
multiprocessing "spawn" child (`python -c "from multiprocessing.spawn import spawn_main; ..."
--multiprocessing-fork`, dagster/_grpc/server.py), whose arguments do not name the run; a
`dagster api execute_run` worker (other launch paths) names it. The worker's pid is that of the
run's RUN_START event.

A process is known by its pid and its start in clock ticks after boot (field 22 of
/proc/<pid>/stat), which no wall-clock step (NTP, a resumed VM) moves: no decision compares the
wall clock with anything. The first time the sensor sees a run, the process at its pid must be a
run worker (by its command line, above), and its identity goes into the sensor's cursor; from then
on the run's worker is alive exactly while a live process has that pid and that start. So a worker
is gone when its pid is free, a zombie, or held by another process: one that is no run worker, or
one started since (the pid reused). One case waits: a worker that died, and whose pid another run's
worker took, before the sensor first saw its run (the daemon down all that time) looks alive until
that other worker exits; both runs then name one process, and nothing but the wall clock could say
whose it is. It is never the live run that is failed: when the process exits, the run whose worker
it was has recorded its end, and the other is failed then (run monitoring's max_runtime_seconds
still bounds the wait).

A gone worker whose run is still STARTED on the next tick (a worker writes the run's end before it
exits) gets an engine event ("Run worker lost: ...", naming the step it was in) and its run is
marked failed (DagsterInstance.report_run_failed). From there Dagster does the rest: the
RUN_FAILURE brings the BROKE alert (shopflow_alerts), and run monitoring frees the run's pool slot
`free_slots_after_run_end_seconds` later (dagster.yaml), so the next day's run starts.

Not covered: runs of `dagster asset materialize` (run by the CLI's own process, maybe on another
machine: no pid to trust here); they keep run monitoring's `max_runtime_seconds`. Other launchers
(Docker, Kubernetes, ...) have their own health checks in run monitoring: the sensor does nothing
unless the instance's launcher is DefaultRunLauncher.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    DefaultSensorStatus,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)


WATCHDOG_SENSOR = "shopflow_run_watchdog"
LOST_WORKER = "Run worker lost"  # how the engine event that marks a run failed begins
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    start_ticks: int | None  # clock ticks after boot (None: no /proc, existence only)
    argv: tuple[str, ...] | None  # its command line (None: unknown)


def read_process(pid: int, proc: Path = PROC) -> Process | None:
    """The live process `pid`, or None if there is none (no such pid, or a zombie: it has exited
    and waits for its parent to read its status)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        argv = (proc / str(pid) / "cmdline").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return Process(pid, None, None)
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", whatever comm holds
    if fields[0] in ("Z", "X"):
        return None
    return Process(pid, int(fields[19]), tuple(a.decode(errors="replace") for a in argv.split(b"\0") if a))


def is_run_worker(process: Process, run_id: str) -> bool:
    """Can `process` be the worker of run `run_id`? (See the module's doc.)"""
    if process.argv is None:
        return True  # cannot tell: existence only
    if "--multiprocessing-fork" in process.argv or any("spawn_main" in a for a in process.argv):
        return True  # a code server's run worker (its arguments do not name the run)
    return "execute_run" in process.argv and any(run_id in a for a in process.argv)


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    pid: int
    step: str  # the step it is in


def started_run(instance: DagsterInstance, run_id: str) -> StartedRun | None:
    """Run `run_id`'s worker pid and step, if the daemon launched it and it has started."""
    kinds = {
        DagsterEventType.RUN_ENQUEUED,
        DagsterEventType.RUN_START,
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.STEP_SKIPPED,
    }
    enqueued, start, started, ended = False, None, [], set()
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        entry = record.event_log_entry
        kind = entry.dagster_event_type
        if kind == DagsterEventType.RUN_ENQUEUED:
            enqueued = True
        elif kind == DagsterEventType.RUN_START:
            start = record
        elif kind == DagsterEventType.STEP_START:
            started.append(entry.step_key)
        else:
            ended.add(entry.step_key)
    if not enqueued or start is None or not start.event_log_entry.dagster_event.pid:
        return None  # not the daemon's, or not started yet (run monitoring's start timeout)
    running = [step for step in started if step not in ended]
    pid = start.event_log_entry.dagster_event.pid
    return StartedRun(run_id, pid, running[-1] if running else "(before its first step)")


def gone_workers(
    runs: list[StartedRun], known: dict[str, list], proc: Path = PROC
) -> tuple[set[str], dict[str, list]]:
    """The runs among `runs` whose worker is gone, and the worker identities to remember
    ({run id: [pid, start ticks]}); `known`: the ones remembered on the last tick."""
    gone, identities = set(), {}
    for run in runs:
        process = read_process(run.pid, proc)
        seen = known.get(run.run_id)
        if seen and seen[0] == run.pid:
            identities[run.run_id] = seen  # kept while the run is started: a later process is not it
            if process is None or (
                process.start_ticks is not None and seen[1] is not None and process.start_ticks != seen[1]
            ):
                gone.add(run.run_id)  # gone, or the pid now belongs to a process started since
        elif process is None:
            gone.add(run.run_id)
        elif is_run_worker(process, run.run_id):
            identities[run.run_id] = [run.pid, process.start_ticks]
        else:
            gone.add(run.run_id)
    return gone, identities


@dataclass(frozen=True)
class WatchdogTick:
    lost: list[str]  # runs marked failed
    suspects: list[str]  # runs seen without a worker for the first time: judged next tick
    cursor: str


def check_runs(instance: DagsterInstance, cursor: str | None, *, now=time.time, proc: Path = PROC, log=None) -> WatchdogTick:
    """One tick of the watchdog (see the module's doc). `now` only dates the message and the
    suspicions: no decision reads a clock."""
    data = json.loads(cursor) if cursor else {}
    if data and "workers" not in data:  # a cursor of the version without identities: suspects only
        data = {"suspects": data}
    suspects: dict[str, float] = data.get("suspects", {})
    runs = [
        found
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        if (found := started_run(instance, run.run_id)) is not None
    ]
    gone, identities = gone_workers(runs, data.get("workers", {}), proc)
    # A run seen without its worker is judged on the next tick: if its code server is alive, it
    # has reported the run's end by then (it looks every second), and we need not.
    lost, seen = [], {}
    for found in runs:
        if found.run_id not in gone:
            continue
        if found.run_id not in suspects:
            seen[found.run_id] = now()
            continue
        run = instance.get_run_by_id(found.run_id)  # a worker records the run's end before it exits
        if run is None or run.status != DagsterRunStatus.STARTED:
            continue
        message = (
            f"{LOST_WORKER}: the process that ran this run (pid {found.pid}) is gone and nobody reported how "
            f"the run ended (its code server was gone too). It was in step {found.step}. Marked failed by "
            f"{WATCHDOG_SENSOR} at {time.strftime('%H:%M:%S', time.gmtime(now()))} UTC; its warehouse slot is "
            "freed within a minute. Re-run the day."
        )
        instance.report_engine_event(message, run)
        instance.report_run_failed(run, message)
        if log is not None:
            log.warning(f"Run {run.run_id}: {message}")
        lost.append(run.run_id)
    new_cursor = json.dumps({"workers": identities, "suspects": seen}, separators=(",", ":"))
    return WatchdogTick(lost, list(seen), new_cursor)


def build_watchdog_sensor(*, interval_seconds: int) -> SensorDefinition:
    @sensor(
        name=WATCHDOG_SENSOR,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks failed a started run whose worker process is gone and whose end nobody "
        "reported (worker and code server killed), so that it frees the warehouse slot and alerts.",
    )
    def run_watchdog_sensor(context: SensorEvaluationContext):
        return watchdog_tick(context)

    return run_watchdog_sensor


def watchdog_tick(context: SensorEvaluationContext) -> SkipReason:
    instance = context.instance
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return SkipReason("the run launcher checks its workers itself (run monitoring)")
    tick = check_runs(instance, context.cursor, log=context.log)
    context.update_cursor(tick.cursor)
    if tick.lost:
        return SkipReason(f"marked failed (worker lost): {', '.join(tick.lost)}")
    if tick.suspects:
        return SkipReason(f"worker gone, checked again next tick: {', '.join(tick.suspects)}")
    return SkipReason("every started run has a live worker")
