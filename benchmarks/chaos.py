"""Benchmark 8, chaos: about eight landings (among them re-exports and broken days) under SIGKILLs of
run workers, the code server and the daemon at random moments, and one Slack outage. A few minutes.

    .venv/bin/python -m benchmarks.chaos [--seed N] [--spacing 15] [--interval 5]

Production's shape, on this machine: `dagster-daemon` on deploy/dagster.yaml in a DAGSTER_HOME, a
throwaway PostgreSQL cluster (Debian's initdb/pg_ctl, as the tests use), the Slack stand-in of the
tests as Slack. What an operator would do is done too: at the end, each day whose tables are not
what its files say is re-run with the command of its alert.

At the end it prints and checks:
- every day's tables equal the totals computed from its files (a broken day: no rows at all);
- every failed run produced exactly one BROKE;
- every build of a day (each materialization of fact_sales) exactly one READY;
- no LATE for a day that was on time, no alert twice, no run left in progress.
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from benchmarks._data import REPO_ROOT, write_day
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS
from shopflow_assets.defs.alerts.outbox import MARKERS
from shopflow_assets_tests.postgres_cluster import pg_bin, production_dagster_home, start_cluster
from shopflow_assets_tests.slack_standin import start_slack_standin

BIN = Path(sys.executable).parent
FACT_SALES = AssetKey("fact_sales")
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
FIRST = dt.date(2024, 4, 1)


def day(n: int) -> str:
    return str(FIRST + dt.timedelta(days=n - 1))


class Chaos:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="shopflow-chaos-"))
        self.landing = self.tmp / "landing"
        self.warehouse = self.tmp / "warehouse" / "shopflow.duckdb"
        self.log_path = self.tmp / "daemon.log"
        self.events: list[tuple[float, str]] = []
        self.broken_days: set[str] = set()  # days whose latest export is broken
        self.daemon: subprocess.Popen | None = None
        self.sessions: list[int] = []
        self.t0 = time.monotonic()

    # processes -----------------------------------------------------------------------------

    def start_daemon(self) -> None:
        with open(self.log_path, "a") as log:
            self.daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.sessions.append(self.daemon.pid)

    def code_servers(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == self.daemon.pid and b"api\x00grpc" in cmdline:
                found.append(int(entry.name))
        return found

    def running_worker(self):
        for run in self.instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            starts = self.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START).records
            steps = self.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
            if starts and steps and starts[0].event_log_entry.dagster_event.pid:
                return run, starts[0].event_log_entry.dagster_event.pid
        return None, None

    def note(self, what: str) -> None:
        at = time.monotonic() - self.t0
        self.events.append((at, what))
        print(f"  {at:6.1f} s  {what}", flush=True)

    # chaos actions ---------------------------------------------------------------------------

    def kill_worker(self, with_code_server: bool = False, deadline: float | None = None) -> None:
        """SIGKILL the worker of a run that is in a step (and its code server); if none is, look
        again every half second for a minute, without holding up the other events."""
        deadline = deadline or time.monotonic() + 60
        run, pid = self.running_worker()
        if run is None:
            if time.monotonic() < deadline:
                self.pending.append((time.monotonic() + 0.5, lambda: self.kill_worker(with_code_server, deadline)))
            else:
                self.note("no run in a step to kill within a minute: skipped")
            return
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) if Path(f"/proc/{pid}").exists() else None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.pending.append((time.monotonic() + 0.5, lambda: self.kill_worker(with_code_server, deadline)))
            return
        what = f"SIGKILL run worker {pid} of {run.tags.get('dagster/partition')} ({run.job_name[:40]})"
        if with_code_server and parent:
            os.kill(parent, signal.SIGKILL)
            what += f" and its code server {parent}"
        self.note(what)

    def kill_code_server(self) -> None:
        servers = self.code_servers()
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
        self.note(f"SIGKILL the daemon's code server {servers}")

    def kill_daemon(self) -> None:
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        self.note(f"SIGKILL dagster-daemon {self.daemon.pid}")
        time.sleep(self.rng.uniform(2, 6))
        self.start_daemon()
        self.note(f"dagster-daemon restarted ({self.daemon.pid})")

    def slack_outage(self) -> None:
        down = self.rng.uniform(45, 75)
        self.slack.outage(503)
        self.note(f"Slack down: HTTP 503 for {down:.0f} s, then connections refused for 15 s")
        self.outage_started = time.monotonic()
        self.pending.append((time.monotonic() + down, self.slack_refuse))

    def slack_refuse(self) -> None:
        self.slack.refuse_connections()
        self.slack.outage(None)
        self.pending.append((time.monotonic() + 15, self.slack_back))

    def slack_back(self) -> None:
        self.slack.accept_connections()
        self.slack_back_at = time.time()
        self.note(f"Slack back after {time.monotonic() - self.outage_started:.0f} s")

    # landings --------------------------------------------------------------------------------

    def land(self, n: int, kind: str) -> None:
        d = day(n)
        directory = self.landing / "orders" / f"dt={d}"
        if directory.exists():
            shutil.rmtree(directory)  # a re-export replaces the day's files
        if kind == "broken":
            directory.mkdir(parents=True)
            columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
            (directory / "part-9.csv").write_text(",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n")
            (directory / "_SUCCESS").touch()
            self.broken_days.add(d)
        else:
            lines = {"small": 3_000, "big": 300_000}[kind] + self.rng.randrange(0, 300) * 3
            write_day(self.landing, dt.date.fromisoformat(d), lines, files=3)
            self.broken_days.discard(d)
        self.landed.add(d)
        self.note(f"landed {d}: {kind}{' (re-export)' if d in self.seen else ''}")
        self.seen.add(d)

    # the run ---------------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        print(f"chaos: seed {args.seed}, landings every ~{args.spacing} s, sensor interval {args.interval} s, in {self.tmp}")
        self.cluster = start_cluster()
        try:
            return self._run()
        finally:
            for pgid in self.sessions:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.slack.stop() if hasattr(self, "slack") else None
            self.cluster.stop()
            shutil.rmtree(self.cluster.directory, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self) -> int:
        args = self.args
        subprocess.run(
            [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.cluster.port), "-U", "dagster", "-d", "dagster",
             "-c", 'CREATE DATABASE "chaos"'],
            check=True, capture_output=True,
        )
        home = production_dagster_home(self.tmp / "dagster_home")
        self.slack = start_slack_standin()
        self.landing.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_", "SLACK_"))}
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            SHOPFLOW_LANDING_DIR=str(self.landing),
            SHOPFLOW_WAREHOUSE=str(self.warehouse),
            DAGSTER_HOME=str(home),
            DAGSTER_PG_URL=self.cluster.url("chaos"),
            SLACK_BOT_TOKEN="xoxb-chaos",
            SHOPFLOW_SLACK_API_URL=self.slack.api_url,
            SHOPFLOW_SENSOR_INTERVAL_SECONDS=str(args.interval),
        )
        os.environ.update(DAGSTER_HOME=str(home), DAGSTER_PG_URL=self.env["DAGSTER_PG_URL"])
        self.instance = DagsterInstance.get()
        self.landed, self.seen, self.pending = set(), set(), []
        self.start_daemon()
        while "Sensor shopflow_alerts skipped" not in self.log_path.read_text():
            time.sleep(1)
        self.t0 = time.monotonic()

        # about eight landings: small and big days, two broken, two re-exports (one fixes a broken day)
        landings = [(1, "small"), (2, "big"), (3, "broken"), (4, "small"), (1, "small"), (5, "big"), (3, "small"), (6, "broken")]
        span = args.spacing * len(landings)
        plan = [(i * args.spacing + self.rng.uniform(0, args.spacing / 2), lambda n=n, k=k: self.land(n, k)) for i, (n, k) in enumerate(landings)]
        chaos = [self.kill_worker, lambda: self.kill_worker(with_code_server=True), self.kill_code_server, self.kill_daemon, self.kill_daemon, self.slack_outage]
        plan += [(self.rng.uniform(10, span), action) for action in chaos]
        self.pending = sorted(plan, key=lambda p: p[0])
        self.pending = [(self.t0 + at, action) for at, action in self.pending]
        while self.pending:
            self.pending.sort(key=lambda p: p[0])
            at, action = self.pending.pop(0)
            time.sleep(max(0.0, at - time.monotonic()))
            action()

        self.note("chaos over; waiting for the runs and the outbox to settle")
        self.settle()
        # the operator: each day whose tables are not what its files say is re-run (the alert's command)
        for d in sorted(self.landed - self.broken_days):
            if self.table_totals(d) != self.file_totals(d):
                command = [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions",
                           "--select", "raw/orders*", "--partition", d]
                self.note(f"re-run {d} (as its alert says)")
                result = subprocess.run(command, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True)
                if result.returncode != 0:
                    self.note(f"re-run of {d} failed: {result.stderr[-300:]}")
        self.settle()
        return self.report()

    def settle(self) -> None:
        quiet = 0
        deadline = time.monotonic() + 600
        while quiet < 3 and time.monotonic() < deadline:
            busy = self.instance.get_runs(filters=RunsFilter(statuses=IN_PROGRESS))
            lines = [l for l in self.log_path.read_text().splitlines() if "Sensor shopflow_alerts skipped" in l]
            outbox_busy = bool(self.instance.get_dynamic_partitions(MARKERS)) or not lines or "waiting" in lines[-1] or "queued" in lines[-1]
            quiet = 0 if busy or outbox_busy else quiet + 1
            time.sleep(self.args.interval)
        self.note("settled" if quiet >= 3 else "did not settle within 10 min")

    # checks ----------------------------------------------------------------------------------

    def file_totals(self, d: str):
        if d in self.broken_days:
            return None
        files = sorted(str(p) for p in (self.landing / "orders" / f"dt={d}").glob("*.csv"))
        con = duckdb.connect()
        row = con.execute(
            """SELECT count(DISTINCT order_id), count(*), sum(quantity::INT),
                      sum(quantity::INT * unit_price::DECIMAL(18,2)),
                      sum(quantity::INT * unit_price::DECIMAL(18,2) - discount::DECIMAL(18,2))
               FROM read_csv(?, all_varchar = true, header = true)
               WHERE status NOT IN ('cancelled', 'refunded')""",
            [files],
        ).fetchone()
        return tuple(row)

    def table_totals(self, d: str):
        if not self.warehouse.exists():
            return None
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            rows = con.execute(
                "SELECT orders, order_lines, units, gross_revenue, net_revenue FROM analytics.daily_revenue WHERE dt = ?", [d]
            ).fetchall()
            facts = con.execute("SELECT count(*) FROM analytics.fact_sales WHERE dt = ?", [d]).fetchone()[0]
            raw = con.execute("SELECT count(*) FROM raw.orders WHERE dt = ?", [d]).fetchone()[0]
        if not rows:
            return None if facts == 0 and raw == 0 else ("rows without a daily_revenue", raw, facts)
        return tuple(rows[0])

    def report(self) -> int:
        instance, failures = self.instance, []
        posted = self.slack.posted
        ids = [(p.metadata or {}).get("event_payload", {}).get("alert_id", "?") for p in posted]
        by_id = {i: p for i, p in zip(ids, posted)}
        kinds = {}
        for i in ids:
            kinds[i.split(":")[0]] = kinds.get(i.split(":")[0], 0) + 1
        runs = instance.get_runs()
        failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
        stuck = [r for r in runs if r.status in IN_PROGRESS]

        print("\nDays (totals from the files vs analytics.daily_revenue: orders, lines, units, gross, net):")
        for d in sorted(self.landed):
            expected, actual = self.file_totals(d), self.table_totals(d)
            ok = expected == actual
            print(f"  {d}: {'ok ' if ok else 'BAD'} {'broken export, no rows' if expected is None else expected}"
                  + ("" if ok else f"  != tables {actual}"))
            if not ok:
                failures.append(f"{d}: tables {actual} != files {expected}")

        broke_ids = {f"broke:{r.run_id}" for r in failed}
        sent_broke = [i for i in ids if i.startswith("broke:")]
        print(f"\nRuns: {len(runs)}, failed {len(failed)}, in progress at the end {len(stuck)}")
        for r in failed:
            n = sent_broke.count(f"broke:{r.run_id}")
            first_line = by_id.get(f"broke:{r.run_id}").text.splitlines() if n else ["-"]
            error = next((l for l in first_line if l.startswith("• Error:")), "")[:110]
            print(f"  failed {r.tags.get('dagster/partition')} {r.run_id[:8]}: {n} BROKE  {error}")
        if sorted(sent_broke) != sorted(broke_ids):
            failures.append(f"BROKE alerts {sorted(sent_broke)} != failed runs {sorted(broke_ids)}")
        if stuck:
            failures.append(f"runs still in progress: {[r.run_id for r in stuck]}")

        builds = instance.fetch_materializations(AssetRecordsFilter(asset_key=FACT_SALES), limit=1000).records
        ready_ids = {f"ready:{b.storage_id}" for b in builds}
        sent_ready = [i for i in ids if i.startswith("ready:")]
        per_day = {}
        for b in builds:
            per_day.setdefault(b.asset_materialization.partition, []).append(sent_ready.count(f"ready:{b.storage_id}"))
        print("Builds of fact_sales and READY alerts per build: " + ", ".join(f"{d} {v}" for d, v in sorted(per_day.items())))
        if sorted(sent_ready) != sorted(ready_ids):
            failures.append(f"READY alerts {len(sent_ready)} != builds of fact_sales {len(ready_ids)}")

        for i in [i for i in ids if i.startswith("late:")]:
            late_day = dt.date.fromisoformat(i.split(":", 1)[1])
            deadline = dt.datetime.combine(late_day + dt.timedelta(days=1), dt.time(8), dt.timezone.utc).timestamp()
            on_time = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=FACT_SALES, asset_partitions=[str(late_day)], before_timestamp=deadline), limit=1
            ).records
            if on_time:
                failures.append(f"LATE for {late_day}, which was on time")
        if len(ids) != len(set(ids)):
            failures.append(f"alerts sent twice: {sorted(i for i in set(ids) if ids.count(i) > 1)}")

        delays = []
        for r in failed:
            record = instance.get_records_for_run(r.run_id, of_type=DagsterEventType.RUN_FAILURE).records
            if record and f"broke:{r.run_id}" in by_id:
                delays.append(by_id[f"broke:{r.run_id}"].at - record[-1].event_log_entry.timestamp)
        for b in builds:
            if f"ready:{b.storage_id}" in by_id:
                delays.append(by_id[f"ready:{b.storage_id}"].at - b.timestamp)
        lost = [r for r in failed if "Run worker lost" in getattr(by_id.get(f"broke:{r.run_id}"), "text", "")]
        print(f"Alerts in the channel: {len(ids)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); "
              f"event -> Slack: median {statistics.median(delays):.0f} s, max {max(delays):.0f} s"
              if delays else f"Alerts in the channel: {len(ids)}")
        if hasattr(self, "slack_back_at"):
            after = sorted(p.at - self.slack_back_at for p in posted if p.at >= self.slack_back_at)
            print(f"After the Slack outage: first alert {after[0]:.1f} s after Slack was back" if after else "")
        print(f"Runs marked failed by shopflow_run_watchdog (worker lost): {len(lost)}")
        print(f"Chaos: {sum(1 for _, e in self.events if e.startswith('SIGKILL'))} SIGKILLs, "
              f"{sum(1 for _, e in self.events if e.startswith('landed'))} landings, total {time.monotonic() - self.t0:.0f} s")
        print("\nCHECKS: " + ("all passed" if not failures else "FAILED\n  " + "\n  ".join(failures)))
        return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument("--spacing", type=float, default=15.0, help="seconds between landings")
    parser.add_argument("--interval", type=int, default=5, help="SHOPFLOW_SENSOR_INTERVAL_SECONDS")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, warehouse)")
    return Chaos(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
