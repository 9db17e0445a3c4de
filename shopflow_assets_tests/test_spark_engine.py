"""The Spark engine on a real standalone cluster (the `spark_sql` fixture: master, worker, Postgres
metastore, Thrift server, Connect server), driven as users drive it: `dagster asset materialize`
with SHOPFLOW_ENGINE=spark and SHOPFLOW_SPARK_REMOTE, and the daemon (docs/contract.md "Engines").

Parity is the proof: the same exports through both engines give the same tables. Spark runs are slow
(a Spark ingest and a dbt-spark build take a minute or more each on two cores), so the module runs the
three-day backfill once per engine (one run each), and the two tests after the parity test go on
from its Spark warehouse: a missing column (fails before Spark is asked for anything), and the
daemon taking a re-export that empties a day (one Spark ingest, one dbt-spark build) with no Java on
the Dagster side."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    materialize,
)
from dagster_dbt import DbtCliResource

from shopflow_assets.defs.models.project import dbt_executable
from shopflow_assets.commands.sample_data import write_day
from shopflow_assets.contract.export import MALFORMED_ROW, REJECT_REASONS, REQUIRED_COLUMNS
from shopflow_assets.defs.models.project import shopflow_dbt_project
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.ingest.landing_zone import SUCCESS_MARKER

from .conftest import ALL_ASSETS, REPO_ROOT, SLACK_TOKEN, Landing, command_env, csv_text, failure_messages
from .daemon_helpers import daemon_process, materializations, wait_for
from .test_spark_faults import in_background
from .spark_helpers import (
    NOT_COMPARED,
    TABLE_NAMES,
    CliRun,
    EdgeExport,
    columns_of,
    data_records,
    duckdb_warehouse,
    edge_export,
    folder_content,
    java_trap,
    materialize_cli,
    row,
    rows_of,
    rule_names,
    live_locations,
    reset_catalog,
    spark_folders,
    spark_warehouse,
)

# a daemon, a subprocess, Spark, Postgres or a browser; like every test on the cluster, these run on
# one test worker (conftest.pytest_collection_modifyitems), so they share one backfill
pytestmark = pytest.mark.slow

DAYS = ("2024-03-01", "2024-03-02", "2024-03-03")
EDGE_DAY = DAYS[1]  # the day with the hand-written files beside the realistic ones
REJECT_KEY = ["dt", "_source_file", "_source_line", "reason"]


def dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME holding a copy of the top-level dagster.yaml (embedded storage)."""
    path.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", path / "dagster.yaml")
    return path


def run_events(home: Path, run_id: str, *kinds: DagsterEventType) -> list:
    with DagsterInstance.from_config(str(home)) as instance:
        return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=set(kinds)).records]


def runs_of(home: Path) -> list:
    with DagsterInstance.from_config(str(home)) as instance:
        return instance.get_runs()


@dataclass
class Backfill:
    """The same three days of exports, materialized on Spark and on DuckDB, one run each."""

    landing: Landing
    edge: EdgeExport
    spark_dir: Path
    spark_home: Path
    spark_env: dict[str, str]
    duckdb_path: Path
    spark_run: CliRun
    new_applications: list[str]  # applications the master lists that the backfill started
    thrift_statements: int  # SQL statements the Thrift server ran during the Spark backfill

    @property
    def spark(self):
        env = self.spark_env
        return spark_warehouse(
            env["SHOPFLOW_SPARK_MASTER"], env["SHOPFLOW_SPARK_WAREHOUSE"], env["SHOPFLOW_SPARK_THRIFT"],
            env["SHOPFLOW_SPARK_REMOTE"],
        )

    @property
    def duckdb(self):
        return duckdb_warehouse(self.duckdb_path)


@pytest.fixture(scope="module")
def backfill(spark_sql, tmp_path_factory) -> Backfill:
    spark_cluster = spark_sql
    root = tmp_path_factory.mktemp("spark-engine")
    landing = Landing(root / "landing")
    rng = random.Random(20240302)
    for day in DAYS:
        write_day(landing.root, dt.date.fromisoformat(day), 40, rng)
    # The hand-written files join the realistic ones of one day, _SUCCESS written again last.
    (landing.day_dir(EDGE_DAY) / SUCCESS_MARKER).unlink()
    edge = edge_export(EDGE_DAY)
    for export_file in edge.files:
        landing.write(EDGE_DAY, export_file.name, export_file.content())
    landing.finish(EDGE_DAY)

    spark_dir = spark_sql.warehouse  # the Thrift server's: dbt's tables live there
    reset_catalog(spark_sql.thrift)  # another module's tables name its own warehouse
    spark_home = dagster_home(root / "dagster-home-spark")
    spark_env = command_env(
        landing,
        root / "unused.duckdb",
        DAGSTER_HOME=str(spark_home),
        SHOPFLOW_ENGINE="spark",
        SHOPFLOW_SPARK_MASTER=spark_cluster.master_url,
        # file:// URIs, as HDFS or S3 would be: the landing zone listed through fsspec, every file
        # read by the executors (the daemon test gives the warehouse as a path)
        SHOPFLOW_LANDING_DIR=landing.root.as_uri(),
        SHOPFLOW_SPARK_WAREHOUSE=spark_dir.as_uri(),
        SHOPFLOW_SPARK_THRIFT=spark_sql.thrift,
        SHOPFLOW_SPARK_REMOTE=spark_sql.remote,
    )
    before = {a.id for a in spark_cluster.applications()}
    statements_before = spark_sql.thrift_sql_executions()
    spark_backfill = in_background(
        lambda: materialize_cli(spark_env, "--select", "raw/orders*", "--partition-range", f"{DAYS[0]}...{DAYS[-1]}")
    )

    # DuckDB, while the Spark run waits on its cluster: the same range as one run, in process (the
    # CLI path of DuckDB is test_cli's). Neither touches the other's warehouse or the cluster.
    duckdb_path = root / "duckdb" / "shopflow.duckdb"
    started = time.monotonic()
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            ALL_ASSETS,
            selection="raw/orders*",
            resources={
                "landing": LandingZone(root=str(landing.root)),
                "warehouse": duckdb_warehouse(duckdb_path),
                "dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable()),
            },
            instance=instance,
            tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
            raise_on_error=False,
        )
    print(f"\nDuckDB: 3-day backfill, one run in process: {time.monotonic() - started:.0f} s")
    spark_run = spark_backfill.result()
    (root / "spark-backfill.log").write_text(spark_run.tail(10**9))
    print(f"Spark: 3-day backfill, one run: {spark_run.seconds:.0f} s")
    assert spark_run.returncode == 0, spark_run.tail()
    assert result.success, failure_messages(result)
    new_apps = [f"{a.name} ({a.id})" for a in spark_cluster.applications() if a.id not in before]
    thrift_statements = spark_sql.thrift_sql_executions() - statements_before

    return Backfill(
        landing, edge, spark_dir, spark_home, spark_env, duckdb_path, spark_run, new_apps, thrift_statements
    )


# --- 1. parity ------------------------------------------------------------------------------


def test_the_same_exports_give_the_same_tables_on_spark_and_duckdb(backfill, spark_cluster):
    spark, duck = backfill.spark, backfill.duckdb

    # One run for the three days, that the cluster's master lists, done by the applications named.
    (run,) = runs_of(backfill.spark_home)
    assert run.status == DagsterRunStatus.SUCCESS
    assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
        DAYS[0], DAYS[-1]
    )
    # The ingest ran in the Connect server's application, dbt in the Thrift server's: the backfill
    # started no application (no Spark driver) of its own.
    assert backfill.new_applications == []
    # each day's raw/orders materialization names the application that ingested it
    (app,) = [a for a in spark_cluster.applications() if a.name == "shopflow-connect" and a.active]
    ingested = {
        m.partition: m.metadata["spark_application_id"].value
        for m in (
            e.dagster_event.event_specific_data.materialization
            for e in run_events(backfill.spark_home, run.run_id, DagsterEventType.ASSET_MATERIALIZATION)
        )
        if m.asset_key.to_user_string() == "raw/orders"
    }
    assert ingested == {day: app.id for day in DAYS}
    # dbt's models and tests ran in the Thrift server's application
    manifest = json.loads(Path(shopflow_dbt_project.manifest_path).read_text())
    nodes = len([n for n in manifest["nodes"].values() if n["resource_type"] in ("model", "test")])
    assert backfill.thrift_statements >= nodes, (backfill.thrift_statements, nodes)
    started = {e.step_key: e.timestamp for e in run_events(backfill.spark_home, run.run_id, DagsterEventType.STEP_START)}
    for e in run_events(backfill.spark_home, run.run_id, DagsterEventType.STEP_SUCCESS):
        print(f"  step {e.step_key}: {e.timestamp - started[e.step_key]:.0f} s")

    # The layout (docs/contract.md): the catalog points each day at a version folder of it,
    # <warehouse>/<db>.db/<table>/dt=D/v=<version>/, which holds its Parquet files.
    for day in DAYS:
        for table, location in live_locations(spark, day).items():
            folder = spark_folders(backfill.spark_dir, day)[table]
            assert location and urlsplit(location).path.rstrip("/").rsplit("/", 1)[0] == str(folder), (table, location)
            assert urlsplit(location).path.rsplit("/", 1)[-1].startswith("v="), location
            assert list(Path(urlsplit(location).path).glob("*.parquet")), f"no Parquet at {location} ({table})"

    # Same columns and types (money DECIMAL(18,2), timestamps in UTC) ...
    for table in TABLE_NAMES:
        assert columns_of(spark, table) == columns_of(duck, table), table
    assert columns_of(spark, "analytics.fact_sales")["net_revenue"] == "DECIMAL(18,2)"
    assert columns_of(spark, "raw.orders")["updated_at"] == "TIMESTAMP WITH TIME ZONE"

    # ... and the same rows, but the load's own provenance (_loaded_at, _run_id).
    for table in TABLE_NAMES:
        columns = [c for c in columns_of(duck, table) if c not in NOT_COMPARED]
        spark_rows, duck_rows = rows_of(spark, table, columns), rows_of(duck, table, columns)
        assert len(spark_rows) == len(duck_rows), (table, len(spark_rows), len(duck_rows))
        assert spark_rows == duck_rows, (table, diff(spark_rows, duck_rows, columns))
    assert rows_of(spark, "raw.orders_rejected", REJECT_KEY) == rows_of(duck, "raw.orders_rejected", REJECT_KEY)

    # What the data holds, so that equal means right: every day built, every rule hit ...
    assert [d.isoformat() for (d,) in rows_of(spark, "analytics.daily_revenue", ["dt"])] == list(DAYS)
    reasons = [r for (r,) in rows_of(spark, "raw.orders_rejected", ["reason"], f"dt = DATE '{EDGE_DAY}'")]
    assert rule_names(reasons) == set(REJECT_REASONS)
    # ... each hand-written reject at its physical line (quoted newlines counted) with its rule ...
    edge_rejects = {
        (f, n): r
        for f, n, r in rows_of(
            spark, "raw.orders_rejected", ["_source_file", "_source_line", "reason"],
            f"dt = DATE '{EDGE_DAY}' AND _source_file LIKE 'x-edge-%'",
        )
    }
    assert {k: rule(r) for k, r in edge_rejects.items()} == backfill.edge.rejected_at
    # ... the hand-written rows loaded where they are in their files ...
    for order_id, where in backfill.edge.loaded_at.items():
        assert rows_of(spark, "raw.orders", ["_source_file", "_source_line"], f"order_id = '{order_id}'") == [where], order_id
    # ... and the winning versions (latest updated_at, then later file name, then later line) sold.
    sold = {
        r[0]: r[1:]
        for r in rows_of(
            spark, "analytics.fact_sales",
            ["order_id", "customer_id", "product_id", "quantity", "unit_price", "discount", "status", "updated_at"],
            f"dt = DATE '{EDGE_DAY}'",
        )
    }
    for order_id, winner in backfill.edge.winners.items():
        if not winner:
            assert order_id not in sold, order_id
            continue
        assert sold[order_id][:6] == (
            winner["customer_id"], winner["product_id"], int(winner["quantity"]), Decimal(winner["unit_price"]),
            Decimal(winner["discount"]), winner["status"],
        ), order_id
    # Nothing dropped: rows + rejects = the data records of the day's files.
    for day in DAYS:
        loaded = rows_of(spark, "raw.orders", ["count(*)"], f"dt = DATE '{day}'")[0][0]
        rejected = rows_of(spark, "raw.orders_rejected", ["count(*)"], f"dt = DATE '{day}'")[0][0]
        assert loaded > 0 and rejected > 0 and loaded + rejected == data_records(backfill.landing.day_dir(day)), day
    print(f"parity: {sum(len(rows_of(spark, t, ['1'])) for t in TABLE_NAMES)} rows compared")


def rule(reason: str) -> str:
    """A reason without the detail of a malformed row (which column it ran out at)."""
    return MALFORMED_ROW if reason.startswith(MALFORMED_ROW) else reason


def diff(left: list[tuple], right: list[tuple], columns: list[str], limit: int = 10) -> str:
    """The rows only one side has, for the assertion message."""
    only_left = [r for r in left if r not in right][:limit]
    only_right = [r for r in right if r not in left][:limit]
    return f"columns {columns}\nonly on Spark: {only_left}\nonly on DuckDB: {only_right}"


# --- 2. a missing column -------------------------------------------------------------------


def test_a_missing_column_fails_the_spark_run_once_naming_file_and_column_and_changes_nothing(backfill):
    day = DAYS[2]
    before = {d: folder_content(backfill.spark_dir, d) for d in DAYS}
    assert before[day]
    # D is re-exported with one more file, which lacks `discount`.
    (backfill.landing.day_dir(day) / SUCCESS_MARKER).unlink()
    columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
    backfill.landing.write(day, "no-discount.csv", csv_text([row("ND-1", day)], columns))
    backfill.landing.finish(day)

    run = materialize_cli(backfill.spark_env, "--select", "raw/orders*", "--partition", day)
    print(f"\nSpark: a missing column, raw/orders*: {run.seconds:.0f} s")

    assert run.returncode != 0, run.tail()
    assert f"dt={day}/no-discount.csv line 1 (header): missing required column 'discount'" in run.output, run.tail()
    failed = runs_of(backfill.spark_home)[0]  # the newest
    assert failed.status == DagsterRunStatus.FAILURE
    home = backfill.spark_home
    # one attempt of raw/orders, no retry, and the dbt step never started
    assert [e.step_key for e in run_events(home, failed.run_id, DagsterEventType.STEP_START)] == ["raw__orders"]
    assert [e.step_key for e in run_events(home, failed.run_id, DagsterEventType.STEP_FAILURE)] == ["raw__orders"]
    assert run_events(home, failed.run_id, DagsterEventType.STEP_UP_FOR_RETRY, DagsterEventType.STEP_RESTARTED) == []
    assert run_events(home, failed.run_id, DagsterEventType.ASSET_MATERIALIZATION) == []
    # nothing of D (nor of any other day) changed
    assert {d: folder_content(backfill.spark_dir, d) for d in DAYS} == before


# --- 3. unattended, on the daemon: a re-export that empties a day ------------------------------

SENSOR_INTERVAL = 3
@pytest.fixture
def spark_daemon(backfill, spark_sql, slack_server, tmp_path):
    """A real dagster-daemon on workspace.yaml with SHOPFLOW_ENGINE=spark on the session's cluster
    (the ingest through its Connect server, dbt through its Thrift server) and the backfill's Spark
    warehouse, a new landing zone, embedded storage (a DAGSTER_HOME holding a copy of the top-level
    dagster.yaml), Slack's stand-in. The daemon, its code server and its run workers have no Java:
    JAVA_HOME unset and, first on PATH, a `java` that records any call and fails. Yields (instance,
    landing, log, the file where `java` records its calls)."""
    spark_cluster = spark_sql
    home = dagster_home(tmp_path / "dagster_home")
    landing = Landing(tmp_path / "landing")
    landing.root.mkdir()
    env = command_env(
        landing,
        tmp_path / "unused.duckdb",
        DAGSTER_HOME=str(home),
        SHOPFLOW_ENGINE="spark",
        SHOPFLOW_SPARK_MASTER=spark_cluster.master_url,
        SHOPFLOW_LANDING_DIR=landing.root.as_uri(),  # the sensor lists it through fsspec
        SHOPFLOW_SPARK_WAREHOUSE=str(backfill.spark_dir),
        SHOPFLOW_SPARK_THRIFT=spark_cluster.thrift,
        SHOPFLOW_SPARK_REMOTE=spark_cluster.remote,
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        SHOPFLOW_SLACK_API_URL=slack_server.api_url,
        SHOPFLOW_SENSOR_INTERVAL_SECONDS=str(SENSOR_INTERVAL),
    )
    env.pop("JAVA_HOME", None)
    trap, calls = java_trap(tmp_path)
    env["PATH"] = f"{trap}:{env.get('PATH', '')}"
    log = tmp_path / "daemon.log"
    with DagsterInstance.from_config(str(home)) as instance, daemon_process(env, log):
        yield instance, landing, log, calls


def test_unattended_a_re_export_that_empties_a_day_flows_through_spark_to_ready_once(
    spark_daemon, backfill, spark_cluster, slack_server
):
    """Nobody at the keyboard and no Java on the Dagster side: D's export lands with _SUCCESS -> the
    export sensor's run: raw/orders (on the Connect server), then fact_sales and daily_revenue (dbt
    through the Thrift server) -> READY reaches Slack's stand-in; one materialization of each asset;
    the trap `java` was never called. The export is D's re-export that empties it (a header-only
    file, a file of rows now all rejected): D ends empty in raw.orders, fact_sales and
    daily_revenue, and not a byte of the other days changes."""
    instance, landing, log, java_calls = spark_daemon
    day, others = DAYS[1], [DAYS[0], DAYS[2]]
    spark = backfill.spark
    where = f"dt = DATE '{day}'"
    assert rows_of(spark, "analytics.daily_revenue", ["count(*)"], where) == [(1,)]
    untouched = {d: folder_content(backfill.spark_dir, d) for d in others}
    before = {a.id for a in spark_cluster.applications()}

    landing.write(day, "empty.csv", csv_text([]))
    landing.write(day, "all-bad.csv.gz", csv_text([row("GONE-1", day, status="lost"), row("GONE-2", day, quantity="0")]))
    landing.finish(day)
    landed = time.monotonic()

    wait_for(lambda: materializations(instance, day)["daily_revenue"] >= 1, 1200, "daily_revenue", log)
    print(f"\nSpark, daemon: _SUCCESS -> daily_revenue materialized: {time.monotonic() - landed:.0f} s")
    ready = lambda: [m for m in slack_server.delivered if m.startswith(":white_check_mark: READY")]  # noqa: E731
    wait_for(ready, 120, "the READY message", log)
    time.sleep(4 * SENSOR_INTERVAL)  # and nothing more comes

    # exactly once, on Spark, no failure
    assert materializations(instance, day) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    assert instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE])) == []
    assert [a.name for a in spark_cluster.applications() if a.id not in before] == []  # no driver of its own
    assert not java_calls.exists(), java_calls.read_text()
    (message,) = ready()
    assert message.splitlines()[:4] == [
        f":white_check_mark: READY: fact_sales for {day} landed", f"• Day: {day}", "• Rows: 0", "• Net revenue: 0.00"
    ]
    assert not [m for m in slack_server.delivered if "BROKE" in m]

    # D is empty downstream; its rows are all in the rejects; the other days did not change
    assert rows_of(spark, "raw.orders", ["count(*)"], where) == [(0,)]
    assert rows_of(spark, "raw.orders_rejected", ["_source_file", "_source_line", "reason"], where) == [
        ("all-bad.csv.gz", 2, "status is not one of placed, shipped, delivered, cancelled, refunded"),
        ("all-bad.csv.gz", 3, "quantity is below 1"),
    ]
    assert rows_of(spark, "analytics.fact_sales", ["count(*)"], where) == [(0,)]
    assert rows_of(spark, "analytics.daily_revenue", ["count(*)"], where) == [(0,)]
    gone = {table: location for table, location in live_locations(spark, day).items() if table != "raw.orders_rejected"}
    assert gone == dict.fromkeys(gone), f"the catalog still has the emptied day: {gone}"
    assert {d: folder_content(backfill.spark_dir, d) for d in others} == untouched
    assert [d.isoformat() for (d,) in rows_of(spark, "analytics.daily_revenue", ["dt"])] == others
