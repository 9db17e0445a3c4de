"""The one Definitions object of the shopflow_daily code location."""

from dagster import Definitions
from dagster_dbt import DbtCliResource

from shopflow_assets.assets import raw_orders, shopflow_dbt_models
from shopflow_assets.assets.dbt import dbt_executable
from shopflow_assets.project import shopflow_dbt_project
from shopflow_assets.resources import DuckDBWarehouse, LandingZone
from shopflow_assets.settings import get_settings

settings = get_settings()

defs = Definitions(
    assets=[raw_orders, shopflow_dbt_models],
    resources={
        "landing": LandingZone(root=str(settings.landing_dir)),
        "warehouse": DuckDBWarehouse(path=str(settings.warehouse)),
        "dbt": DbtCliResource(project_dir=shopflow_dbt_project, dbt_executable=dbt_executable()),
    },
)
