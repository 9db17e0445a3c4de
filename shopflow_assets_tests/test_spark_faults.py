"""Faults on Spark, against the suite's real standalone cluster (`spark_cluster`):
the ingest's driver SIGKILLed mid-write (and the leftovers of a run killed between moving a new
version into the day and swapping the catalog to it), a run cancelled the Dagster way while its Spark application runs, an unreachable master,
a master that comes up between attempts followed by a lost worker, a bad export.

The runs are the real raw/orders asset on the Spark engine: in process (`materialize`) where the
test needs the step's events, through a code server and the run launcher where it needs Dagster's
own termination. Each day is small: a Spark ingest costs tens of seconds of fixed start-up on two
cores whatever its size, so each test runs as few ingests as its fault needs.
"""

from __future__ import annotations

import pytest
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import duckdb
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, ExecuteInProcessResult, materialize

from benchmarks._data import write_day
from shopflow_assets.engines import SparkWarehouse
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import BIN, REPO_ROOT, TEST_SETTINGS, command_env, csv_text, day_of, failure_messages, line, raw_orders
from .daemon_helpers import stop_groups
from .spark_cluster import SparkCluster, free_ports
from .spark_helpers import catalog_at, live_folders

# a daemon, a subprocess, Spark, Postgres or a browser; loads into a warehouse of its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_catalog")]

D = "2024-03-01"
OTHER = "2024-02-29"
APP = f"shopflow-ingest {D}..{D}"  # the ingest's application name on the master
TABLES = ("orders", "orders_rejected")
RUN_TIMEOUT = 600  # seconds: a whole run, retries included, on a busy 2-core machine
BAD_ROWS = [line("X1", day=D, quantity="0"), line("X2", day=D, status="lost")]  # lines 2, 3 of rejects.csv


# ---------------------------------------------------------------------------------------------
# helpers: runs, the published tables, processes


def spark_warehouse(cluster: SparkCluster, directory: Path, **settings) -> SparkWarehouse:
    return SparkWarehouse(master=cluster.master_url, thrift=cluster.thrift, warehouse_dir=str(directory), **settings)


def ingest(landing, warehouse: SparkWarehouse, instance: DagsterInstance | None = None) -> ExecuteInProcessResult:
    """raw/orders for D on the Spark engine, in process; never raises."""
    resources = {"landing": LandingZone(root=str(landing.root)), "warehouse": warehouse}
    if instance is not None:
        return materialize([raw_orders], partition_key=D, resources=resources, instance=instance, raise_on_error=False)
    with DagsterInstance.ephemeral() as ephemeral:
        return materialize([raw_orders], partition_key=D, resources=resources, instance=ephemeral, raise_on_error=False)


def events(result: ExecuteInProcessResult, kind: DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == kind]


def retry_errors(result: ExecuteInProcessResult) -> list[str]:
    """The error of each attempt that was retried (innermost cause first in the chain's text)."""
    texts = []
    for event in events(result, DagsterEventType.STEP_UP_FOR_RETRY):
        error, text = event.event_specific_data.error, []
        while error is not None:
            text.append(error.message)
            error = error.cause
        texts.append(" <- ".join(text))
    return texts


def published(warehouse: Path, thrift: str) -> dict:
    """What readers see: every file under raw.db (path, size, mtime) and every row of each day of
    the two tables, read by DuckDB from the Parquet of the version the catalog names live."""
    raw = warehouse / "raw.db"
    files = (
        sorted((str(p.relative_to(raw)), p.stat().st_size, p.stat().st_mtime_ns) for p in raw.rglob("*") if p.is_file())
        if raw.exists()
        else []
    )
    rows = {}
    for table in TABLES:
        for day, folder in live_folders(thrift, f"raw.{table}").items():
            with duckdb.connect() as con:
                con.execute("SET TimeZone = 'UTC'")
                rows[f"{table}/dt={day}"] = sorted(
                    con.execute(f"SELECT * FROM read_parquet('{folder}/*.parquet')").fetchall(), key=repr
                )
    return {"files": files, "rows": rows}


def day_view(snapshot: dict, table: str, day: str) -> tuple[list, list]:
    """One table's day of a `published` snapshot: its files and its rows."""
    prefix = f"{table}/dt={day}/"
    return [f for f in snapshot["files"] if f[0].startswith(prefix)], snapshot["rows"].get(f"{table}/dt={day}", [])


def loaded(thrift: str, day: str = D) -> tuple:
    """D in raw.orders as the catalog has it: (rows, distinct source lines, the run ids), and its
    rejects' (file, line)."""
    orders, rejected = (live_folders(thrift, f"raw.{table}").get(day) for table in TABLES)
    with duckdb.connect() as con:
        orders = con.execute(
            f"SELECT count(*), count(DISTINCT (_source_file, _source_line)), list(DISTINCT _run_id) "
            f"FROM read_parquet('{orders}/*.parquet')"
        ).fetchone()
        rejects = (  # a day without rejects has no partition
            con.execute(f"SELECT _source_file, _source_line FROM read_parquet('{rejected}/*.parquet') ORDER BY ALL").fetchall()
            if rejected
            else []
        )
    return orders, rejects


def publish_earlier(warehouse: Path, thrift: str, day: str, rows: int, run_id: str) -> None:
    """Day `day` as an earlier ingest published it: `rows` orders and one reject, Parquet in a
    version folder of the day that the catalog names live. Written here by DuckDB (a Spark ingest
    costs tens of seconds): what the tests check is what a fault does to the day, whoever wrote it."""
    raw = warehouse / "raw.db"
    tables = {
        "orders": f"""
            SELECT 'E-' || i AS order_id, 1 AS line_number, 'C-1' AS customer_id, 'P-1' AS product_id,
                   1 AS quantity, 10.00::DECIMAL(18,2) AS unit_price, 0.00::DECIMAL(18,2) AS discount,
                   'placed' AS status, TIMESTAMPTZ '{day} 12:00:00+00' AS ordered_at,
                   TIMESTAMPTZ '{day} 12:00:00+00' AS updated_at, 'earlier.csv' AS _source_file,
                   (i + 2)::BIGINT AS _source_line, TIMESTAMPTZ '{day} 13:00:00+00' AS _loaded_at,
                   '{run_id}' AS _run_id
            FROM range({rows}) t(i)""",
        "orders_rejected": f"""
            SELECT 'earlier.csv' AS _source_file, {rows + 2}::BIGINT AS _source_line,
                   'quantity must be an integer >= 1' AS reason, 'E-x' AS order_id, '0' AS quantity,
                   'E-x,...' AS _raw_line, TIMESTAMPTZ '{day} 13:00:00+00' AS _loaded_at, '{run_id}' AS _run_id""",
    }
    from shopflow_jobs.spark_ingest import create_raw_tables  # the job's own DDL (imports pyspark)

    with duckdb.connect() as con, catalog_at(thrift) as catalog:
        con.execute("SET TimeZone = 'UTC'")
        create_raw_tables(catalog, str(warehouse))
        for table, sql in tables.items():
            folder = raw / table / f"dt={day}" / "v=000000000000.earlier"
            folder.mkdir(parents=True)
            con.execute(f"COPY ({sql}) TO '{folder}/part-00000-earlier.c000.snappy.parquet' (FORMAT parquet)")
            catalog.publish(f"raw.{table}", day, str(folder))


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process, read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return table


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def staged_parquet(warehouse: Path, ignore: str = "") -> list[str]:
    """Parquet files (finished or being written) in the staging folders of runs, but `ignore`'s.
    os.walk, not Path.glob: the ingest removes staging folders (a dead run's among them) while this
    looks, and glob raises on a folder that vanishes under it where os.walk passes over it."""
    from shopflow_jobs.spark_ingest import staged_table  # the job's layout (imports pyspark)

    found = []
    try:
        runs = [run.path for run in os.scandir(warehouse / "_staging") if run.name != ignore]
    except FileNotFoundError:
        runs = []
    for run in runs:
        for folder, _, files in os.walk(staged_table(run, "orders")):
            found += [str(Path(folder, f).relative_to(warehouse)) for f in files if f.endswith(".parquet")]
    return sorted(found)


def ingest_drivers(root: int) -> dict[int, str]:
    """The Spark ingest's driver processes below process `root`: the spark-submit JVM (the Spark
    driver) and its child, the job's Python process."""
    table = process_table()
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state, cmdline) in table.items():
            if ppid == parent:
                frontier.append(pid)
                if state != "Z" and "spark_ingest.py" in cmdline:
                    found[pid] = "jvm" if "org.apache.spark.deploy.SparkSubmit" in cmdline else "python"
    return found


def marked_drivers(mark: str) -> dict[int, str]:
    """Live spark-submit and driver processes whose environment carries SHOPFLOW_FAULT_TEST=mark:
    started by this test, wherever they were re-parented to."""
    needle = f"SHOPFLOW_FAULT_TEST={mark}".encode()
    found = {}
    for pid, (_, state, cmdline) in process_table().items():
        if state == "Z" or ("spark_ingest.py" not in cmdline and "SparkSubmit" not in cmdline):
            continue
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found[pid] = cmdline[:200]
        except OSError:
            continue
    return found


def wait_until(condition: Callable[[], object], what: str, timeout: float = RUN_TIMEOUT, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def running_ingest(cluster: SparkCluster) -> str | None:
    """The id of the active ingest application once its executor runs tasks (its log says so)."""
    for app in cluster.applications():
        if app.active and app.name == APP:
            for log in (cluster.directory / "work" / app.id).glob("*/stderr"):
                if "Running task" in log.read_text(errors="replace"):
                    return app.id
    return None


def in_background(fn: Callable[[], object]) -> concurrent.futures.Future:
    """Run `fn` in a thread while the main thread runs Dagster; `.result()` re-raises its error."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


# ---------------------------------------------------------------------------------------------
# 1. the driver SIGKILLed while it writes


def test_a_driver_killed_mid_write_leaves_the_published_day_as_it_was_and_the_retry_loads_it_once(
    spark_cluster, landing, tmp_path
):
    with contextlib.ExitStack() as stack:
        killed_mid_write(stack, spark_cluster, landing, tmp_path)


def failed_run(instance: DagsterInstance, landing, tmp_path: Path) -> str:
    """The id of a real run of raw/orders in `instance` that failed (a day whose file lacks a
    required column: it fails before Spark starts)."""
    day = "2024-02-01"
    landing.export(day, {"bad.csv": csv_text([line("B1", day=day)], columns=["order_id"])})
    result = materialize(
        [raw_orders],
        partition_key=day,
        resources={
            "landing": LandingZone(root=str(landing.root)),
            "warehouse": SparkWarehouse(master="spark://127.0.0.1:1", warehouse_dir=str(tmp_path / "unused")),
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success and instance.get_run_by_id(result.run_id).status == DagsterRunStatus.FAILURE
    return result.run_id


def killed_mid_write(stack, spark_cluster, landing, tmp_path) -> None:
    warehouse = tmp_path / "spark-warehouse"
    publish_earlier(warehouse, spark_cluster.thrift, D, 1_000, "earlier-run-d")
    publish_earlier(warehouse, spark_cluster.thrift, OTHER, 500, "earlier-run-other")
    # An earlier run of OTHER died between moving its rows to a new version of the day and
    # swapping the catalog to it: a version no reader sees, and a half-written staging folder.
    # Readers keep the old OTHER; an ingest cleans up the staging of runs that Dagster reports
    # finished (this one failed, in the same instance).
    instance = stack.enter_context(DagsterInstance.ephemeral())
    dead_run = failed_run(instance, landing, tmp_path)
    dead = warehouse / "_staging" / dead_run
    (dead / "orders" / f"dt={OTHER}").mkdir(parents=True)
    (dead / "orders" / f"dt={OTHER}" / "part-00000-half.c000.snappy.parquet").write_bytes(b"PAR1 not really")
    orphan = warehouse / "raw.db" / "orders" / f"dt={OTHER}" / f"v=000000000001.{dead_run}.0"
    orphan.mkdir()
    (orphan / "part-00000-orphan.c000.snappy.parquet").write_bytes(b"PAR1 not really")
    before = published(warehouse, spark_cluster.thrift)
    assert len(day_view(before, "orders", OTHER)[1]) == 500

    # D's export: 4 files of generated lines and one with two bad rows
    lines = 12_000
    write_day(landing.root, day_of(D), lines)
    landing.write(D, "rejects.csv", csv_text(BAD_ROWS))
    landing.finish(D)  # _SUCCESS last: a file newer than it is a re-export being written

    def kill_the_driver_once_it_writes():
        staged = wait_until(lambda: staged_parquet(warehouse, dead_run), "the ingest to write staged Parquet")
        drivers = ingest_drivers(os.getpid())
        assert sorted(drivers.values()) == ["jvm", "python"], drivers
        for pid in sorted(drivers, key=lambda p: drivers[p] != "python"):  # the Python driver, then the JVM
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in drivers), "the killed driver to be gone", timeout=30)
        after = published(warehouse, spark_cluster.thrift)
        still_staged = staged_parquet(warehouse, dead_run)
        # the retry has not started cleaning up yet (its first act once its SparkSession is up):
        # `after` is what the killed attempt left
        assert still_staged, "the retry removed the staging folder before the snapshot"
        return staged, after

    killer = in_background(kill_the_driver_once_it_writes)
    started = time.monotonic()
    result = ingest(landing, spark_warehouse(spark_cluster, warehouse), instance)
    staged, after_kill = killer.result(timeout=60)
    print(f"\nkilled while staging held {len(staged)} Parquet file(s), e.g. {staged[0]}; run {time.monotonic() - started:.0f} s")

    # what the kill left: D exactly as before (files and rows), nothing half-written
    for table in TABLES:
        assert day_view(after_kill, table, D) == day_view(before, table, D), f"{table} of {D} changed by the killed driver"
    assert after_kill == before

    # the retry loaded D once, its own rows only
    assert result.success, failure_messages(result)
    assert len(events(result, DagsterEventType.STEP_RESTARTED)) == 1, retry_errors(result)
    assert "ended without a verdict" in retry_errors(result)[0]
    (rows, source_lines, run_ids), rejects = loaded(spark_cluster.thrift)
    assert (rows, source_lines, run_ids) == (lines, lines, [result.run_id])
    assert rejects == [("rejects.csv", 2), ("rejects.csv", 3)]
    final = published(warehouse, spark_cluster.thrift)
    for table in TABLES:
        assert day_view(final, table, OTHER) == day_view(before, table, OTHER), f"{table} of {OTHER} changed"
    assert not (warehouse / "_staging").exists() or not any((warehouse / "_staging").iterdir())


# ---------------------------------------------------------------------------------------------
# 2. a run cancelled the Dagster way (the UI's Terminate: the run launcher's terminate)

INSTANCE_YAML = """\
# runs start at once through the default run launcher (no queue, no daemon)
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


@pytest.mark.parametrize("path", ["connect", "spark-submit"])
def test_a_cancelled_run_leaves_no_spark_work_or_driver_running(path, spark_cluster, request, landing, tmp_path):
    """Over Spark Connect the job's Spark jobs on the server are interrupted and the job's process
    ends; under spark-submit its application ends too."""
    connect = path == "connect"
    if connect:
        request.getfixturevalue("spark_sql")  # the Connect server
    write_day(landing.root, day_of(D), 12_000 if not connect else 200_000)
    warehouse = tmp_path / "spark-warehouse"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    mark = uuid.uuid4().hex
    env = command_env(
        landing,
        tmp_path / "unused.duckdb",
        SHOPFLOW_ENGINE="spark",
        SHOPFLOW_SPARK_MASTER=spark_cluster.master_url,
        SHOPFLOW_SPARK_WAREHOUSE=str(warehouse),
        SHOPFLOW_SPARK_THRIFT=spark_cluster.thrift,
        DAGSTER_HOME=str(home),
        SHOPFLOW_FAULT_TEST=mark,  # every process of this test's run carries it
        **({"SHOPFLOW_SPARK_REMOTE": spark_cluster.remote} if connect else {}),
    )
    (port,) = free_ports(1)
    server_log = tmp_path / "code-server.log"
    with open(server_log, "w") as out:
        server = subprocess.Popen(
            [str(BIN / "dagster"), "api", "grpc", "-m", "shopflow_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def serving():
            assert server.poll() is None, f"the code server exited:\n{server_log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(serving, "the code server", timeout=180, interval=0.5)
        run_id = str(uuid.uuid4())
        launched = subprocess.run(
            [
                str(BIN / "dagster"), "job", "launch", "-j", "shopflow_daily_job",
                "--grpc-host", "127.0.0.1", "--grpc-port", str(port),
                "--tags", json.dumps({"dagster/partition": D}), "--run-id", run_id,
            ],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

        with DagsterInstance.from_config(str(home)) as instance:
            def working():
                run = instance.get_run_by_id(run_id)
                assert run is not None and not run.is_finished, f"the run ended before the cancel: {run and run.status}"
                if connect:
                    return spark_cluster.connect_jobs() and marked_drivers(mark)
                return running_ingest(spark_cluster) and marked_drivers(mark)

            # the Spark job is under way: its application took the cluster (or its jobs run in the
            # Connect server's), its executor runs tasks
            drivers = wait_until(working, "the Spark ingest's tasks to run", interval=0.2)
            apps = spark_cluster.running_jobs()
            assert [a.name for a in apps] == ([] if connect else [APP]), apps

            cancelled = time.monotonic()
            assert instance.run_launcher.terminate(run_id)
            assert instance.get_run_by_id(run_id).status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)

            def nothing_left():
                active = [(a.name, a.state) for a in spark_cluster.running_jobs()]
                jobs = spark_cluster.connect_jobs() if connect else []
                return (not active and not jobs and not marked_drivers(mark)) or None

            try:
                wait_until(nothing_left, "no Spark application and no driver", timeout=30, interval=0.5)
            except AssertionError:
                raise AssertionError(
                    f"30 s after the cancel: active applications "
                    f"{[(a.name, a.state) for a in spark_cluster.running_jobs()]}, "
                    f"Connect server jobs {spark_cluster.connect_jobs() if connect else None}, "
                    f"driver processes {marked_drivers(mark)} (were {drivers})"
                ) from None
            gone_after = time.monotonic() - cancelled
            if not connect:
                ended = spark_cluster.wait_for_application(APP, states=("FINISHED", "KILLED", "FAILED"), timeout=10)
                assert ended.id == apps[0].id
            try:
                status = wait_until(
                    lambda: instance.get_run_by_id(run_id).is_finished and instance.get_run_by_id(run_id).status,
                    "the run to end",
                    timeout=60,
                    interval=0.5,
                )
            except AssertionError:
                steps = [
                    (e.dagster_event.event_type_value, e.dagster_event.step_key)
                    for e in instance.all_logs(run_id)
                    if e.dagster_event and e.dagster_event.step_key
                ]
                raise AssertionError(f"the cancelled run still runs 60 s later: {steps[-8:]}") from None
            assert status == DagsterRunStatus.CANCELED, status
            # cancelled means stopped: raw/orders not retried (Dagster retries an interrupted step
            # under its retry policy), so no second application, and dbt never started
            kinds = [e.dagster_event.event_type for e in instance.all_logs(run_id) if e.dagster_event]
            assert DagsterEventType.STEP_RESTARTED not in kinds
            started = [e.dagster_event.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]
            assert started == ["raw__orders"], started
            if connect:
                assert [a.name for a in spark_cluster.running_jobs()] == []
                print(f"\ncancelled: Connect jobs and the job's process gone {gone_after:.1f} s after terminate")
            else:
                assert [a.id for a in spark_cluster.applications() if a.name == APP and a.id >= apps[0].id] == [apps[0].id]
                print(f"\ncancelled: application and driver gone {gone_after:.1f} s after terminate; app {ended.state}")
        # nothing of D was published
        assert published(warehouse, spark_cluster.thrift)["files"] == []
    finally:
        stop_groups([server])
        for pid in marked_drivers(mark):  # never leave a driver of this test on the shared cluster
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# 3. an unreachable master


def test_an_unreachable_master_is_retried_with_backoff_then_fails_naming_the_master(landing, tmp_path):
    landing.export(D, {"orders.csv": csv_text([line("O1", day=D)])})
    (port,) = free_ports(1)  # nothing listens there
    master = f"spark://127.0.0.1:{port}"
    warehouse = tmp_path / "spark-warehouse"

    result = ingest(landing, SparkWarehouse(master=master, warehouse_dir=str(warehouse)))

    assert not result.success
    retries = TEST_SETTINGS.retry_max_retries
    assert len(events(result, DagsterEventType.STEP_RESTARTED)) == retries
    # each wait is the existing backoff: (2^k - 1) x delay, +/- delay of jitter
    delay = TEST_SETTINGS.retry_delay_seconds
    waits = [e.event_specific_data.seconds_to_wait for e in events(result, DagsterEventType.STEP_UP_FOR_RETRY)]
    assert len(waits) == retries
    for k, wait in enumerate(waits, start=1):
        assert (2**k - 2) * delay - 1e-6 <= wait <= 2**k * delay + 1e-6, (k, waits)
    for error in retry_errors(result):
        assert f"The Spark master {master} is unreachable" in error, error
    message = failure_messages(result)
    assert f"The Spark master {master} is unreachable" in message and "SHOPFLOW_SPARK_MASTER" in message, message
    assert not warehouse.exists()  # nothing started, nothing written


class LateServer:
    """A port that is closed until `open()`, then forwards to a server of the cluster: a server
    that comes up between two attempts. (Spark's driver only dials the master's URL to register;
    the master answers from its own address. A Connect client speaks gRPC over the one connection.)"""

    scheme = "spark"

    def __init__(self, target_port: int):
        (self.port,) = free_ports(1)
        self.target = ("127.0.0.1", target_port)
        self.server: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# 4. transient faults heal: a master that comes up between attempts, then a lost worker


def test_a_master_back_between_attempts_and_a_lost_worker_are_retried_and_the_day_loads_once(
    spark_cluster, landing, tmp_path
):
    lines = 8_000
    write_day(landing.root, day_of(D), lines)
    landing.write(D, "rejects.csv", csv_text(BAD_ROWS))
    landing.finish(D)  # _SUCCESS last: a file newer than it is a re-export being written
    warehouse = tmp_path / "spark-warehouse"
    timeout = 8  # the job gives up after this long without an executor
    master = LateServer(spark_cluster.master_port)  # closed until the first attempt has failed
    (tmp_path / "dagster_home").mkdir()
    # an instance on disk, so that a thread can read the run's events while the run goes on
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:

        def bring_up_the_master_then_lose_the_worker():
            def retried():
                runs = instance.get_runs(limit=1)
                return runs and instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)

            wait_until(retried, "the first attempt to fail", timeout=120, interval=0.05)
            master.open()
            app = wait_until(lambda: running_ingest(spark_cluster), "the ingest's tasks to run", interval=0.2)
            spark_cluster.kill_worker()
            try:
                # the watchdog cancels the job, the attempt ends: only then does the worker come back
                wait_until(
                    lambda: not any(a.active and a.id == app for a in spark_cluster.applications()),
                    "the application that lost its worker to end",
                    timeout=timeout + 120,
                    interval=0.5,
                )
            finally:
                spark_cluster.start_worker()

        try:
            faults = in_background(bring_up_the_master_then_lose_the_worker)
            result = ingest(
                landing,
                SparkWarehouse(
                    master=master.url, thrift=spark_cluster.thrift, warehouse_dir=str(warehouse),
                    executor_timeout_seconds=timeout,
                ),
                instance,
            )
            faults.result(timeout=300)
        finally:
            master.close()
            spark_cluster.start_worker()  # idempotent: the worker is back for the next test whatever happened
    assert result.success, failure_messages(result)
    # the master unreachable, then the worker lost: an attempt that starts before the worker is
    # back loses its executors too
    errors = retry_errors(result)
    unreachable = [e for e in errors if f"The Spark master {master.url} is unreachable" in e]
    lost = [e for e in errors if f"the Spark application had no executor for {timeout} s" in e]
    assert unreachable and lost and errors == unreachable + lost, errors
    (rows, source_lines, run_ids), rejects = loaded(spark_cluster.thrift)
    assert (rows, source_lines, run_ids) == (lines, lines, [result.run_id])
    assert rejects == [("rejects.csv", 2), ("rejects.csv", 3)]
    assert spark_cluster.alive_workers() == 1


def test_over_connect_a_server_back_between_attempts_and_a_lost_worker_are_retried_and_the_day_loads_once(
    spark_sql, landing, tmp_path
):
    """The same faults on the Connect path: the Connect server unreachable at the first attempt,
    then the worker (the server's executors) lost while the ingest's jobs run there: the job's
    watchdog (the application's REST API) interrupts them, the attempt is retried, the day loads once."""
    cluster = spark_sql
    lines = 8_000
    write_day(landing.root, day_of(D), lines)
    landing.write(D, "rejects.csv", csv_text(BAD_ROWS))
    landing.finish(D)
    warehouse = tmp_path / "spark-warehouse"
    timeout = 8
    server = LateServer(cluster.connect_port)
    server.scheme = "sc"
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:

        def bring_up_the_server_then_lose_the_worker():
            def retried():
                runs = instance.get_runs(limit=1)
                return runs and instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)

            wait_until(retried, "the first attempt to fail", timeout=120, interval=0.05)
            server.open()
            wait_until(cluster.connect_jobs, "the ingest's jobs to run on the Connect server", interval=0.1)
            cluster.kill_worker()
            try:
                wait_until(lambda: not cluster.connect_jobs(), "the interrupted jobs to end", timeout=timeout + 120, interval=0.5)
            finally:
                cluster.start_worker()

        try:
            faults = in_background(bring_up_the_server_then_lose_the_worker)
            result = ingest(
                landing,
                SparkWarehouse(
                    master=cluster.master_url, remote=server.url, thrift=cluster.thrift,
                    warehouse_dir=str(warehouse), executor_timeout_seconds=timeout,
                ),
                instance,
            )
            faults.result(timeout=300)
        finally:
            server.close()
            cluster.start_worker()
    assert result.success, failure_messages(result)
    # the server unreachable, then the worker lost: an attempt that starts before the worker is
    # back loses its executors too
    errors = retry_errors(result)
    unreachable = [e for e in errors if f"The Spark Connect server {server.url} is unreachable" in e]
    lost = [e for e in errors if f"the Spark application had no executor for {timeout} s" in e]
    assert unreachable and lost and errors == unreachable + lost, errors
    (rows, source_lines, run_ids), rejects = loaded(cluster.thrift)
    assert (rows, source_lines, run_ids) == (lines, lines, [result.run_id])
    assert rejects == [("rejects.csv", 2), ("rejects.csv", 3)]
    assert cluster.alive_workers() == 1
    assert [a.name for a in cluster.running_jobs()] == []  # no application of its own


def test_a_connect_url_in_the_environment_leaves_spark_submit_an_application_of_its_own(
    spark_cluster, landing, tmp_path, monkeypatch
):
    """Without SHOPFLOW_SPARK_REMOTE the ingest is spark-submitted, whatever the environment says:
    Spark's own SPARK_REMOTE, or the mark a Connect session leaves in its process's environment
    (SPARK_CONNECT_MODE_ENABLED, inherited by everything that process starts), would otherwise make
    the job a Connect client of nothing."""
    (port,) = free_ports(1)
    monkeypatch.setenv("SPARK_REMOTE", f"sc://127.0.0.1:{port}")
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
    landing.export(D, {"orders.csv": csv_text([line("O1", day=D), line("O2", day=D)]), "rejects.csv": csv_text(BAD_ROWS)})
    warehouse = tmp_path / "spark-warehouse"
    before = {a.id for a in spark_cluster.applications()}

    result = ingest(landing, spark_warehouse(spark_cluster, warehouse))

    assert result.success, failure_messages(result)
    assert loaded(spark_cluster.thrift) == ((2, 2, [result.run_id]), [("rejects.csv", 2), ("rejects.csv", 3)])
    assert [a.name for a in spark_cluster.applications() if a.id not in before] == [APP]


# ---------------------------------------------------------------------------------------------
# 5. a bad export


def test_a_file_missing_a_required_column_fails_once_naming_file_and_column(spark_cluster, landing, tmp_path):
    warehouse = tmp_path / "spark-warehouse"
    publish_earlier(warehouse, spark_cluster.thrift, D, 100, "earlier-run-d")
    before = published(warehouse, spark_cluster.thrift)
    good = csv_text([line("O1", day=D)])
    columns = [c for c in good.splitlines()[0].split(",") if c != "customer_id"]
    landing.export(D, {"a.csv": good, "b.csv": csv_text([line("O2", day=D)], columns=columns)})
    apps_before = {a.id for a in spark_cluster.applications()}

    result = ingest(landing, spark_warehouse(spark_cluster, warehouse))

    assert not result.success
    assert events(result, DagsterEventType.STEP_RESTARTED) == []  # permanent: one attempt only
    message = failure_messages(result)
    assert f"dt={D}/b.csv" in message and "'customer_id'" in message, message
    assert "a.csv" not in message
    assert published(warehouse, spark_cluster.thrift) == before  # nothing of D changed
    # the executors read the headers (the Dagster side opens no file): one application, which
    # failed before any row was parsed and left nothing staged
    assert len({a.id for a in spark_cluster.applications()} - apps_before) == 1
    assert not list((warehouse / "_staging").glob("*/*"))


def test_spark_errors_are_mapped_the_way_spark_fails():
    """What Spark refuses for good is permanent (not retried); what a cluster does now and then is
    transient. A Spark older than the job needs is refused naming its version."""
    from pyspark.errors import AnalysisException

    from shopflow_jobs.spark_ingest import SparkTooOld, check_spark_version, is_permanent

    permanent = [
        AnalysisException("[TABLE_OR_VIEW_NOT_FOUND] The table or view `raw`.`orders` cannot be found."),
        PermissionError(13, "Permission denied", "/warehouse/raw.db"),
        RuntimeError("org.apache.hadoop.security.AccessControlException: Permission denied: user=etl, access=WRITE"),
        RuntimeError("java.nio.file.AccessDeniedException: /warehouse/_staging"),
        SparkTooOld("too old"),
    ]
    transient = [
        RuntimeError("the Spark application had no executor for 60 s (a worker was lost or none is free)"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError("could not move a to b"),
        RuntimeError("org.apache.spark.SparkException: Job aborted due to stage failure: ExecutorLostFailure"),
        # the metastore's PostgreSQL down: what the Connect server says after its own retries
        AnalysisException(
            "org.apache.hadoop.hive.ql.metadata.HiveException: Unable to fetch table orders. Connection to "
            "127.0.0.1:5433 refused. Check that the hostname and port are correct and that the postmaster is "
            "accepting TCP/IP connections."
        ),
    ]
    assert [is_permanent(e) for e in permanent] == [True] * len(permanent)
    assert [is_permanent(e) for e in transient] == [False] * len(transient)

    for ok in ("4.0.0", "4.3.0", "4.1.0-SNAPSHOT", "5.0.1"):
        check_spark_version(ok)
    for old in ("3.5.3", "3.0.0", "2.4.8-amzn-0"):
        with pytest.raises(SparkTooOld, match=rf"Spark 4\.0 or later; the cluster runs Spark {old.replace('.', '[.]')}"):
            check_spark_version(old)


def test_the_application_a_job_reports_is_checked_before_it_becomes_metadata():
    from dagster import MetadataValue

    from shopflow_assets.engines.spark import application_metadata

    assert application_metadata({"id": "app-20261206-0001", "ui": "http://10.0.0.5:4040"}) == {
        "spark_application_id": "app-20261206-0001",
        "spark_ui": MetadataValue.url("http://10.0.0.5:4040"),
    }
    # what a job sends is not trusted: a non-http link or a non-text id is left out, a long one cut
    assert application_metadata({"id": 7, "ui": "javascript:alert(1)"}) == {}
    assert application_metadata({"id": "a" * 10_000})["spark_application_id"] == "a" * 200
