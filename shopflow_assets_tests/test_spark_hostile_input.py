"""The hostile exports of test_hostile_input.py, all in one day, through both engines: the Spark
ingest loads and rejects exactly what the DuckDB ingest does (rows, lines, reasons), on the real
standalone cluster. One run per engine: the cases are files, and each file stands alone. Two files
are big enough that Spark would split them, which would break their line numbers."""

from __future__ import annotations

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

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser


def tables(warehouse) -> tuple[list[tuple], list[tuple]]:
    with warehouse.read() as con:
        rows = con.execute(f"SELECT {ROW_COLUMNS} FROM raw.orders ORDER BY _source_file, _source_line").fetchall()
        rejects = con.execute(
            "SELECT dt, _source_file, _source_line, reason, order_id, quantity, _raw_line IS NULL "
            "FROM raw.orders_rejected ORDER BY _source_file, _source_line"
        ).fetchall()
    return rows, rejects


def test_spark_ingest_takes_hostile_exports_like_duckdb(landing, tmp_path: Path, spark_cluster):
    files = {}
    for n, case in enumerate(ACCEPTED_CASES.values()):
        files.update({f"case{n:02d} {name}": content for name, content in case.files.items()})
    # Files past Spark's split size (8 MB here): each must still be read in one piece, or its line
    # numbers would be wrong; one of them also has a quoted newline deep inside.
    big = [line(f"BIG-{i}") for i in range(110_000)]
    files["case-big plain.csv"] = csv_text(big)
    files["case-big multiline.csv"] = csv_text(big[:60_000] + [line("BIG-NL", product_id="two\nlines")] + big[60_000:])
    landing.export(DAY, files)
    engines = {
        "duckdb": DuckDBWarehouse(path=str(tmp_path / "w.duckdb")),
        "spark": SparkWarehouse(master=spark_cluster.master_url, warehouse_dir=str(tmp_path / "spark-warehouse")),
    }
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
        assert result.success, failure_messages(result)
        got[name] = tables(warehouse)

    duck_rows, duck_rejects = got["duckdb"]
    spark_rows, spark_rejects = got["spark"]
    expected_loaded = sum(len(c.loaded) for c in ACCEPTED_CASES.values()) + 2 * 110_000 + 1
    assert len(duck_rows) == expected_loaded
    assert spark_rows == duck_rows
    assert spark_rejects == duck_rejects
    assert len(spark_rejects) == sum(len(c.rejected) for c in ACCEPTED_CASES.values())
