"""The pipeline's definitions, one folder per feature: ingest (raw/orders and its triggers), models
(the dbt project), alerts (BROKE, LATE, READY on Slack), operations (watchdog, schedule). Each
builds its definitions from the settings it is given; `build_defs` merges them."""

from dagster import Definitions, in_process_executor

from shopflow_assets.defs.alerts import alerts_defs
from shopflow_assets.defs.ingest import ingest_defs
from shopflow_assets.defs.models import models_defs
from shopflow_assets.defs.operations import operations_defs
from shopflow_assets.engines import warehouse_for
from shopflow_assets.settings import Settings


def build_defs(settings: Settings) -> Definitions:
    return Definitions.merge(
        ingest_defs(settings),
        models_defs(settings),
        alerts_defs(settings),
        operations_defs(settings),
        Definitions(
            # SHOPFLOW_ENGINE picks the warehouse: a DuckDB file or a Spark cluster.
            resources={"warehouse": warehouse_for(settings)},
            # A run is one or two steps, one after the other (both hold the one warehouse slot):
            # running them in the run's own process saves a process per step that would import this
            # code location again.
            executor=in_process_executor,
        ),
    )
