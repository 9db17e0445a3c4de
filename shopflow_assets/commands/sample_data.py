"""`shopflow-sample-data`: realistic exports in the landing zone, a few broken rows included, each
day's `_SUCCESS` last."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import random
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS
from shopflow_assets.defs.ingest.landing_zone import SUCCESS_MARKER
from shopflow_assets.settings import read_settings

OFFSETS = (0, 1, 2, -5, -8, 9)  # hours east of UTC the shop's customers order from

# One example of each way a row can break the export contract: (column, bad value).
BAD_ROWS = (
    ("order_id", ""),
    ("line_number", "0"),
    ("customer_id", ""),
    ("product_id", " "),
    ("quantity", "0"),
    ("quantity", "two"),
    ("unit_price", "-1.00"),
    ("unit_price", "12.345"),
    ("discount", "-0.50"),
    ("discount", "99999.00"),
    ("status", "lost"),
    ("ordered_at", "yesterday"),
    ("ordered_at", "wrong day"),  # replaced by a timestamp of another day
    ("updated_at", "2024-13-01T00:00:00Z"),
)


def _order_lines(day: dt.date, orders: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for n in range(orders):
        offset = dt.timezone(dt.timedelta(hours=rng.choice(OFFSETS)))
        ordered_utc = dt.datetime.combine(day, dt.time(), dt.timezone.utc) + dt.timedelta(
            seconds=rng.randrange(86_400)
        )
        ordered_at = ordered_utc.astimezone(offset)
        for line in range(1, rng.randint(1, 4) + 1):
            quantity = rng.randint(1, 5)
            price = Decimal(rng.randint(99, 25_000)) / 100
            discount = rng.choice([Decimal("0"), Decimal("0"), (quantity * price / 10).quantize(Decimal("0.01"))])
            rows.append(
                {
                    "order_id": f"O-{day:%Y%m%d}-{n:05d}",
                    "line_number": str(line),
                    "customer_id": f"C-{rng.randint(1, max(orders // 2, 1)):05d}",
                    "product_id": f"P-{rng.randint(1, 300):04d}",
                    "quantity": str(quantity),
                    "unit_price": f"{price:.2f}",
                    "discount": f"{discount:.2f}",
                    "status": rng.choice(["placed", "placed", "shipped", "delivered", "cancelled"]),
                    "ordered_at": ordered_at.isoformat(),
                    "updated_at": ordered_at.isoformat(),
                }
            )
    return rows


def _updates(rows: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """Re-emitted lines: later versions with a new status, and a few exact re-sends."""
    updates = []
    for row in rng.sample(rows, k=max(1, len(rows) // 10)):
        later = dict(row)
        updated = dt.datetime.fromisoformat(row["updated_at"]) + dt.timedelta(minutes=rng.randint(1, 600))
        later["updated_at"] = updated.isoformat()
        later["status"] = rng.choice(["shipped", "delivered", "refunded", "cancelled"])
        updates.append(later)
    updates.extend(dict(r) for r in rng.sample(rows, k=max(1, len(rows) // 50)))
    return updates


def _bad_rows(day: dt.date, template: dict[str, str]) -> list[dict[str, str]]:
    bad = []
    for i, (column, value) in enumerate(BAD_ROWS):
        row = dict(template, order_id=f"BAD-{day:%Y%m%d}-{i:02d}")
        if value == "wrong day":
            value = (dt.datetime.combine(day, dt.time(12), dt.timezone.utc) - dt.timedelta(days=1)).isoformat()
        row[column] = value
        bad.append(row)
    return bad


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str], broken_line: str | None = None) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if broken_line:
        buffer.write(broken_line + "\n")
    data = buffer.getvalue().encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    tmp.rename(path)  # a reader never sees a half-written file


def write_day(landing_dir: Path, day: dt.date, orders: int, rng: random.Random) -> Path:
    """Write one day's export like the order system does: several files, `_SUCCESS` last."""
    directory = landing_dir / "orders" / f"dt={day.isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUCCESS_MARKER).unlink(missing_ok=True)
    rows = _order_lines(day, orders, rng)
    rng.shuffle(rows)
    third = len(rows) // 3
    shuffled = list(REQUIRED_COLUMNS)
    rng.shuffle(shuffled)
    _write_csv(directory / "part-0000.csv", rows[:third], list(REQUIRED_COLUMNS))
    _write_csv(directory / "part-0001.csv", rows[third : 2 * third], shuffled)
    _write_csv(
        directory / "part-0002.csv.gz",
        rows[2 * third :] + _bad_rows(day, rows[0]),
        list(REQUIRED_COLUMNS),
        broken_line=f"BAD-{day:%Y%m%d}-99,1,C-1,P-1",  # too few columns
    )
    _write_csv(directory / "part-0003.csv.gz", _updates(rows, rng), shuffled[::-1])
    (directory / SUCCESS_MARKER).touch()
    return directory


def local_folder(location: str) -> Path | None:
    """A landing zone's local folder: its path, or a file:// URI's; None for other file systems."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return None if "://" in location else Path(location)


def sample_data_main(argv: list[str] | None = None) -> int:
    settings = read_settings()
    parser = argparse.ArgumentParser(
        prog="shopflow-sample-data",
        description="Write realistic order exports into the landing zone, _SUCCESS last per day.",
    )
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1), help="first day (YYYY-MM-DD)")
    parser.add_argument("--days", type=int, default=3, help="number of days (default 3)")
    parser.add_argument("--orders-per-day", type=int, default=200, help="orders per day (default 200)")
    parser.add_argument("--landing-dir", type=Path, default=None, help="a local folder; default: SHOPFLOW_LANDING_DIR")
    parser.add_argument("--seed", type=int, default=20240101, help="random seed, for repeatable exports")
    args = parser.parse_args(argv)
    landing_dir = args.landing_dir or local_folder(settings.landing_dir)
    if landing_dir is None:
        parser.error(
            f"SHOPFLOW_LANDING_DIR={settings.landing_dir} is not a local folder: write the exports to one "
            "with --landing-dir, then copy them to the landing zone"
        )
    rng = random.Random(args.seed)
    for i in range(args.days):
        directory = write_day(landing_dir, args.start + dt.timedelta(days=i), args.orders_per_day, rng)
        print(f"wrote {directory}")
    return 0


def main() -> None:
    sys.exit(sample_data_main())
