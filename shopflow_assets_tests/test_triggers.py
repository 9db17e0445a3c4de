"""The export sensor, the READY alert and the schedule, evaluated against real files and a real
instance (Dagster's own sensor contexts); the daemon runs them in test_daemon_e2e.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess

import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import csv_text, daily_0200_schedule, export_landed_sensor, line


def tick(landing, cursor=None, instance=None):
    instance = instance or DagsterInstance.ephemeral()  # no runs: nothing was pushed
    context = build_sensor_context(
        cursor=cursor, instance=instance, resources={"landing": LandingZone(root=str(landing.root))}
    )
    result = export_landed_sensor(context)
    return [(r.partition_key, " ".join(k.to_user_string() for k in r.asset_selection)) for r in result.run_requests or []], result.cursor


# what a landing day's run builds: the ingest and, in the same run, its models
DAY_RUN = "raw/orders fact_sales daily_revenue"


def test_export_sensor_requests_each_finished_day_once_and_re_exports_again(landing):
    landing.export("2024-03-01", {"a.csv": csv_text([line("A")])})
    landing.write("2024-03-02", "a.csv", csv_text([line("B", day="2024-03-02")]))  # still being written

    requests, cursor = tick(landing)
    assert requests == [("2024-03-01", DAY_RUN)]
    assert tick(landing, cursor)[0] == []  # touching nothing gives nothing

    landing.finish("2024-03-02")
    requests, cursor = tick(landing, cursor)
    assert requests == [("2024-03-02", DAY_RUN)]

    # re-export of 03-01 with a changed file (same size, same name: only content and mtime differ)
    path = landing.day_dir("2024-03-01") / "a.csv"
    marker = landing.day_dir("2024-03-01") / "_SUCCESS"
    path.write_text(csv_text([line("Z")]))
    newer = marker.stat().st_mtime_ns + 1_000_000
    os.utime(path, ns=(newer, newer))
    # the file is newer than _SUCCESS: a re-export being written, not requested yet
    requests, cursor = tick(landing, cursor)
    assert requests == []
    os.utime(marker, ns=(newer, newer))  # the exporter writes _SUCCESS last
    requests, cursor = tick(landing, cursor)
    assert requests == [("2024-03-01", DAY_RUN)]
    assert tick(landing, cursor)[0] == []


def test_a_rewrite_that_keeps_size_and_mtime_is_a_new_export(landing, tmp_path):
    """cp -p and rsync -a keep a file's size and mtime: the export is still seen as new."""
    landing.export("2024-03-01", {"a.csv": csv_text([line("A")])})
    requests, cursor = tick(landing)
    assert requests == [("2024-03-01", DAY_RUN)]
    path = landing.day_dir("2024-03-01") / "a.csv"
    replacement = tmp_path / "a.csv"
    replacement.write_text(csv_text([line("B")]))  # same size as the first
    assert replacement.stat().st_size == path.stat().st_size
    before = path.stat()
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    subprocess.run(["cp", "-p", str(replacement), str(path)], check=True)  # in place: same inode
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    requests, cursor = tick(landing, cursor)
    assert requests == [("2024-03-01", DAY_RUN)]
    # rsync -a: a new file renamed over the old one, size and mtime kept
    subprocess.run(["cp", "-p", str(path), str(tmp_path / "b.csv")], check=True)
    os.replace(tmp_path / "b.csv", path)
    assert tick(landing, cursor)[0] == [("2024-03-01", DAY_RUN)]


def test_export_sensor_leaves_an_export_that_was_pushed_to_its_run(landing, instance):
    """shopflow-push-export started D's run (tagged with D's export): the sensor does not request it
    again, and still requests D's next re-export."""
    from shopflow_assets.definitions import defs
    from shopflow_assets.core.run_window import EXPORT_TAG

    landing.export("2024-03-01", {"a.csv": csv_text([line("A")])})
    fingerprint = LandingZone(root=str(landing.root)).export_fingerprint(dt.date(2024, 3, 1))
    job = defs.resolve_job_def("shopflow_daily_job")
    pushed = instance.create_run_for_job(
        job, tags={EXPORT_TAG: f"2024-03-01:{fingerprint}", "dagster/partition": "2024-03-01"}
    )

    requests, cursor = tick(landing, instance=instance)
    assert requests == []
    landing.export("2024-03-01", {"a.csv": csv_text([line("A")]), "b.csv": csv_text([line("B")])})
    # the pushed run has not started: it builds whatever export it finds, so the sensor waits for it
    requests, cursor = tick(landing, cursor, instance=instance)
    assert requests == []
    instance.report_run_failed(pushed)
    assert tick(landing, cursor, instance=instance)[0] == [("2024-03-01", DAY_RUN)]


def test_export_sensor_leaves_days_a_range_backfill_ingested_or_is_ingesting(landing, instance, resources):
    """A backfill of a range is one run with no export tag: while it is queued or running its days
    wait, and the exports it read (named in each day's metadata) are not requested again; a
    re-export afterwards is."""
    from dagster import materialize

    from shopflow_assets.definitions import defs
    from .conftest import ALL_ASSETS

    days = {"2024-03-01": "A", "2024-03-02": "B"}
    for day, order in days.items():
        landing.export(day, {"a.csv": csv_text([line(order, day=day)])})
    range_tags = {"dagster/asset_partition_range_start": "2024-03-01", "dagster/asset_partition_range_end": "2024-03-02"}
    queued = instance.create_run_for_job(defs.resolve_job_def("shopflow_daily_job"), tags=range_tags)
    requests, cursor = tick(landing, instance=instance)
    assert requests == []  # the queued range may build them
    instance.report_run_failed(queued)

    assert materialize(ALL_ASSETS, selection="raw/orders", resources=resources, instance=instance, tags=range_tags).success

    requests, cursor = tick(landing, cursor, instance=instance)
    assert requests == []
    assert set(json.loads(cursor)["requested"]) == set(days)
    landing.export("2024-03-02", {"a.csv": csv_text([line("B", day="2024-03-02")]), "b.csv": csv_text([line("C", day="2024-03-02")])})
    assert tick(landing, cursor, instance=instance)[0] == [("2024-03-02", DAY_RUN)]


def test_export_sensor_never_skips_an_older_day_landing_late(landing):
    landing.export("2024-03-05", {"a.csv": csv_text([line("A", day="2024-03-05")])})
    _, cursor = tick(landing)
    # an older day lands afterwards, with an older mtime than anything seen so far
    landing.export("2024-03-01", {"a.csv": csv_text([line("A")])})
    old = dt.datetime(2020, 1, 1).timestamp()
    for p in landing.day_dir("2024-03-01").iterdir():
        os.utime(p, (old, old))
    assert tick(landing, cursor)[0] == [("2024-03-01", DAY_RUN)]


def test_export_sensor_ignores_days_that_are_not_partitions(landing):
    landing.export("2019-12-31", {"a.csv": csv_text([line("A", day="2019-12-31")])})  # before start
    landing.export("not-a-day", {"a.csv": "x"})
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    landing.export(future, {"a.csv": "x"})
    requests, cursor = tick(landing)
    assert requests == []
    assert json.loads(cursor)["requested"] == {}  # nothing recorded: each is requested once it is a day


def test_export_sensor_tick_is_fast_with_years_of_days(landing):
    import time

    yesterday = dt.date.today() - dt.timedelta(days=1)
    day = yesterday - dt.timedelta(days=3 * 365 - 1)
    for i in range(3 * 365):
        directory = landing.day_dir((day + dt.timedelta(days=i)).isoformat())
        directory.mkdir(parents=True)
        for n in range(4):
            (directory / f"part-{n}.csv.gz").write_bytes(b"x")
        (directory / "_SUCCESS").touch()
    started = time.monotonic()
    requests, cursor = tick(landing)
    first = time.monotonic() - started
    started = time.monotonic()
    assert tick(landing, cursor)[0] == []
    again = time.monotonic() - started
    assert len(requests) == (yesterday - max(day, dt.date(2024, 1, 1))).days + 1
    print(f"\nexport sensor over {3 * 365} days: first tick {first:.2f} s, next tick {again:.2f} s")
    assert again < 30  # Dagster's sensor time limit is 60 s


def test_schedule_requests_the_last_complete_utc_day():
    context = build_schedule_context(scheduled_execution_time=dt.datetime(2024, 3, 2, 2, 0, tzinfo=dt.timezone.utc))
    request = daily_0200_schedule(context)
    assert request.partition_key == "2024-03-01"
    # 02:00 in Tokyo is 17:00 UTC the day before: the local yesterday (03-01) has not ended
    tokyo = dt.datetime(2024, 3, 2, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert daily_0200_schedule(build_schedule_context(scheduled_execution_time=tokyo)).partition_key == "2024-02-29"
    assert daily_0200_schedule.default_status.value == "STOPPED"
    assert daily_0200_schedule.cron_schedule == "0 2 * * *"


@pytest.mark.slow
def test_ready_alert_one_message_per_materialization(run, landing, instance, slack, slack_server):
    from .test_failures_and_alerts import alert_ticks

    for day in ("2024-03-01", "2024-03-02"):
        landing.export(day, {"a.csv": csv_text([line("A", day=day, quantity=3, unit_price="2.50")])})
        assert run(day).success  # two days built between two ticks

    cursor = alert_ticks(instance, slack, landing)

    assert [m.splitlines()[0] for m in slack_server.delivered] == [  # in the order they were built
        ":white_check_mark: READY: fact_sales for 2024-03-01 landed",
        ":white_check_mark: READY: fact_sales for 2024-03-02 landed",
    ]
    assert all("• Rows: 1" in m and "• Net revenue: 7.50" in m for m in slack_server.delivered)
    # nothing new: nothing sent
    alert_ticks(instance, slack, landing, cursor)
    assert len(slack_server.delivered) == 2
