"""The Dagster UI's server, started against the repository's workspace.yaml: it shows the asset
graph and, once the daemon's freshness evaluation has run, fact_sales's freshness state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, csv_text, line

BIN = Path(sys.executable).parent
QUERY = """{ assetNodes(assetKeys: [{path: ["fact_sales"]}, {path: ["daily_revenue"]}, {path: ["raw", "orders"]}]) {
  assetKey { path } groupName dependencyKeys { path }
  internalFreshnessPolicy { ... on CronFreshnessPolicy { deadlineCron timezone } }
  freshnessStatusInfo { freshnessStatus } } }"""


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.fixture
def ui(landing, warehouse_path, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_", "SLACK_"))},
        "DAGSTER_HOME": str(home),
        "SHOPFLOW_LANDING_DIR": str(landing.root),
        "SHOPFLOW_WAREHOUSE": str(warehouse_path),
    }
    processes = [
        subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ),
        subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ),
    ]
    yield port, env
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def poll(port: int, predicate, timeout: float):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = graphql(port, QUERY)
            if predicate(last):
                return last
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out; last answer: {last}")


def test_ui_shows_the_graph_and_the_freshness_of_fact_sales(ui, landing):
    port, env = ui
    data = poll(port, lambda d: len(d["assetNodes"]) == 3, 90)
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert [d["path"] for d in nodes["fact_sales"]["dependencyKeys"]] == [["raw", "orders"]]
    assert [d["path"] for d in nodes["daily_revenue"]["dependencyKeys"]] == [["fact_sales"]]
    assert nodes["fact_sales"]["internalFreshnessPolicy"] == {"deadlineCron": "0 8 * * *", "timezone": "UTC"}
    assert nodes["fact_sales"]["freshnessStatusInfo"]["freshnessStatus"] == "UNKNOWN"  # never built

    landing.export("2024-03-01", {"a.csv": csv_text([line("A")])})
    subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions",
         "--select", "raw/orders*", "--partition", "2024-03-01"],
        cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=300,
    )
    # the daemon's FreshnessDaemon evaluates the policy; the UI then shows a state
    data = poll(port, lambda d: all(n["freshnessStatusInfo"]["freshnessStatus"] != "UNKNOWN"
                                    for n in d["assetNodes"] if n["freshnessStatusInfo"]), 120)
    states = {"/".join(n["assetKey"]["path"]): (n["freshnessStatusInfo"] or {}).get("freshnessStatus") for n in data["assetNodes"]}
    assert states == {"fact_sales": "HEALTHY", "daily_revenue": "HEALTHY", "raw/orders": None}
