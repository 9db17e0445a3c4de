"""Nothing a human must hear is lost, with nobody at the keyboard: a real `dagster-daemon`
on the production instance file (deploy/dagster.yaml in DAGSTER_HOME, a throwaway Postgres), the
Slack stand-in, real exports. The daemon and the run processes are SIGKILLed as a machine would.

- Slack down (503, then refused connections) while a broken day and a good day land, the daemon
  killed and restarted in the middle: once Slack is back, one BROKE and one READY, in order, within
  two sensor intervals, and nothing twice afterwards; then a 429 with Retry-After: 30.
- The daemon killed between Slack's 200 and the outbox's record of it: the alert shows once.
- A run whose worker and code server are killed mid-ingest: the next day is built within three
  minutes, and the dead run's day rebuilds when re-run.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from benchmarks._data import write_day
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS

from .conftest import BIN, REPO_ROOT, csv_text, line, query
from . import daemon_helpers
from .daemon_helpers import production_daemon_env

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

# The daemon's sensor loop looks every 5 s: a shorter interval would not tick more often.
SENSOR_INTERVAL = 5
DAILY_REVENUE = AssetKey("daily_revenue")
FACT_SALES = AssetKey("fact_sales")
RAW_ORDERS = AssetKey(["raw", "orders"])


class Daemon:
    """`dagster-daemon run` on a DAGSTER_HOME of deploy/dagster.yaml and a database of its own."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log_path = env, log
        self.process: subprocess.Popen | None = None
        self.sessions: list[int] = []

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sessions.append(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the daemon process itself (its code server and runs are left to fend for themselves)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text()

    def ticked(self, sensor: str, after: int = 0) -> bool:
        return f"Sensor {sensor} skipped" in self.log()[after:]

    def stop(self) -> None:
        for pgid in self.sessions:  # every daemon started, with its code servers and runs
            try:
                os.killpg(pgid, signal.SIGTERM if pgid == self.process.pid else signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        for pgid in self.sessions:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def daemon(postgres, landing, warehouse_path, slack_server, tmp_path, monkeypatch):
    env = production_daemon_env(postgres, tmp_path, landing, warehouse_path, slack_server.api_url, SENSOR_INTERVAL)
    for key in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    with DagsterInstance.get() as instance:  # creates the tables
        daemon = Daemon(env, tmp_path / "daemon.log")
        daemon.instance = instance
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


def wait_for(predicate, timeout: float, what: str, daemon: Daemon, step: float = 0.5):
    return daemon_helpers.wait_for(predicate, timeout, what, daemon.log_path, poll_seconds=step)


def alert_ticks(daemon: Daemon, n: int = 2, timeout: float = 90) -> None:
    """Wait for `n` more ticks of shopflow_alerts (the first writes the alerts of what happened
    before it, the second delivers them, if Slack takes them)."""
    for _ in range(n):
        mark = len(daemon.log())
        wait_for(lambda: daemon.ticked("shopflow_alerts", mark), timeout, "a tick of shopflow_alerts", daemon)


def built(instance: DagsterInstance, key: AssetKey, day: str) -> int:
    return len(instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=10).records)


def failed_runs(instance: DagsterInstance, day: str) -> list:
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    return [r for r in runs if r.tags.get("dagster/partition") == day]


def alert_ids(slack_server) -> list[str]:
    return [(p.metadata or {}).get("event_payload", {}).get("alert_id", "?") for p in slack_server.posted]


def kind_of(message: str) -> str:
    """BROKE, READY, LATE, RECOVERED or DELAYED: the word after the emoji."""
    return message.split(":", 3)[2].strip()


def of_kind(slack_server, kind: str) -> list[str]:
    return [m for m in slack_server.delivered if kind_of(m) == kind]


# ---------------------------------------------------------------------------------------------


def test_the_watchdog_tells_a_live_worker_from_a_dead_or_reused_pid():
    """(In process, no daemon.) A process is known by its pid and its start in clock ticks after
    boot; a run worker by its command line (a code server's spawn child). test_watchdog.py has the
    rest, with runs."""
    import multiprocessing

    from shopflow_assets.defs.operations.watchdog import is_run_worker, read_process

    me = read_process(os.getpid())
    assert me is not None and me.start_ticks > 0 and me.argv
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))  # as a code server starts one
    other = subprocess.Popen(["sleep", "30"])
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not (found := read_process(worker.pid)).argv:  # (empty while the child is still in exec)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert found.start_ticks >= me.start_ticks  # a live process, started later than us
        assert is_run_worker(found, "any-run") and not is_run_worker(read_process(other.pid), "any-run")
        assert read_process(worker.pid) == found  # the same identity, tick after tick
        for process in (worker, other):
            process.kill()
        time.sleep(0.2)
        assert read_process(worker.pid) is None and read_process(other.pid) is None  # zombies: exited, unread
    finally:
        worker.join()
        other.wait()
    assert read_process(worker.pid) is None  # gone


def alert_ticks_until(daemon: Daemon, mark: int, words: str) -> int:
    """How many ticks of shopflow_alerts after log position `mark`, up to the first whose summary
    has `words` (0: none yet)."""
    lines = [l for l in daemon.log()[mark:].splitlines() if "Sensor shopflow_alerts skipped" in l]
    return next((n for n, l in enumerate(lines, start=1) if words in l), 0)


def test_slack_outage_daemon_kills_and_a_429_lose_no_alert_and_send_none_twice(daemon, landing, slack_server):
    """One daemon session (each new daemon costs a code server start), in three parts:
    1. Slack answers 503, then refuses connections, while a broken day and a good day land; the
       daemon is SIGKILLed and restarted in the middle: once Slack is back, one BROKE (day, file,
       column) and one READY arrive, in order, within two ticks of the alerts sensor.
    2. The next alert in line (a third day, broken during the outage) meets a 429 with
       Retry-After: 30: nothing is sent for 30 s, then it is.
    3. That retry is taken by Slack, and the daemon, its code server and the sensor are SIGKILLed
       before they hear the 200: the restarted daemon finds the alert in the channel and does not
       send it again.
    And in the minute after Slack came back (and until the end) no alert shows twice."""
    instance, broken, good, limited = daemon.instance, "2024-03-01", "2024-03-02", "2024-03-03"
    wait_for(lambda: daemon.ticked("shopflow_alerts"), 120, "the first tick of shopflow_alerts", daemon)
    alert_ticks(daemon)  # (today's LATE, if it is after 08:00, goes out before the outage)
    before = len(slack_server.posted)

    # 1. the outage ----------------------------------------------------------------------------
    slack_server.outage(503)
    down = time.monotonic()
    columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
    landing.export(broken, {"part-7.csv": csv_text([line("A", day=broken)], columns)})
    landing.export(good, {"part-0.csv": csv_text([line("B", day=good, quantity=2, unit_price="10.00", discount="1.00")])})
    wait_for(lambda: failed_runs(instance, broken) and built(instance, FACT_SALES, good), 240,
             f"the failed run of {broken} and fact_sales of {good}", daemon)
    landing.export(limited, {"a.csv": csv_text([line("C", day=limited)], ["order_id"])})
    wait_for(lambda: failed_runs(instance, limited), 120, f"the failed run of {limited}", daemon)
    alert_ticks(daemon)  # the three alerts are in the outbox, and Slack has turned the first away
    assert any("BROKE" in r.body.get("text", "") and r.status == 503 for r in slack_server.post_requests())

    daemon.kill()  # SIGKILL in the middle of the outage; a new daemon on the same storage
    killed_at = time.monotonic() - down
    mark = len(daemon.log())
    daemon.start()
    wait_for(lambda: daemon.ticked("shopflow_alerts", mark), 120, "the new daemon's first alerts tick", daemon)
    slack_server.refuse_connections()  # the last part of the outage: connections refused
    slack_server.outage(None)
    alert_ticks(daemon)
    assert len(slack_server.posted) == before

    slack_server.fail_next((429, {"Retry-After": "30"}), after=2)  # (part 2: the third post)
    mark = len(daemon.log())
    slack_server.accept_connections()
    back = time.monotonic()

    def both_delivered():
        return of_kind(slack_server, "BROKE") and of_kind(slack_server, "READY")

    wait_for(both_delivered, 30, "BROKE and READY after Slack is back", daemon, step=0.2)
    arrived = time.monotonic() - back
    ticks = wait_for(lambda: alert_ticks_until(daemon, mark, "sent 2"), 30, "the tick's summary in the log", daemon)
    print(f"\nSlack down {back - down:.0f} s (the daemon killed at {killed_at:.0f} s); "
          f"BROKE and READY {arrived:.1f} s after it was back, by tick {ticks} of shopflow_alerts")
    assert 1 <= ticks <= 2  # within two sensor intervals
    (broke,) = of_kind(slack_server, "BROKE")
    assert f"BROKE: raw/orders for {broken} failed" in broke
    assert f"• Error: `dt={broken}/part-7.csv line 1 (header): missing required column 'discount'" in broke
    (ready,) = of_kind(slack_server, "READY")
    assert ready.startswith(f":white_check_mark: READY: fact_sales for {good} landed") and "• Net revenue: 19.00" in ready
    kinds = [kind_of(m) for m in slack_server.delivered]
    assert kinds.index("BROKE") < kinds.index("READY")  # in the order it happened

    # 2. the next one meets a 429 with Retry-After: 30 -----------------------------------------
    limited_post = wait_for(lambda: next((r for r in slack_server.post_requests() if r.status == 429), None), 30,
                            "the 429", daemon)
    assert limited in limited_post.body["text"]
    slack_server.hold_next_post()  # (part 3: its retry is taken, the answer held back)
    wait_for(slack_server.held.is_set, 90, f"the retry of the BROKE of {limited}", daemon)
    retried = next(r for r in slack_server.requests if r.at > limited_post.at)
    waited = retried.at - limited_post.at
    print(f"429 Retry-After 30: the next request to Slack {waited:.1f} s later")
    assert retried.path.endswith("chat.postMessage") and retried.body["text"] == limited_post.body["text"]
    assert 30 <= waited <= 30 + 2 * 2 * SENSOR_INTERVAL + 2  # honoured across ticks, about that long

    # 3. killed between Slack's 200 and the outbox's update ------------------------------------
    assert len(of_kind(slack_server, "BROKE")) == 2  # in the channel ...
    os.killpg(daemon.process.pid, signal.SIGKILL)  # ... and the daemon, code server and sensor are gone
    slack_server.release()
    daemon.process.wait(timeout=30)
    assert instance.get_dynamic_partitions("shopflow_alert_outbox_attempts")  # the marker, written first
    history_before = len([r for r in slack_server.requests if r.path.endswith("conversations.history")])
    daemon.start()
    wait_for(lambda: not instance.get_dynamic_partitions("shopflow_alert_outbox_attempts"), 120,
             "the restarted daemon to settle the attempt", daemon)
    assert len([r for r in slack_server.requests if r.path.endswith("conversations.history")]) > history_before
    time.sleep(max(2 * SENSOR_INTERVAL, 60 - (time.monotonic() - back)))  # the minute after Slack came back

    ids = alert_ids(slack_server)
    assert len(ids) == len(set(ids)), ids  # every alert once
    assert [m.splitlines()[0] for m in of_kind(slack_server, "BROKE")] == [
        f":red_circle: BROKE: raw/orders for {day} failed" for day in (broken, limited)
    ]
    assert len(of_kind(slack_server, "READY")) == 1


def test_a_run_whose_worker_and_code_server_die_does_not_hold_up_the_next_day(daemon, landing, warehouse_path, slack_server, tmp_path):
    instance, dead_day, next_day = daemon.instance, "2024-03-05", "2024-03-06"
    lines = 300_000
    write_day(landing.root, dt.date.fromisoformat(dead_day), lines)
    landing.finish(dead_day)

    def ingest_started():
        for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            if instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records:
                return run
        return None

    run = wait_for(ingest_started, 180, f"the ingest of {dead_day} to start", daemon, step=0.1)
    (start,) = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START).records
    worker = start.event_log_entry.dagster_event.pid
    stat = Path(f"/proc/{worker}/stat").read_text()
    code_server = int(stat[stat.rindex(")") + 2 :].split()[1])
    assert b"dagster" in Path(f"/proc/{code_server}/cmdline").read_bytes()
    os.kill(worker, signal.SIGKILL)
    os.kill(code_server, signal.SIGKILL)
    killed, killed_at = time.monotonic(), time.time()
    assert not built(instance, RAW_ORDERS, dead_day)  # killed mid-ingest

    landing.export(next_day, {"a.csv": csv_text([line("N", day=next_day, quantity=5)])})
    wait_for(lambda: built(instance, DAILY_REVENUE, next_day), 180, f"daily_revenue of {next_day}", daemon, step=1)
    done = time.monotonic() - killed
    failed = instance.get_run_by_id(run.run_id)
    failed_after = instance.get_run_record_by_id(run.run_id).end_time - killed_at
    next_runs = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == next_day]
    slot_after = min(instance.get_run_record_by_id(r.run_id).start_time for r in next_runs) - killed_at
    print(
        f"\nworker + code server killed mid-ingest: the run marked failed after {failed_after:.0f} s, "
        f"{next_day}'s first run started after {slot_after:.0f} s, its daily_revenue after {done:.0f} s"
    )
    assert failed.status == DagsterRunStatus.FAILURE
    assert done <= 180

    wait_for(lambda: of_kind(slack_server, "BROKE"), 60, "the BROKE of the dead run", daemon)
    (broke,) = of_kind(slack_server, "BROKE")
    assert f"for {dead_day} failed" in broke and "• Step: raw__orders" in broke
    assert f"• Error: `Run worker lost: the process that ran this run (pid {worker}) is gone" in broke

    # the dead run's day rebuilds when re-run, with the command its alert gives
    rerun = next(l for l in broke.splitlines() if l.startswith("• Re-run: ")).removeprefix("• Re-run: ").strip("`")
    env = dict(daemon.env, PATH=f"{BIN}{os.pathsep}{daemon.env.get('PATH', '')}")
    result = subprocess.run(rerun, shell=True, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert query(warehouse_path, "SELECT count(*), count(DISTINCT _run_id) FROM raw.orders WHERE dt = ?", [dead_day]) == [(lines, 1)]
    assert built(instance, RAW_ORDERS, dead_day) == 1
    assert query(warehouse_path, "SELECT units, net_revenue FROM analytics.daily_revenue WHERE dt = ?", [next_day]) == [
        (5, Decimal("50.00"))
    ]
