"""The 08:00 promise as fact_sales' check history: one result per day, "was D on time?".

A day is on time when a materialization of it exists from before its deadline (a later rebuild
does not make it late); a late day is as late as its first build after the deadline. The result is
written when the day is built: by this check's own step when the run includes it, else (a run
that leaves the check out, or whose build failed) by the dbt step; and by the alerts sensor at the
deadline when the day is not there.
"""

import datetime as dt
from typing import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
    DailyPartitionsDefinition,
    MetadataValue,
    multi_asset_check,
)

from shopflow_assets.contract.asset_keys import FACT_SALES
from shopflow_assets.core.check_results import per_day_results
from shopflow_assets.core.run_window import days_of
from shopflow_assets.defs.alerts.lateness import deadline_of, due_days

ON_TIME = "on_time_by_0800"
ON_TIME_CHECK = AssetCheckKey(FACT_SALES, ON_TIME)


def deadline_for(day: dt.date, timezone: str) -> dt.datetime:
    """The deadline at which partition `day` is due (see lateness.due_days: usually 08:00 local
    on the next local day, later east of UTC)."""
    for n in range(4):
        deadline = deadline_of(day + dt.timedelta(days=n), timezone)
        if day in due_days(deadline, timezone)[0]:
            return deadline
    raise ValueError(f"no deadline found for {day} in {timezone}")  # every UTC day has one


def first_on_time(instance: DagsterInstance, day: dt.date, deadline: dt.datetime) -> dt.datetime | None:
    """When `day` was materialized before its deadline (the latest such time), if it was."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=FACT_SALES, asset_partitions=[day.isoformat()], before_timestamp=deadline.timestamp()
        ),
        limit=1,
    ).records
    return dt.datetime.fromtimestamp(records[0].timestamp, dt.timezone.utc) if records else None


def first_late_build(instance: DagsterInstance, day: dt.date, deadline: dt.datetime) -> dt.datetime | None:
    """When `day` was first materialized after its deadline, if it was."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=FACT_SALES, asset_partitions=[day.isoformat()], after_timestamp=deadline.timestamp()
        ),
        limit=1,
        ascending=True,
    ).records
    return dt.datetime.fromtimestamp(records[0].timestamp, dt.timezone.utc) if records else None


def on_time_evaluation(
    instance: DagsterInstance, day: dt.date, *, timezone: str, now: dt.datetime, building_now: bool = False
) -> AssetCheckEvaluation | None:
    """Day `day`'s result at `now`; None while it is not built and not yet due. `building_now`:
    the caller is materializing the day at `now` (its event may not be stored yet)."""
    deadline = deadline_for(day, timezone)
    on_time = first_on_time(instance, day, deadline)
    if on_time is None and building_now and now < deadline:
        on_time = now
    arrived = on_time or first_late_build(instance, day, deadline) or (now if building_now else None)
    if arrived is None and now < deadline:
        return None
    if on_time is not None:
        description = f"{day} was built at {on_time:%Y-%m-%d %H:%M} UTC, before its deadline."
    elif arrived is not None:
        late_by = round((arrived - deadline).total_seconds() / 60)
        description = f"{day} was built at {arrived:%Y-%m-%d %H:%M} UTC, {late_by} min after its deadline."
    else:
        description = f"{day} was not built by its deadline (see the LATE alert for why)."
    metadata = {
        "deadline": MetadataValue.timestamp(deadline),
        "minutes_late": MetadataValue.int(0 if on_time else round(((arrived or now) - deadline).total_seconds() / 60)),
    }
    if arrived is not None:
        metadata["built_at"] = MetadataValue.timestamp(on_time or arrived)
    return AssetCheckEvaluation(
        asset_key=FACT_SALES,
        check_name=ON_TIME,
        partition=day.isoformat(),
        passed=on_time is not None,
        # late is not broken: a warning, never a block on anything downstream
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def build_on_time_check(*, partitions_def: DailyPartitionsDefinition, timezone: str) -> AssetsDefinition:
    """The check's definition: it judges the run's days from their history (after the build of
    fact_sales, when the run has one)."""

    @multi_asset_check(
        specs=[
            AssetCheckSpec(
                ON_TIME,
                asset=FACT_SALES,
                partitions_def=partitions_def,
                description=(
                    f"The day's fact_sales was materialized by 08:00 ({timezone}) after the day "
                    "(SHOPFLOW_SLA_TIMEZONE). Late is a warning: it blocks nothing."
                ),
            )
        ],
        # one result per day of a range, or none for days not due yet
        can_subset=True,
        name="fact_sales_on_time_by_0800",
    )
    def on_time_check(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
        now = dt.datetime.now(dt.timezone.utc)
        days = days_of(context.partition_time_window)
        evaluations = [on_time_evaluation(context.instance, day, timezone=timezone, now=now) for day in days]
        yield from per_day_results(context, [e for e in evaluations if e is not None])

    return on_time_check
