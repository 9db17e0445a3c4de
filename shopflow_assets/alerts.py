"""The words of every alert. Three kinds, never confused: BROKE (a run failed after its retries, or
a blocking dbt test failed), LATE (yesterday's fact_sales missed 08:00) and READY (D's fact_sales
landed); LATE has a follow-up, RECOVERED. Each says what, which day, why, where to look and what
to run."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote

from shopflow_assets.run_window import rerun_command

# "some.module.SomeError: text" or "Failure: text" -> "text" (the class name is noise in an alert)
_EXCEPTION_PREFIX = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Failure|Interrupt)\w*:\s*")
MAX_ERROR_CHARS = 400


def one_line(error: str) -> str:
    """The first meaningful line of an error, without the exception class, at most 400 chars."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    first = _EXCEPTION_PREFIX.sub("", lines[0]) if lines else "no error message"
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 1] + "…"


def days_label(days: Sequence[dt.date]) -> str:
    if not days:
        return "(not partitioned)"
    return str(days[0]) if len(days) == 1 else f"{days[0]}..{days[-1]}"


def run_url(ui_url: str, run_id: str) -> str:
    return f"{ui_url}/runs/{run_id}"


def asset_url(ui_url: str, asset: str, day: dt.date | None = None) -> str:
    url = f"{ui_url}/assets/{quote(asset)}"
    return f"{url}?view=partitions&partition={day}" if day else url


@dataclass(frozen=True)
class StepFailure:
    step: str
    error: str


def broke_message(
    *,
    run_id: str,
    job_name: str,
    assets: Sequence[str],
    days: Sequence[dt.date],
    failures: Sequence[StepFailure],
    failed_checks: Sequence[str] = (),
    not_built: Sequence[str] = (),
    ui_url: str,
) -> str:
    """`assets`: what failed; `not_built`: what the run would have built after it."""
    what = ", ".join(assets) or job_name
    lines = [
        f":red_circle: BROKE: {what} for {days_label(days)} failed",
        f"• What: {what} (job {job_name})",
        f"• Day: {days_label(days)}",
    ]
    if not_built:
        lines.append(f"• Not built: {', '.join(not_built)} (downstream, in the same run)")
    for failure in failures[:3]:
        lines.append(f"• Step: {failure.step}")
        lines.append(f"• Error: {one_line(failure.error)}")
    if len(failures) > 3:
        lines.append(f"• …and {len(failures) - 3} more failed steps")
    if failed_checks:
        lines.append(f"• Failed dbt tests: {', '.join(failed_checks[:10])}")
    lines.append(f"• Run: {run_url(ui_url, run_id)}")
    if days:
        lines.append(f"• Re-run: {rerun_command(','.join(sorted([*assets, *not_built])) or '*', list(days))}")
    return "\n".join(lines)


def late_message(*, day: dt.date, deadline: dt.datetime, reason: str, ui_url: str) -> str:
    return "\n".join(
        [
            f":alarm_clock: LATE: fact_sales for {day} is not ready (due {deadline:%Y-%m-%d %H:%M %Z})",
            "• What: fact_sales (and daily_revenue) for the executive dashboard",
            f"• Day: {day}",
            f"• Due since: {deadline.isoformat(timespec='minutes')}",
            f"• Why: {reason}",
            f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
            f"• Run it: {rerun_command('raw/orders*', [day])}",
        ]
    )


def recovered_message(*, day: dt.date, materialized_at: dt.datetime, ui_url: str) -> str:
    return "\n".join(
        [
            f":large_green_circle: RECOVERED: fact_sales for {day} is ready after all",
            f"• Day: {day}",
            f"• Materialized: {materialized_at.isoformat(timespec='minutes')}",
            f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
        ]
    )


def ready_message(*, day: dt.date, rows: int | None, net_revenue: str | None, run_id: str, ui_url: str) -> str:
    return "\n".join(
        [
            f":white_check_mark: READY: fact_sales for {day} landed",
            f"• Day: {day}",
            f"• Rows: {rows if rows is not None else 'unknown'}",
            f"• Net revenue: {net_revenue if net_revenue is not None else 'unknown'}",
            f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
            f"• Run: {run_url(ui_url, run_id)}",
        ]
    )
