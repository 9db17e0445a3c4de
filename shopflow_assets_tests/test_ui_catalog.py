"""What a data engineer reads in the Dagster UI after a two-day backfill, in Debian's Chromium
driven by Playwright, screenshots in test-artifacts/: fact_sales' columns and where they come
from, the link to a dbt model's SQL, per-day check results of raw/orders and fact_sales, and the
row-count plot of raw/orders with each day's own value. Assertions read the page."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

import pytest

from .conftest import BIN, REPO_ROOT, Landing, command_env, csv_text, line
from .test_webserver import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    dagster_home,
    dismiss_welcome,
    free_port,
    graphql,
    poll,
    webserver_and_daemon,
)

pytestmark = [
    pytest.mark.slow,  # a webserver, dbt and a browser
    pytest.mark.xdist_group("ui-catalog"),  # one test worker: its tests share one backfill
]


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    """Two recent days (the UI plots the newest partitions) with different row counts, built by
    one backfill run of `raw/orders*`; then the webserver alone (no daemon: nothing else runs).
    Shared by this module's tests, which only read."""
    tmp_path = tmp_path_factory.mktemp("catalog")
    (tmp_path / "landing").mkdir()
    landing = Landing(tmp_path / "landing")
    today = dt.datetime.now(dt.timezone.utc).date()
    first, second = (today - dt.timedelta(days=n) for n in (3, 2))
    landing.export(first.isoformat(), {"a.csv": csv_text([line(f"F{i}", day=first.isoformat()) for i in range(3)])})
    landing.export(
        second.isoformat(),
        {"a.csv": csv_text([line(f"S{i}", day=second.isoformat()) for i in range(5)] + [line("bad", day=second.isoformat(), quantity="0")])},
    )
    port = free_port()
    env = command_env(landing, tmp_path / "warehouse" / "shopflow.duckdb", DAGSTER_HOME=str(dagster_home(tmp_path)))
    subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions", "--select", "raw/orders*",
         "--partition-range", f"{first}...{second}"],
        cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600,
    )
    with webserver_and_daemon(env, port, tmp_path, daemon=False):
        poll(port, lambda d: len(d["assetNodes"]) == 3, 180, tmp_path / "webserver.log")
        yield port, first.isoformat(), second.isoformat(), env


def open_page(page, url: str) -> None:
    page.goto(url)
    dismiss_welcome(page)


def row_of(page, label: str):
    return page.locator("tr", has=page.get_by_text(label, exact=True)).first


def test_the_catalog_after_a_two_day_backfill(backfilled):
    from playwright.sync_api import expect, sync_playwright

    port, first, second, _ = backfilled
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)

        # fact_sales: its columns, typed, and where each comes from (the lineage dagster-dbt read)
        open_page(page, f"{base}/assets/fact_sales")
        expect(row_of(page, "net_revenue")).to_contain_text("DECIMAL(18,2)")
        lineage = row_of(page, "column_lineage")
        lineage.scroll_into_view_if_needed()
        net = lineage.locator("tr", has=page.get_by_text("net_revenue", exact=True))
        for source in ("raw/orders.quantity", "raw/orders.unit_price", "raw/orders.discount"):
            expect(net).to_contain_text(source)
        expect(lineage.locator("tr", has=page.get_by_text("customer_id", exact=True))).to_contain_text("raw/orders.customer_id")
        page.screenshot(path=ARTIFACTS / "ui-fact-sales-column-lineage.png")

        # "view code" of a dbt model opens its SQL file
        code = page.get_by_role("link", name="fact_sales.sql").first
        code.scroll_into_view_if_needed()
        assert "shopflow_dbt/models/marts/fact_sales.sql" in (code.get_attribute("href") or "")
        page.screenshot(path=ARTIFACTS / "ui-dbt-model-code-link.png")

        # raw/orders' checks, one result per day of the backfill
        open_page(page, f"{base}/assets/raw/orders?view=checks&checkDetail=rejected_share")
        page.get_by_text("Execution history", exact=True).click()
        for day, rejected in ((first, "0 of 3"), (second, "1 of 6")):
            result = page.locator("tr", has=page.get_by_text(day, exact=True)).first
            expect(result).to_contain_text("Passed")
            expect(result).to_contain_text(f"{rejected} data lines rejected")
        expect(page.get_by_text("Running", exact=True)).to_have_count(0)  # the range's own result closed it
        page.screenshot(path=ARTIFACTS / "ui-raw-orders-checks.png")

        # fact_sales' 08:00 promise, one result per day (built days later: late)
        open_page(page, f"{base}/assets/fact_sales?view=checks&checkDetail=on_time_by_0800")
        page.get_by_text("Execution history", exact=True).click()
        for day in (first, second):
            result = page.locator("tr", has=page.get_by_text(day, exact=True)).first
            expect(result).to_contain_text("after its deadline")
        page.screenshot(path=ARTIFACTS / "ui-fact-sales-checks.png")

        # raw/orders' row count, per partition: 3 and 5, plotted
        open_page(page, f"{base}/assets/raw/orders?view=events")
        counts = {}
        for day in (first, second):
            page.get_by_text(day, exact=True).first.click()
            expect(page.get_by_text(f"Partition {day} materialized", exact=False)).to_be_visible()
            counts[day] = row_of(page, "dagster/row_count").locator("td").nth(1).inner_text().strip()
        assert counts == {first: "3", second: "5"}
        open_page(page, f"{base}/assets/raw/orders")
        page.get_by_role("button", name="Plots").click()
        page.get_by_role("button", name="Partitions").last.click()
        plot = page.get_by_text("dagster/row_count", exact=True).first
        expect(plot).to_be_visible()
        plot.scroll_into_view_if_needed()
        page.mouse.wheel(0, 300)  # the whole chart in view
        time.sleep(1)  # the chart animates in
        page.screenshot(path=ARTIFACTS / "ui-raw-orders-row-count-plot.png")
        browser.close()


CATALOG_QUERY = """{ assetNodes(assetKeys: [{path: ["fact_sales"]}, {path: ["daily_revenue"]}, {path: ["raw", "orders"]}]) {
  assetKey { path } kinds tags { key value }
  owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
  metadataEntries { label ... on TableSchemaMetadataEntry { schema { columns { name type } } } }
  assetMaterializations(limit: 1) { metadataEntries { label
    ... on TableSchemaMetadataEntry { schema { columns { name type } } }
    ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } } } }
} }"""


def catalog(port: int) -> dict[str, dict]:
    return {"/".join(n["assetKey"]["path"]): n for n in graphql(port, CATALOG_QUERY)["assetNodes"]}


def entry(entries: list[dict], label: str) -> dict:
    (found,) = [e for e in entries if e["label"] == label]
    return found


def test_graphql_owners_tags_kinds_column_types_and_lineage(backfilled, tmp_path):
    port, _, _, env = backfilled
    nodes = catalog(port)

    for key, tags in (("raw/orders", {"domain": "orders", "layer": "raw"}), ("fact_sales", {"mart": "", "revenue": ""})):
        assert nodes[key]["owners"] == [{"team": "data-platform"}]
        assert tags.items() <= {t["key"]: t["value"] for t in nodes[key]["tags"]}.items()
    assert set(nodes["raw/orders"]["kinds"]) == {"duckdb", "csv"}
    assert set(nodes["fact_sales"]["kinds"]) == {"duckdb", "dbt"}

    # types: raw/orders from the one schema definition, the marts from the dbt YAML and the warehouse
    declared = {c["name"]: c["type"] for c in entry(nodes["raw/orders"]["metadataEntries"], "dagster/column_schema")["schema"]["columns"]}
    assert declared["unit_price"] == "DECIMAL(18,2)" and declared["ordered_at"] == "TIMESTAMPTZ"
    yaml_types = {c["name"]: c["type"] for c in entry(nodes["daily_revenue"]["metadataEntries"], "dagster/column_schema")["schema"]["columns"]}
    assert yaml_types["net_revenue"] == "decimal(18,2)" and yaml_types["orders"] == "bigint"
    (built,) = nodes["fact_sales"]["assetMaterializations"]
    built_types = {c["name"]: c["type"] for c in entry(built["metadataEntries"], "dagster/column_schema")["schema"]["columns"]}
    assert built_types["net_revenue"] == "DECIMAL(18,2)" and built_types["dt"] == "DATE"

    def edges(key: str) -> dict[str, set[str]]:
        (latest,) = nodes[key]["assetMaterializations"]
        lineage = entry(latest["metadataEntries"], "dagster/column_lineage")["lineage"]
        return {e["columnName"]: {"/".join(d["assetKey"]["path"]) + "." + d["columnName"] for d in e["columnDeps"]} for e in lineage}

    assert edges("fact_sales")["net_revenue"] == {"raw/orders.quantity", "raw/orders.unit_price", "raw/orders.discount"}
    assert edges("fact_sales")["customer_id"] == {"raw/orders.customer_id"}
    assert edges("daily_revenue")["orders"] == {"fact_sales.order_id"}
    assert edges("daily_revenue")["net_revenue"] == {"fact_sales.net_revenue"}

    # the same code location bound to Spark: the kinds follow the engine
    spark_port = free_port()
    with webserver_and_daemon({**env, "SHOPFLOW_ENGINE": "spark"}, spark_port, tmp_path, daemon=False):
        poll(spark_port, lambda d: len(d["assetNodes"]) == 3, 180, tmp_path / "webserver.log")
        spark = catalog(spark_port)
    assert set(spark["raw/orders"]["kinds"]) == {"spark", "csv"}
    assert set(spark["fact_sales"]["kinds"]) == {"spark", "dbt"}
    assert set(spark["daily_revenue"]["kinds"]) == {"spark", "dbt"}
    assert spark["fact_sales"]["owners"] == [{"team": "data-platform"}]
