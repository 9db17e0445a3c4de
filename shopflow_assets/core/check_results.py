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
    """Each day's result of a check (all of one check), to yield from a step.

    In a run of one day it is an AssetCheckResult: Dagster ties it to the day's newest
    materialization, which is what the UI's check status and the automation's blocking checks
    read. In a run of a range (a single-run backfill) Dagster's public API cannot tie a result to
    one day's materialization: each day's result names its day (the check's execution history
    lists it by partition), and one result for the range closes the execution Dagster planned."""
    evaluations = list(evaluations)
    window = context.partition_key_range
    if window.start == window.end:
        yield from (as_result(e) for e in evaluations)
        return
    yield from evaluations
    if not evaluations:
        return
    failed = [e for e in evaluations if not e.passed]
    yield AssetCheckResult(
        asset_key=evaluations[0].asset_key,
        check_name=evaluations[0].check_name,
        passed=not failed,
        severity=max((e.severity for e in failed), key=SEVERITY_ORDER.index, default=AssetCheckSeverity.WARN),
        description=(
            f"{window.start}..{window.end}: {len(evaluations) - len(failed)} day(s) passed, {len(failed)} failed"
            + (f" ({', '.join(e.partition or '' for e in failed[:10])})" if failed else "")
            + ". Each day's own result is listed by partition."
        ),
        metadata={"days": len(evaluations), "days_failed": len(failed)},
    )


SEVERITY_ORDER = [AssetCheckSeverity.WARN, AssetCheckSeverity.ERROR]


def as_result(evaluation: AssetCheckEvaluation) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=evaluation.asset_key,
        check_name=evaluation.check_name,
        passed=evaluation.passed,
        severity=evaluation.severity,
        description=evaluation.description,
        metadata=evaluation.metadata,
    )
