"""Faults: a run killed half-way through an ingest, Postgres restarted under a running
daemon, two runs of the same day at once. Real processes all the way: the `dagster` CLI and its step
subprocess, `dagster-daemon`, a throwaway Postgres cluster, DuckDB files on disk."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, materialize
from dagster_dbt import DbtCliResource

from benchmarks._data import write_day  # a big day written by DuckDB in about a second
from shopflow_assets.defs.models.project import dbt_executable
from shopflow_assets.defs.models.project import shopflow_dbt_project
from shopflow_assets.engines import DuckDBWarehouse
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import (
    ALL_ASSETS,
    BIN,
    REPO_ROOT,
    command_env,
    csv_text,
    day_of,
    line,
    query,
    snapshot,
)
from .postgres_cluster import start_cluster
from .test_daemon_e2e import SENSOR_INTERVAL, broke, daemon, materializations, wait_for  # noqa: F401 (daemon: a fixture)

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

D = "2024-03-01"
OTHER = "2024-02-29"
B_LINES = 1_500_000  # version B of D: big enough that its ingest takes several seconds


# ---------------------------------------------------------------------------------------------
# helpers


def start_materialize(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`dagster asset materialize` in its own session (so that its whole process group, the CLI
    and its step subprocesses, can be killed at once), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"`dagster asset materialize` still running after {timeout} s:\n{log.read_text()[-4000:]}")
    return log.read_text()


def live_members(pgid: int) -> list[int]:
    """Processes of the process group that still run or still hold their files. A zombie leader
    whose other threads (DuckDB's) are still exiting counts: its open files, and so DuckDB's lock
    on the warehouse, go only when the last thread is gone."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            threads = len(list((entry / "task").iterdir()))
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and (fields[0] != "Z" or threads > 1):
            members.append(int(entry.name))
    return members


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the CLI and every process it started, and wait until none of them is left."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while live_members(process.pid):
        assert time.monotonic() < deadline, f"processes survived SIGKILL: {live_members(process.pid)}"
        time.sleep(0.1)


def kill_when(process: subprocess.Popen, log: Path, condition, what: str, timeout: float = 300) -> str:
    """Poll until `condition()` holds while the run is under way and has not materialized
    anything, then SIGKILL its process group. Returns the run's output up to the kill."""
    deadline = time.monotonic() + timeout
    while True:
        output = log.read_text()
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {what}:\n{output[-4000:]}"
        assert "ASSET_MATERIALIZATION" not in output, f"the ingest finished before {what}"
        if "Ingesting" in output and condition():
            break
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output[-4000:]}"
        time.sleep(0.02)
    kill_group(process)
    output = log.read_text()
    remove_temporary_instance(output)
    assert "ASSET_MATERIALIZATION" not in output and "STEP_SUCCESS" not in output, output[-4000:]
    return output


def remove_temporary_instance(output: str) -> None:
    """Without DAGSTER_HOME the CLI keeps its instance in a `.tmp_dagster_home_*` folder of the
    repository and removes it when it ends; a killed one cannot. Remove that run's folder only."""
    started = re.search(r" - ([0-9a-f-]{36}) - \d+ - RUN_START", output)
    if started:
        for home in REPO_ROOT.glob(".tmp_dagster_home_*"):
            if (home / "storage" / started.group(1)).exists():
                shutil.rmtree(home, ignore_errors=True)


def day_rows(warehouse: Path, table: str, day: str, exclude: str = "") -> list[tuple]:
    columns = f"* EXCLUDE ({exclude})" if exclude else "*"
    return sorted(query(warehouse, f"SELECT {columns} FROM {table} WHERE dt = ?", [day]), key=repr)


def build_in_process(landing_root: Path, warehouse: Path, day: str, selection: str = "*") -> None:
    """One run of the real assets in this process (real DuckDB and dbt, an ephemeral instance)."""
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            ALL_ASSETS,
            selection=selection,
            partition_key=day,
            resources={
                "landing": LandingZone(root=str(landing_root)),
                "warehouse": DuckDBWarehouse(path=str(warehouse)),
                "dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable()),
            },
            instance=instance,
            raise_on_error=False,
        )
    assert result.success, f"building {selection} for {day} failed"


# ---------------------------------------------------------------------------------------------
# 1. the run process killed in the middle of D's ingest


def test_a_run_killed_mid_ingest_changes_nothing_and_the_next_run_loads_the_day_once(landing, warehouse_path, tmp_path):
    # version A of D (and another day), loaded by a successful run
    bad = [line("X1", day=D, quantity="0"), line("X2", day=D, status="lost")]
    landing.write(D, "rejects.csv", csv_text(bad))
    write_day(landing.root, day_of(D), 2_000)
    write_day(landing.root, day_of(OTHER), 1_000)
    build_in_process(landing.root, warehouse_path, OTHER, "raw/orders")
    build_in_process(landing.root, warehouse_path, D, "raw/orders")
    before = snapshot(warehouse_path)
    assert query(warehouse_path, "SELECT dt, count(*) FROM raw.orders GROUP BY dt ORDER BY dt") == [
        (dt.date.fromisoformat(OTHER), 1_000),
        (dt.date.fromisoformat(D), 2_000),
    ]
    assert len(day_rows(warehouse_path, "raw.orders_rejected", D)) == 2

    # D re-exported as version B, much bigger: same file names, new content
    write_day(landing.root, day_of(D), B_LINES)
    # No DAGSTER_HOME: each CLI run has a temporary instance of its own. (With one persistent
    # instance the killed run keeps its `shopflow_warehouse` pool slot: it stays STARTED, and the
    # next run's step waits for the slot forever; see the commit message.)
    env = command_env(landing, warehouse_path)
    wal = Path(f"{warehouse_path}.wal")

    # killed while it publishes: the step is under way and its transaction is writing D's new
    # rows into the warehouse file (DuckDB writes big inserts to the file before the commit)
    size_before = warehouse_path.stat().st_size
    wal_before = wal.stat().st_size if wal.exists() else -1
    log = tmp_path / "killed-publishing.log"
    run = start_materialize(env, log, "--select", "raw/orders", "--partition", D)
    kill_when(
        run,
        log,
        lambda: warehouse_path.stat().st_size > size_before or (wal.exists() and wal.stat().st_size > wal_before),
        "the publish transaction to write into the warehouse file",
    )
    print(f"\nkilled while publishing: warehouse {size_before} -> {warehouse_path.stat().st_size} bytes, wal: {wal.exists()}")
    assert snapshot(warehouse_path) == before  # D is version A, OTHER untouched, nothing half-written

    # the next run of D loads version B, exactly once
    log = tmp_path / "next.log"
    output = finish(start_materialize(env, log, "--select", "raw/orders", "--partition", D), log)
    assert "RUN_SUCCESS" in output, output[-4000:]
    ((rows, lines, runs),) = query(
        warehouse_path,
        "SELECT count(*), count(DISTINCT (_source_file, _source_line)), count(DISTINCT _run_id) FROM raw.orders WHERE dt = ?",
        [D],
    )
    assert (rows, lines, runs) == (B_LINES, B_LINES, 1)
    assert query(
        warehouse_path,
        "SELECT _source_file, _source_line FROM raw.orders_rejected WHERE dt = ? ORDER BY ALL",
        [D],
    ) == [("rejects.csv", 2), ("rejects.csv", 3)]
    for table in ("raw.orders", "raw.orders_rejected"):
        assert sorted(r for r in before[table] if str(r[0]) == OTHER) == sorted(
            query(warehouse_path, f"SELECT * FROM {table} WHERE dt = ?", [OTHER])
        ), f"{table} for {OTHER} changed"


# ---------------------------------------------------------------------------------------------
# 2. Postgres restarted while the daemon runs


@pytest.fixture
def postgres():
    """A cluster of this test's own (the test stops and restarts it); overrides the module-wide
    one that the imported `daemon` fixture asks for."""
    cluster = start_cluster()
    yield cluster
    try:
        cluster.stop()
    except subprocess.CalledProcessError:
        pass  # already stopped by a failed test
    shutil.rmtree(cluster.directory, ignore_errors=True)


UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def daemon_process() -> int:
    """The pid of the `dagster-daemon run` that the `daemon` fixture started (a child of this process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and any(part.endswith(b"dagster-daemon") for part in cmdline) and b"run" in cmdline:
            return int(entry.name)
    raise AssertionError("no dagster-daemon child process")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def one_order(day: str, order_id: str, quantity: int) -> str:
    return csv_text([line(order_id, day=day, quantity=quantity)])


def test_postgres_restarted_under_the_daemon_loses_no_export(daemon, postgres, landing, warehouse_path, slack_server, tmp_path):
    instance, log = daemon, tmp_path / "daemon.log"
    d1, d2 = "2024-03-06", "2024-03-07"
    pid = daemon_process()

    landing.export(d1, {"part-0.csv": one_order(d1, "A", 2)})
    landed = time.monotonic()
    wait_for(lambda: materializations(instance, d1)["daily_revenue"] >= 1, 300, f"daily_revenue {d1}", log)
    print(f"\nexport -> daily_revenue {d1}: {time.monotonic() - landed:.0f} s")
    # ... and its run has ended: a run still writing its events when the database goes away fails
    wait_for(lambda: not instance.get_runs(filters=RunsFilter(statuses=UNFINISHED)), 120, "the runs to end", log)

    postgres.stop()  # pg_ctl stop -m fast: the daemon's connections are cut
    stopped, log_at_stop = time.monotonic(), len(log.read_text())
    landing.export(d2, {"part-0.csv": one_order(d2, "B", 3)})
    while time.monotonic() < stopped + 3 * SENSOR_INTERVAL + 5:  # several sensor ticks against a dead database
        assert alive(pid), f"dagster-daemon died while Postgres was down:\n{log.read_text()[-4000:]}"
        time.sleep(1)
    assert "OperationalError" in log.read_text()[log_at_stop:], "the daemon did not notice the outage"
    postgres.start()
    restarted = time.time()
    print(f"Postgres down for {time.monotonic() - stopped:.0f} s")

    wait_for(lambda: materializations(instance, d2)["daily_revenue"] >= 1, 300, f"daily_revenue {d2} after the restart", log)
    print(f"restart -> daily_revenue {d2}: {time.time() - restarted:.0f} s")
    # every daemon thread is still at work: each has written a heartbeat since the restart
    wait_for(
        lambda: (beats := instance.get_daemon_heartbeats()) and all(h.timestamp > restarted for h in beats.values()),
        150,
        "fresh heartbeats of every daemon",
        log,
    )
    print(f"restart -> fresh heartbeats of every daemon: {time.time() - restarted:.0f} s")
    time.sleep(3 * SENSOR_INTERVAL)  # room for a duplicate run to show up, if there were one

    assert alive(pid), f"dagster-daemon died:\n{log.read_text()[-4000:]}"
    assert materializations(instance, d2) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    assert materializations(instance, d1) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    assert instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])) == []
    assert broke(slack_server) == []
    assert [(str(d), u) for d, u in query(warehouse_path, "SELECT dt, units FROM analytics.daily_revenue ORDER BY dt")] == [
        (d1, 2),
        (d2, 3),
    ]


# ---------------------------------------------------------------------------------------------
# 3. two runs of D at the same time


def test_two_runs_of_the_same_day_at_once_leave_what_one_run_leaves(landing, warehouse_path, tmp_path):
    subprocess.run(
        [str(BIN / "shopflow-sample-data"), "--start", OTHER, "--days", "2", "--orders-per-day", "3000",
         "--landing-dir", str(landing.root), "--seed", "7"],
        check=True,
        capture_output=True,
    )
    # the reference: one run of D on a warehouse of its own
    reference = tmp_path / "reference" / "shopflow.duckdb"
    build_in_process(landing.root, reference, D)
    # the shared warehouse holds another day already
    build_in_process(landing.root, warehouse_path, OTHER)
    tables = ("raw.orders", "raw.orders_rejected", "analytics.fact_sales", "analytics.daily_revenue")
    other_before = {t: day_rows(warehouse_path, t, OTHER) for t in tables}
    assert all(other_before.values())

    env = command_env(landing, warehouse_path)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    runs = [start_materialize(env, log, "--select", "raw/orders*", "--partition", D) for log in logs]
    # the two runs really are under way at the same time
    deadline, overlapped = time.monotonic() + 300, False
    while not overlapped and all(r.poll() is None for r in runs) and time.monotonic() < deadline:
        outputs = [log.read_text() for log in logs]
        overlapped = all("RUN_START" in o and "RUN_SUCCESS" not in o for o in outputs)
        time.sleep(0.05)
    outputs = [finish(r, log) for r, log in zip(runs, logs)]
    assert overlapped, "the two runs did not run at the same time"

    for run, output in zip(runs, outputs):
        # both succeed: without a shared instance the pool cannot serialise two CLI runs, so the
        # second writer finds the DuckDB file locked and its step retries with backoff
        assert run.returncode == 0, output[-4000:]
        assert output.count("RUN_SUCCESS") == 1 and "STEP_FAILURE" not in output, output[-4000:]
        if "STEP_UP_FOR_RETRY" in output:
            assert "is locked by another process" in output or "Conflicting lock" in output, output[-4000:]
    print(f"\nlock retries: {[o.count('STEP_UP_FOR_RETRY') for o in outputs]}")

    run_ids = {re.search(r" - ([0-9a-f-]{36}) - \d+ - RUN_START", o).group(1) for o in outputs}
    assert {r for (r,) in query(warehouse_path, "SELECT DISTINCT _run_id FROM raw.orders WHERE dt = ?", [D])} <= run_ids
    for table in tables:
        exclude = "_run_id, _loaded_at" if table.startswith("raw.") else ""
        assert day_rows(warehouse_path, table, D, exclude) == day_rows(reference, table, D, exclude), table
        assert day_rows(warehouse_path, table, OTHER) == other_before[table], f"{table} for {OTHER} changed"


def test_the_broke_alert_of_a_killed_run_names_its_step_and_the_signal(landing, warehouse_path, tmp_path, slack, slack_server):
    """A run whose process died has no step failure; its failure event says only "marked as failed
    from outside the execution context". The alert must say which step and why."""
    from .test_failures_and_alerts import alert_ticks

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    landing.write(D, "a.csv", csv_text([line("A")]))  # no _SUCCESS yet: the step waits between retries
    env = command_env(landing, warehouse_path, DAGSTER_HOME=str(home), SHOPFLOW_RETRY_DELAY_SECONDS="60")
    log = tmp_path / "run.log"
    process = start_materialize(env, log, "--select", "raw/orders", "--partition", D)
    deadline = time.monotonic() + 300
    while "STEP_UP_FOR_RETRY" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.1)
    kill_group(process)

    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.STARTED  # nobody left to say otherwise
        # What the code server of a daemon-launched run does when it finds the run process dead
        # (dagster/_grpc/server.py, _check_for_orphaned_runs), with the same calls.
        instance.report_engine_event(
            f"Run execution process for {run.run_id} was terminated by signal 9 (SIGKILL).", run
        )
        instance.report_run_failed(run)
        alert_ticks(instance, slack, landing)  # the alerts sensor: the BROKE written, then sent
    (message,) = slack_server.delivered
    assert "• Step: raw__orders" in message, message
    assert f"• Error: Run execution process for {run.run_id} was terminated by signal 9 (SIGKILL)." in message
    assert f"--partition {D}" in message
