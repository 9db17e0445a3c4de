"""Benchmark data: one day of order lines written by DuckDB itself (fast), in several files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from shopflow_assets.orders_loader import REQUIRED_COLUMNS


def write_day(landing: Path, day: dt.date, lines: int, files: int = 4) -> list[Path]:
    directory = landing / "orders" / f"dt={day}"
    directory.mkdir(parents=True, exist_ok=True)
    per_file = lines // files
    paths = []
    con = duckdb.connect()
    for n in range(files):
        path = directory / f"part-{n:04d}.csv"
        con.execute(
            f"""
            COPY (
                SELECT 'O-' || (i // 3)                         AS order_id,
                       (i % 3) + 1                              AS line_number,
                       'C-' || (i % 50000)                      AS customer_id,
                       'P-' || (i % 3000)                       AS product_id,
                       (i % 7) + 1                              AS quantity,
                       round(((i * 7919) % 100000) / 100.0, 2)  AS unit_price,
                       0.00                                     AS discount,
                       ['placed', 'shipped', 'delivered', 'cancelled'][(i % 4) + 1] AS status,
                       strftime(TIMESTAMP '{day}' + to_seconds(i % 86400), '%Y-%m-%dT%H:%M:%S') || '+00:00' AS ordered_at,
                       strftime(TIMESTAMP '{day}' + to_seconds(i % 86400), '%Y-%m-%dT%H:%M:%S') || '+00:00' AS updated_at
                FROM range({n * per_file}, {(n + 1) * per_file}) t(i)
            ) TO '{path}' (HEADER, DELIMITER ',')
            """
        )
        paths.append(path)
    (directory / "_SUCCESS").touch()
    header = paths[0].open().readline().strip().split(",")
    assert header == list(REQUIRED_COLUMNS), header
    return paths
