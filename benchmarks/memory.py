"""Benchmark 3: memory of a run at 20,000 vs 2,000,000 order lines a day. The user's command
(`dagster asset materialize ... --select 'raw/orders*' --partition D`) runs in a subprocess with
SHOPFLOW_DUCKDB_MEMORY_LIMIT set small (256MB by default) on purpose; every process of its tree (the
run, which executes both steps in process, and dbt) is sampled every 50 ms from /proc (VmHWM: the
kernel's peak RSS of the process). The run process holds the ingest's DuckDB and the Python side;
dbt holds the models' DuckDB. Targets: each grows by at most the DuckDB limit (+5%: it bounds
DuckDB's buffer manager, not every allocation) plus 64 MiB, so whatever Python adds with 100x the
data stays under 64 MiB; the spill folder shows DuckDB keeping to its limit by spilling.

    .venv/bin/python -m benchmarks.memory [--small 20000] [--large 2000000] [--limit 256MB]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchmarks._data import REPO_ROOT, cli_env, materialize_command, write_day

DAY = dt.date(2024, 3, 1)
MiB = 1024 * 1024
PYTHON_SIDE_SLACK = 64 * MiB  # "does not grow": less than this between the two sizes
DUCKDB_SLACK = 1.05  # memory_limit bounds DuckDB's buffer manager, not every allocation it makes
CLI, DBT, OTHER = (
    "dagster CLI: the run (Python + the ingest's DuckDB)",
    "dbt build (DuckDB in process)",
    "others (log tailers, resource trackers)",
)
ROLES = (CLI, DBT, OTHER)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:  # gone meanwhile
        return []


def status_kb(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (l.split(":", 1) for l in lines) if k in ("VmHWM", "VmRSS")}


class Sampler(threading.Thread):
    """Peak RSS of every process under `root` (and the size of DuckDB's spill folder), every 50 ms."""

    def __init__(self, root: int, spill: Path):
        super().__init__(daemon=True)
        self.root, self.spill, self.done = root, spill, threading.Event()
        self.peak: dict[int, int] = defaultdict(int)  # pid -> bytes
        self.parent: dict[int, int] = {}
        self.cmdline: dict[int, str] = {}
        self.tree_peak = self.spill_peak = 0

    def run(self) -> None:
        while not self.done.is_set():
            pending, now = [self.root], 0
            while pending:
                pid = pending.pop()
                kb = status_kb(pid)
                if not kb:
                    continue
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                    if cmdline and cmdline != self.cmdline.get(pid):  # new, or exec'd since forked
                        self.cmdline[pid], self.peak[pid] = cmdline, 0
                self.peak[pid] = max(self.peak[pid], kb.get("VmHWM", 0) * 1024)
                now += kb.get("VmRSS", 0) * 1024
                for child in children(pid):
                    self.parent[child] = pid
                    pending.append(child)
            self.tree_peak = max(self.tree_peak, now)
            if self.spill.is_dir():
                self.spill_peak = max(self.spill_peak, sum(f.stat().st_size for f in self.spill.rglob("*") if f.is_file()))
            time.sleep(0.05)

    def role(self, pid: int) -> str:
        cmd = self.cmdline.get(pid, "")
        if pid == self.root:
            return CLI
        if "/dbt " in cmd and " build " in cmd:
            return DBT
        return OTHER

    def by_role(self) -> dict[str, int]:
        peaks = defaultdict(int)
        for pid, peak in self.peak.items():
            peaks[self.role(pid)] = max(peaks[self.role(pid)], peak)
        return peaks


def measure(lines: int, limit: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_day(root / "landing", DAY, lines)
        warehouse = root / "warehouse" / "shopflow.duckdb"
        env = cli_env(root / "landing", warehouse, root / "dagster_home", SHOPFLOW_DUCKDB_MEMORY_LIMIT=limit)
        started = time.perf_counter()
        with open(root / "run.log", "w") as log:
            process = subprocess.Popen(materialize_command("--partition", str(DAY)), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = Sampler(process.pid, warehouse.parent / f"{warehouse.name}.tmp")
            sampler.start()
            code = process.wait()
            sampler.done.set()
            sampler.join()
        if code != 0:
            raise SystemExit(f"the run of {lines:,} lines failed:\n{(root / 'run.log').read_text()[-3000:]}")
        return {"roles": sampler.by_role(), "tree": sampler.tree_peak, "spill": sampler.spill_peak,
                "seconds": time.perf_counter() - started}


def to_bytes(size: str) -> int:
    units = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
    number = size.upper().rstrip("BIGKMT")
    return int(float(number) * units[size.upper()[len(number):].strip()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=2_000_000)
    parser.add_argument("--limit", default="256MB", help="SHOPFLOW_DUCKDB_MEMORY_LIMIT for both runs")
    args = parser.parse_args()
    small, large = measure(args.small, args.limit), measure(args.large, args.limit)
    limit = to_bytes(args.limit)
    print(f"DuckDB memory_limit {args.limit} (SHOPFLOW_DUCKDB_MEMORY_LIMIT); peak RSS per process (VmHWM), sampled every 50 ms")
    print(f"{'process':<56}{args.small:>12,} lines{args.large:>12,} lines{'growth':>12}")
    rows = [(role, small["roles"].get(role, 0), large["roles"].get(role, 0)) for role in ROLES]
    rows += [("whole tree at one instant (sum of RSS)", small["tree"], large["tree"]),
             ("DuckDB spill folder (<warehouse>.tmp), peak size", small["spill"], large["spill"])]
    for label, a, b in rows:
        print(f"{label:<56}{a / MiB:>14.0f} MiB{b / MiB:>14.0f} MiB{(b - a) / MiB:>+8.0f} MiB")
    print(f"{'run wall time':<56}{small['seconds']:>16.1f} s{large['seconds']:>16.1f} s")
    growth = {role: large["roles"].get(role, 0) - small["roles"].get(role, 0) for role in ROLES}
    bound = limit * DUCKDB_SLACK + PYTHON_SIDE_SLACK
    for role in (CLI, DBT):
        print(f"target: {role} grows <= the limit {args.limit} (+5%) + {PYTHON_SIDE_SLACK // MiB} MiB "
              f"= {bound / MiB:.0f} MiB: {'met' if growth[role] <= bound else 'NOT met'} ({growth[role] / MiB:+.0f} MiB)")

if __name__ == "__main__":
    main()
