"""BROKE and LATE alerts. They run in the daemon, outside the runs, so a Slack outage can never fail
or block a run; each tick's delivery is bounded by the Slack resource's retries.

A failed dbt test fails its run: dbt build exits non-zero and the step raises a Failure naming the
tests, so the BROKE alert of that run covers failed blocking checks too, and lists them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from dagster import (
    AssetCheckSeverity,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from shopflow_assets.alerts import StepFailure, broke_message
from shopflow_assets.freshness import LatenessState, evaluate_lateness
from shopflow_assets.resources.landing import LandingZone
from shopflow_assets.resources.slack import ShopflowSlack
from shopflow_assets.run_window import days_of_run_tags
from shopflow_assets.settings import get_settings


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
    planned = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ).records
    return {r.event_log_entry.dagster_event.asset_key for r in planned}


def lost_worker_failure(instance: DagsterInstance, run_id: str, run_message: str | None) -> StepFailure:
    """A run failed outside its steps. Its failure event only says "marked as failed from outside
    the execution context"; the engine event before it says why (e.g. the run process "was
    terminated by signal 9 (SIGKILL)"), and the step it was in is the one that started and never
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
        kind = entry.dagster_event_type
        if kind == DagsterEventType.STEP_START:
            started.append(entry.step_key)
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED):
            ended.add(entry.step_key)
        elif kind == DagsterEventType.ENGINE_EVENT and "terminated" in (entry.message or ""):
            engine_messages.append(entry.message)
    running = [step for step in started if step not in ended]
    error = engine_messages[-1] if engine_messages else (run_message or "run failed")
    return StepFailure(step=running[-1] if running else "(run)", error=error.strip().splitlines()[0])


def broke_message_for(context: RunFailureSensorContext) -> str:
    run = context.dagster_run
    failures = [
        StepFailure(step=e.step_key or "?", error=step_error_text(e.step_failure_data))
        for e in context.get_step_failure_events()
    ]
    if not failures:  # the run failed outside its steps: its worker died, say
        failures = [lost_worker_failure(context.instance, run.run_id, context.failure_event.message)]
    assets = sorted(k.to_user_string() for k in assets_of_run(context.instance, run))
    return broke_message(
        run_id=run.run_id,
        job_name=run.job_name,
        assets=assets,
        days=days_of_run_tags(run.tags),
        failures=failures,
        failed_checks=failed_checks_of_run(context.instance, run.run_id),
        ui_url=get_settings().ui_url,
    )


# monitor_all_code_locations: without it, runs launched by `dagster asset materialize` are unseen.
@run_failure_sensor(
    name="shopflow_broke_alert",
    monitor_all_code_locations=True,
    default_status=DefaultSensorStatus.RUNNING,
    description="BROKE alert on Slack for every run that failed after its retries.",
)
def broke_alert_sensor(context: RunFailureSensorContext, slack: ShopflowSlack) -> None:
    slack.post(broke_message_for(context), log=context.log)


@sensor(
    name="shopflow_lateness_alert",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="LATE alert once per day when yesterday's fact_sales is not materialized by 08:00 "
    "(SHOPFLOW_SLA_TIMEZONE); RECOVERED when it lands afterwards.",
)
def lateness_sensor(context: SensorEvaluationContext, slack: ShopflowSlack, landing: LandingZone):
    state = LatenessState(**json.loads(context.cursor)) if context.cursor else LatenessState()
    settings = get_settings()
    messages, state = evaluate_lateness(
        context.instance,
        landing,
        dt.datetime.now(dt.timezone.utc),
        state,
        timezone=settings.sla_timezone,
        ui_url=settings.ui_url,
        start_date=settings.start_date,
    )
    for message in messages:
        slack.post(message, log=context.log)
    context.update_cursor(json.dumps(dataclasses.asdict(state)))
    if not messages:
        return SkipReason("nothing late")
