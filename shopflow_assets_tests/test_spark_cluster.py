"""The suite's Spark standalone cluster (scripts/spark-cluster, the `spark_cluster` fixture): a real
PySpark application runs on it and the master records it FINISHED; a lost worker can be simulated
and brought back; stopping leaves no process behind."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys

import pytest

from .spark_cluster import SCRIPT, free_ports, start_spark_cluster

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

COUNT_RANGE = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
rows = spark.range(0, 100000, numPartitions=4).count()
# Python on the executors as well (the venv's interpreter, passed as PYSPARK_PYTHON)
total = spark.sparkContext.parallelize(range(1, 101), 2).map(lambda x: x * 2).sum()
print(f"rows={rows} total={total}")
spark.stop()
"""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_an_application_runs_on_the_cluster_and_is_listed_finished(spark_cluster, tmp_path):
    script = tmp_path / "count_range.py"
    script.write_text(COUNT_RANGE)

    result = spark_cluster.submit(script, name="shopflow-test-count-range", conf={"spark.cores.max": "1"})

    assert result.returncode == 0, result.stderr[-4000:]
    assert "rows=100000 total=10100" in result.stdout
    app = spark_cluster.wait_for_application("shopflow-test-count-range", states=("FINISHED",))
    assert app.id.startswith("app-") and not app.active
    assert app.raw["cores"] == 1  # spark.cores.max
    listed = [(a.name, a.id, a.state) for a in spark_cluster.applications()]
    assert ("shopflow-test-count-range", app.id, "FINISHED") in listed
    assert spark_cluster.alive_workers() == 1


def test_a_lost_worker_comes_back_and_stop_leaves_no_process(spark_cluster, tmp_path):
    other = start_spark_cluster(tmp_path / "cluster")
    try:
        assert other.master_url.startswith("spark://127.0.0.1:")
        assert {other.master_port, other.web_port, other.worker_web_port}.isdisjoint(
            {spark_cluster.master_port, spark_cluster.web_port, spark_cluster.worker_web_port}
        )
        running = other.processes()
        assert {p.pgid for p in running} == {p.pid for p in running if p.pid == p.pgid}, running
        assert len({p.pgid for p in running}) == 2, running  # the master's group, the worker's

        other.kill_worker()
        assert other.alive_workers() == 0
        assert len({p.pgid for p in other.processes()}) == 1  # the master alone

        other.start_worker()
        assert other.alive_workers() == 1
        assert [w["state"] for w in other.page()["workers"]].count("ALIVE") == 1
    finally:
        other.stop()  # raises if any of its processes remains

    assert other.processes() == []
    if shutil.which("ps"):
        table = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,args="], capture_output=True, text=True).stdout
        ours = [
            row for row in table.splitlines()
            if int(row.split()[1]) in other.process_groups or str(other.directory) in row
        ]
        assert ours == []
    for port in (other.master_port, other.web_port, other.worker_web_port):
        assert not _listening(port), port
    # the session's cluster is untouched
    assert spark_cluster.alive_workers() == 1


def test_the_thrift_server_keeps_its_catalog_in_postgres_and_serves_one_warehouse(spark_sql, tmp_path, monkeypatch):
    """The Thrift server (what dbt runs through) answers SQL with PyHive as dbt-spark connects; the
    tables it creates are rows of the metastore in PostgreSQL, not of a Derby database, and the
    Connect server (what the ingest runs on) shares them both ways; the engine's pre-dbt check
    passes for its warehouse only, and says so when the server does not answer."""
    from dagster import Failure
    from pyhive import hive

    from shopflow_assets.engines.spark import SparkServerUnreachable, SparkWarehouse

    host, port = spark_sql.thrift.split(":")
    connection = hive.connect(host=host, port=int(port), auth="NONE")
    try:
        cursor = connection.cursor()
        cursor.execute("CREATE DATABASE IF NOT EXISTS shopflow_cluster_test")
        cursor.execute("CREATE TABLE IF NOT EXISTS shopflow_cluster_test.probe (n INT) USING parquet")
        cursor.execute("INSERT OVERWRITE shopflow_cluster_test.probe VALUES (1), (2), (3)")
        cursor.execute("SELECT sum(n) FROM shopflow_cluster_test.probe")
        assert cursor.fetchall() == [(6,)]
    finally:
        connection.close()
    psql = shutil.which("psql") or sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]
    tables = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(spark_sql.metastore_port), "-U", "metastore", "-d", "metastore",
         "-tAc", 'SELECT d."NAME" || \'.\' || t."TBL_NAME" FROM "TBLS" t JOIN "DBS" d USING ("DB_ID")'],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "shopflow_cluster_test.probe" in tables
    # the Connect server reads the same catalog, and what it catalogs the Thrift server sees
    from pyspark.sql import SparkSession

    # a Connect session marks its process's environment (SPARK_CONNECT_MODE_ENABLED) for good:
    # monkeypatch takes the mark away again after the test
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
    spark = SparkSession.builder.remote(spark_sql.remote).create()
    try:
        assert spark.sql("SELECT sum(n) FROM shopflow_cluster_test.probe").collect()[0][0] == 6
        spark.sql("CREATE TABLE IF NOT EXISTS shopflow_cluster_test.from_connect (n INT) USING parquet")
        spark.sql("INSERT OVERWRITE shopflow_cluster_test.from_connect VALUES (7)")
    finally:
        spark.stop()
    connection = hive.connect(host=host, port=int(port), auth="NONE")
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT n FROM shopflow_cluster_test.from_connect")
        assert cursor.fetchall() == [(7,)]
    finally:
        connection.close()
    assert (spark_sql.warehouse / "shopflow_cluster_test.db" / "probe").is_dir()
    assert not list(spark_sql.directory.rglob("derby.log")) and not list(spark_sql.directory.rglob("metastore_db"))

    served = SparkWarehouse(master=spark_sql.master_url, warehouse_dir=f"file://{spark_sql.warehouse}/", thrift=spark_sql.thrift)
    served.check_dbt_target()  # the same folder, written another way
    other = SparkWarehouse(master=spark_sql.master_url, warehouse_dir=str(tmp_path / "other"), thrift=spark_sql.thrift)
    with pytest.raises(Failure) as wrong:
        other.check_dbt_target()
    assert not wrong.value.allow_retries
    assert str(spark_sql.warehouse) in wrong.value.description and str(tmp_path / "other") in wrong.value.description
    (free,) = free_ports(1)
    gone = SparkWarehouse(master=spark_sql.master_url, warehouse_dir=str(spark_sql.warehouse), thrift=f"127.0.0.1:{free}")
    with pytest.raises(SparkServerUnreachable, match=f"127.0.0.1:{free} does not answer"):
        gone.check_dbt_target()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"SHOPFLOW_SPARK_METASTORE_URL": "jdbc:derby:;databaseName=metastore_db;create=true"}, "is not a PostgreSQL JDBC URL"),
        # a password in the URL is not echoed
        ({"SHOPFLOW_SPARK_METASTORE_URL": "jdbc:mysql://db/m?password=hunter2"}, "'jdbc:mysql://db/m' is not a PostgreSQL JDBC URL"),
        ({"SPARK_THRIFT_PORT": "10k"}, "SPARK_THRIFT_PORT='10k' is not a number"),
        (
            {"SHOPFLOW_SPARK_METASTORE_URL": "jdbc:postgresql://db/m", "SHOPFLOW_SPARK_METASTORE_PASSWORD": "pw\nspark.evil=1"},
            "holds a line break",
        ),
        ({"SHOPFLOW_SPARK_WAREHOUSE": "/elsewhere"}, "serve the warehouse /first, whose tables their metastore catalogs"),
    ],
)
def test_the_cluster_script_refuses_bad_sql_settings_before_starting_anything(tmp_path, settings, message):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "warehouse.location").write_text("/first\n")  # servers of this folder started before
    done = subprocess.run(
        [str(SCRIPT), "start", "--dir", str(tmp_path / "cluster")],
        env={**os.environ, "SPARK_CLUSTER_PYTHON": sys.executable, **settings},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "cluster" / "master.pid").exists()


def test_a_thrift_server_that_accepts_and_never_answers_is_given_up_on(tmp_path):
    """A hung server must not hold the dbt step (and the warehouse's pool slot) for ever."""
    from shopflow_assets.engines.spark import SparkServerUnreachable, SparkWarehouse

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        warehouse = SparkWarehouse(master="spark://127.0.0.1:1", warehouse_dir=str(tmp_path), thrift=f"127.0.0.1:{port}")
        with pytest.raises(SparkServerUnreachable, match=f"127.0.0.1:{port} does not answer"):
            warehouse.check_dbt_target(timeout_seconds=1)
