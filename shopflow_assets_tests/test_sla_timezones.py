"""The 08:00 promise in every timezone: "yesterday" is the last UTC day that
ended before the deadline instant, 08:00 in SHOPFLOW_SLA_TIMEZONE. LATE fires at the deadline only
for a day whose fact_sales is really missing, never every morning, east of UTC (Tokyo, Kiritimati)
and west (Los Angeles), and across DST (Berlin, Los Angeles). The real evaluate_lateness on a real
Dagster instance, with real materializations; the 02:00 schedule asks for a partition that exists."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from dagster import AssetMaterialization, DagsterInstance, build_schedule_context

from shopflow_assets.defs.alerts.lateness import LatenessState, due_days, evaluate_lateness
from shopflow_assets.core.partitions import daily_partitions
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.operations.schedule import build_daily_job, build_daily_schedule

from .conftest import FACT_SALES, TEST_SETTINGS, csv_text, line

pytestmark = pytest.mark.slow  # dbt runs in process: the full suite, not the quick tier

UI = TEST_SETTINGS.ui_url
START = dt.date(2024, 1, 1)
UTC = dt.timezone.utc
ZONES = ["Asia/Tokyo", "Pacific/Kiritimati", "America/Los_Angeles", "UTC", "Europe/Berlin", "Asia/Shanghai"]


def deadline_of_day(day: dt.date, timezone: str) -> dt.datetime:
    """When `day` is due, worked out on its own: the first 08:00 in `timezone` after the end of
    `day` (00:00 UTC the next day)."""
    zone = zoneinfo.ZoneInfo(timezone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), UTC)
    local = end.astimezone(zone).date() - dt.timedelta(days=1)
    while True:
        candidate = dt.datetime.combine(local, dt.time(8), zone)
        if candidate > end:
            return candidate
        local += dt.timedelta(days=1)


def built(instance: DagsterInstance, day: dt.date) -> None:
    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=day.isoformat()))


def sweep(instance, landing, timezone: str, first: dt.datetime, last: dt.datetime, state=None, every_minutes=15):
    """Evaluate as the alerts sensor would, every `every_minutes` from `first` to `last`: the
    (kind, day, when) of every alert."""
    state = state or LatenessState()
    alerts, now = [], first
    while now <= last:
        messages, state = evaluate_lateness(
            instance, LandingZone(root=str(landing.root)), now, state, timezone=timezone, ui_url=UI, start_date=START
        )
        alerts += [(m.kind, m.day, now) for m in messages]
        now += dt.timedelta(minutes=every_minutes)
    return alerts, state


@pytest.mark.parametrize("timezone", ZONES)
def test_a_day_built_on_time_never_alerts_and_a_missing_one_alerts_once_at_its_deadline(timezone, landing, instance):
    """30 days around DST changes (Berlin and Los Angeles change in March): every day is built
    just after its UTC day ends, but for one. LATE for that one only, at its own deadline (and the
    next sensor tick), once; RECOVERED when it is built."""
    days = [dt.date(2024, 3, 5) + dt.timedelta(days=i) for i in range(30)]
    missing = dt.date(2024, 3, 10)  # 03-10: Los Angeles changes to summer time; 03-31: Berlin
    for day in days:
        if day != missing:
            built(instance, day)
    first = dt.datetime(2024, 3, 8, tzinfo=UTC)
    alerts, state = sweep(instance, landing, timezone, first, dt.datetime(2024, 4, 3, tzinfo=UTC))

    (late,) = alerts
    due = deadline_of_day(missing, timezone)
    assert late[:2] == ("LATE", missing)
    assert due <= late[2] < due + dt.timedelta(minutes=15), (late, due)

    built(instance, missing)
    assert sweep(instance, landing, timezone, late[2], late[2], state)[0] == [("RECOVERED", missing, late[2])]


@pytest.mark.parametrize("timezone", ["Asia/Tokyo", "Pacific/Kiritimati"])
def test_east_of_utc_the_due_day_is_the_last_utc_day_that_ended(timezone, run, landing, instance):
    """At 08:00 in Tokyo (23:00 UTC) the local yesterday is still running in UTC: the day due is the
    one before it. That day, really built (ingest and dbt), gives no LATE; the local yesterday,
    not built yet, gives none either."""
    zone = zoneinfo.ZoneInfo(timezone)
    morning = dt.datetime(2024, 3, 2, 8, 1, tzinfo=zone)
    (due,), _ = due_days(morning, timezone)
    assert due == dt.date(2024, 2, 29)
    landing.export("2024-02-29", {"a.csv": csv_text([line("A", day="2024-02-29")])})
    assert run("2024-02-29").success

    messages, state = evaluate_lateness(
        instance, LandingZone(root=str(landing.root)), morning, LatenessState(), timezone=timezone, ui_url=UI,
        start_date=START,
    )
    assert messages == []  # (the local yesterday, 2024-03-01, is not due: its UTC day has not ended)

    # the next morning 2024-03-01 is due, and missing: LATE, naming 08:00 local
    (late,), _ = evaluate_lateness(
        instance, LandingZone(root=str(landing.root)), morning + dt.timedelta(days=1), state, timezone=timezone,
        ui_url=UI, start_date=START,
    )
    assert late.kind == "LATE" and late.day == dt.date(2024, 3, 1)
    assert f"(due 2024-03-03 08:00 {morning.tzname()})" in late.text


def test_before_the_deadline_nothing_new_is_due(landing, instance):
    """At 07:59 in Los Angeles nothing is LATE, even with days missing (the last deadline's day is
    the last alert's business, not a new one)."""
    for timezone in ZONES:
        zone = zoneinfo.ZoneInfo(timezone)
        before = dt.datetime(2024, 3, 20, 7, 59, tzinfo=zone)
        messages, _ = evaluate_lateness(
            instance, LandingZone(root=str(landing.root)), before, LatenessState(), timezone=timezone, ui_url=UI,
            start_date=START,
        )
        assert messages == [], timezone


def test_at_utc_plus_8_the_day_ending_at_the_deadline_is_not_due_yet(landing, instance):
    """08:00 in Shanghai is 00:00 UTC: the day that ends then cannot have been built by then. The
    day before it is due, and LATE does not fire every morning."""
    morning = dt.datetime(2024, 3, 2, 8, 1, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai"))
    assert due_days(morning, "Asia/Shanghai")[0] == [dt.date(2024, 2, 29)]
    built(instance, dt.date(2024, 2, 29))
    messages, _ = evaluate_lateness(
        instance, LandingZone(root=str(landing.root)), morning, LatenessState(), timezone="Asia/Shanghai",
        ui_url=UI, start_date=START,
    )
    assert messages == []


@pytest.mark.parametrize(
    "timezone, hours",
    [("UTC", 8), ("Europe/Berlin", 7), ("America/Los_Angeles", 16), ("Asia/Tokyo", 23), ("Pacific/Kiritimati", 18),
     ("Asia/Shanghai", 24)],
)
def test_the_uis_freshness_policy_waits_from_the_end_of_the_day_due_to_its_deadline(timezone, hours):
    """Dagster's policy counts a materialization between the deadline minus lower_bound_delta and
    the deadline: that window must reach back to the end of the day due, or the UI says DEGRADED
    every morning (a fixed 8 h did, east of UTC+8)."""
    from dagster import FreshnessPolicy

    from shopflow_assets.defs.alerts.lateness import DEADLINE, longest_wait

    assert longest_wait(timezone) == dt.timedelta(hours=hours)
    FreshnessPolicy.cron(deadline_cron=f"0 {DEADLINE.hour} * * *", lower_bound_delta=longest_wait(timezone), timezone=timezone)


def test_every_utc_day_is_due_at_exactly_one_deadline_even_where_dst_moves_it_across_midnight():
    """Perth had summer time in 2006-2009: 08:00 AWST is 00:00 UTC, 08:00 AWDT 23:00 UTC the day
    before. Over those years, and in the zones above, the deadlines' due days cover each UTC day once."""
    for timezone in ["Australia/Perth", *ZONES]:
        zone = zoneinfo.ZoneInfo(timezone)
        seen: list[dt.date] = []
        for i in range(4 * 366):
            morning = dt.datetime.combine(dt.date(2006, 1, 1) + dt.timedelta(days=i), dt.time(9), zone)
            days, deadline = due_days(morning, timezone)
            assert all(deadline_of_day(d, timezone) == deadline for d in days), (timezone, days, deadline)
            seen += days
        assert seen == [seen[0] + dt.timedelta(days=i) for i in range(len(seen))], timezone


@pytest.mark.parametrize("timezone", ZONES + ["Australia/Perth", "Etc/GMT+12"])
def test_the_0200_schedule_asks_for_the_last_complete_utc_day_a_partition_that_exists(timezone):
    zone = zoneinfo.ZoneInfo(timezone)
    partitions = daily_partitions(TEST_SETTINGS.start_date)
    schedule = build_daily_schedule(build_daily_job(partitions), timezone=timezone)
    for i in range(0, 400, 3):  # a year and more of 02:00 ticks, DST changes included
        tick = dt.datetime.combine(dt.date(2024, 1, 10) + dt.timedelta(days=i), dt.time(2), zone)
        request = schedule(build_schedule_context(scheduled_execution_time=tick))
        day = dt.date.fromisoformat(request.partition_key)
        end_of_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), UTC)
        assert end_of_day < tick <= end_of_day + dt.timedelta(days=1), (tick, day)  # the last that ended
        assert request.partition_key in partitions.get_partition_keys(current_time=tick)
        assert request.run_key == request.partition_key


SCHEDULE_IN_ZONE = """
import datetime as dt, json, sys, zoneinfo
from dagster import build_schedule_context
from shopflow_assets.definitions import defs
daily_0200_schedule = defs.resolve_schedule_def("shopflow_daily_0200")
zone = zoneinfo.ZoneInfo(daily_0200_schedule.execution_timezone)
out = []
for i in range(0, 400, 7):
    tick = dt.datetime.combine(dt.date(2024, 1, 10) + dt.timedelta(days=i), dt.time(2), zone)
    out.append([tick.isoformat(), daily_0200_schedule(build_schedule_context(scheduled_execution_time=tick)).partition_key])
print(json.dumps(out))
"""


@pytest.mark.parametrize("timezone", ["Asia/Tokyo", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_a_deployment_in_the_zone_schedules_a_complete_day(timezone, tmp_path):
    """The code location as deployed with SHOPFLOW_SLA_TIMEZONE set: its schedule ticks at 02:00
    there and asks for a day that has ended (in Tokyo at 02:00 the local yesterday has not)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPFLOW_")}
    env["SHOPFLOW_SLA_TIMEZONE"] = timezone
    result = subprocess.run([sys.executable, "-c", SCHEDULE_IN_ZONE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for tick, key in json.loads(result.stdout.splitlines()[-1]):
        tick = dt.datetime.fromisoformat(tick)
        assert tick.astimezone(zoneinfo.ZoneInfo(timezone)).time() == dt.time(2)  # the schedule's zone
        end_of_day = dt.datetime.combine(dt.date.fromisoformat(key) + dt.timedelta(days=1), dt.time(0), UTC)
        assert end_of_day < tick <= end_of_day + dt.timedelta(days=1), (tick, key)
