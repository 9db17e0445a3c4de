"""`shopflow-revenue`: print the daily revenue the pipeline computed, from the configured engine's
warehouse (read-only)."""

from __future__ import annotations

import argparse
import sys

from shopflow_assets.engines import warehouse_for
from shopflow_assets.settings import read_settings


def revenue_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shopflow-revenue", description="Print analytics.daily_revenue (of SHOPFLOW_ENGINE's warehouse)."
    )
    parser.parse_args(argv)
    with warehouse_for(read_settings()).read() as con:
        con.sql("SELECT * FROM analytics.daily_revenue ORDER BY dt").show(max_rows=1000)
    return 0


def main() -> None:
    sys.exit(revenue_main())
