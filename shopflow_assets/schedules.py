"""Time-based runs for teams that want them: every asset for yesterday, at 02:00.

Off by default: with the defaults the export sensor and automation already build each landing
exactly once; turning this on as well rebuilds yesterday once more at 02:00.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from shopflow_assets.asset_keys import RAW_ORDERS
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
    description="At 02:00 (SHOPFLOW_SLA_TIMEZONE), every asset for yesterday. Off by default.",
)
def daily_0200_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    local = context.scheduled_execution_time.astimezone(zoneinfo.ZoneInfo(get_settings().sla_timezone))
    yesterday = (local.date() - dt.timedelta(days=1)).isoformat()
    return RunRequest(run_key=yesterday, partition_key=yesterday)
