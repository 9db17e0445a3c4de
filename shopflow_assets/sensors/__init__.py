"""Sensors: alerts on failure (BROKE), on lateness (LATE), and the triggers of the pipeline."""

from shopflow_assets.sensors.alerting import broke_alert_sensor, lateness_sensor

__all__ = ["broke_alert_sensor", "lateness_sensor"]
