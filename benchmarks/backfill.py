"""Benchmark 5: a backfill of 90 days of 20,000 order lines each (raw/orders, fact_sales,
daily_revenue), as one single-run backfill (`dagster asset materialize ... --partition-range
A...B`) against 90 one-day runs of the same command (`--partition D`), each way on its own fresh
warehouse and DAGSTER_HOME, from the same landing zone. The single run is measured before and after
the one-day runs (best of two: the machine is shared). All warehouses must end with the same
daily_revenue, which is printed. Target: the single run at least 5x faster.

    .venv/bin/python -m benchmarks.backfill [--days 90] [--lines 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks._data import REPO_ROOT, cli_env, materialize_command, write_day

FIRST_DAY = dt.date(2024, 1, 1)


def run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - started


def daily_revenue(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute("SELECT * FROM analytics.daily_revenue ORDER BY dt").fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--lines", type=int, default=20_000)
    args = parser.parse_args()
    days = [FIRST_DAY + dt.timedelta(days=n) for n in range(args.days)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for day in days:
            write_day(root / "landing", day, args.lines)

        def fresh(name: str) -> tuple[dict[str, str], Path]:
            warehouse = root / name / "shopflow.duckdb"
            return cli_env(root / "landing", warehouse, root / name / "dagster_home"), warehouse

        single_range = ("--partition-range", f"{days[0]}...{days[-1]}")
        env, single_warehouse = fresh("single1")
        single = [run(materialize_command(*single_range), env)]
        print(f"single run of {args.days} days: {single[0]:.1f} s", file=sys.stderr)
        env, separate_warehouse = fresh("separate")
        separate = []
        for n, day in enumerate(days, 1):
            separate.append(run(materialize_command("--partition", str(day)), env))
            print(f"run {n}/{args.days} ({day}): {separate[-1]:.1f} s", file=sys.stderr)
        env, single_warehouse_again = fresh("single2")
        single.append(run(materialize_command(*single_range), env))
        revenue = daily_revenue(single_warehouse)
        assert daily_revenue(single_warehouse_again) == revenue, "the two single runs differ"
        assert daily_revenue(separate_warehouse) == revenue, "one run per day and the single run differ"
    print(f"{args.days} days x {args.lines:,} lines ({days[0]}...{days[-1]}); both ways end with the same "
          f"analytics.daily_revenue ({len(revenue)} rows):")
    print(f"{'dt':<12}{'orders':>8}{'order_lines':>13}{'units':>8}{'gross_revenue':>16}{'net_revenue':>16}")
    for day, orders, order_lines, units, gross, net in revenue:
        print(f"{day!s:<12}{orders:>8,}{order_lines:>13,}{units:>8,}{gross:>16,}{net:>16,}")
    print(f"single-run backfill (--partition-range): best {min(single):.1f} s (runs: {', '.join(f'{t:.1f}' for t in single)})")
    print(f"{args.days} one-day runs (--partition D): {sum(separate):.1f} s in all "
          f"(per run: min {min(separate):.1f} s, mean {sum(separate) / len(separate):.1f} s, max {max(separate):.1f} s)")
    ratio = sum(separate) / min(single)
    print(f"the single run is {ratio:.1f}x faster  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
