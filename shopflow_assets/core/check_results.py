"""Per-day asset check results, as Dagster's public API allows them."""

from typing import Iterable, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
)


def per_day_results(
    context: AssetExecutionContext | AssetCheckExecutionContext, evaluations: Iterable[AssetCheckEvaluation]
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """Each day's result of a check, to yield from a step.

    In a run of one partition it is an AssetCheckResult: Dagster ties it to the day's newest
    materialization, which is what the UI's check status and the automation's blocking checks
    read. In a run of a range (a single-run backfill, even of one day) Dagster's public API cannot
    tie a result to one day's materialization: each day's result names its day, and the check's
    execution history lists it by partition; one result for the whole range closes the step's
    output for the check (Dagster Pipes, on Spark, requires it)."""
    evaluations = list(evaluations)
    if not context.op_execution_context.has_partition_key:
        yield from evaluations
        if evaluations:
            yield range_result(context, evaluations)
        return
    for evaluation in evaluations:
        yield AssetCheckResult(
            asset_key=evaluation.asset_key,
            check_name=evaluation.check_name,
            passed=evaluation.passed,
            severity=evaluation.severity,
            description=evaluation.description,
            metadata=evaluation.metadata,
        )


def range_result(
    context: AssetExecutionContext | AssetCheckExecutionContext, evaluations: list[AssetCheckEvaluation]
) -> AssetCheckResult:
    """One check's result over a range of days: passed when every day passed."""
    window = context.partition_key_range
    failed = [e for e in evaluations if not e.passed]
    return AssetCheckResult(
        asset_key=evaluations[0].asset_key,
        check_name=evaluations[0].check_name,
        passed=not failed,
        severity=AssetCheckSeverity.ERROR
        if any(e.severity == AssetCheckSeverity.ERROR for e in failed)
        else AssetCheckSeverity.WARN,
        description=(
            f"{window.start}..{window.end}: {len(evaluations) - len(failed)} day(s) passed, {len(failed)} failed"
            + (f", the first {failed[0].partition}" if failed else "")
            + ". Each day's own result is listed by partition."
        ),
        metadata={"days": len(evaluations), "days_failed": len(failed)},
    )
