"""docs/contract.md "How it is driven": the `dagster` CLI in a subprocess, on a landing zone and a
warehouse named through the environment, as a user runs it from the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import BIN, REPO_ROOT, command_env, csv_text, line, query

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

DAY = "2024-03-01"


@pytest.fixture
def env(landing, warehouse_path):
    # a PATH without the venv: the run must find dbt all the same
    return command_env(landing, warehouse_path, PATH="/usr/bin:/bin")


def dagster(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_three_commands_of_the_design(env, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("A", quantity=2, unit_price="3.50"), line("B", status="refunded")])})

    first = dagster(env, "--select", "raw/orders", "--partition", DAY)
    assert first.returncode == 0, first.stderr[-3000:]
    assert query(warehouse_path, "SELECT count(*) FROM raw.orders") == [(2,)]

    second = dagster(env, "--select", "fact_sales,daily_revenue", "--partition", DAY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert query(warehouse_path, "SELECT order_id, gross_revenue FROM analytics.fact_sales") == [("A", 7)]

    landing.export("2024-03-02", {"a.csv": csv_text([line("C", day="2024-03-02", quantity=4)])})
    third = dagster(env, "--select", "raw/orders*", "--partition", "2024-03-02")
    assert third.returncode == 0, third.stderr[-3000:]
    assert [(str(d), n, g) for d, _, n, _, g, _ in query(warehouse_path, "SELECT * FROM analytics.daily_revenue ORDER BY dt")] == [
        ("2024-03-01", 1, 7),
        ("2024-03-02", 1, 40),
    ]


def test_a_range_of_days_is_one_run(env, landing, warehouse_path):
    for day in ("2024-03-01", "2024-03-02", "2024-03-03"):
        landing.export(day, {"a.csv": csv_text([line(f"O-{day}", day=day)])})
    result = dagster(env, "--select", "raw/orders*", "--partition-range", "2024-03-01...2024-03-03")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("RUN_SUCCESS") == 1
    assert query(warehouse_path, "SELECT count(*) FROM analytics.daily_revenue") == [(3,)]


def test_a_failed_run_exits_non_zero_and_says_what_to_fix(env, landing, warehouse_path):
    columns = ["order_id", "line_number", "customer_id", "product_id", "quantity", "unit_price", "status", "ordered_at", "updated_at"]
    landing.export(DAY, {"broken.csv": csv_text([line("A")], columns)})

    result = dagster(env, "--select", "raw/orders*", "--partition", DAY)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "broken.csv" in output and "'discount'" in output
    assert "--partition 2024-03-01" in output  # the re-run command


def test_with_dagster_home_holding_a_copy_of_dagster_yaml(env, landing, warehouse_path, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env["DAGSTER_HOME"] = str(home)
    landing.export(DAY, {"a.csv": csv_text([line("A")])})

    result = dagster(env, "--select", "raw/orders*", "--partition", DAY)

    assert result.returncode == 0, result.stderr[-3000:]
    assert query(warehouse_path, "SELECT count(*) FROM analytics.fact_sales") == [(1,)]
    assert (home / "history" / "runs.db").exists() or any(home.rglob("*.db"))


def test_relative_paths_resolve_against_the_repository_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFLOW_")}
    env["SHOPFLOW_LANDING_DIR"] = "some/landing"
    script = "from shopflow_assets.settings import read_settings as g; s = g(); print(s.landing_dir); print(s.warehouse)"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(REPO_ROOT / "some" / "landing"), str(REPO_ROOT / "data" / "shopflow.duckdb")]


def test_sample_data_command_writes_exports_that_the_pipeline_takes(env, landing, warehouse_path):
    subprocess.run(
        [str(BIN / "shopflow-sample-data"), "--start", DAY, "--days", "2", "--orders-per-day", "30"],
        env=env,
        check=True,
        capture_output=True,
    )
    for day in ("2024-03-01", "2024-03-02"):
        names = sorted(p.name for p in landing.day_dir(day).iterdir())
        assert "_SUCCESS" in names and any(n.endswith(".csv.gz") for n in names)
        assert sum(n.endswith((".csv", ".csv.gz")) for n in names) >= 3
        headers = set()
        for p in landing.day_dir(day).glob("*.csv"):
            headers.add(p.read_text().splitlines()[0])
        assert len(headers) > 1  # shuffled columns in some files
        success = (landing.day_dir(day) / "_SUCCESS").stat().st_mtime_ns
        assert all(p.stat().st_mtime_ns <= success for p in landing.day_dir(day).glob("*.csv*"))

    result = dagster(env, "--select", "raw/orders*", "--partition-range", "2024-03-01...2024-03-02")
    assert result.returncode == 0, result.stderr[-3000:]
    reasons = {r for (r,) in query(warehouse_path, "SELECT DISTINCT reason FROM raw.orders_rejected")}
    assert len(reasons) >= 12
    # re-emitted updates: some (order_id, line_number) appear more than once in raw, once in the fact
    (dupes,), = query(
        warehouse_path,
        "SELECT count(*) FROM (SELECT 1 FROM raw.orders GROUP BY dt, order_id, line_number HAVING count(*) > 1)",
    )
    assert dupes > 0
    assert query(
        warehouse_path,
        "SELECT count(*) FROM (SELECT 1 FROM analytics.fact_sales GROUP BY dt, order_id, line_number HAVING count(*) > 1)",
    ) == [(0,)]
