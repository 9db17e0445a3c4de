"""The Dagster UI, started against the repository's workspace.yaml (webserver + daemon): the asset
graph and fact_sales's freshness state through its GraphQL API, and a person's path through it in
Debian's Chromium driven by Playwright. Screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
import datetime as dt

import pytest

from .conftest import BIN, REPO_ROOT, command_env, csv_text, line
from .daemon_helpers import stop_groups

pytestmark = pytest.mark.slow  # a daemon, a subprocess, Spark, Postgres or a browser

QUERY = """{ assetNodes(assetKeys: [{path: ["fact_sales"]}, {path: ["daily_revenue"]}, {path: ["raw", "orders"]}]) {
  assetKey { path } groupName dependencyKeys { path }
  internalFreshnessPolicy { ... on CronFreshnessPolicy { deadlineCron timezone } }
  freshnessStatusInfo { freshnessStatus } } }"""


LOCATIONS_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def webserver_and_daemon(env: dict, port: int, tmp_path: Path, daemon: bool = True):
    """`dagster-webserver` on 127.0.0.1:port and `dagster-daemon`, as `dagster dev` starts them;
    their output in tmp_path/webserver.log and daemon.log. `daemon=False`: the webserver alone."""
    from dagster import DagsterInstance

    # the instance's SQLite tables are created here, not by both processes at once
    DagsterInstance.from_config(env["DAGSTER_HOME"]).dispose()
    daemon_log = open(tmp_path / "daemon.log", "w")
    webserver_log = open(tmp_path / "webserver.log", "w")
    processes = [
        subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=webserver_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    ]
    if daemon:
        processes.append(
            subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=REPO_ROOT, env=env, stdout=daemon_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
    try:
        yield
    finally:
        daemon_log.close()
        webserver_log.close()
        stop_groups(processes)


def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture
def ui(landing, warehouse_path, tmp_path):
    port = free_port()
    # the daemon's freshness evaluation runs every 30 s by default; faster here
    env = command_env(landing, warehouse_path, DAGSTER_HOME=str(dagster_home(tmp_path)), FRESHNESS_DAEMON_INTERVAL_SECONDS="5")
    with webserver_and_daemon(env, port, tmp_path):
        yield port, env


def poll(port: int, predicate, timeout: float, log: Path | None = None):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = graphql(port, QUERY)
            if predicate(last):
                return last
        except OSError:
            pass
        time.sleep(1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    try:  # why the code location is not there, if the webserver knows
        locations = graphql(port, LOCATIONS_QUERY)
    except OSError as error:
        locations = error
    raise AssertionError(f"timed out; last answer: {last}\ncode locations: {locations}\nlog tail:\n{tail}")


def test_ui_shows_the_graph_and_the_freshness_of_fact_sales(ui, landing, tmp_path):
    port, env = ui
    data = poll(port, lambda d: len(d["assetNodes"]) == 3, 180, tmp_path / "webserver.log")  # slow on a busy 2-core machine
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
                                    for n in d["assetNodes"] if n["freshnessStatusInfo"]), 240,
                log=Path(env["DAGSTER_HOME"]).parent / "daemon.log")
    states = {"/".join(n["assetKey"]["path"]): (n["freshnessStatusInfo"] or {}).get("freshnessStatus") for n in data["assetNodes"]}
    assert states == {"fact_sales": "HEALTHY", "daily_revenue": "HEALTHY", "raw/orders": None}


ARTIFACTS = REPO_ROOT / "test-artifacts"
# Debian's Chromium (browsers cannot be downloaded here); the flags keep it off the network.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"


def dismiss_welcome(page) -> None:
    """The UI greets a new browser with a 'Join the Dagster community' dialog."""
    try:
        page.get_by_role("button", name="Skip").click(timeout=5000)
    except Exception:
        pass


def test_a_person_materializes_a_day_from_the_ui(ui, landing, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    port, _ = ui
    base = f"http://127.0.0.1:{port}"
    day = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)).isoformat()
    rows = [line(f"UI-{n}", day=day, quantity=n + 1) for n in range(3)] + [line("UI-bad", day=day, status="lost")]
    landing.export(day, {"a.csv": csv_text(rows)})
    poll(port, lambda d: len(d["assetNodes"]) == 3, 180, tmp_path / "webserver.log")  # slow on a busy 2-core machine
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)

        # the graph: raw/orders -> fact_sales -> daily_revenue
        page.goto(f"{base}/assets/daily_revenue?view=lineage&lineageScope=upstream&lineageDepth=3")
        dismiss_welcome(page)
        for name in ("orders", "fact_sales", "daily_revenue"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "ui-asset-graph.png")

        # one day, launched from the asset page
        page.goto(f"{base}/assets/raw/orders")
        dismiss_welcome(page)
        page.get_by_role("button", name="Materialize…").click()
        page.locator("input[placeholder*='partition' i]").first.fill(day)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Launch 1 run").click()

        def run_of_day(data):
            runs = data["runsOrError"]["results"]
            return [r for r in runs if {"key": "dagster/partition", "value": day} in r["tags"]]

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            runs = run_of_day(graphql(port, RUNS_QUERY))
            if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert runs and runs[0]["status"] == "SUCCESS", runs
        page.goto(f"{base}/runs/{runs[0]['runId']}")
        expect(page.get_by_text("Success").first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "ui-run-success.png")

        # the row-count metadata on the asset page
        page.goto(f"{base}/assets/raw/orders")
        expect(page.get_by_text("rows_loaded", exact=True).first).to_be_visible()
        expect(page.get_by_text("rows_rejected", exact=True).first).to_be_visible()
        row = page.locator("tr", has=page.get_by_text("rows_loaded", exact=True)).first
        expect(row).to_contain_text("3")
        page.screenshot(path=ARTIFACTS / "ui-asset-metadata.png", full_page=True)
        browser.close()


def push(env: dict, day: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "shopflow-push-export"), day], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_pushed_export_is_built_at_once_and_only_once(landing, warehouse_path, tmp_path):
    """The exporter's last step, `shopflow-push-export D`, starts D through the webserver's GraphQL
    API; pushed again (while it runs and after), the day is not started again, and the export
    sensor leaves it alone too. Dagster's own GraphQL client follows the run."""
    from dagster import DagsterInstance, build_sensor_context
    from dagster_graphql import DagsterGraphQLClient

    from shopflow_assets.defs.ingest.landing_zone import LandingZone
    from shopflow_assets.core.run_window import EXPORT_TAG
    from .conftest import export_landed_sensor

    from .daemon_helpers import materializations

    port, home = free_port(), dagster_home(tmp_path)
    # the sensors tick once when the daemon starts, then not for an hour: only the push starts D
    env = command_env(
        landing, warehouse_path, DAGSTER_HOME=str(home), SHOPFLOW_UI_URL=f"http://127.0.0.1:{port}",
        SHOPFLOW_SENSOR_INTERVAL_SECONDS="3600",
    )
    day = "2024-03-01"
    with webserver_and_daemon(env, port, tmp_path), DagsterInstance.from_config(str(home)) as instance:
        poll(port, lambda d: len(d["assetNodes"]) == 3, 180, tmp_path / "webserver.log")  # the code location is loaded
        refused = push(env, day)  # before the export has finished: refused, saying why
        assert refused.returncode == 1 and "has not finished" in refused.stderr and instance.get_runs() == []

        landing.export(day, {"a.csv": csv_text([line("A", quantity=2)])})
        pushed = time.monotonic()
        first, second = push(env, day), push(env, day)
        assert first.returncode == 0 and " started: " in first.stdout, first.stderr
        run_id = first.stdout.split(" run ", 1)[1].split()[0]
        assert second.returncode == 0 and f"run {run_id} already started" in second.stdout

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        deadline = time.monotonic() + 240
        while client.get_run_status(run_id).value not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.5)
        print(f"\npush -> run {client.get_run_status(run_id).value}: {time.monotonic() - pushed:.1f} s")
        assert client.get_run_status(run_id).value == "SUCCESS"

        assert f"run {run_id} already started" in push(env, day).stdout
        (run,) = instance.get_runs()
        assert run.run_id == run_id and run.tags[EXPORT_TAG].startswith(f"{day}:")
        assert "dagster/sensor_name" not in run.tags
        assert materializations(instance, day) == {"raw/orders": 1, "fact_sales": 1, "daily_revenue": 1}
        # the export sensor, ticking now, finds D's export started and requests nothing
        context = build_sensor_context(instance=instance, resources={"landing": LandingZone(root=str(landing.root))})
        assert not export_landed_sensor(context).run_requests
