"""The export sensor: D's `_SUCCESS` appears (or D is re-exported) -> one run that materializes
raw/orders for D and then the dbt models of D (fact_sales, daily_revenue).

One run, not raw/orders alone followed by the automation sensor's run of the models: that saves a
sensor wait and a run start (about 7 s of the 26 s from `_SUCCESS` to daily_revenue). The automation
condition of the models does not build the day a second time: Dagster's `any_deps_updated()` ignores
an upstream update made by a run that also targeted the downstream asset (test_daemon_e2e.py counts
one materialization of each asset per landing).

The cursor maps each day to the fingerprint of its finished export, so a day is never skipped for
clock or mtime order, and a re-export with new content is noticed, while an untouched day is not.
An export that `shopflow-push-export` already started (a run tagged with it) is not requested again.
"""

from __future__ import annotations

import datetime as dt
import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from shopflow_assets.asset_keys import DAILY_REVENUE, FACT_SALES, RAW_ORDERS
from shopflow_assets.partitions import daily_partitions
from shopflow_assets.resources.landing import LandingZone
from shopflow_assets.run_window import EXPORT_TAG, export_tag_value
from shopflow_assets.settings import get_settings


def is_partition(day: str, now: dt.datetime) -> bool:
    """A key of the daily partitions: from the start date to the last complete UTC day."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        return False
    last_complete_day = now.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
    return daily_partitions.start.date() <= date <= last_complete_day


# the day's ingest, then its models (a failed ingest skips them: that day's downstream only)
DAY_ASSETS = [RAW_ORDERS, FACT_SALES, DAILY_REVENUE]


@sensor(
    name="shopflow_export_landed",
    target=DAY_ASSETS,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests raw/orders, fact_sales and daily_revenue for day D, in one run, when D's "
    "export finishes landing (its _SUCCESS appears) or D is re-exported with new content.",
)
def export_landed_sensor(context: SensorEvaluationContext, landing: LandingZone):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    now = dt.datetime.now(dt.timezone.utc)
    requests = []
    for day, fingerprint in landing.finished_export_fingerprints():
        if seen.get(day) == fingerprint:
            continue
        seen[day] = fingerprint
        if not is_partition(day, now):
            context.log.warning(f"Ignoring export dt={day}: not a partition of raw/orders (yet)")
            continue
        export = export_tag_value(day, fingerprint)
        if context.instance.get_run_records(RunsFilter(tags={EXPORT_TAG: export}), limit=1):
            context.log.info(f"Export dt={day} was pushed (shopflow-push-export): its run is under way")
            continue
        requests.append(
            RunRequest(run_key=export, partition_key=day, asset_selection=DAY_ASSETS, tags={EXPORT_TAG: export})
        )
    cursor = json.dumps(seen, sort_keys=True, separators=(",", ":"))
    if not requests:
        return SensorResult(skip_reason=SkipReason("no new or changed export"), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)
