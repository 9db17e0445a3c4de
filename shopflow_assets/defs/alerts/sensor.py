"""The alerts: BROKE, LATE (and RECOVERED) and READY, written to the outbox and delivered by one
sensor, `shopflow_alerts`, in the daemon: a Slack outage can never fail or block a run.

Each tick (shopflow_assets/defs/alerts/outbox.py says why in this order):
1. delivers what earlier ticks put in the outbox (stored in this sensor's cursor);
2. reads what happened since its positions in Dagster's event log, and adds one message per event:
   - BROKE for every run that failed (RUN_FAILURE), whatever launched it (CLI, UI, sensor,
     automation, schedule, a lost run worker marked failed by shopflow_run_watchdog). A failed
     blocking dbt test fails its run too, so its BROKE lists the failed tests;
   - READY for every materialization of a day of fact_sales (two days built between ticks: two);
   - LATE once per day when yesterday's fact_sales is not materialized by 08:00 in
     SHOPFLOW_SLA_TIMEZONE, RECOVERED when it lands afterwards;
3. stores positions and outbox in its cursor, in one write (Dagster's, at the end of the tick).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time

from dagster import (
    AssetCheckSeverity,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    get_dagster_logger,
    sensor,
)

from shopflow_assets.defs.alerts.messages import StepFailure, broke_message, literal, one_line, ready_message, run_url
from shopflow_assets.contract.asset_keys import FACT_SALES
from shopflow_assets.defs.alerts.lateness import LatenessState, evaluate_lateness
from shopflow_assets.defs.alerts.on_time import on_time_evaluation
from shopflow_assets.defs.alerts.outbox import Alert, InstanceMarkers, OutboxState, deliver
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.operations.watchdog import LOST_WORKER
from shopflow_assets.defs.alerts.slack import ShopflowSlack
from shopflow_assets.core.run_window import PARTITION_TAG, days_of_run_tags
from shopflow_assets.settings import Settings

ALERTS_SENSOR = "shopflow_alerts"
EVENTS_PER_TICK = 200


def failed_checks_of_run(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    failed = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR:
            failed.append(f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}")
    return failed


def step_error_text(failure) -> str:
    """What went wrong in a step: a Failure's own description, else the error under the retries
    (after the last retry the step's error reads only "Exceeded max_retries")."""
    if failure.user_failure_data and failure.user_failure_data.description:
        return failure.user_failure_data.description
    error = failure.error
    while error is not None and error.cls_name == "RetryRequestedFromPolicy" and error.cause:
        error = error.cause
    return error.message if error is not None else ""


def assets_of_run(instance: DagsterInstance, run) -> set:
    """The assets a run set out to materialize (its selection, or its planned materializations)."""
    if run.asset_selection:
        return set(run.asset_selection)
    return set().union(*planned_assets_by_step(instance, run.run_id).values())


def planned_assets_by_step(instance: DagsterInstance, run_id: str) -> dict[str, set]:
    """Step key -> the assets that step of the run was to materialize."""
    by_step: dict[str, set] = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records:
        entry = record.event_log_entry
        by_step.setdefault(entry.step_key or "?", set()).add(entry.dagster_event.asset_key)
    return by_step


def failed_and_not_built(instance: DagsterInstance, run, failures: list[StepFailure]) -> tuple[list[str], list[str]]:
    """What a failed run broke (the unbuilt assets of its failed steps) and what it then did not
    build (the rest of its unbuilt assets: a day's models after its failed ingest, say)."""
    run_assets = assets_of_run(instance, run)
    built = {
        r.event_log_entry.dagster_event.asset_key
        for r in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    }
    by_step = planned_assets_by_step(instance, run.run_id)
    of_failed_steps = set().union(*(by_step.get(f.step, set()) for f in failures)) & run_assets
    failed = (of_failed_steps - built) or of_failed_steps or run_assets
    not_built = run_assets - built - failed
    return sorted(k.to_user_string() for k in failed), sorted(k.to_user_string() for k in not_built)


def lost_worker_failure(instance: DagsterInstance, run_id: str, run_message: str | None) -> StepFailure:
    """A run failed outside its steps. Its failure event only says "marked as failed from outside
    the execution context"; the engine event before it says why: the code server saw the run process
    "terminated by signal 9 (SIGKILL)", shopflow_run_watchdog found the worker gone ("Run worker
    lost"), or the run queue could not start it (an engine event with an error, e.g. "Run dequeue
    failed to reach the user code server"). The step it was in is the one that started and never
    ended."""
    started, ended, engine_messages = [], set(), []
    kinds = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.STEP_SKIPPED,
        DagsterEventType.ENGINE_EVENT,
    }
    for entry in instance.all_logs(run_id, of_type=kinds):
        kind, message = entry.dagster_event_type, (entry.message or "").strip()
        if kind == DagsterEventType.STEP_START:
            started.append(entry.step_key)
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED):
            ended.add(entry.step_key)
        elif kind == DagsterEventType.ENGINE_EVENT:
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            error = data.error if data is not None else None
            if error is not None:
                engine_messages.append(f"{message.rstrip('.')}: {one_line(error.message)}")
            elif "terminated" in message or message.startswith(LOST_WORKER):
                engine_messages.append(message)
    running = [step for step in started if step not in ended]
    error = engine_messages[-1] if engine_messages else (run_message or "run failed")
    return StepFailure(step=running[-1] if running else "(run)", error=error.strip().splitlines()[0])


def broke_message_for(instance: DagsterInstance, run: DagsterRun, failure_message: str | None, ui_url: str) -> str:
    """The BROKE message of a failed run, from its events in the instance."""
    failures = [
        StepFailure(step=e.dagster_event.step_key or "?", error=step_error_text(e.dagster_event.step_failure_data))
        for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    ]
    if not failures:  # the run failed outside its steps: its worker died, say
        failures = [lost_worker_failure(instance, run.run_id, failure_message)]
    failed, not_built = failed_and_not_built(instance, run, failures)
    return broke_message(
        run_id=run.run_id,
        job_name=run.job_name,
        assets=failed,
        days=days_of_run_tags(run.tags),
        failures=failures,
        failed_checks=failed_checks_of_run(instance, run.run_id),
        not_built=not_built,
        ui_url=ui_url,
        partition=run.tags.get(PARTITION_TAG),
    )


def day_rows_and_revenue(metadata) -> tuple[object, object]:
    """A day's rows and net revenue, from its own materialization's metadata (each day of a range
    built in one run has its own); the revenue as money, two decimals."""
    rows = getattr(metadata.get("dagster/row_count"), "value", None)
    net = getattr(metadata.get("net_revenue"), "value", None)
    if isinstance(net, (int, float)) and not isinstance(net, bool):
        net = f"{net:.2f}"
    return rows, net


def _unreadable(kind: str, what: str, run_id: str, error: Exception, ui_url: str) -> str:
    """The alert of an event whose message could not be built: said, not skipped, and never a
    reason to read the event log again and again."""
    return (
        f"{kind}: {what} (the alert's details could not be read: {literal(f'{type(error).__name__}: {error}', 200)})\n"
        f"• Run: {run_url(ui_url, run_id)}"
    )


def _day_or_key(partition: str) -> dt.date | str:
    """A partition key as a day; a key that is no day (another code location's, or reported by
    hand) stays text, shown as it is."""
    try:
        return dt.date.fromisoformat(partition)
    except ValueError:
        return partition


@dataclasses.dataclass
class AlertsCursor:
    """The sensor's cursor: its positions in the event log, the lateness memory, the outbox."""

    failures_after: int | None = None  # storage id of the last RUN_FAILURE read
    ready_after: int | None = None  # storage id of the last fact_sales materialization read
    lateness: LatenessState = dataclasses.field(default_factory=LatenessState)
    outbox: OutboxState = dataclasses.field(default_factory=OutboxState)

    @classmethod
    def load(cls, text: str | None) -> "AlertsCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            failures_after=data.get("failures_after"),
            ready_after=data.get("ready_after"),
            lateness=LatenessState(**data.get("lateness", {})),
            outbox=OutboxState.from_json(data.get("outbox")),
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "failures_after": self.failures_after,
                "ready_after": self.ready_after,
                "lateness": dataclasses.asdict(self.lateness),
                "outbox": self.outbox.to_json(),
            },
            separators=(",", ":"),
        )


def start_positions(instance: DagsterInstance, cursor: AlertsCursor) -> None:
    """A new sensor starts at the end of the event log: it announces what happens from now on."""
    if cursor.failures_after is None:
        latest = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records
        cursor.failures_after = latest[0].storage_id if latest else 0
    if cursor.ready_after is None:
        latest = instance.fetch_materializations(FACT_SALES, limit=1).records
        cursor.ready_after = latest[0].storage_id if latest else 0


def new_alerts(
    instance: DagsterInstance, landing: LandingZone, cursor: AlertsCursor, now: float, settings: Settings
) -> list[Alert]:
    """The alerts of what happened since the cursor's positions, in the order it happened; moves
    the positions (in `cursor`, stored only with the outbox that holds these alerts)."""
    events: list[tuple[int, Alert]] = []

    failures = instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(DagsterEventType.RUN_FAILURE, after_storage_id=cursor.failures_after),
        limit=EVENTS_PER_TICK,
        ascending=True,
    ).records
    for record in failures:
        run = instance.get_run_by_id(record.run_id)
        if run is not None:  # (a run deleted since: nothing to say)
            try:
                text = broke_message_for(instance, run, record.event_log_entry.message, settings.ui_url)
            except Exception as error:  # noqa: BLE001
                text = _unreadable(":red_circle: BROKE", "a run failed", run.run_id, error, settings.ui_url)
            events.append((record.storage_id, Alert(f"broke:{run.run_id}", "BROKE", text, now)))
        cursor.failures_after = record.storage_id

    built = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=FACT_SALES, after_storage_id=cursor.ready_after),
        ascending=True,
        limit=EVENTS_PER_TICK,
    ).records
    for record in built:
        materialization = record.asset_materialization
        day = materialization.partition if materialization else None
        if day is not None:
            try:
                rows, net_revenue = day_rows_and_revenue(materialization.metadata)
                text = ready_message(
                    day=_day_or_key(day),
                    rows=rows,
                    net_revenue=net_revenue,
                    run_id=record.run_id,
                    ui_url=settings.ui_url,
                )
            except Exception as error:  # noqa: BLE001
                text = _unreadable(":white_check_mark: READY", "fact_sales landed", record.run_id, error, settings.ui_url)
            events.append((record.storage_id, Alert(f"ready:{record.storage_id}", "READY", text, now)))
        cursor.ready_after = record.storage_id

    alerts = [alert for _, alert in sorted(events, key=lambda pair: pair[0])]  # the event log's order
    lateness, cursor.lateness = evaluate_lateness(
        instance,
        landing,
        dt.datetime.fromtimestamp(now, dt.timezone.utc),
        cursor.lateness,
        timezone=settings.sla_timezone,
        ui_url=settings.ui_url,
        start_date=settings.start_date,
        max_rejected_share=settings.max_rejected_share,
    )
    alerts += [Alert(f"{m.kind.lower()}:{m.day}", m.kind, m.text, now) for m in lateness]
    # a day missing at its deadline has no build to report it: its on-time check fails here
    for late in (m for m in lateness if m.kind == "LATE"):
        try:  # the check's history is no reason to hold back the alerts
            evaluation = on_time_evaluation(
                instance, late.day, timezone=settings.sla_timezone, now=dt.datetime.fromtimestamp(now, dt.timezone.utc)
            )
            if evaluation is not None:
                instance.report_runless_asset_event(evaluation)
        except Exception as error:  # noqa: BLE001
            get_dagster_logger().warning(f"The on-time check of {late.day} was not recorded: {error}")
    return alerts


def build_alerts_sensor(settings: Settings) -> SensorDefinition:
    """The alerts sensor: links to SHOPFLOW_UI_URL, the deadline in SHOPFLOW_SLA_TIMEZONE."""

    @sensor(
        name=ALERTS_SENSOR,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="BROKE (failed runs), LATE/RECOVERED (yesterday's fact_sales by 08:00) and READY "
        "(each day of fact_sales built) alerts: written to an outbox in this sensor's cursor, then "
        "delivered to Slack in order, once, retried across ticks while Slack is down.",
    )
    def alerts_sensor(context: SensorEvaluationContext, slack: ShopflowSlack, landing: LandingZone):
        return alerts_tick(context, slack, landing, settings)

    return alerts_sensor


def alerts_tick(context: SensorEvaluationContext, slack: ShopflowSlack, landing: LandingZone, settings: Settings) -> SensorResult:
    """One tick: deliver the outbox, then queue the alerts of what happened since."""
    cursor = AlertsCursor.load(context.cursor)
    outbox = cursor.outbox
    report = deliver(
        outbox,
        slack,
        InstanceMarkers(context.instance),
        summary_after=settings.alert_summary_after_seconds,
        log=context.log,
    )
    added: list[Alert] = []
    try:
        start_positions(context.instance, cursor)
        added = outbox.enqueue(new_alerts(context.instance, landing, cursor, time.time(), settings))
    except Exception:  # noqa: BLE001 (keep what was delivered; read the events again next tick)
        context.log.exception("Reading the events for alerts failed; trying again next tick")
        cursor = dataclasses.replace(AlertsCursor.load(context.cursor), outbox=outbox)
    for alert in added:
        context.log.info(f"Alert {alert.id} written to the outbox:\n{alert.text}")
    words = [
        f"sent {len(report.sent)}" if report.sent else "",
        f"found already posted {len(report.found)}" if report.found else "",
        f"summarised {len(report.summarised)}" if report.summarised else "",
        f"queued {len(added)}" if added else "",
        f"{len(outbox.queue)} waiting" + (f" ({report.waiting or report.error})" if report.waiting or report.error else "")
        if outbox.queue
        else "",
    ]
    return SensorResult(skip_reason=SkipReason("; ".join(w for w in words if w) or "nothing to say"), cursor=cursor.dump())
