"""Benchmark 7: raw/orders on Spark for one big day (default 20,000,000 order lines, about 2 GB of
CSV), laid out in 8 files and then in 1 file, on a local standalone cluster (one master, one
worker, 2 cores), against bare Spark on the same files in the same run (spark-submit of `read.csv`
with the schema -> Parquet); with --duckdb also the DuckDB engine. Target: raw/orders on Spark
<= 2x bare Spark, for both layouts. With --connect both go through the cluster's Spark Connect
server instead (the bare job is a Connect session's read.csv -> Parquet; the ingest runs with
SHOPFLOW_SPARK_REMOTE): no application starts, so the figures hold the work alone.

    .venv/bin/python -m benchmarks.spark [--lines 20000000] [--files 8,1] [--master spark://host:7077] [--connect] [--duckdb]

Without --master it starts a cluster with scripts/spark-cluster on the default ports (with its
Thrift server, whose catalog the ingest publishes days to) and stops it after; with --master the
Thrift server is SHOPFLOW_SPARK_THRIFT's default, 127.0.0.1:10000. Both Spark figures include the
application's start under spark-submit (spark-submit to exit, or step start to materialization).
Each side runs twice, in turns (bare, ours, bare, ours: the second ingest re-publishes the day), and
each side's best is taken: a long-running cluster has run both before, and neither side's first
run (the executors' code not yet compiled, the catalog's client not yet connected) is the figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, materialize

from benchmarks._data import REPO_ROOT, write_day
from shopflow_assets.defs.ingest import raw_orders_asset
from shopflow_assets.engines import DuckDBWarehouse, SparkWarehouse
from shopflow_assets.engines.spark import spark_home
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.settings import Settings

raw_orders = raw_orders_asset(Settings.from_env({"SHOPFLOW_ENGINE": "spark"}))  # unbound: each run binds its warehouse

DAY = dt.date(2024, 3, 1)

BARE_SCHEMA = (
    "order_id STRING, line_number INT, customer_id STRING, product_id STRING, quantity INT, "
    "unit_price DECIMAL(18,2), discount DECIMAL(18,2), status STRING, ordered_at TIMESTAMP, updated_at TIMESTAMP"
)
BARE_JOB = f"""
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
spark.read.csv(sys.argv[2:], header=True, schema={BARE_SCHEMA!r}).write.mode("overwrite").parquet(sys.argv[1])
spark.stop()
"""


def bare_spark(master: str, files: list[Path], out: Path, conf: dict[str, str]) -> float:
    job = out.parent / "bare_job.py"
    job.write_text(BARE_JOB)
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", master, "--name", "bare-spark-csv-to-parquet"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run([*command, str(job), str(out), *map(str, files)], check=True, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    return time.perf_counter() - started


def bare_connect(remote: str, files: list[Path], out: Path) -> float:
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = SparkSession.builder.remote(remote).create()
    try:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        spark.read.csv([str(f) for f in files], header=True, schema=BARE_SCHEMA).write.mode("overwrite").parquet(str(out))
    finally:
        spark.stop()
    return time.perf_counter() - started


def pipeline(landing: Path, warehouse) -> tuple[float, int]:
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [raw_orders],
            partition_key=str(DAY),
            instance=instance,
            resources={"landing": LandingZone(root=str(landing)), "warehouse": warehouse},
        )
        logs = instance.all_logs(result.run_id)
        start = next(e.timestamp for e in logs if e.dagster_event_type == DagsterEventType.STEP_START)
        done = next(e.timestamp for e in logs if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION)
        loaded = result.asset_materializations_for_node("raw__orders")[0].metadata["rows_loaded"].value
    return done - start, loaded


def start_cluster(directory: Path, connect: bool) -> str:
    # the ingest alone has two cores, as the figures were taken: with --connect, the Connect
    # server's two beside the Thrift server's one; under spark-submit, two more for the ingest's
    # own application (the servers stay idle: the ingest publishes its days through the Thrift
    # server's catalog)
    out = subprocess.run(
        [str(REPO_ROOT / "scripts" / "spark-cluster"), "start", "--dir", str(directory)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "SPARK_WORKER_CORES": "3" if connect else "5", "SHOPFLOW_SPARK_WAREHOUSE": str(directory / "warehouse")},
    ).stdout
    return out.strip().splitlines()[-1]


def forget_raw_tables(spark: SparkWarehouse) -> None:
    """The catalog's raw tables name the warehouse of the layout before: each layout has its own."""
    with spark.thrift_catalog() as catalog:
        for table in ("raw.orders", "raw.orders_rejected"):
            if catalog.exists(table):
                catalog.run(f"DROP TABLE {table}")


def measure(root: Path, master: str, remote: str, lines: int, files: int, duckdb_too: bool) -> dict:
    """One layout: the same lines in `files` files; bare Spark before and after ours."""
    started = time.perf_counter()
    paths = write_day(root / "landing", DAY, lines, files=files)
    size = sum(f.stat().st_size for f in paths)
    print(f"[{files} file(s)] wrote {lines:,} lines, {size / 1e9:.2f} GB, in {time.perf_counter() - started:.0f} s", flush=True)
    spark = SparkWarehouse(master=master, remote=remote, warehouse_dir=str(root / "spark-warehouse"))
    forget_raw_tables(spark)
    conf = {k: v for k, v in spark.spark_conf().items() if k != "spark.sql.files.maxPartitionBytes"}
    bare_run = (lambda out: bare_connect(remote, paths, out)) if remote else (lambda out: bare_spark(master, paths, out, conf))
    bare, ours = [], []
    for turn in (1, 2):
        bare.append(bare_run(root / f"bare-{turn}"))
        print(f"[{files} file(s)] bare Spark, run {turn}: {bare[-1]:.1f} s", flush=True)
        seconds, loaded = pipeline(root / "landing", spark)
        ours.append(seconds)
        print(f"[{files} file(s)] raw/orders on Spark, run {turn}: {seconds:.1f} s ({loaded:,} rows)", flush=True)
    result = {"files": files, "size": size, "bare": bare, "ours": ours, "loaded": loaded}
    if duckdb_too:
        duck, _ = pipeline(root / "landing", DuckDBWarehouse(path=str(root / "w.duckdb"), memory_limit="4GB"))
        print(f"[{files} file(s)] raw/orders on DuckDB: {duck:.1f} s", flush=True)
        result["duckdb"] = duck
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000_000)
    parser.add_argument("--files", default="8,1", help="the layouts, comma-separated file counts (default 8,1)")
    parser.add_argument("--master", default=None, help="a running master; default: start a local cluster")
    parser.add_argument("--connect", default=None, nargs="?", const="sc://127.0.0.1:15002",
                        help="through the Spark Connect server (default sc://127.0.0.1:15002)")
    parser.add_argument("--duckdb", action="store_true", help="also the DuckDB engine on the same files")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    layouts = [int(n) for n in args.files.split(",")]
    results = []
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / "data" if (REPO_ROOT / "data").is_dir() else None) as tmp:
        root = Path(tmp)
        master = args.master or start_cluster(root / "cluster", bool(args.connect))
        try:
            for files in layouts:
                results.append(measure(root / f"files-{files}", master, args.connect or "", args.lines, files, args.duckdb))
                shutil.rmtree(root / f"files-{files}")  # 2 GB of CSV and as much Parquet each
        finally:
            if not args.master:
                subprocess.run([str(REPO_ROOT / "scripts" / "spark-cluster"), "stop", "--dir", str(root / "cluster")], check=False)
    how = "a Connect session's" if args.connect else "spark-submit of"
    print(f"\n{args.lines:,} lines; bare Spark = {how} read.csv(schema) -> Parquet; each side's best of two runs, in turns")
    print(f"{'files':>5}  {'CSV GB':>6}  {'bare Spark s':>12}  {'raw/orders s':>12}  {'ratio':>6}  target <= 2x")
    for r in results:
        baseline, best = min(r["bare"]), min(r["ours"])
        extra = f"  (DuckDB engine {r['duckdb']:.1f} s)" if "duckdb" in r else ""
        print(
            f"{r['files']:>5}  {r['size'] / 1e9:>6.2f}  {baseline:>12.1f}  {best:>12.1f}  {best / baseline:>5.2f}x  "
            f"runs: bare {', '.join(f'{s:.1f}' for s in r['bare'])}; ours {', '.join(f'{s:.1f}' for s in r['ours'])}{extra}"
        )


if __name__ == "__main__":
    main()
