"""Time-based runs for teams that want them: every asset for yesterday, at 02:00.

Off by default: with the defaults the export sensor and automation already build each landing
exactly once; turning this on as well rebuilds yesterday once more at 02:00.

"Yesterday" is the rule of the 08:00 promise (defs/alerts/lateness.py): the last UTC day that ended before the
tick. At 02:00 in Tokyo (17:00 UTC) the local yesterday's UTC day is still running, so the schedule
asks for the day before it, a partition that exists.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetSelection,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from shopflow_assets.contract.asset_keys import RAW_ORDERS
from shopflow_assets.core.partitions import last_complete_day
from shopflow_assets.core.run_window import DAILY_JOB

def build_daily_job(partitions_def: DailyPartitionsDefinition):
    """raw/orders and everything downstream, for one day (or a range, in one run)."""
    return define_asset_job(
        name=DAILY_JOB,
        selection=AssetSelection.assets(RAW_ORDERS).downstream(),
        partitions_def=partitions_def,
        description="raw/orders, fact_sales and daily_revenue for one day (or a range, in one run).",
    )


def build_daily_schedule(job, *, timezone: str) -> ScheduleDefinition:
    """At 02:00 in `timezone` (SHOPFLOW_SLA_TIMEZONE), the last complete UTC day."""

    @schedule(
        name="shopflow_daily_0200",
        job=job,
        cron_schedule="0 2 * * *",
        execution_timezone=timezone,
        default_status=DefaultScheduleStatus.STOPPED,
        description="At 02:00 (SHOPFLOW_SLA_TIMEZONE), every asset for the last complete UTC day. Off by default.",
    )
    def daily_0200_schedule(context: ScheduleEvaluationContext) -> RunRequest:
        tick = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        yesterday = last_complete_day(tick).isoformat()
        return RunRequest(run_key=yesterday, partition_key=yesterday)

    return daily_0200_schedule
