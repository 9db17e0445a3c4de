"""Data-aware automation of the dbt assets.

`AutomationCondition.eager()` only looks at the newest daily partition, so a re-export of last week
would not rebuild last week. This is eager() without `in_latest_time_window()`: any day whose
upstream partition was updated (or that is newly missing), never while an upstream partition is
missing or in progress, never while an upstream day's blocking check (raw/orders' rejected share)
failed, and never twice at once. A failed upstream run updates nothing, so it triggers nothing.
"""

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition, DefaultSensorStatus

from shopflow_assets.contract.asset_keys import RAW_ORDERS


ANY_DAY_EAGER = (
    (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    # Only raw/orders' per-day check holds a day back: dagster-dbt makes the dbt tests blocking
    # too, but their result is the run's, not a day's. And not all_deps_blocking_checks_passed():
    # a day whose check has no result tied to its newest materialization (ingested before the check
    # existed, or in a range run) is not held back.
    & ~AutomationCondition.any_deps_match(
        AutomationCondition.any_checks_match(AutomationCondition.check_failed(), blocking_only=True)
    )
    .allow(AssetSelection.assets(RAW_ORDERS))
    .with_label("raw/orders' rejected share failed")
    & ~AutomationCondition.in_progress()
).with_label("eager, any day")


def build_automation_sensor(*, interval_seconds: int) -> AutomationConditionSensorDefinition:
    """Dagster's default automation sensor is stopped by default; this one runs as soon as it loads."""
    return AutomationConditionSensorDefinition(
        name="shopflow_automation",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_seconds,
        description="Materializes fact_sales and daily_revenue for each day whose raw/orders updated.",
    )
