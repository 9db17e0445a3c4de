"""The ingest: raw/orders, the landing zone it reads, the export sensor and the push command's logic."""

from dagster import AssetsDefinition, Definitions, SensorDefinition

from shopflow_assets.core.code_links import linked_to_code
from shopflow_assets.core.partitions import daily_partitions
from shopflow_assets.core.retries import transient_retry_policy
from shopflow_assets.defs.ingest.assets import build_raw_orders
from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.ingest.sensor import build_export_sensor
from shopflow_assets.settings import Settings


def raw_orders_asset(settings: Settings) -> AssetsDefinition:
    return build_raw_orders(
        partitions_def=daily_partitions(settings.start_date),
        retry_policy=transient_retry_policy(settings.retry_max_retries, settings.retry_delay_seconds),
        engine=settings.engine,
    )


def export_sensor(settings: Settings) -> SensorDefinition:
    return build_export_sensor(start_date=settings.start_date, interval_seconds=settings.sensor_interval_seconds)


def ingest_defs(settings: Settings) -> Definitions:
    return Definitions(
        assets=linked_to_code([raw_orders_asset(settings)], settings),
        sensors=[export_sensor(settings)],
        resources={"landing": LandingZone(root=str(settings.landing_dir))},
    )
