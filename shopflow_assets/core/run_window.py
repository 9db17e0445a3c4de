"""The days a run covers, and the command that re-runs them."""

from __future__ import annotations

import datetime as dt

from dagster import Failure, TimeWindow


def days_of(window: TimeWindow) -> list[dt.date]:
    """The UTC days of a partition time window (one for a single partition, more for a backfill)."""
    first, end = window.start.date(), window.end.date()
    days = [first + dt.timedelta(days=i) for i in range((end - first).days)]
    if not days:
        # a range whose last day comes before its first: a mistake to fix, not to retry
        raise Failure(
            description=f"The partition range {first}...{end - dt.timedelta(days=1)} holds no day: "
            "give it as --partition-range FIRST...LAST with FIRST <= LAST.",
            allow_retries=False,
        )
    return days


def rerun_command(selection: str, days: list[dt.date]) -> str:
    partition = (
        f"--partition {days[0]}"
        if len(days) == 1
        else f"--partition-range {days[0]}...{days[-1]}"
    )
    return (
        f"dagster asset materialize -m shopflow_assets.definitions --select '{selection}' {partition}"
    )


# Runs that write the warehouse take a slot of this pool: DuckDB allows one writer per file.
WAREHOUSE_POOL = "shopflow_warehouse"
DAILY_JOB = "shopflow_daily_job"  # raw/orders and its models for a day or a range, in one run
PARTITION_TAG = "dagster/partition"
# The export a run builds, `<day>:<fingerprint>`: set by the export sensor and by
# `shopflow-push-export`, so that neither starts a day the other already started.
EXPORT_TAG = "shopflow/export"
# raw/orders' per-day metadata: the fingerprint of the export the ingest read
EXPORT_METADATA = "export_fingerprint"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def export_tag_value(day: str, fingerprint: str) -> str:
    """The EXPORT_TAG value (and the export sensor's run key) of one finished export of `day`."""
    return f"{day}:{fingerprint}"


def days_of_run_tags(tags: dict[str, str]) -> list[dt.date]:
    """The days a run was launched for, from its partition tags (none for an unpartitioned run)."""
    try:
        if PARTITION_TAG in tags:
            return [dt.date.fromisoformat(tags[PARTITION_TAG])]
        if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            first = dt.date.fromisoformat(tags[RANGE_START_TAG])
            last = dt.date.fromisoformat(tags[RANGE_END_TAG])
            return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    except ValueError:
        pass
    return []
