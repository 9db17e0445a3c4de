"""Operations: the run watchdog, and the 02:00 schedule with the job it runs."""

from dagster import Definitions, ScheduleDefinition, SensorDefinition

from shopflow_assets.core.partitions import daily_partitions
from shopflow_assets.defs.operations.schedule import build_daily_job, build_daily_schedule
from shopflow_assets.defs.operations.watchdog import build_watchdog_sensor
from shopflow_assets.settings import Settings


def daily_job(settings: Settings):
    return build_daily_job(daily_partitions(settings.start_date))


def daily_schedule(settings: Settings) -> ScheduleDefinition:
    return build_daily_schedule(daily_job(settings), timezone=settings.sla_timezone)


def watchdog_sensor(settings: Settings) -> SensorDefinition:
    return build_watchdog_sensor(interval_seconds=settings.sensor_interval_seconds)


def operations_defs(settings: Settings) -> Definitions:
    schedule = daily_schedule(settings)
    return Definitions(jobs=[schedule.job], schedules=[schedule], sensors=[watchdog_sensor(settings)])
