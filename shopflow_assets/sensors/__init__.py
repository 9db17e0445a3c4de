"""Sensors: the triggers of the pipeline, the alerts (BROKE, LATE, READY) and the run watchdog."""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus

from shopflow_assets.sensors.alerting import alerts_sensor
from shopflow_assets.sensors.export_landed import export_landed_sensor
from shopflow_assets.sensors.run_watchdog import run_watchdog_sensor
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
    "alerts_sensor",
    "automation_sensor",
    "export_landed_sensor",
    "run_watchdog_sensor",
]
