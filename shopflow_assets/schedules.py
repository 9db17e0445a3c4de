"""Time-based runs for teams that want them: every asset for yesterday, at 02:00.

Off by default: with the defaults the export sensor and automation already build each landing
exactly once; turning this on as well rebuilds yesterday once more at 02:00.

"Yesterday" is the rule of the 08:00 promise (freshness.py): the last UTC day that ended before the
tick. At 02:00 in Tokyo (17:00 UTC) the local yesterday's UTC day is still running, so the schedule
asks for the day before it, a partition that exists.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from shopflow_assets.asset_keys import RAW_ORDERS
from shopflow_assets.freshness import last_complete_day
from shopflow_assets.partitions import daily_partitions
from shopflow_assets.settings import get_settings

shopflow_daily_job = define_asset_job(
    name="shopflow_daily_job",
    selection=AssetSelection.assets(RAW_ORDERS).downstream(),
    partitions_def=daily_partitions,
    description="raw/orders, fact_sales and daily_revenue for one day (or a range, in one run).",
)


@schedule(
    name="shopflow_daily_0200",
    job=shopflow_daily_job,
    cron_schedule="0 2 * * *",
    execution_timezone=get_settings().sla_timezone,
    default_status=DefaultScheduleStatus.STOPPED,
    description="At 02:00 (SHOPFLOW_SLA_TIMEZONE), every asset for the last complete UTC day. Off by default.",
)
def daily_0200_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    tick = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    yesterday = last_complete_day(tick).isoformat()
    return RunRequest(run_key=yesterday, partition_key=yesterday)
