"""The hostile exports of test_hostile_input.py, all in one day, through both engines: the Spark
ingest loads and rejects exactly what the DuckDB ingest does (rows, lines, reasons), on the real
standalone cluster through its Spark Connect server. One run per engine: the cases are files, and each file stands alone. Two big
files are read by Spark in several splits, one of them cut inside a record that holds a quoted
newline: the line numbers are the physical ones all the same."""

from __future__ import annotations

import re
from pathlib import Path

from dagster import DagsterInstance, materialize

from shopflow_assets.engines import DuckDBWarehouse, SparkWarehouse
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import csv_text, failure_messages, line, raw_orders
from .test_hostile_input import ACCEPTED_CASES, DAY

ROW_COLUMNS = (
    "dt, order_id, line_number, customer_id, product_id, quantity, unit_price, discount, status, "
    "ordered_at, updated_at, _source_file, _source_line"
)
import pytest

# a daemon, a subprocess, Spark, Postgres or a browser; loads into a warehouse of its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_catalog")]


def tables(warehouse) -> tuple[list[tuple], list[tuple]]:
    with warehouse.read() as con:
        rows = con.execute(f"SELECT {ROW_COLUMNS} FROM raw.orders ORDER BY _source_file, _source_line").fetchall()
        rejects = con.execute(
            "SELECT dt, _source_file, _source_line, reason, order_id, quantity, _raw_line IS NULL "
            "FROM raw.orders_rejected ORDER BY _source_file, _source_line"
        ).fetchall()
    return rows, rejects


def test_spark_ingest_takes_hostile_exports_like_duckdb(landing, tmp_path: Path, spark_sql):
    files = {}
    for n, case in enumerate(ACCEPTED_CASES.values()):
        files.update({f"case{n:02d} {name}": content for name, content in case.files.items()})
    # Files Spark reads in several splits, one task each: their line numbers must still be the
    # physical ones; one has a quoted newline deep inside, its two lines cut apart by a split's end.
    big = [line(f"BIG-{i}") for i in range(110_000)]
    files["case-big plain.csv"] = csv_text(big)
    files["case-big multiline.csv"] = csv_text(big[:60_000] + [line("BIG-NL", product_id="two\nlines")] + big[60_000:])
    before_quote = files["case-big multiline.csv"].encode().index(b"BIG-NL")
    split_bytes = before_quote + 5  # a split ends inside the record's first line
    landing.export(DAY, files)
    spark = SparkWarehouse(
        master=spark_sql.master_url, remote=spark_sql.remote, thrift=spark_sql.thrift, warehouse_dir=str(tmp_path / "spark-warehouse"),
        max_split_bytes=split_bytes,
    )
    engines = {"duckdb": DuckDBWarehouse(path=str(tmp_path / "w.duckdb")), "spark": spark}
    got = {}
    for name, warehouse in engines.items():
        with DagsterInstance.ephemeral() as instance:
            result = materialize(
                [raw_orders],
                partition_key=DAY,
                resources={"landing": LandingZone(root=str(landing.root)), "warehouse": warehouse},
                instance=instance,
                raise_on_error=False,
            )
            logged = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
        assert result.success, failure_messages(result)
        got[name] = tables(warehouse)
    # the big files were read in pieces (each small file is one)
    counted = re.search(r"([0-9]+) split\(s\) counted", logged)
    assert counted and int(counted.group(1)) >= len(files) + 2, logged[-3000:]

    duck_rows, duck_rejects = got["duckdb"]
    spark_rows, spark_rejects = got["spark"]
    expected_loaded = sum(len(c.loaded) for c in ACCEPTED_CASES.values()) + 2 * 110_000 + 1
    assert len(duck_rows) == expected_loaded
    assert spark_rows == duck_rows
    assert spark_rejects == duck_rejects
    assert len(spark_rejects) == sum(len(c.rejected) for c in ACCEPTED_CASES.values())
