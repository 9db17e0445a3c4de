"""Benchmark 6: importing the definitions vs importing dagster and dagster_dbt alone, each in a
fresh interpreter, alternated, best of N. Target: at most 1.3x.

    .venv/bin/python -m benchmarks.load [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base, ours = [], []
    for _ in range(args.runs):  # alternated, so that a busy moment hits both
        base.append(timed("import dagster, dagster_dbt"))
        ours.append(timed("import shopflow_assets.definitions"))
    print(f"import dagster, dagster_dbt:          best {min(base):.2f} s  (runs {', '.join(f'{t:.2f}' for t in base)})")
    print(f"import shopflow_assets.definitions:   best {min(ours):.2f} s  (runs {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"ratio {min(ours) / min(base):.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
