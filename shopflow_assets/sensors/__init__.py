"""Sensors: the triggers of the pipeline, and the alerts (BROKE, LATE, READY)."""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

from shopflow_assets.sensors.alerting import broke_alert_sensor, lateness_sensor
from shopflow_assets.sensors.export_landed import export_landed_sensor
from shopflow_assets.sensors.fact_sales_ready import fact_sales_ready_sensor
from shopflow_assets.settings import get_settings

# Dagster's default automation sensor is stopped by default; this one runs as soon as it loads.
automation_sensor = AutomationConditionSensorDefinition(
    name="shopflow_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    description="Materializes fact_sales and daily_revenue for each day whose raw/orders updated.",
)

__all__ = [
    "automation_sensor",
    "broke_alert_sensor",
    "export_landed_sensor",
    "fact_sales_ready_sensor",
    "lateness_sensor",
]
