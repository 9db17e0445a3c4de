"""One run never touches another's staging, on the suite's real standalone
cluster: a run's staging survives another run's ingest while the first still runs, and the first,
once it goes on, finds that a later ingest of its day took the day's publish lease and publishes
nothing; a staged day that is missing at publish fails the attempt instead of emptying the day; a
run worker SIGKILLed while its Spark ingest runs takes its driver with it, and nothing it read is
published over the later run's data.

The runs are the real raw/orders asset: in process where the test needs the step's events, through
`dagster asset materialize` where it kills the run worker.
"""

from __future__ import annotations

import pytest
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import duckdb
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from benchmarks._data import write_day

from .conftest import BIN, REPO_ROOT, command_env, csv_text, day_of, failure_messages, line
from .test_spark_faults import (
    APP,
    BAD_ROWS,
    D,
    events,
    in_background,
    ingest,
    ingest_drivers,
    loaded,
    marked_drivers,
    process_table,
    publish_earlier,
    published,
    retry_errors,
    running_ingest,
    spark_warehouse,
    wait_until,
)
from .spark_helpers import catalog_at, live_folders

# a daemon, a subprocess, Spark, Postgres or a browser; loads into a warehouse of its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_catalog")]


def staged_folder(warehouse: Path, run_id: str, table: str = "orders") -> Path:
    """Where `run_id` stages the day folders of `table` (the job's layout)."""
    from shopflow_jobs.spark_ingest import staged_table  # imports pyspark

    return Path(staged_table(str(warehouse / "_staging" / run_id), table))


def staged_days(warehouse: Path, run_id: str, table: str = "orders") -> list[str]:
    """The day folders of `table` that `run_id` has committed to its staging folder."""
    folder = staged_folder(warehouse, run_id, table)
    try:
        if (folder.parent / "_temporary").exists() or (folder / "_temporary").exists():
            return []  # still committing
        return sorted(d.name for d in folder.iterdir() if d.name.startswith("dt=") and any(d.glob("*.parquet")))
    except FileNotFoundError:
        return []


def staging_content(warehouse: Path, run_id: str) -> dict[str, int]:
    found = {}
    for folder, _, names in os.walk(warehouse / "_staging" / run_id):
        for name in names:
            path = Path(folder, name)
            found[str(path.relative_to(warehouse))] = path.stat().st_size
    return found


def run_ids_of(thrift: str, day: str = D) -> list[str]:
    """The runs whose rows day D of raw.orders holds, as the catalog has it."""
    folder = live_folders(thrift, "raw.orders")[day]
    with duckdb.connect() as con:
        return [r[0] for r in con.execute(f"SELECT DISTINCT _run_id FROM read_parquet('{folder}/*.parquet') ORDER BY 1").fetchall()]


def half_rejected(rows: int) -> str:
    """A file whose rejected rows (exactly half: taken) make the rejects' write a long one."""
    return csv_text(
        [line(f"K{i}", day=D) for i in range(rows)] + [line(f"KX{i}", day=D, status="lost") for i in range(rows)]
    )


# ---------------------------------------------------------------------------------------------
# 1. two runs' staging side by side; the older one fenced out


def test_a_running_ingests_staging_survives_a_later_ingest_which_then_fences_it_out(spark_cluster, landing, tmp_path):
    write_day(landing.root, day_of(D), 12_000)
    landing.write(D, "half.csv", half_rejected(15_000))
    landing.finish(D)
    warehouse = tmp_path / "spark-warehouse"
    (tmp_path / "dagster_home").mkdir()
    # one core each: both applications get an executor on the 2-core worker
    settings = {"cores_max": 1}
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:
        first = in_background(lambda: ingest(landing, spark_warehouse(spark_cluster, warehouse, **settings), instance))

        def first_staged() -> str | None:
            runs = instance.get_runs(limit=1)
            return runs and staged_days(warehouse, runs[0].run_id) == [f"dt={D}"] and runs[0].run_id

        first_id = wait_until(first_staged, "the first ingest to stage its rows", interval=0.02)
        drivers = ingest_drivers(os.getpid())
        for pid in drivers:
            os.kill(pid, signal.SIGSTOP)  # the first run goes on later, where it stopped
        try:
            assert sorted(drivers.values()) == ["jvm", "python"], drivers
            assert D not in live_folders(spark_cluster.thrift, "raw.orders"), "the first ingest published before the stop"
            assert instance.get_run_by_id(first_id).status == DagsterRunStatus.STARTED
            staged_before = staging_content(warehouse, first_id)

            # a later ingest of the same day runs to the end meanwhile
            second = ingest(landing, spark_warehouse(spark_cluster, warehouse, **settings), instance)
            assert second.success, failure_messages(second)
            assert run_ids_of(spark_cluster.thrift) == [second.run_id]
            # it did not touch the staging of a run that Dagster reports still running
            assert staging_content(warehouse, first_id) == staged_before
            after_second = published(warehouse, spark_cluster.thrift)
        finally:
            for pid in drivers:
                os.kill(pid, signal.SIGCONT)
        result = first.result(timeout=300)

    # the first run, going on, finds a later ingest holds the day's lease: it publishes nothing
    assert not result.success
    assert events(result, DagsterEventType.STEP_RESTARTED) == []  # a retry would fence the later one out
    message = failure_messages(result)
    assert f"A later ingest took over {D} (run {second.run_id})" in message, message
    assert published(warehouse, spark_cluster.thrift) == after_second
    assert run_ids_of(spark_cluster.thrift) == [second.run_id]
    assert staging_content(warehouse, first_id) == {}  # its own leftovers, removed by itself


# ---------------------------------------------------------------------------------------------
# 2. a staged day missing at publish


def test_a_staged_day_missing_at_publish_fails_the_attempt_instead_of_emptying_the_day(spark_cluster, landing, tmp_path):
    warehouse = tmp_path / "spark-warehouse"
    publish_earlier(warehouse, spark_cluster.thrift, D, 1_000, "earlier-run-d")
    before = published(warehouse, spark_cluster.thrift)
    lines = 12_000
    write_day(landing.root, day_of(D), lines)
    landing.write(D, "rejects.csv", csv_text(BAD_ROWS))
    landing.write(D, "half.csv", half_rejected(15_000))
    landing.finish(D)
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:

        def remove_the_staged_day_then_look_at_the_retry():
            run = wait_until(lambda: instance.get_runs(limit=1), "the run")[0]
            wait_until(lambda: staged_days(warehouse, run.run_id), "the staged orders", interval=0.02)
            shutil.rmtree(staged_folder(warehouse, run.run_id) / f"dt={D}")
            wait_until(
                lambda: instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY),
                "the attempt to fail",
                interval=0.05,
            )
            return published(warehouse, spark_cluster.thrift)

        looker = in_background(remove_the_staged_day_then_look_at_the_retry)
        result = ingest(landing, spark_warehouse(spark_cluster, warehouse, remote=spark_cluster.remote), instance)
        at_retry = looker.result(timeout=120)

    # the attempt published nothing: D as it was (not empty) until the retry
    assert at_retry == before
    errors = retry_errors(result)
    # missing when counted (the counts come from the staged rows) or when published
    assert errors and "the staged rows of orders" in errors[0] and "are missing" in errors[0], errors
    # the retry loaded the day, once
    assert result.success, failure_messages(result)
    (rows, source_lines, run_ids), rejects = loaded(spark_cluster.thrift)
    assert (rows, source_lines, run_ids) == (lines + 15_000, lines + 15_000, [result.run_id])
    assert ("rejects.csv", 2) in rejects and len(rejects) == 2 + 15_000


# ---------------------------------------------------------------------------------------------
# 3. the run worker SIGKILLed while its ingest runs


@pytest.mark.parametrize("path", ["connect", "spark-submit"])
def test_a_killed_run_worker_takes_its_spark_driver_along_and_nothing_it_read_is_published_later(
    path, spark_cluster, request, landing, tmp_path
):
    """Under spark-submit the driver (JVM and job) ends with the run worker; over Connect the job's
    process does, and the Connect server interrupts the Spark work it left (no client attached)."""
    connect = path == "connect"
    if connect:
        request.getfixturevalue("spark_sql")
    write_day(landing.root, day_of(D), 40_000 if not connect else 400_000)
    lines = 40_000 if not connect else 400_000
    warehouse = tmp_path / "spark-warehouse"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    mark = uuid.uuid4().hex
    env = command_env(
        landing,
        tmp_path / "unused.duckdb",
        DAGSTER_HOME=str(home),
        SHOPFLOW_ENGINE="spark",
        SHOPFLOW_SPARK_MASTER=spark_cluster.master_url,
        SHOPFLOW_SPARK_WAREHOUSE=str(warehouse),
        SHOPFLOW_SPARK_THRIFT=spark_cluster.thrift,
        SHOPFLOW_FAULT_TEST=mark,  # every process of this run carries it
        **({"SHOPFLOW_SPARK_REMOTE": spark_cluster.remote} if connect else {}),
    )
    log = tmp_path / "materialize.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions",
             "--select", "raw/orders", "--partition", D],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def working():
            assert worker.poll() is None, f"the run ended before the kill:\n{log.read_text()[-3000:]}"
            if connect:
                return spark_cluster.connect_jobs() and marked_drivers(mark)
            return running_ingest(spark_cluster) and marked_drivers(mark)

        wait_until(working, "the Spark ingest's tasks to run", interval=0.2)
        drivers = marked_drivers(mark)
        table = process_table()
        first = next(pid for pid in drivers if ("SparkSubmit" if not connect else "spark_ingest.py") in table[pid][2])
        launcher = table[first][0]
        assert launcher != 1 and "dagster" in table[launcher][2], table[launcher]
        os.kill(launcher, signal.SIGKILL)  # the process that started the job
        killed = time.monotonic()
        wait_until(lambda: not marked_drivers(mark), "the orphaned driver to end", timeout=30, interval=0.2)
        print(f"\nthe driver ended {time.monotonic() - killed:.1f} s after its run worker was killed")
        if connect:  # its jobs on the server, left with no client, are interrupted
            wait_until(lambda: not spark_cluster.connect_jobs(), "the Connect server to drop its work", timeout=120, interval=1)
            print(f"its Connect jobs ended {time.monotonic() - killed:.1f} s after")
        else:
            spark_cluster.wait_for_application(APP, states=("FINISHED", "KILLED", "FAILED"), timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        for pid in marked_drivers(mark):  # never leave a driver of this test on the shared cluster
            os.kill(pid, signal.SIGKILL)
    assert published(warehouse, spark_cluster.thrift)["files"] == []

    # a later run of the day publishes; nothing of the killed one comes after it
    result = ingest(landing, spark_warehouse(spark_cluster, warehouse, remote=spark_cluster.remote if connect else ""))
    assert result.success, failure_messages(result)
    time.sleep(5)
    assert run_ids_of(spark_cluster.thrift) == [result.run_id]
    (rows, _, _), _ = loaded(spark_cluster.thrift)
    assert rows == lines


# ---------------------------------------------------------------------------------------------
# 4. a day re-published while a reader polls it through the catalog


def test_a_reader_through_the_catalog_never_sees_a_day_missing_or_mixed_while_it_is_republished(
    spark_sql, landing, tmp_path
):
    """Day D re-published 20 times, from two exports in turn, while a reader queries it through the
    Thrift server every 0.2 s: every answer is the whole of one export and of one run.
    Then the versions: all kept for the grace period; with none, only the live one stays."""
    exports = {
        "A": csv_text([line(f"A-{i}", day=D) for i in range(3_000)]),
        "B": csv_text([line(f"B-{i}", day=D) for i in range(2_000)]),
    }
    whole = {"A": (3_000, "A", "A", 1), "B": (2_000, "B", "B", 1)}
    warehouse = tmp_path / "spark-warehouse"
    connect = spark_warehouse(spark_sql, warehouse, remote=spark_sql.remote)
    landing.export(D, {"orders.csv": exports["A"]})
    assert ingest(landing, connect).success

    answers, stop = [], threading.Event()

    def read_until_stopped() -> None:
        with catalog_at(spark_sql.thrift) as catalog:
            while not stop.is_set():
                (n, first, last, runs), = catalog.run(
                    "SELECT count(*), min(order_id), max(order_id), count(DISTINCT _run_id) "
                    f"FROM raw.orders WHERE dt = DATE'{D}'"
                )
                answers.append((n, first and first[0], last and last[0], runs))
                stop.wait(0.2)  # a reader polling, several times per publish, not one taking the cores

    reader = in_background(read_until_stopped)
    published_runs = []
    try:
        for n in range(20):
            export = "BA"[n % 2]
            landing.export(D, {"orders.csv": exports[export]})
            result = ingest(landing, connect)
            assert result.success, failure_messages(result)
            published_runs.append(result.run_id)
            assert run_ids_of(spark_sql.thrift) == [result.run_id]
    finally:
        stop.set()
    reader.result(timeout=60)

    odd = [a for a in answers if a not in whole.values()]
    assert not odd, f"{len(odd)} of {len(answers)} answers were not one whole export: {odd[:5]}"
    assert answers.count(whole["A"]) >= 5 and answers.count(whole["B"]) >= 5, (len(answers), answers[:3])
    changes = sum(1 for a, b in zip(answers, answers[1:]) if a != b)
    print(f"\n{len(answers)} reads through the catalog, {changes} changes seen across 20 re-publications")
    assert changes >= 10  # the reads spanned the swaps

    # every version stays for the grace period (a query that began before a swap may read it) ...
    day = warehouse / "raw.db" / "orders" / f"dt={D}"
    versions = sorted(p.name for p in day.iterdir() if p.name.startswith("v="))
    assert len(versions) == 21 and sorted(p.name for p in (day / "_retired").iterdir()) == versions[:-1]
    # ... and with no grace, the next publish removes all but the live one
    result = ingest(landing, spark_warehouse(spark_sql, warehouse, remote=spark_sql.remote, version_grace_minutes=0))
    assert result.success, failure_messages(result)
    (live,) = [p.name for p in day.iterdir() if p.name.startswith("v=")]
    assert live_folders(spark_sql.thrift, "raw.orders")[D].name == live
    assert list((day / "_retired").iterdir()) == []
    assert loaded(spark_sql.thrift)[0] == (3_000, 3_000, [result.run_id])  # the last export was A
