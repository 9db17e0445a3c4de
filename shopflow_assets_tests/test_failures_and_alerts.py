"""Bad days: retries, failure semantics, BROKE and LATE alerts, Slack delivery (a local HTTP server
stands in for Slack's Web API; runs, instance and sensors are Dagster's own)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time


import duckdb
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Failure,
    build_sensor_context,
)
from dagster_dbt import DbtCliResource

from shopflow_assets.defs.models.assets import classify_dbt_failure
from shopflow_assets.defs.models.project import dbt_executable
from shopflow_assets.defs.alerts.lateness import LatenessState, due_days, evaluate_lateness
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.alerts.sensor import AlertsCursor

from .conftest import (
    TEST_SETTINGS,
    alerts_sensor,
    DAILY_REVENUE,
    FACT_SALES,
    REPO_ROOT,
    SLACK_TOKEN,
    csv_text,
    failure_messages,
    line,
    query,
)

pytestmark = pytest.mark.slow  # dbt runs in process: the full suite, not the quick tier

DAY = "2024-03-01"
UI = TEST_SETTINGS.ui_url


def events_of(result, kind: str):
    return [e for e in result.all_events if e.event_type_value == kind]


def alert_ticks(instance: DagsterInstance, slack, landing, cursor: str | None = None, ticks: int = 2) -> str:
    """Evaluate the shopflow_alerts sensor as the daemon would, `ticks` times (one writes the
    alerts of new events to the outbox, the next delivers them). Without a cursor it starts at the
    beginning of the event log, with today's LATE already sent (that one is about the real date)."""
    if cursor is None:
        today_due = [str(d) for d in due_days(dt.datetime.now(dt.timezone.utc), TEST_SETTINGS.sla_timezone)[0]]
        cursor = AlertsCursor(failures_after=0, ready_after=0, lateness=LatenessState(late=today_due)).dump()
    for _ in range(ticks):
        context = build_sensor_context(
            instance=instance, cursor=cursor, resources={"slack": slack, "landing": LandingZone(root=str(landing.root))}
        )
        cursor = alerts_sensor.evaluate_tick(context).cursor
    return cursor


def alert_for_failed_run(instance: DagsterInstance, run_id: str, slack, landing) -> None:
    """The BROKE alert of a failed run, written and delivered by the alerts sensor."""
    assert instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    alert_ticks(instance, slack, landing)


def test_permanent_failure_runs_once_and_sends_one_actionable_broke_message(
    run, landing, instance, slack, slack_server
):
    columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
    landing.export(DAY, {"part-7.csv": csv_text([line("A")], columns)})

    result = run(DAY)

    assert not result.success
    assert events_of(result, "STEP_UP_FOR_RETRY") == []  # permanent: not retried
    assert len(events_of(result, "STEP_START")) == 1
    alert_for_failed_run(instance, result.run_id, slack, landing)

    (message,) = slack_server.delivered
    assert message.startswith(":red_circle: BROKE: raw/orders for 2024-03-01 failed")
    assert "• Not built: daily_revenue, fact_sales (downstream, in the same run)" in message
    assert "• Day: 2024-03-01" in message
    assert "• Step: raw__orders" in message
    assert (
        "• Error: `dt=2024-03-01/part-7.csv line 1 (header): missing required column 'discount'"
        in message
    )
    assert f"• Run: {UI}/runs/{result.run_id}" in message
    assert (
        "• Re-run: `dagster asset materialize -m shopflow_assets.definitions "
        "--select 'daily_revenue,fact_sales,raw/orders' --partition 2024-03-01`" in message
    )
    assert "Traceback" not in message and 'File "' not in message and len(message) < 3000
    (request,) = slack_server.requests
    assert request.path == "/api/chat.postMessage" and request.body["channel"] == "#shopflow-alerts"
    assert request.authorization == f"Bearer {SLACK_TOKEN}"
    # tagged, so that the channel's history can say whether an attempt of unknown outcome got in
    assert request.body["metadata"] == {"event_type": "shopflow_alert", "event_payload": {"alert_id": f"broke:{result.run_id}"}}
    # the token is in no event of the instance
    for record in instance.get_records_for_run(result.run_id).records:
        assert SLACK_TOKEN not in str(record.event_log_entry)


def test_failed_day_blocks_its_downstream_only(run, landing, warehouse_path):
    landing.export("2024-03-02", {"a.csv": csv_text([line("OK", day="2024-03-02")])})
    assert run("2024-03-02").success
    columns = [c for c in REQUIRED_COLUMNS if c != "status"]
    landing.export(DAY, {"a.csv": csv_text([line("A")], columns)})

    result = run(DAY)

    assert not result.success
    assert {e.step_key for e in events_of(result, "STEP_START")} == {"raw__orders"}  # dbt never ran
    assert result.get_asset_materialization_events() == []
    assert query(warehouse_path, "SELECT DISTINCT dt FROM analytics.fact_sales") == [(dt.date(2024, 3, 2),)]
    # the other day still builds
    assert run("2024-03-02").success


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_transient_fault_is_retried_with_growing_delays_and_loads_once(
    run, landing, warehouse_path, instance, slack, slack_server
):
    landing.export(DAY, {"a.csv": csv_text([line("A"), line("B")])})
    warehouse_path.parent.mkdir(parents=True)
    # A real transient fault: another process holds the DuckDB file for 4 s.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(warehouse_path), "4"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"

    started = time.monotonic()
    result = run(DAY, selection="raw/orders")
    holder.wait()

    assert result.success, failure_messages(result)
    retries = events_of(result, "STEP_UP_FOR_RETRY")
    delays = [e.event_specific_data.seconds_to_wait for e in retries]
    # attempt k waits (2^k - 1) x b +/- b (b = 0.5 s in the suite): one retry waits at most 1 s,
    # so a 4 s lock takes at least two; four wait at least 11 s in all, so the day loads in time
    assert TEST_SETTINGS.retry_delay_seconds == 0.5
    assert len(retries) >= 2, delays
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert "WarehouseLockedError" in retries[0].event_specific_data.error.to_string()
    assert time.monotonic() - started >= 4
    assert query(warehouse_path, "SELECT order_id, count(*) FROM raw.orders GROUP BY 1 ORDER BY 1") == [
        ("A", 1),
        ("B", 1),
    ]
    assert len(result.get_asset_materialization_events()) == 1
    # a run that succeeded after transient faults sends nothing
    assert instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records == []
    assert slack_server.requests == []


def test_failed_dbt_test_is_a_broke_alert_and_stops_the_rollup(run, landing, warehouse_path, instance, slack, slack_server):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(DAY, selection="raw/orders").success
    # A row that the ingest would have rejected gets into raw.orders behind its back.
    with duckdb.connect(str(warehouse_path)) as con:
        con.execute(
            "INSERT INTO raw.orders SELECT * REPLACE ('Z' AS order_id, 0 AS quantity) FROM raw.orders"
        )

    result = run(DAY, selection=["fact_sales", "daily_revenue"])

    assert not result.success
    assert events_of(result, "STEP_UP_FOR_RETRY") == []  # a failed test is permanent
    # (the day's 08:00 check fails too: 2024 is long past its deadline)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed and e.check_name != "on_time_by_0800"]
    assert [(e.asset_key, e.check_name) for e in failed] == [
        (FACT_SALES, "expression_is_true_fact_sales_quantity__quantity_1")
    ]
    assert DAILY_REVENUE not in {e.asset_key for e in result.get_asset_materialization_events()}
    alert_for_failed_run(instance, result.run_id, slack, landing)
    (message,) = [m for m in slack_server.delivered if "BROKE" in m]  # (fact_sales itself was built: READY)
    assert "BROKE" in message and "• Day: 2024-03-01" in message and "• Step: shopflow_dbt_models" in message
    assert message.startswith(":red_circle: BROKE: daily_revenue for 2024-03-01 failed")  # fact_sales was built
    assert "• Failed dbt tests: `fact_sales:expression_is_true_fact_sales_quantity__quantity_1`" in message
    assert "expression_is_true_fact_sales_quantity__quantity_1 fail" in message  # the one-line error


def test_dbt_compilation_error_is_permanent(tmp_path, monkeypatch):
    # a real dbt compilation error, in a copy of the project with a broken ref
    project = tmp_path / "shopflow_dbt"
    shutil.copytree(REPO_ROOT / "shopflow_dbt", project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models" / "marts" / "fact_sales.sql").write_text("select * from {{ ref('no_such_model') }}")
    monkeypatch.setenv("SHOPFLOW_WAREHOUSE", str(tmp_path / "w.duckdb"))  # what profiles.yml reads
    invocation = DbtCliResource(project_dir=str(project), dbt_executable=dbt_executable()).cli(
        ["build"], target_path=tmp_path / "target"
    )
    with pytest.raises(Exception) as raised:
        invocation.wait()

    failure = classify_dbt_failure(raised.value, invocation, [dt.date(2024, 3, 1)])

    assert isinstance(failure, Failure) and failure.allow_retries is False
    assert failure.description.startswith("dbt build failed for 2024-03-01..2024-03-01:")
    assert "no_such_model" in failure.description


def test_dbt_lock_error_is_transient(tmp_path):
    lock_error = Exception("IO Error: Could not set lock on file x.duckdb: Conflicting lock is held")
    assert classify_dbt_failure(lock_error, None, [dt.date(2024, 3, 1)]) is lock_error


def test_the_alert_names_the_error_under_exhausted_retries(run, landing, instance, slack, slack_server):
    landing.write(DAY, "a.csv", csv_text([line("A")]))  # _SUCCESS never comes: retried, then failed
    result = run(DAY, selection="raw/orders")
    assert not result.success and len(events_of(result, "STEP_UP_FOR_RETRY")) == 4
    alert_for_failed_run(instance, result.run_id, slack, landing)
    (message,) = slack_server.delivered
    assert f"• Error: `The export of 2024-03-01 has not finished: {landing.day_dir(DAY)}/_SUCCESS is missing." in message


def test_slack_refusals_delay_the_alert_to_later_ticks_and_it_arrives_once(landing, run, instance, slack, slack_server):
    landing.export(DAY, {"a.csv": csv_text([line("A")], ["order_id"])})
    result = run(DAY, selection="raw/orders")
    assert not result.success
    slack_server.fail_next((429, {"Retry-After": "1"}))

    started = time.monotonic()
    cursor = alert_ticks(instance, slack, landing)  # written, then refused with a 429
    assert time.monotonic() - started < 10 and slack_server.delivered == []  # no tick waited it out
    time.sleep(1.1)
    alert_ticks(instance, slack, landing, cursor, ticks=1)

    assert [r.status for r in slack_server.post_requests()] == [429, 200]
    (message,) = slack_server.delivered
    assert "BROKE" in message and f"broke:{result.run_id}" == slack_server.posted[0].metadata["event_payload"]["alert_id"]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def lateness(instance, landing, now: str, state: LatenessState, timezone: str = "UTC"):
    return evaluate_lateness(
        instance,
        LandingZone(root=str(landing.root)),
        utc(now),
        state,
        timezone=timezone,
        ui_url=UI,
        start_date=dt.date(2024, 1, 1),
    )


def test_late_at_0801_once_then_recovered(run, landing, instance):
    state = LatenessState()
    messages, state = lateness(instance, landing, "2024-03-02T07:59:00", state)
    assert messages == []

    messages, state = lateness(instance, landing, "2024-03-02T08:01:00", state)
    (late,) = [m.text for m in messages]
    assert late.startswith(":alarm_clock: LATE: fact_sales for 2024-03-01 is not ready (due 2024-03-02 08:00 UTC)")
    assert "• Due since: 2024-03-02T08:00+00:00" in late
    assert f"• Why: export not landed: `{landing.day_dir(DAY)}/_SUCCESS` does not exist yet" in late
    assert f"• Asset: {UI}/assets/fact_sales?view=partitions&amp;partition=2024-03-01" in late  # (& escaped)
    assert "--select 'raw/orders*' --partition 2024-03-01" in late

    # never twice for the same day
    assert lateness(instance, landing, "2024-03-02T09:00:00", state)[0] == []

    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(DAY).success
    messages, state = lateness(instance, landing, "2024-03-02T09:30:00", state)
    (recovered,) = [m.text for m in messages]
    assert recovered.startswith(":large_green_circle: RECOVERED: fact_sales for 2024-03-01")
    assert lateness(instance, landing, "2024-03-02T10:00:00", state)[0] == []


def test_built_before_the_deadline_is_not_late(run, landing, instance):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(DAY).success  # built "at 07:59": before the evaluation at 08:01
    state = LatenessState()
    assert lateness(instance, landing, "2024-03-02T07:59:00", state)[0] == []
    assert lateness(instance, landing, "2024-03-02T08:01:00", state)[0] == []


def test_late_says_the_ingest_failed_and_follows_the_sla_timezone(run, landing, instance):
    landing.export(DAY, {"a.csv": csv_text([line("A")], ["order_id"])})
    failed = run(DAY, selection="raw/orders")
    assert not failed.success
    # 08:00 in Berlin is 07:00 UTC in March
    assert lateness(instance, landing, "2024-03-02T06:59:00", LatenessState(), "Europe/Berlin")[0] == []
    (late,), _ = lateness(instance, landing, "2024-03-02T07:01:00", LatenessState(), "Europe/Berlin")
    late = late.text
    assert f"• Why: ingest failed: {UI}/runs/{failed.run_id}" in late
    assert "(due 2024-03-02 08:00 CET)" in late


def test_late_says_when_the_models_are_missing(run, landing, instance):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(DAY, selection="raw/orders").success
    (late,), _ = lateness(instance, landing, "2024-03-02T08:01:00", LatenessState())
    assert "• Why: raw/orders is loaded but fact_sales has not been built" in late.text

