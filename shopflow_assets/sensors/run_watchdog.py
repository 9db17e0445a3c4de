"""No day stuck behind a dead run: a run whose worker died with nobody to report it is marked failed.

Dagster's run monitoring (dagster.yaml `run_monitoring`) can only tell a dead run worker from a live
one through its run launcher (`check_run_worker_health`), and DefaultRunLauncher, the launcher here,
has no such check: for a STARTED run it only enforces `max_runtime_seconds`. When a run worker dies,
its code server notices within a second and marks the run failed; when the code server dies with it
(or is killed first), nobody does, and the run holds the warehouse pool slot for two hours while
every later day waits behind it.

This sensor is the missing check, and nothing more. Every tick it looks at the STARTED runs the
daemon launched (they went through the run queue: RUN_ENQUEUED), whose worker is a process of this
host: DefaultRunLauncher starts it from the daemon's code server, which is also where sensors run.
The worker's pid is that of the run's RUN_START event. If that process is gone (no such pid, a
zombie, or a pid reused by a process that started after the run), and the run is still STARTED when
read again (a worker writes the run's end before it exits), the sensor writes an engine event
("Run worker lost: ...", naming the step it was in) and marks the run failed
(DagsterInstance.report_run_failed). From there Dagster does the rest: the RUN_FAILURE brings the
BROKE alert (shopflow_alerts), and run monitoring frees the run's pool slot
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
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultRunLauncher,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from shopflow_assets.sensors.alerting import LOST_WORKER
from shopflow_assets.settings import get_settings

WATCHDOG_SENSOR = "shopflow_run_watchdog"
CLOCK_TOLERANCE = 2.0  # seconds: a process started this much after RUN_START is another process


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None if there is no live process `pid`
    (none at all, or a zombie: it has exited and waits for its parent to read its status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    boot = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
    )
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def lost_worker(instance: DagsterInstance, run_id: str) -> tuple[int, str] | None:
    """(pid, step) if run `run_id` was launched by the daemon and its worker process is gone."""
    kinds = {
        DagsterEventType.RUN_ENQUEUED,
        DagsterEventType.RUN_START,
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.STEP_SKIPPED,
    }
    enqueued, start, started, ended = False, None, [], set()
    for entry in instance.all_logs(run_id, of_type=kinds):
        kind = entry.dagster_event_type
        if kind == DagsterEventType.RUN_ENQUEUED:
            enqueued = True
        elif kind == DagsterEventType.RUN_START:
            start = entry
        elif kind == DagsterEventType.STEP_START:
            started.append(entry.step_key)
        else:
            ended.add(entry.step_key)
    if not enqueued or start is None or not start.dagster_event.pid:
        return None  # not the daemon's, or not started yet (run monitoring's start timeout)
    pid = start.dagster_event.pid
    began = process_start_time(pid)
    if began is not None and began <= start.timestamp + CLOCK_TOLERANCE:
        return None  # alive
    running = [step for step in started if step not in ended]
    return pid, running[-1] if running else "(before its first step)"


@sensor(
    name=WATCHDOG_SENSOR,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks failed a started run whose worker process is gone and whose end nobody "
    "reported (worker and code server killed), so that it frees the warehouse slot and alerts.",
)
def run_watchdog_sensor(context: SensorEvaluationContext):
    instance = context.instance
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return SkipReason("the run launcher checks its workers itself (run monitoring)")
    # A run seen without its worker is judged on the next tick: if its code server is alive, it
    # has reported the run's end by then (it looks every second), and we need not.
    suspects: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    lost, seen = [], {}
    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
        found = lost_worker(instance, run.run_id)
        if found is None:
            continue
        if run.run_id not in suspects:
            seen[run.run_id] = time.time()
            continue
        run = instance.get_run_by_id(run.run_id)  # a worker records the run's end before it exits
        if run is None or run.status != DagsterRunStatus.STARTED:
            continue
        pid, step = found
        message = (
            f"{LOST_WORKER}: the process that ran this run (pid {pid}) is gone and nobody reported how "
            f"the run ended (its code server was gone too). It was in step {step}. Marked failed by "
            f"{WATCHDOG_SENSOR} at {time.strftime('%H:%M:%S', time.gmtime())} UTC; its warehouse slot is "
            "freed within a minute. Re-run the day."
        )
        instance.report_engine_event(message, run)
        instance.report_run_failed(run, message)
        context.log.warning(f"Run {run.run_id}: {message}")
        lost.append(run.run_id)
    context.update_cursor(json.dumps(seen))
    if lost:
        return SkipReason(f"marked failed (worker lost): {', '.join(lost)}")
    if seen:
        return SkipReason(f"worker gone, checked again next tick: {', '.join(seen)}")
    return SkipReason("every started run has a live worker")
