"""The export sensor: D's `_SUCCESS` appears (or D is re-exported) -> one run that materializes
raw/orders for D and then the dbt models of D (fact_sales, daily_revenue).

One run, not raw/orders alone followed by the automation sensor's run of the models: that saves a
sensor wait and a run start. The automation condition of the models does not build the day a second
time: Dagster's `any_deps_updated()` ignores an upstream update made by a run that also targeted the
downstream asset (test_daemon_e2e.py counts one materialization of each asset per landing).

The cursor maps each day to the fingerprint of the export last requested (or found already started),
so a day is never skipped for clock or mtime order, a re-export is noticed, and an untouched day is
not. A fingerprint is recorded only once its day is requested: a day that lands before its partition
exists (just before UTC midnight, or with the daemon's clock behind) is requested once it exists.
What is under `orders/` but is not a day folder is skipped with a warning, once per name.

An export that already has a run tagged with it (`shopflow-push-export`, or a run that found the
export changed under it and built the newer one: see raw/orders), or that the newest ingest of its day
read (a backfill of a range: its per-day metadata names the export), is not requested again; while a
run of the day (or of a range holding it) is queued or running, a newer export of that day waits for
it to end, since that run may build it.
"""

from __future__ import annotations

import datetime as dt
import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorDefinition,
    SensorResult,
    SkipReason,
    sensor,
)

from shopflow_assets.contract.asset_keys import DAILY_REVENUE, FACT_SALES, RAW_ORDERS
from shopflow_assets.core.partitions import is_partition
from shopflow_assets.core.run_window import EXPORT_METADATA, EXPORT_TAG, days_of_run_tags, export_tag_value
from shopflow_assets.defs.ingest.checks import newest_ingest_metadata
from shopflow_assets.defs.ingest.landing_zone import LandingZone

IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
REMEMBERED_NAMES = 200  # names warned about, kept in the cursor so that each is warned about once
IN_PROGRESS_RUNS_LOOKED_AT = 500  # far more than the instance runs at once (4)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# the day's ingest, then its models (a failed ingest skips them: that day's downstream only)
DAY_ASSETS = [RAW_ORDERS, FACT_SALES, DAILY_REVENUE]


def load_cursor(text: str | None) -> dict:
    """{"requested": {day: fingerprint}, "warned": [...]}; an older cursor was the map alone."""
    data = json.loads(text) if text else {}
    if "requested" not in data:
        data = {"requested": data}
    data.setdefault("warned", [])
    return data


def _warn_once(context: SensorEvaluationContext, cursor: dict, key: str, message: str) -> None:
    if key in cursor["warned"]:
        return
    context.log.warning(message)
    cursor["warned"] = (cursor["warned"] + [key])[-REMEMBERED_NAMES:]


def days_in_progress(instance) -> set[str]:
    """The days of the runs queued or running, one day or a range each."""
    runs = instance.get_runs(RunsFilter(statuses=IN_PROGRESS), limit=IN_PROGRESS_RUNS_LOOKED_AT)
    return {day.isoformat() for run in runs for day in days_of_run_tags(run.tags)}


def ingested_export(instance, day: str) -> str | None:
    """The fingerprint of the export that the newest ingest of `day` read (its metadata)."""
    entry = newest_ingest_metadata(instance, day).get(EXPORT_METADATA)
    return str(entry.value) if entry is not None else None


def build_export_sensor(*, start_date: dt.date, interval_seconds: int) -> SensorDefinition:
    """The export sensor for partitions from `start_date`, ticking every `interval_seconds`."""

    @sensor(
        name="shopflow_export_landed",
        target=DAY_ASSETS,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Requests raw/orders, fact_sales and daily_revenue for day D, in one run, when D's "
        "export finishes landing (its _SUCCESS appears) or D is re-exported with new content.",
    )
    def export_landed_sensor(context: SensorEvaluationContext, landing: LandingZone):
        return requests_for_landed_exports(context, landing, start_date)

    return export_landed_sensor


def requests_for_landed_exports(context: SensorEvaluationContext, landing: LandingZone, start_date: dt.date) -> SensorResult:
    """One tick of the export sensor."""
    cursor = load_cursor(context.cursor)
    requested: dict[str, str] = cursor["requested"]
    now = utc_now()
    requests, waiting = [], []
    in_progress: set[str] | None = None
    for entry in landing.scan_orders():
        if entry.day is None:
            _warn_once(
                context, cursor, f"name:{entry.name}",
                f"Skipping orders/{entry.name}: not a day folder (days are folders named dt=YYYY-MM-DD)",
            )
            continue
        day, folder = entry.day.isoformat(), entry.folder
        if folder.newer_than_marker and folder.marker:
            _warn_once(
                context, cursor, f"rewrite:{day}:{folder.newer_than_marker[0]}",
                f"Export dt={day} is being rewritten (a file is newer than its _SUCCESS): "
                "it is requested once its _SUCCESS is written again",
            )
        fingerprint = folder.fingerprint
        if fingerprint is None or requested.get(day) == fingerprint:
            continue
        if not is_partition(day, start_date, now):
            _warn_once(
                context, cursor, f"early:{day}:{fingerprint}",
                f"Export dt={day} is not a partition of raw/orders yet (the first is "
                f"{start_date}, the last is yesterday in UTC): it is requested once it is",
            )
            continue
        export = export_tag_value(day, fingerprint)
        if context.instance.get_run_records(RunsFilter(tags={EXPORT_TAG: export}), limit=1):
            context.log.info(f"Export dt={day} already has its run (pushed, or built by an earlier run)")
            requested[day] = fingerprint
            continue
        if in_progress is None:  # looked up once a tick, and only when a day needs it
            in_progress = days_in_progress(context.instance)
        if day in in_progress:
            waiting.append(day)  # that run may build this export: look again when it ends
            continue
        if ingested_export(context.instance, day) == fingerprint:
            context.log.info(f"Export dt={day} is already ingested (by a run over several days)")
            requested[day] = fingerprint
            continue
        requested[day] = fingerprint
        requests.append(
            RunRequest(run_key=export, partition_key=day, asset_selection=DAY_ASSETS, tags={EXPORT_TAG: export})
        )
    text = json.dumps(cursor, sort_keys=True, separators=(",", ":"))
    if not requests:
        why = f"waiting for the runs of {', '.join(waiting)} to end" if waiting else "no new or changed export"
        return SensorResult(skip_reason=SkipReason(why), cursor=text)
    return SensorResult(run_requests=requests, cursor=text)
