"""The days a run covers, and the command that re-runs them."""

from __future__ import annotations

import datetime as dt

from dagster import TimeWindow


def days_of(window: TimeWindow) -> list[dt.date]:
    """The UTC days of a partition time window (one for a single partition, more for a backfill)."""
    first, end = window.start.date(), window.end.date()
    return [first + dt.timedelta(days=i) for i in range((end - first).days)]


def rerun_command(selection: str, days: list[dt.date]) -> str:
    partition = (
        f"--partition {days[0]}"
        if len(days) == 1
        else f"--partition-range {days[0]}...{days[-1]}"
    )
    return (
        f"dagster asset materialize -m shopflow_assets.definitions --select '{selection}' {partition}"
    )
