"""The dbt project on Spark (target `spark`: dbt-spark's session method, a local[2] master): the same
exports give the same fact_sales and daily_revenue as on DuckDB (DESIGN.md "Engines").

The raw tables come from the DuckDB pipeline, exported the way the Spark ingest lays them out
(path-based Parquet under <warehouse>/raw.db/<table>/dt=YYYY-MM-DD/, nothing in the metastore);
dbt registers them (on-run-start) and builds the marts; DuckDB reads the marts' Parquet back."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from shopflow_assets.cli import write_day

from .conftest import BIN, REPO_ROOT, failure_messages, query

DBT_PROJECT = REPO_ROOT / "shopflow_dbt"
DAY1, DAY2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
MARTS = ("fact_sales", "daily_revenue")


def dbt_spark_build(tmp_path: Path, spark_warehouse: Path, min_date: dt.date, max_date: dt.date) -> float:
    """`dbt build --target spark` for [min_date, max_date), run from shopflow_dbt as Dagster would;
    its artifacts and logs in tmp_path (never shopflow_dbt/target, where the manifest lives)."""
    vars_ = {
        "min_date": min_date.isoformat(),
        "max_date": max_date.isoformat(),
        "spark_warehouse": str(spark_warehouse),
        "spark_master": "local[2]",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_"))}
    started = time.monotonic()
    done = subprocess.run(
        [
            str(BIN / "dbt"), "build", "--target", "spark", "--profiles-dir", ".",
            "--vars", json.dumps(vars_),
            "--target-path", str(tmp_path / "dbt-target"), "--log-path", str(tmp_path / "dbt-logs"),
        ],
        cwd=DBT_PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return time.monotonic() - started


def export_raw_like_the_spark_ingest(warehouse_path: Path, spark_warehouse: Path) -> None:
    (spark_warehouse / "raw.db").mkdir(parents=True)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        for table in ("orders", "orders_rejected"):
            con.execute(
                f"COPY (SELECT * FROM raw.{table}) TO '{spark_warehouse}/raw.db/{table}' "
                "(FORMAT parquet, PARTITION_BY (dt))"
            )


def spark_rows(warehouse_path: Path, spark_warehouse: Path, table: str, columns: list[str]) -> list[tuple]:
    files = spark_warehouse / "analytics.db" / table / "*" / "*.parquet"
    if not list(files.parent.parent.glob("*/*.parquet")):
        return []
    return query(
        warehouse_path,
        f"SELECT {', '.join(columns)} FROM read_parquet('{files}', hive_partitioning = true) ORDER BY ALL",
    )


def spark_types(warehouse_path: Path, spark_warehouse: Path, table: str) -> dict[str, str]:
    files = spark_warehouse / "analytics.db" / table / "*" / "*.parquet"
    return {
        name: type_
        for name, type_, *_ in query(
            warehouse_path, f"DESCRIBE SELECT * FROM read_parquet('{files}', hive_partitioning = true)"
        )
    }


def duckdb_columns(warehouse_path: Path, table: str) -> dict[str, str]:
    return {name: type_ for name, type_, *_ in query(warehouse_path, f"DESCRIBE analytics.{table}")}


def duckdb_rows(warehouse_path: Path, table: str, columns: list[str], day: dt.date | None = None) -> list[tuple]:
    where = f"WHERE dt = DATE '{day}'" if day else ""
    return query(warehouse_path, f"SELECT {', '.join(columns)} FROM analytics.{table} {where} ORDER BY ALL")


def parquet_files(spark_warehouse: Path, table: str, day: dt.date) -> dict[str, float]:
    folder = spark_warehouse / "analytics.db" / table / f"dt={day}"
    return {p.name: p.stat().st_mtime for p in folder.glob("*.parquet")}


def test_spark_marts_equal_duckdb_and_an_emptied_day_ends_empty(run, landing, warehouse_path, tmp_path):
    rng = random.Random(20240301)
    for day in (DAY1, DAY2):
        write_day(landing.root, day, 60, rng)
        result = run(day.isoformat())
        assert result.success, failure_messages(result)
    spark_warehouse = tmp_path / "spark-warehouse"
    export_raw_like_the_spark_ingest(warehouse_path, spark_warehouse)

    seconds = dbt_spark_build(tmp_path, spark_warehouse, DAY1, DAY2 + dt.timedelta(days=1))
    print(f"dbt build --target spark, two days, first build: {seconds:.1f} s")

    # Spark's layout for managed tables, the metastore beside them (nothing in the current directory)
    for table in MARTS:
        for day in (DAY1, DAY2):
            assert parquet_files(spark_warehouse, table, day), f"no analytics.db/{table}/dt={day}/*.parquet"
    assert (spark_warehouse / "metastore_db").is_dir()
    assert not (DBT_PROJECT / "metastore_db").exists() and not (DBT_PROJECT / "spark-warehouse").exists()

    for table in MARTS:
        columns = duckdb_columns(warehouse_path, table)
        # same columns and types as DuckDB's tables (money DECIMAL(18,2), timestamps TIMESTAMPTZ)
        assert spark_types(warehouse_path, spark_warehouse, table) == columns, table
        assert spark_rows(warehouse_path, spark_warehouse, table, list(columns)) == duckdb_rows(
            warehouse_path, table, list(columns)
        ), table
    assert duckdb_rows(warehouse_path, "fact_sales", ["count(*)"])[0][0] > 0

    # DAY1's export is withdrawn: its raw folder vanishes; rebuilding DAY1 alone empties it in both
    # marts (a dynamic partition overwrite with no rows would have kept the old partition) and
    # leaves DAY2's files as they were.
    shutil.rmtree(spark_warehouse / "raw.db" / "orders" / f"dt={DAY1}")
    day2_files = {table: parquet_files(spark_warehouse, table, DAY2) for table in MARTS}

    seconds = dbt_spark_build(tmp_path, spark_warehouse, DAY1, DAY2)
    print(f"dbt build --target spark, one day, incremental: {seconds:.1f} s")

    for table in MARTS:
        columns = list(duckdb_columns(warehouse_path, table))
        rows = spark_rows(warehouse_path, spark_warehouse, table, columns)
        dts = columns.index("dt")
        assert [r for r in rows if r[dts] == DAY1] == [], table
        assert [r for r in rows if r[dts] == DAY2] == duckdb_rows(warehouse_path, table, columns, DAY2), table
        assert parquet_files(spark_warehouse, table, DAY2) == day2_files[table], table
