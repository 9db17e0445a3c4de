"""Benchmark 9: a file that is mostly not order lines (a valid header, then N junk lines, gzipped)
is refused, and in how much memory, disk and time. The user's command (`dagster asset materialize
... --select 'raw/orders*' --partition D`) runs in a subprocess with SHOPFLOW_DUCKDB_MEMORY_LIMIT set
small on purpose; every process of its tree is sampled from /proc (benchmarks/memory.py). The
baseline, in the same run: the same command on a day of 20,000 valid lines.
Target: the run fails naming the file and the share; its process grows by at most the DuckDB limit
(+5%) + 64 MiB over the baseline.

    .venv/bin/python -m benchmarks.junk [--lines 40000000] [--kind unparseable|rules] [--limit 256MB]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._data import REPO_ROOT, cli_env, materialize_command, write_day
from benchmarks.memory import CLI, DUCKDB_SLACK, PYTHON_SIDE_SLACK, MiB, Sampler, to_bytes
from shopflow_assets.contract.export import REQUIRED_COLUMNS

DAY = "2024-03-01"
JUNK = {"unparseable": b"junk %d\n", "rules": b"x%d,x,x,x,x,x,x,x,x,x\n"}


def write_junk(landing: Path, lines: int, kind: str) -> Path:
    directory = landing / "orders" / f"dt={DAY}"
    directory.mkdir(parents=True)
    path = directory / "junk.csv.gz"
    block = b"".join(JUNK[kind] % i for i in range(100_000))  # lines that differ: it compresses less
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write((",".join(REQUIRED_COLUMNS) + "\n").encode())
        for _ in range(lines // 100_000):
            out.write(block)
        out.write(b"".join(JUNK[kind] % i for i in range(lines % 100_000)))
    (directory / "_SUCCESS").touch()
    return path


def run(root: Path, limit: str) -> dict:
    warehouse = root / "warehouse" / "shopflow.duckdb"
    env = cli_env(root / "landing", warehouse, root / "dagster_home", SHOPFLOW_DUCKDB_MEMORY_LIMIT=limit,
                  SHOPFLOW_RETRY_MAX_RETRIES="0")
    started = time.perf_counter()
    with open(root / "run.log", "w") as log:
        process = subprocess.Popen(materialize_command("--partition", DAY), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = Sampler(process.pid, warehouse.parent / f"{warehouse.name}.tmp")
        sampler.start()
        code = process.wait()
        sampler.done.set()
        sampler.join()
    text = (root / "run.log").read_text()
    errors = [l.strip() for l in text.splitlines() if "Failure:" in l or "Error:" in l]
    refusal = next((l for l in errors if "are not valid order lines" in l), "")
    if not refusal and errors:
        print(f"the run failed otherwise: {errors[0][:300]}")
    return {"code": code, "peak": sampler.by_role().get(CLI, 0), "spill": sampler.spill_peak,
            "seconds": time.perf_counter() - started, "refusal": refusal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=40_000_000)
    parser.add_argument("--kind", choices=sorted(JUNK), default="unparseable")
    parser.add_argument("--limit", default="256MB", help="SHOPFLOW_DUCKDB_MEMORY_LIMIT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        write_day(base / "landing", dt.date.fromisoformat(DAY), 20_000)
        baseline = run(base, args.limit)
        junk_root = Path(tmp) / "junk"
        path = write_junk(junk_root / "landing", args.lines, args.kind)
        size = path.stat().st_size
        junk = run(junk_root, args.limit)
    bound = to_bytes(args.limit) * DUCKDB_SLACK + PYTHON_SIDE_SLACK
    growth = junk["peak"] - baseline["peak"]
    print(f"junk file: {args.lines:,} {args.kind} lines after a valid header, {size / MiB:.1f} MiB gzipped")
    print(f"DuckDB memory_limit {args.limit}; peak RSS of the run's process (VmHWM), sampled every 50 ms")
    print(f"baseline (20,000 valid lines): {baseline['peak'] / MiB:.0f} MiB, {baseline['seconds']:.1f} s, exit {baseline['code']}")
    print(f"junk file: {junk['peak'] / MiB:.0f} MiB ({growth / MiB:+.0f} MiB), spill peak {junk['spill'] / MiB:.0f} MiB, "
          f"{junk['seconds']:.1f} s, exit {junk['code']}")
    print(f"refusal: {junk['refusal'] or 'NONE'}")
    print(f"target: refused, and growth <= {bound / MiB:.0f} MiB: "
          f"{'met' if junk['code'] != 0 and junk['refusal'] and growth <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()
