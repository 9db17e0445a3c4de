"""Benchmark data: one day of order lines written by DuckDB itself (fast), in several files."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from pathlib import Path

import duckdb

from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS


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


REPO_ROOT = Path(__file__).resolve().parent.parent


def materialize_command(*partitions: str) -> list[str]:
    """The user's command for raw/orders and the models, e.g. ("--partition", "2024-03-01")."""
    dagster = Path(sys.executable).parent / "dagster"
    return [str(dagster), "asset", "materialize", "-m", "shopflow_assets.definitions", "--select", "raw/orders*", *partitions]


def cli_env(landing: Path, warehouse: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `dagster` CLI subprocess: this one's without SHOPFLOW_, DAGSTER_ or SLACK_
    settings, then the landing zone, the warehouse, a fresh DAGSTER_HOME holding a copy of the
    repository's dagster.yaml, then `extra`."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_", "SLACK_"))}
    env.update(SHOPFLOW_LANDING_DIR=str(landing), SHOPFLOW_WAREHOUSE=str(warehouse), DAGSTER_HOME=str(dagster_home), **extra)
    return env
