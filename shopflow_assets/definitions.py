"""The one Definitions object of the shopflow_daily code location."""

from dagster import Definitions, EnvVar, in_process_executor
from dagster_dbt import DbtCliResource

from shopflow_assets.assets import raw_orders, shopflow_dbt_models
from shopflow_assets.dbt_command import dbt_executable
from shopflow_assets.cli_errors import install_cli_error_hook
from shopflow_assets.project import shopflow_dbt_project
from shopflow_assets.engines import warehouse_for
from shopflow_assets.resources import LandingZone
from shopflow_assets.resources.slack import ShopflowSlack
from shopflow_assets.schedules import daily_0200_schedule, shopflow_daily_job
from shopflow_assets.sensors import (
    alerts_sensor,
    automation_sensor,
    export_landed_sensor,
    run_watchdog_sensor,
)
from shopflow_assets.settings import get_settings

settings = get_settings()
install_cli_error_hook()

defs = Definitions(
    assets=[raw_orders, shopflow_dbt_models],
    jobs=[shopflow_daily_job],
    # A run is one or two steps, one after the other (both hold the one warehouse slot): running
    # them in the run's own process saves a process per step that would import this code location
    # again (about 12 s of a one-day `dagster asset materialize`; benchmarks/latency.py, backfill.py).
    executor=in_process_executor,
    schedules=[daily_0200_schedule],
    sensors=[
        export_landed_sensor,
        automation_sensor,
        alerts_sensor,
        run_watchdog_sensor,
    ],
    resources={
        "landing": LandingZone(root=str(settings.landing_dir)),
        # SHOPFLOW_ENGINE picks the warehouse: DuckDB file or Spark cluster (shopflow_assets/engines).
        "warehouse": warehouse_for(settings),
        "dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable()),
        "slack": ShopflowSlack(
            # EnvVar: the UI and the event log show the variable's name, never the token.
            token=EnvVar("SLACK_BOT_TOKEN") if settings.slack_bot_token else "",
            channel=settings.slack_channel,
            api_url=settings.slack_api_url,
        ),
    },
)
