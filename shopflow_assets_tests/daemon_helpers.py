"""The real dagster-daemon in a subprocess, and what tests ask of the instance it writes to."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, Mapping

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from .conftest import BIN, REPO_ROOT

KEYS = {
    "raw/orders": AssetKey(["raw", "orders"]),
    "fact_sales": AssetKey("fact_sales"),
    "daily_revenue": AssetKey("daily_revenue"),
}


@contextlib.contextmanager
def daemon_process(env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run -w workspace.yaml` from the repository root, its output in log_path;
    stopped (its whole process group) at the end, whatever the test did."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop_groups([process])


def stop_groups(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """Stop processes started with start_new_session, and all they started: SIGTERM to each
    group, then, once its leader has exited (or after `timeout`), SIGKILL to what is left of it.
    A code server waits for its runs to finish before it exits, and a run whose daemon is gone can
    wait forever: neither may outlive the test."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        signal_group(process, signal.SIGKILL)


def signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # nothing of the group is left
        pass


def materializations(instance: DagsterInstance, day: str) -> dict[str, int]:
    """How many times each asset was materialized for `day`."""
    return {
        name: len(
            instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=100).records
        )
        for name, key in KEYS.items()
    }


def wait_for(predicate, timeout: float, what: str, log: Path, poll_seconds: float = 1):
    """The predicate's first truthy value; on timeout, an error with the daemon log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_seconds)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; daemon log tail:\n{log.read_text()[-6000:]}")


def production_daemon_env(postgres, tmp_path: Path, landing, warehouse_path: Path, slack_api_url: str, sensor_interval: int) -> dict[str, str]:
    """The environment of a daemon on the production instance file (deploy/dagster.yaml copied into
    a DAGSTER_HOME under tmp_path) with a fresh database of its own in `postgres`, so that counts
    start at zero, the Slack stand-in, and the given sensor interval."""
    from .conftest import SLACK_TOKEN, command_env
    from .postgres_cluster import pg_bin, production_dagster_home

    home = production_dagster_home(tmp_path / "dagster_home")
    database = f"dagster_{tmp_path.name[-20:].lower().replace('-', '_')}"
    subprocess.run(
        [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "dagster", "-d", "dagster",
         "-c", f'CREATE DATABASE "{database}"'],
        check=True,
        capture_output=True,
    )
    return command_env(
        landing,
        warehouse_path,
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=postgres.url(database),
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        SHOPFLOW_SLACK_API_URL=slack_api_url,
        SHOPFLOW_SENSOR_INTERVAL_SECONDS=str(sensor_interval),
    )
