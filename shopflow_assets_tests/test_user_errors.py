"""A new user's common mistakes end in one line that names the fix (all but an unreachable Postgres,
which Dagster reports itself before this code location loads); and the `dg` command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from .conftest import BIN, REPO_ROOT, command_env, csv_text, line, query
from .postgres_cluster import production_dagster_home

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

DAY = "2024-03-01"


@pytest.fixture
def env(landing, warehouse_path):
    return command_env(landing, warehouse_path)


def materialize(env, *args: str, select: str = "raw/orders") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions", "--select", select, *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("partition", ["2019-03-01", "2024-3-1", "tomorrow"])
def test_a_day_outside_the_partitions(env, partition):
    result = materialize(env, "--partition", partition)
    assert result.returncode != 0
    assert last_line(result).startswith(f"shopflow_daily: '{partition}' is not a day of shopflow_daily: days are YYYY-MM-DD from 2024-01-01")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("SHOPFLOW_START_DATE", "2024/01/01", "shopflow_daily: SHOPFLOW_START_DATE='2024/01/01' is not a date: set it as YYYY-MM-DD, e.g. SHOPFLOW_START_DATE=2024-01-01"),
        ("SHOPFLOW_SLA_TIMEZONE", "CEST", "shopflow_daily: SHOPFLOW_SLA_TIMEZONE='CEST' is not an IANA timezone: use a name such as UTC or Europe/Berlin"),
        ("SHOPFLOW_ENGINE", "sparc", "shopflow_daily: SHOPFLOW_ENGINE='sparc' is not an engine: use duckdb (the default, one machine) or spark (a Spark cluster, see SHOPFLOW_SPARK_MASTER)"),
        ("SHOPFLOW_SPARK_MASTER", "127.0.0.1:7077", "shopflow_daily: SHOPFLOW_SPARK_MASTER='127.0.0.1:7077' is not a Spark master URL: use spark://host:7077, local[2], yarn or k8s://https://host:port"),
    ],
)
def test_a_malformed_setting(env, variable, value, expected):
    env[variable] = value
    result = materialize(env, "--partition", DAY)
    assert result.returncode != 0
    assert last_line(result) == expected
    assert "Traceback" not in result.stderr


def test_a_landing_zone_that_does_not_exist(env, tmp_path, run, resources):
    env["SHOPFLOW_LANDING_DIR"] = str(tmp_path / "nowhere")
    result = materialize(env, "--partition", DAY)
    assert result.returncode != 0
    assert (
        f"The landing zone {tmp_path / 'nowhere'} does not exist: point SHOPFLOW_LANDING_DIR at the export landing zone"
        in result.stderr
    )
    assert "STEP_UP_FOR_RETRY" not in result.stderr  # a setting to fix: not retried


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # as an open duckdb shell would
print("locked", flush=True)
time.sleep(120)
"""


def test_the_warehouse_locked_by_another_program(env, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    warehouse_path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(warehouse_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        env.update(SHOPFLOW_RETRY_MAX_RETRIES="1", SHOPFLOW_RETRY_DELAY_SECONDS="0.2")
        result = materialize(env, "--partition", DAY)
    finally:
        holder.kill()
    assert result.returncode != 0
    assert f"The warehouse {warehouse_path} is locked by another process" in result.stderr
    assert f"(PID {holder.pid})" in result.stderr
    assert "Close that program (an open duckdb shell, say) or wait for the other run." in result.stderr


def test_an_unreachable_postgres(env, tmp_path):
    """The production instance file with nothing listening at DAGSTER_PG_URL: Dagster creates the
    instance before it loads this code location, so the message is dagster-postgres' own (after about
    10 s of retries). It says why, and the password is nowhere in it."""
    home = production_dagster_home(tmp_path / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    env.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=f"postgresql://dagster:s3cret@127.0.0.1:{port}/dagster")

    result = materialize(env, "--partition", DAY)

    assert result.returncode != 0
    assert last_line(result) == "dagster_postgres.utils.DagsterPostgresException: too many retries for DB connection"
    assert f'connection to server at "127.0.0.1", port {port} failed: Connection refused' in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def dg(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dg"), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_dg_checks_lists_and_launches(env, landing, warehouse_path):
    check = dg(env, "check", "defs")
    assert check.returncode == 0, check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr

    listed = dg(env, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    assets = {a["asset_key"] for a in json.loads(listed.stdout)["assets"]}
    assert {"raw/orders", "fact_sales", "daily_revenue"} <= assets

    landing.export(DAY, {"a.csv": csv_text([line("A", quantity=2)])})
    launched = dg(env, "launch", "--assets", "raw/orders*", "--partition", DAY)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert query(warehouse_path, "SELECT units FROM analytics.daily_revenue") == [(2,)]
