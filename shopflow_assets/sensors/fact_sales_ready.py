"""The asset sensor on fact_sales: a READY message for every materialization of a day.

@asset_sensor hands over only the newest event of a tick; this one reads every materialization
since its cursor, so two days built between ticks give two messages.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetRecordsFilter,
    DefaultSensorStatus,
    EventLogEntry,
    SensorEvaluationContext,
    asset_sensor,
)

from shopflow_assets.alerts import ready_message
from shopflow_assets.asset_keys import FACT_SALES
from shopflow_assets.resources.slack import ShopflowSlack
from shopflow_assets.settings import get_settings

MAX_EVENTS_PER_TICK = 1000


def _by_day(metadata, key: str, day: str):
    value = metadata.get(key)
    return (getattr(value, "value", None) or {}).get(day) if value is not None else None


@asset_sensor(
    asset_key=FACT_SALES,
    name="shopflow_fact_sales_ready",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="READY message to the dashboard channel for each materialization of a day of fact_sales.",
)
def fact_sales_ready_sensor(
    context: SensorEvaluationContext, asset_event: EventLogEntry, slack: ShopflowSlack
) -> None:
    # the wrapper moves the cursor to the newest event after this returns; read all up to it
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=FACT_SALES, after_storage_id=after),
        ascending=True,
        limit=MAX_EVENTS_PER_TICK,
    ).records
    for record in records:
        materialization = record.asset_materialization
        day = materialization.partition if materialization else None
        if day is None:
            continue
        metadata = materialization.metadata
        slack.post(
            ready_message(
                day=dt.date.fromisoformat(day),
                rows=_by_day(metadata, "rows_by_day", day),
                net_revenue=_by_day(metadata, "net_revenue_by_day", day),
                run_id=record.run_id,
                ui_url=get_settings().ui_url,
            ),
            log=context.log,
        )
