"""`shopflow-push-export YYYY-MM-DD`: the exporter's last step, which starts the day's run at once
through the webserver (shopflow_assets/defs/ingest/push.py) instead of waiting for the export
sensor's next tick."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.defs.ingest.push import PushError, push_export
from shopflow_assets.settings import read_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shopflow-push-export",
        description="Start a day whose export has finished landing, through the Dagster webserver "
        "(SHOPFLOW_UI_URL), without waiting for the export sensor. Pushing a day twice builds it once.",
    )
    parser.add_argument("day", help="the exported day, YYYY-MM-DD")
    args = parser.parse_args(argv)
    try:
        day = dt.date.fromisoformat(args.day)
    except ValueError:
        parser.error(f"the day must be YYYY-MM-DD, got {args.day!r}")
    settings = read_settings()
    try:
        run_id, started = push_export(
            day,
            ui_url=settings.ui_url,
            landing=LandingZone(root=str(settings.landing_dir)),
            start_date=settings.start_date,
        )
    except PushError as error:
        print(f"shopflow-push-export: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    what = "started" if started else "already started (not started again)"
    print(f"{day}: run {run_id} {what}: {settings.ui_url}/runs/{run_id}")
