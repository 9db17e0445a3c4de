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
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


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
