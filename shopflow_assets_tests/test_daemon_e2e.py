"""End to end with nobody at the keyboard: a throwaway Postgres cluster as instance storage, a real
`dagster-daemon` on the production instance file (deploy/dagster.yaml copied into DAGSTER_HOME, as
the README says) and workspace.yaml, and a stand-in Slack server.
An export lands; the export sensor, the automation sensor and the READY sensor do the rest."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from decimal import Decimal

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, serialize_value
from dagster_postgres import PostgresRunStorage

from .conftest import BIN, REPO_ROOT, command_env, csv_text, line, query
from .daemon_helpers import KEYS, daemon_process, materializations, production_daemon_env, wait_for

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

SENSOR_INTERVAL = 3


@pytest.fixture
def daemon(postgres, landing, warehouse_path, slack_server, tmp_path, monkeypatch):
    env = production_daemon_env(postgres, tmp_path, landing, warehouse_path, slack_server.api_url, SENSOR_INTERVAL)
    for key in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    with DagsterInstance.get() as instance:  # creates the tables
        assert isinstance(instance.run_storage, PostgresRunStorage)  # deploy/dagster.yaml's storage
        # what the daemon hands to each run's process names the variable, not the URL
        assert env["DAGSTER_PG_URL"] not in serialize_value(instance.get_ref())
        with daemon_process(env, tmp_path / "daemon.log"):
            yield instance


def quiet_for(seconds: float) -> None:
    time.sleep(seconds)


def ready(slack_server) -> list[str]:
    """READY messages only: the LATE alert for the real yesterday may come too, rightly."""
    return [m for m in slack_server.delivered if m.startswith(":white_check_mark: READY")]


def broke(slack_server) -> list[str]:
    return [m for m in slack_server.delivered if "BROKE" in m]


def test_an_export_flows_to_daily_revenue_exactly_once(daemon, landing, warehouse_path, slack_server, tmp_path):
    instance, log, day = daemon, tmp_path / "daemon.log", "2024-03-01"
    rows = [line("A", quantity=2, unit_price="10.00", discount="1.00"), line("B", status="cancelled")]
    landing.write(day, "part-0.csv", csv_text(rows))
    landing.finish(day)
    landed = time.monotonic()

    wait_for(lambda: materializations(instance, day)["daily_revenue"] >= 1, 240, "daily_revenue", log)
    print(f"\n_SUCCESS -> daily_revenue materialized: {time.monotonic() - landed:.1f} s")
    wait_for(lambda: len(ready(slack_server)) >= 1, 60, "the READY message", log)
    quiet_for(3 * SENSOR_INTERVAL)

    assert materializations(instance, day) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    # one run built the day: the export sensor's, ingest then models; the automation condition of
    # the models saw raw/orders updated by a run that targeted them too, and requested nothing
    (only_run,) = instance.get_runs(filters=RunsFilter(tags={"dagster/partition": day}))
    assert only_run.tags.get("dagster/sensor_name") == "shopflow_export_landed"
    assert {k.to_user_string() for k in only_run.asset_selection} == set(KEYS)
    assert query(warehouse_path, "SELECT dt, orders, order_lines, units, net_revenue FROM analytics.daily_revenue") == [
        (dt.date(2024, 3, 1), 1, 1, 2, Decimal("19.00"))
    ]
    (message,) = ready(slack_server)
    assert message.startswith(":white_check_mark: READY: fact_sales for 2024-03-01 landed")
    assert "• Rows: 1" in message and "• Net revenue: 19.00" in message

    # a re-export with changed content: exactly one more of each
    landing.write(day, "part-1.csv", csv_text([line("C", quantity=3)]))
    (landing.day_dir(day) / "_SUCCESS").unlink()
    landing.finish(day)
    wait_for(lambda: materializations(instance, day)["daily_revenue"] >= 2, 240, "the rebuild", log)
    quiet_for(3 * SENSOR_INTERVAL)
    assert materializations(instance, day) == {"raw/orders": 2, "fact_sales": 2, "daily_revenue": 2}
    assert query(warehouse_path, "SELECT order_lines FROM analytics.daily_revenue") == [(2,)]

    # touching nothing gives nothing; an export without _SUCCESS gives nothing
    landing.write("2024-03-02", "part-0.csv", csv_text([line("D", day="2024-03-02")]))
    quiet_for(4 * SENSOR_INTERVAL)
    assert materializations(instance, day) == {"raw/orders": 2, "fact_sales": 2, "daily_revenue": 2}
    assert materializations(instance, "2024-03-02") == {"raw/orders": 0, "fact_sales": 0, "daily_revenue": 0}
    assert len(ready(slack_server)) == 2 and broke(slack_server) == []
    assert instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE])) == []


def test_two_days_landing_at_once_are_both_built_without_lock_failures(daemon, landing, warehouse_path, slack_server, tmp_path):
    instance, log = daemon, tmp_path / "daemon.log"
    days = ["2024-03-04", "2024-03-05"]
    for day in days:
        landing.write(day, "part-0.csv", csv_text([line(f"O-{day}", day=day, quantity=4)]))
    for day in days:
        landing.finish(day)

    for day in days:
        wait_for(lambda d=day: materializations(instance, d)["daily_revenue"] >= 1, 300, f"daily_revenue {day}", log)
    quiet_for(3 * SENSOR_INTERVAL)

    for day in days:
        assert materializations(instance, day) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    assert instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE])) == []
    assert "Conflicting lock" not in log.read_text()
    assert query(warehouse_path, "SELECT count(*), sum(units) FROM analytics.daily_revenue") == [(2, 8)]
    wait_for(lambda: len(ready(slack_server)) >= 2, 60, "two READY messages", log)
    assert sorted(m.splitlines()[0] for m in ready(slack_server)) == [
        ":white_check_mark: READY: fact_sales for 2024-03-04 landed",
        ":white_check_mark: READY: fact_sales for 2024-03-05 landed",
    ]

    # raw/orders materialized on its own (here the CLI; the UI and a backfill alike): the
    # data-aware path still builds that day's models, once
    env = command_env(landing, warehouse_path, DAGSTER_HOME=os.environ["DAGSTER_HOME"], DAGSTER_PG_URL=os.environ["DAGSTER_PG_URL"])
    cli = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions", "--select", "raw/orders", "--partition", days[0]],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    wait_for(lambda: materializations(instance, days[0])["daily_revenue"] >= 2, 240, "the models after raw/orders alone", log)
    quiet_for(3 * SENSOR_INTERVAL)
    assert materializations(instance, days[0]) == {"raw/orders": 2, "fact_sales": 2, "daily_revenue": 2}
    assert materializations(instance, days[1]) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
