"""The landing zone's rules with nobody at the keyboard: the real dagster-daemon (production
instance file, Postgres storage, the Slack stand-in) over a landing zone that holds folders that
are not days, a day whose export breaks the rules, and today's export, which is not a partition
before the day ends (test_landing_zone.py shows, with the sensor's clock moved past midnight, that
it is requested then, once)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_postgres import PostgresRunStorage

from .conftest import csv_text, line
from .daemon_helpers import daemon_process, materializations, production_daemon_env, wait_for

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

SENSOR_INTERVAL = 3
PAST_DAY = "2024-03-01"
BROKEN_DAY = "2024-03-02"
SECRET = "TOP-SECRET-TARGET-5c1e"


@pytest.fixture
def daemon(postgres, landing, warehouse_path, slack_server, tmp_path, monkeypatch):
    env = production_daemon_env(postgres, tmp_path, landing, warehouse_path, slack_server.api_url, SENSOR_INTERVAL)
    for key in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        log = tmp_path / "daemon.log"
        with daemon_process(env, log):
            yield instance, log


def test_the_daemon_skips_what_is_not_a_day_and_fails_a_broken_day_alone(daemon, landing, slack_server, tmp_path):
    instance, log = daemon
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    orders = landing.root / "orders"
    for name in ("dt=20240105", "dt=2024-W01-1", "dt=2024-02-30", "typo"):
        (orders / name).mkdir(parents=True)
        (orders / name / "_SUCCESS").touch()
    (orders / "dt=2024-03-03").write_text("a stray file named like a day")
    landing.export(PAST_DAY, {"a.csv": csv_text([line("P")])})
    # a day whose export links out of the landing zone: it fails, naming the link, and leaks nothing
    secret = tmp_path / "elsewhere.csv"
    secret.write_text(csv_text([line(SECRET)]))
    landing.write(BROKEN_DAY, "a.csv", csv_text([line("B", day=BROKEN_DAY)]))
    (landing.day_dir(BROKEN_DAY) / "more.csv").symlink_to(secret)
    landing.finish(BROKEN_DAY)
    # today's export, finished before the day ends: not a partition yet
    landing.export(today, {"a.csv": csv_text([line("T", day=today, ordered_at=f"{today}T23:00:00+00:00")])})

    wait_for(lambda: materializations(instance, PAST_DAY)["daily_revenue"] >= 1, 240, "the past day", log)
    wait_for(
        lambda: instance.get_runs(filters=RunsFilter(tags={"dagster/partition": BROKEN_DAY}, statuses=[DagsterRunStatus.FAILURE])),
        240, "the broken day's failed run", log,
    )
    time.sleep(4 * SENSOR_INTERVAL)

    assert materializations(instance, PAST_DAY) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
    assert materializations(instance, today)["raw/orders"] == 0  # not a partition yet
    assert materializations(instance, BROKEN_DAY)["raw/orders"] == 0
    failed = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    assert [r.tags.get("dagster/partition") for r in failed] == [BROKEN_DAY]  # one run, not retried into more
    text = log.read_text()
    for name in ("dt=20240105", "dt=2024-W01-1", "dt=2024-02-30", "typo", "dt=2024-03-03"):
        assert text.count(f"Skipping orders/{name}: not a day folder") == 1, name
    assert text.count(f"Export dt={today} is not a partition of raw/orders yet") == 1
    (sensor,) = [s for s in instance.all_instigator_state() if s.name == "shopflow_export_landed"]
    ticks = instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id)
    assert len(ticks) > 3 and all(t.status.value != "FAILURE" for t in ticks)  # never a failed tick
    wait_for(lambda: [m for m in slack_server.delivered if "BROKE" in m], 120, "the BROKE alert", log)
    (broke,) = [m for m in slack_server.delivered if "BROKE" in m]
    assert f"dt={BROKEN_DAY}/more.csv is a symbolic link out of the landing zone" in broke
    assert SECRET not in "\n".join(slack_server.delivered) and SECRET not in text
