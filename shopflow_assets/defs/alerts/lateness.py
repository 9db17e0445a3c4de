"""The 08:00 promise: yesterday's fact_sales (and daily_revenue) by 08:00 in SHOPFLOW_SLA_TIMEZONE.

"Yesterday" is the last UTC day (partitions are UTC days) that ended before the deadline instant,
08:00 local: in Los Angeles or Berlin the local yesterday, in Tokyo or Kiritimati the day before it
(at 08:00 there the local yesterday's UTC day has not ended yet). Strictly before: where 08:00 local
is 00:00 UTC (UTC+8: Shanghai, Perth, Singapore) the day that ends at the deadline cannot be built
by then, and the one before it is due.

Dagster's FreshnessPolicy shows the state in the UI, but judges the newest materialization of any
partition (a backfill of an old day makes it pass) and sends nothing in open source; so the "late"
alert looks at yesterday's partition itself (`evaluate_lateness`), with the clock passed in.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, FreshnessPolicy, RunsFilter

from shopflow_assets.contract.asset_keys import FACT_SALES, RAW_ORDERS
from shopflow_assets.defs.alerts.messages import Mrkdwn, late_message, literal, plain, recovered_message, run_url
from shopflow_assets.defs.ingest.checks import held_back_days
from shopflow_assets.contract.landing import exists
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.core.partitions import last_complete_day
from shopflow_assets.core.run_window import days_of_run_tags

DEADLINE = dt.time(8, 0)
REMEMBERED_DAYS = 31


def deadline_of(local_day: dt.date, timezone: str) -> dt.datetime:
    """08:00 in `timezone` on `local_day`, as an aware datetime of that zone."""
    return dt.datetime.combine(local_day, DEADLINE, tzinfo=zoneinfo.ZoneInfo(timezone))


def longest_wait(timezone: str, year: int = 2024) -> dt.timedelta:
    """The longest time, over a year (summer time included), from the end of a due day to its
    deadline: 8 h in UTC, 16 h in Los Angeles, 23 h in Tokyo, 24 h at UTC+8."""
    longest = dt.timedelta(0)
    for n in range(366):
        deadline = deadline_of(dt.date(year, 1, 1) + dt.timedelta(days=n), timezone)
        ended = dt.datetime.combine(last_complete_day(deadline) + dt.timedelta(days=1), dt.time(0), dt.timezone.utc)
        longest = max(longest, deadline - ended)
    return longest


def daily_by_0800(timezone: str) -> FreshnessPolicy:
    """The UI's view of the promise: materialized between the end of the day due and the 08:00
    deadline in `timezone` (Dagster judges the newest materialization of any day)."""
    return FreshnessPolicy.cron(
        deadline_cron=f"{DEADLINE.minute} {DEADLINE.hour} * * *",
        lower_bound_delta=longest_wait(timezone),
        timezone=timezone,
    )

IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def due_days(now: dt.datetime, timezone: str) -> tuple[list[dt.date], dt.datetime]:
    """The partitions due by the deadline of `now`'s local day, and that deadline.

    "Yesterday" is the last UTC day that ended before the deadline instant, not the local
    yesterday: at 08:00 in Tokyo the UTC day of the local yesterday is still running. Usually one
    day; none or two where a DST change moves the deadline across 00:00 UTC (Perth had summer time
    2006-2009), so that every UTC day is due at exactly one deadline."""
    local_day = now.astimezone(zoneinfo.ZoneInfo(timezone)).date()
    deadline = deadline_of(local_day, timezone)
    first = last_complete_day(deadline_of(local_day - dt.timedelta(days=1), timezone)) + dt.timedelta(days=1)
    last = last_complete_day(deadline)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)], deadline


def materialized_at(instance: DagsterInstance, key: AssetKey, day: dt.date) -> dt.datetime | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]), limit=1
    ).records
    return dt.datetime.fromtimestamp(records[0].timestamp, dt.timezone.utc) if records else None


def _runs_for(instance: DagsterInstance, day: dt.date, statuses: list[DagsterRunStatus], limit: int = 50):
    runs = instance.get_runs(filters=RunsFilter(statuses=statuses), limit=limit)
    return [r for r in runs if day in days_of_run_tags(r.tags)]


def why_missing(
    instance: DagsterInstance, landing: LandingZone, day: dt.date, ui_url: str, max_rejected_share: float = 0.5
) -> Mrkdwn:
    """What stands between `day`'s export and its fact_sales, in words a person can act on (Slack
    text: the landing zone's path shown as it is)."""
    running = _runs_for(instance, day, IN_PROGRESS)
    if running:
        return Mrkdwn(f"still running: {run_url(ui_url, running[0].run_id)} ({plain(running[0].status.value)})")
    failed = _runs_for(instance, day, [DagsterRunStatus.FAILURE], limit=20)
    if materialized_at(instance, RAW_ORDERS, day) is None:
        marker = landing.marker(day)
        if not exists(marker):
            return Mrkdwn(f"export not landed: {literal(marker)} does not exist yet")
        if failed:
            return Mrkdwn(f"ingest failed: {run_url(ui_url, failed[0].run_id)}")
        return Mrkdwn("export landed but raw/orders has not been ingested (is the export sensor running?)")
    if held_back_days(instance, [day.isoformat()], max_rejected_share):
        return Mrkdwn(
            "raw/orders is loaded, but more than SHOPFLOW_MAX_REJECTED_SHARE of its lines were rejected "
            "(check rejected_share): its models wait for a re-export, or for the setting to be raised "
            "and raw/orders re-run"
        )
    if failed:
        return Mrkdwn(f"raw/orders is loaded, the dbt build failed: {run_url(ui_url, failed[0].run_id)}")
    return Mrkdwn("raw/orders is loaded but fact_sales has not been built (is the daemon running?)")


@dataclass(frozen=True)
class LatenessAlert:
    kind: str  # LATE or RECOVERED
    day: dt.date
    text: str


@dataclass
class LatenessState:
    """The sensor's cursor: days alerted as late, and days whose recovery was announced."""

    late: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    def trimmed(self) -> "LatenessState":
        return LatenessState(self.late[-REMEMBERED_DAYS:], self.recovered[-REMEMBERED_DAYS:])


def evaluate_lateness(
    instance: DagsterInstance,
    landing: LandingZone,
    now: dt.datetime,
    state: LatenessState,
    *,
    timezone: str,
    ui_url: str,
    start_date: dt.date,
    max_rejected_share: float = 0.5,
) -> tuple[list[LatenessAlert], LatenessState]:
    """Messages to send at `now`, and the new state. At most one LATE per day, ever."""
    messages: list[LatenessAlert] = []
    days, deadline = due_days(now, timezone)
    for day in days if now >= deadline else []:  # before today's deadline nothing new is due
        if day < start_date or str(day) in state.late:
            continue
        if materialized_at(instance, FACT_SALES, day) is None:
            reason = why_missing(instance, landing, day, ui_url, max_rejected_share)
            messages.append(LatenessAlert("LATE", day, late_message(day=day, deadline=deadline, reason=reason, ui_url=ui_url)))
            state.late.append(str(day))
    for late_day in [d for d in state.late if d not in state.recovered]:
        built = materialized_at(instance, FACT_SALES, dt.date.fromisoformat(late_day))
        if built is not None:
            recovered = recovered_message(day=dt.date.fromisoformat(late_day), materialized_at=built, ui_url=ui_url)
            messages.append(LatenessAlert("RECOVERED", dt.date.fromisoformat(late_day), recovered))
            state.recovered.append(late_day)
    return messages, state.trimmed()
