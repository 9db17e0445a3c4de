"""One-line errors, instead of a stack trace, for a user's common mistakes on the `dagster` and
`dg` command lines that fail before any run starts (a day that is not a partition, say).

Installed by the definitions only when the process is one of those commands; any other error keeps
Python's usual report.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys


CLI_PROGRAMS = {"dagster", "dg"}
_PARTITION_KEY = re.compile(r"partition key `([^`]*)`|[Pp]artition key ([^ ]+) not found|partition range ([^ ]+)")


def friendly_message(error: BaseException, start_date: dt.date) -> str | None:
    text = str(error)
    if "partition" not in text.lower() or type(error).__module__.split(".")[0] != "dagster":
        return None
    match = _PARTITION_KEY.search(text)
    key = next((g for g in match.groups() if g), None) if match else None
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    days = f"days are YYYY-MM-DD from {start_date} (SHOPFLOW_START_DATE) to {yesterday} (yesterday, UTC)"
    if key is None:
        return f"not a valid day or range of days: {days}; a range is --partition-range FIRST...LAST."
    return f"{key!r} is not a day of shopflow_daily: {days}."


def install_cli_error_hook(start_date: dt.date) -> None:
    if os.path.basename(sys.argv[0] if sys.argv else "") not in CLI_PROGRAMS:
        return
    previous = sys.excepthook

    def hook(kind, error, traceback):
        message = friendly_message(error, start_date)
        if message is None:
            previous(kind, error, traceback)
        else:
            print(f"shopflow_daily: {message}", file=sys.stderr)

    sys.excepthook = hook
