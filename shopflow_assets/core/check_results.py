"""Per-day asset check results, as Dagster's public API allows them."""

from dagster import AssetCheckEvaluation, AssetCheckExecutionContext, AssetCheckResult, AssetExecutionContext


def per_day_result(
    context: AssetExecutionContext | AssetCheckExecutionContext, evaluation: AssetCheckEvaluation
) -> AssetCheckResult | AssetCheckEvaluation:
    """One day's result of a check, to yield from a step.

    In a run of that one day it is an AssetCheckResult: Dagster ties it to the day's newest
    materialization, which is what the UI's check status and the automation's blocking checks
    read. In a run of a range (a single-run backfill) Dagster's public API cannot tie a result to
    one day's materialization: the result names its day, and is kept in the check's history."""
    window = context.partition_key_range
    if window.start != window.end:
        return evaluation
    return AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )
