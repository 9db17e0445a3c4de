"""The one partitioning of the pipeline: a day, in UTC, keyed YYYY-MM-DD."""

from dagster import DailyPartitionsDefinition

from shopflow_assets.settings import get_settings

daily_partitions = DailyPartitionsDefinition(
    start_date=get_settings().start_date.isoformat(),
    timezone="UTC",
    fmt="%Y-%m-%d",
)
