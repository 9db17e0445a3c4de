"""Alerts: BROKE, LATE/RECOVERED and READY, written to an outbox and delivered to Slack by one
sensor (sensor.py), in words (messages.py) that outside text cannot hijack; and the 08:00
promise as fact_sales' per-day check (on_time.py)."""

from dagster import Definitions, EnvVar

from shopflow_assets.core.partitions import daily_partitions
from shopflow_assets.defs.alerts.on_time import build_on_time_check
from shopflow_assets.defs.alerts.sensor import build_alerts_sensor
from shopflow_assets.defs.alerts.slack import ShopflowSlack
from shopflow_assets.settings import Settings


def alerts_defs(settings: Settings) -> Definitions:
    return Definitions(
        asset_checks=[
            build_on_time_check(partitions_def=daily_partitions(settings.start_date), timezone=settings.sla_timezone)
        ],
        sensors=[build_alerts_sensor(settings)],
        resources={
            "slack": ShopflowSlack(
                # EnvVar: the UI and the event log show the variable's name, never the token.
                token=EnvVar("SLACK_BOT_TOKEN") if settings.slack_bot_token else "",
                channel=settings.slack_channel,
                api_url=settings.slack_api_url,
            )
        },
    )
