"""The one partitioning of the pipeline: a day, in UTC, keyed YYYY-MM-DD."""

import datetime as dt

from dagster import DailyPartitionsDefinition


def daily_partitions(start_date: dt.date) -> DailyPartitionsDefinition:
    """Days in UTC keyed YYYY-MM-DD, from `start_date` (SHOPFLOW_START_DATE) to yesterday."""
    return DailyPartitionsDefinition(start_date=start_date.isoformat(), timezone="UTC", fmt="%Y-%m-%d")


def last_complete_day(instant: dt.datetime) -> dt.date:
    """The last UTC day that ended before `instant` (day D ends at D+1 00:00 UTC)."""
    return (instant.astimezone(dt.timezone.utc) - dt.timedelta(microseconds=1)).date() - dt.timedelta(days=1)


def is_partition(day: str, start_date: dt.date, now: dt.datetime) -> bool:
    """A key of the daily partitions at `now`: from the start date to the last complete UTC day."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        return False
    return start_date <= date <= now.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
