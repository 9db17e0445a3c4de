"""Fixtures: a temporary landing zone and warehouse, exports written like the order system does,
and in-process runs of the real assets (real DuckDB, real dbt, a real ephemeral Dagster instance)."""

from __future__ import annotations

import csv
import fcntl
import datetime as dt
import gzip
import io
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Sequence

import os
import shutil
import sys

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize
from dagster_dbt import DbtCliResource

from shopflow_assets.contract.export import REQUIRED_COLUMNS
from shopflow_assets.defs.alerts.sensor import build_alerts_sensor
from shopflow_assets.defs.ingest import export_sensor, raw_orders_asset
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.models import dbt_models_asset
from shopflow_assets.defs.models.project import dbt_executable, shopflow_dbt_project
from shopflow_assets.defs.operations import daily_schedule, watchdog_sensor
from shopflow_assets.engines import DuckDBWarehouse
from shopflow_assets.settings import Settings

# The suite's own settings: the defaults, with short retry delays (the default base is 2 s).
TEST_SETTINGS = Settings.from_env({"SHOPFLOW_RETRY_DELAY_SECONDS": "0.5"})
REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's dagster, dagster-daemon, dg, ... (activated or not)
FACT_SALES = AssetKey("fact_sales")
DAILY_REVENUE = AssetKey("daily_revenue")
RAW_ORDERS = AssetKey(["raw", "orders"])
# The definitions as the suite's settings build them, unbound (each test gives its own resources).
raw_orders = raw_orders_asset(TEST_SETTINGS)
shopflow_dbt_models = dbt_models_asset(TEST_SETTINGS)
ALL_ASSETS = [raw_orders, shopflow_dbt_models]
export_landed_sensor = export_sensor(TEST_SETTINGS)
alerts_sensor = build_alerts_sensor(TEST_SETTINGS)
run_watchdog_sensor = watchdog_sensor(TEST_SETTINGS)
daily_0200_schedule = daily_schedule(TEST_SETTINGS)


def line(
    order_id: str,
    line_number: int | str = 1,
    *,
    day: str = "2024-03-01",
    quantity: int | str = 1,
    unit_price: str = "10.00",
    discount: str = "0.00",
    status: str = "placed",
    updated_at: str | None = None,
    customer_id: str = "C-1",
    product_id: str = "P-1",
    ordered_at: str | None = None,
) -> dict[str, str]:
    """One order line as the exporter writes it (every field text)."""
    ordered = ordered_at or f"{day}T12:00:00+00:00"
    return {
        "order_id": order_id,
        "line_number": str(line_number),
        "customer_id": customer_id,
        "product_id": product_id,
        "quantity": str(quantity),
        "unit_price": unit_price,
        "discount": discount,
        "status": status,
        "ordered_at": ordered,
        "updated_at": updated_at or ordered,
    }


def csv_text(rows: Iterable[dict[str, str]], columns: Sequence[str] = REQUIRED_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class Landing:
    root: Path

    def day_dir(self, day: str) -> Path:
        return self.root / "orders" / f"dt={day}"

    def write(self, day: str, name: str, content: str | bytes) -> Path:
        directory = self.day_dir(day)
        directory.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8") if isinstance(content, str) else content
        if name.endswith(".gz") and not data.startswith(b"\x1f\x8b"):  # not gzip yet
            data = gzip.compress(data)
        path = directory / name
        path.write_bytes(data)
        return path

    def finish(self, day: str) -> None:
        (self.day_dir(day) / "_SUCCESS").touch()

    def export(self, day: str, files: dict[str, str | bytes]) -> None:
        """A whole export: the files, then `_SUCCESS`."""
        for name, content in files.items():
            self.write(day, name, content)
        self.finish(day)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster for a module's daemon tests (postgres_cluster.py)."""
    from .postgres_cluster import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.directory, ignore_errors=True)


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    root = tmp_path / "landing"
    root.mkdir()
    return Landing(root)


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse" / "shopflow.duckdb"


@pytest.fixture
def resources(landing: Landing, warehouse_path: Path) -> dict:
    return {
        "landing": LandingZone(root=str(landing.root)),
        "warehouse": DuckDBWarehouse(path=str(warehouse_path)),
        "dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable()),
    }


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def run(resources: dict, instance: DagsterInstance):
    """Materialize a selection for one day in process; returns the result (never raises)."""

    def _run(day: str, selection: str | list[str] = "*") -> ExecuteInProcessResult:
        return materialize(
            ALL_ASSETS,
            selection=selection,
            partition_key=day,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )

    return _run


def command_env(landing: "Landing", warehouse_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `dagster`/`dg` subprocess: this one's without any SHOPFLOW_, DAGSTER_ or
    SLACK_ setting, then the temporary landing zone and warehouse, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_", "SLACK_"))}
    env.update(SHOPFLOW_LANDING_DIR=str(landing.root), SHOPFLOW_WAREHOUSE=str(warehouse_path))
    env.update(extra)  # may name the landing zone otherwise (a file:// URI)
    return env


def query(warehouse_path: Path, sql: str, params: Sequence | None = None) -> list[tuple]:
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql, params or []).fetchall()


def snapshot(warehouse_path: Path) -> dict[str, list[tuple]]:
    """Every row of every table in the warehouse, sorted: to prove that nothing changed."""
    if not warehouse_path.exists():
        return {}
    tables = query(
        warehouse_path,
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' ORDER BY 1",
    )
    return {
        t: sorted(query(warehouse_path, f"SELECT * FROM {t}"), key=repr) for (t,) in tables
    }


def money(value: str | Decimal) -> Decimal:
    return Decimal(value).quantize(Decimal("0.01"))


def failure_messages(result: ExecuteInProcessResult) -> str:
    from shopflow_assets.defs.alerts.sensor import step_error_text

    return "\n".join(step_error_text(e.step_failure_data) for e in result.all_events if e.is_step_failure)


def day_of(value: str) -> dt.date:
    return dt.date.fromisoformat(value)


SLACK_TOKEN = "xoxb-test-token-0000"


@pytest.fixture
def slack_server():
    from .slack_standin import start_slack_standin

    standin = start_slack_standin()
    yield standin
    standin.stop()


@pytest.fixture
def slack(slack_server):
    from shopflow_assets.defs.alerts.slack import ShopflowSlack

    return ShopflowSlack(
        token=SLACK_TOKEN,
        channel="#shopflow-alerts",
        api_url=slack_server.api_url,
        timeout_seconds=5,
    )


@pytest.fixture(autouse=True)
def saved_parse_lock(request, tmp_path_factory):
    """dbt's saved parse (shopflow_dbt/target/partial_parse.msgpack) is shared by every dbt run of
    the suite, and a dbt run with other settings replaces it. Tests share this lock; one marked
    `reads_dbt_parse_events` holds it alone, so that no dbt run of another pytest-xdist worker
    replaces the saved parse between its own runs."""
    exclusive = request.node.get_closest_marker("reads_dbt_parse_events") is not None
    lock = tmp_path_factory.getbasetemp().parent / "shopflow-dbt-saved-parse.lock"  # shared by the workers
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order pytest-xdist hands tests out in (`--dist loadgroup`: the biggest group first,
    then one test at a time, in this order).
    - Every test on a Spark cluster is in one group, so one worker starts a cluster, not both:
      starting one (master, worker, metastore, two servers) is heavy work for two cores, and
      each holds gigabytes of memory while it runs.
    - Slow tests come before quick ones, so the last tests handed out are short and the two
      workers end together."""
    for item in items:
        if "spark_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("spark"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files keep their order


@pytest.fixture(scope="session", autouse=True)
def spark_on_loopback():
    """Spark drivers and executors of the tests talk over loopback only (the machine's name may
    resolve to another interface); spark-submit reads this from the environment it inherits."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    yield


@pytest.fixture(scope="session", autouse=True)
def jvms_compile_quickly():
    """The tests' JVMs (Spark's daemons, servers, executors and drivers, which inherit this
    environment) compile with C1 only: they live minutes on small data, where the optimizing
    compiler's work is never won back, and the suite is bound by the CPU of two cores. A setting of
    the tests: the cluster of scripts/spark-cluster and the benchmarks keep the JVM's default."""
    os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")
    yield


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone master and one worker (5 cores, 7g for executors) on 127.0.0.1 on free
    ports, for the whole session of the pytest-xdist worker that runs the tests on it (they are
    one group: pytest_collection_modifyitems); run applications one at a time. Yields a
    `spark_cluster.SparkCluster`: `master_url`, `web_url`, `applications()`, `alive_workers()`,
    `wait_for_application(name)`, `submit(script, name=...)`, `kill_worker()`, `start_worker()`
    (idempotent: a test that kills the worker restarts it in a `finally`). Stopped at the end, with
    a check that no process of it remains."""
    from .spark_cluster import SparkClusterError, start_spark_cluster

    try:
        cluster = start_spark_cluster(tmp_path_factory.mktemp("spark-cluster"))
    except SparkClusterError as error:
        pytest.fail(str(error), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def spark_sql(spark_cluster):
    """`spark_cluster` with its Hive metastore (a local PostgreSQL), its Spark Thrift Server (what
    dbt runs on) and its Spark Connect server (what the ingest runs on) started. Its warehouse is
    `spark_sql.warehouse`, their addresses `spark_sql.thrift` and `spark_sql.remote`."""
    from .spark_cluster import SparkClusterError

    try:
        return spark_cluster.start_sql()
    except SparkClusterError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def fresh_catalog(spark_sql):
    """`spark_sql` whose shared catalog has none of the four tables (their files stay): for a
    test that loads into a warehouse of its own, since the catalog's tables name one warehouse."""
    from .spark_helpers import reset_catalog

    reset_catalog(spark_sql.thrift)
    return spark_sql
