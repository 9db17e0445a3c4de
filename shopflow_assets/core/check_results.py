"""Per-day asset check results, as Dagster's public API allows them."""

from typing import Iterable, Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
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
    execution history lists it by partition."""
    if not context.op_execution_context.has_partition_key:
        yield from evaluations
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
