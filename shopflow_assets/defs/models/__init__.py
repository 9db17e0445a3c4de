"""The dbt models as Dagster assets (fact_sales, daily_revenue), their automation and dbt itself."""

from dagster import AssetsDefinition, Definitions
from dagster_dbt import DbtCliResource

from shopflow_assets.core.code_links import linked_to_code
from shopflow_assets.core.partitions import daily_partitions
from shopflow_assets.core.retries import transient_retry_policy
from shopflow_assets.defs.alerts.lateness import daily_by_0800
from shopflow_assets.defs.models.assets import build_dbt_models
from shopflow_assets.defs.models.automation import build_automation_sensor
from shopflow_assets.defs.models.project import dbt_executable, shopflow_dbt_project
from shopflow_assets.settings import Settings


def dbt_models_asset(settings: Settings) -> AssetsDefinition:
    return build_dbt_models(
        partitions_def=daily_partitions(settings.start_date),
        retry_policy=transient_retry_policy(settings.retry_max_retries, settings.retry_delay_seconds),
        freshness_policy=daily_by_0800(settings.sla_timezone),
        sla_timezone=settings.sla_timezone,
        engine=settings.engine,
    )


def models_defs(settings: Settings) -> Definitions:
    return Definitions(
        assets=linked_to_code([dbt_models_asset(settings)], settings),
        sensors=[build_automation_sensor(interval_seconds=settings.sensor_interval_seconds)],
        resources={"dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable())},
    )
