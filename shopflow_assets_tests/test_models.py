"""The dbt models, run as Dagster assets on real dbt-duckdb: docs/contract.md "Model rules"."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from dagster import AssetKey

from .conftest import (
    DAILY_REVENUE,
    FACT_SALES,
    csv_text,
    day_of,
    failure_messages,
    line,
    money,
    query,
)

pytestmark = pytest.mark.slow  # dbt runs in process: the full suite, not the quick tier

DAY = "2024-03-01"


def fact(warehouse_path, day: str = DAY):
    return query(
        warehouse_path,
        "SELECT order_id, line_number, status, quantity, unit_price, discount, gross_revenue, net_revenue "
        "FROM analytics.fact_sales WHERE dt = ? ORDER BY order_id, line_number",
        [day],
    )


def test_duplicate_rule_latest_update_then_later_file_then_later_line(run, landing, warehouse_path):
    t0, t1 = "2024-03-01T10:00:00+00:00", "2024-03-01T11:00:00+00:00"
    landing.export(
        DAY,
        {
            # latest updated_at wins, whatever the file order (the later version is in the earlier file)
            "a.csv": csv_text([line("U", updated_at=t1, quantity=2), line("F", quantity=1), line("L", quantity=1), line("L", quantity=2)]),
            "b.csv": csv_text([line("U", updated_at=t0, quantity=9), line("F", quantity=3)]),
            # same updated_at for F in a.csv and b.csv: the later file name (b.csv) wins;
            # L twice in a.csv with the same updated_at: the later line (quantity 2) wins
        },
    )

    result = run(DAY)

    assert result.success, failure_messages(result)
    assert [(o, q) for o, _, _, q, *_ in fact(warehouse_path)] == [("F", 3), ("L", 2), ("U", 2)]


def test_tie_break_on_file_name_is_by_sorted_name_not_by_landing_order(run, landing, warehouse_path):
    # file "10.csv" sorts before "9.csv": the later name is 9.csv
    landing.write(DAY, "9.csv", csv_text([line("X", quantity=9)]))
    landing.write(DAY, "10.csv", csv_text([line("X", quantity=10)]))
    landing.finish(DAY)
    assert run(DAY).success
    assert [(o, q) for o, _, _, q, *_ in fact(warehouse_path)] == [("X", 9)]


def test_cancelled_and_refunded_are_excluded_by_their_winning_status(run, landing, warehouse_path):
    early, late = "2024-03-01T08:00:00Z", "2024-03-01T09:00:00Z"
    landing.export(
        DAY,
        {
            "a.csv": csv_text(
                [
                    line("KEEP", status="cancelled", updated_at=early),
                    line("KEEP", status="shipped", updated_at=late),   # reinstated: kept
                    line("DROP1", status="placed", updated_at=early),
                    line("DROP1", status="refunded", updated_at=late),  # refunded later: dropped
                    line("DROP2", status="cancelled"),
                    line("OK", 1, status="delivered"),
                    line("OK", 2, status="placed"),
                ]
            )
        },
    )
    assert run(DAY).success
    assert [(o, n, s) for o, n, s, *_ in fact(warehouse_path)] == [
        ("KEEP", 1, "shipped"),
        ("OK", 1, "delivered"),
        ("OK", 2, "placed"),
    ]


def test_exact_decimal_totals(run, landing, warehouse_path):
    rng = random.Random(11)
    rows = []
    for n in range(300):
        quantity = rng.randint(1, 7)
        price = Decimal(rng.randint(0, 1_000_000)) / 100
        discount = (quantity * price * Decimal(rng.randint(0, 100)) / 100).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
        status = rng.choice(["placed", "shipped", "delivered", "cancelled", "refunded"])
        rows.append(line(f"O{n // 3}", n % 3 + 1, quantity=quantity, unit_price=f"{price:.2f}", discount=f"{discount:.2f}", status=status))
    landing.export(DAY, {"a.csv": csv_text(rows[:150]), "b.csv.gz": csv_text(rows[150:])})

    result = run(DAY)

    assert result.success, failure_messages(result)
    sold = [r for r in rows if r["status"] not in ("cancelled", "refunded")]
    gross = sum(int(r["quantity"]) * money(r["unit_price"]) for r in sold)
    net = gross - sum(money(r["discount"]) for r in sold)
    expected = (
        day_of(DAY),
        len({r["order_id"] for r in sold}),
        len(sold),
        sum(int(r["quantity"]) for r in sold),
        gross,
        net,
    )
    assert query(warehouse_path, "SELECT * FROM analytics.daily_revenue") == [expected]
    types = dict(
        query(
            warehouse_path,
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'analytics' AND column_name IN ('unit_price', 'discount', 'gross_revenue', 'net_revenue')",
        )
    )
    assert set(types.values()) == {"DECIMAL(18,2)"} and len(types) == 6


def test_rebuilding_a_day_touches_only_that_day_even_when_it_ends_empty(run, landing, warehouse_path):
    landing.export("2024-03-01", {"a.csv": csv_text([line("A", quantity=2)])})
    landing.export("2024-03-02", {"a.csv": csv_text([line("B", day="2024-03-02", quantity=5)])})
    assert run("2024-03-01").success and run("2024-03-02").success
    other = (
        query(warehouse_path, "SELECT * FROM analytics.fact_sales WHERE dt = '2024-03-02'"),
        query(warehouse_path, "SELECT * FROM analytics.daily_revenue WHERE dt = '2024-03-02'"),
    )
    assert other[0] and other[1]

    # D is re-exported and every line of it is now cancelled: D's rebuild is empty.
    landing.export("2024-03-01", {"a.csv": csv_text([line("A", quantity=2, status="cancelled")])})
    result = run("2024-03-01")

    assert result.success, failure_messages(result)
    assert fact(warehouse_path, "2024-03-01") == []
    assert query(warehouse_path, "SELECT * FROM analytics.daily_revenue WHERE dt = '2024-03-01'") == []
    assert (
        query(warehouse_path, "SELECT * FROM analytics.fact_sales WHERE dt = '2024-03-02'"),
        query(warehouse_path, "SELECT * FROM analytics.daily_revenue WHERE dt = '2024-03-02'"),
    ) == other


def test_models_only_after_ingest_on_a_new_warehouse(run, landing, warehouse_path):
    """docs/contract.md: `--select fact_sales,daily_revenue` works right after raw/orders alone."""
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(DAY, selection="raw/orders").success
    result = run(DAY, selection=["fact_sales", "daily_revenue"])
    assert result.success, failure_messages(result)
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {FACT_SALES, DAILY_REVENUE}
    assert len(fact(warehouse_path)) == 1


def test_dbt_tests_are_asset_checks_that_pass(run, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("A"), line("B", discount="5.00")])})
    result = run(DAY)
    assert result.success
    # the dbt tests: not raw/orders' own checks, nor the 08:00 one (2024 is long past its deadline)
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name != "on_time_by_0800"]
    evaluations = [e for e in evaluations if e.asset_key != AssetKey(["raw", "orders"])]
    by_asset = {e.asset_key for e in evaluations}
    assert by_asset == {FACT_SALES, DAILY_REVENUE}
    assert len(evaluations) >= 20
    assert all(e.passed for e in evaluations)
    names = {e.check_name for e in evaluations}
    assert {"daily_revenue_matches_fact_sales", "fact_sales_net_is_gross_minus_discount", "unique_daily_revenue_dt"} <= names


def test_the_dbt_tests_of_a_day_look_at_that_day_only(run, landing, warehouse_path):
    """Each data test reads the window being built: a bad row of another day (old history, say)
    neither fails nor slows today's build, and a bad row of the day itself still fails it."""
    import duckdb

    other = "2024-02-29"
    landing.export(other, {"a.csv": csv_text([line("OLD", day=other)])})
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    assert run(other).success
    with duckdb.connect(str(warehouse_path)) as con:  # history broken behind dbt's back
        con.execute("UPDATE analytics.fact_sales SET quantity = 0 WHERE dt = ?", [other])
    assert run(DAY).success, "a bad row of another day failed this day's tests"
    with duckdb.connect(str(warehouse_path)) as con:
        con.execute("INSERT INTO raw.orders SELECT * REPLACE ('Z' AS order_id, 0 AS quantity) FROM raw.orders WHERE dt = ?", [DAY])
    result = run(DAY, selection=["fact_sales", "daily_revenue"])
    assert not result.success
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    # (and the day's 08:00 check: 2024 is long past its deadline)
    assert failed == {"expression_is_true_fact_sales_quantity__quantity_1", "on_time_by_0800"}, failed


def dbt_parse_events(result) -> list[str]:
    """The names of dbt's own parse events in the log of the run's dbt invocation."""
    import json
    from pathlib import Path

    from shopflow_assets.defs.models.project import shopflow_dbt_project

    log = Path(shopflow_dbt_project.project_dir) / "target" / "runs" / result.run_id / "dbt.log"
    names = [json.loads(text)["info"]["name"] for text in log.read_text().splitlines() if text.startswith("{")]
    return [n for n in names if "Pars" in n and n != "ParseCmdOut"]


@pytest.mark.reads_dbt_parse_events  # conftest.saved_parse_lock
def test_runs_after_the_first_do_not_parse_the_project_again(run, landing, warehouse_path, resources):
    """The day window reaches dbt in the environment, not in --vars, and each invocation's saved
    parse is the next one's start: dbt's own log says it skipped parsing, also after a day change
    and after a change of the warehouse's settings (only the first run after it parses again)."""
    from shopflow_assets.engines import DuckDBWarehouse

    for day in ("2024-03-01", "2024-03-02", "2024-03-03"):
        landing.export(day, {"a.csv": csv_text([line("A", day=day)])})
    assert run("2024-03-01").success
    second = run("2024-03-02")
    assert second.success
    assert "PartialParsingSkipParsing" in dbt_parse_events(second)
    assert "UnableToPartialParse" not in dbt_parse_events(second)

    # a new memory limit changes dbt's profile: the first run after it parses, the next does not
    resources["warehouse"] = DuckDBWarehouse(path=str(warehouse_path), memory_limit="1GB")
    changed = run("2024-03-03")
    assert changed.success and "UnableToPartialParse" in dbt_parse_events(changed)
    after = run("2024-03-01")
    assert after.success
    assert "PartialParsingSkipParsing" in dbt_parse_events(after)
    assert "UnableToPartialParse" not in dbt_parse_events(after)
    # and each run built its own day only
    assert [d for (d,) in query(warehouse_path, "SELECT dt::VARCHAR FROM analytics.daily_revenue ORDER BY dt")] == [
        "2024-03-01", "2024-03-02", "2024-03-03"
    ]


def test_invocation_targets_keep_the_newest_ten_and_any_younger_than_an_hour(tmp_path):
    """target/runs/<run>: beyond the newest ten, only folders untouched for an hour go; a younger
    one may belong to another run's dbt, still writing there."""
    import os
    import time

    from shopflow_assets.defs.models.assets import prune_invocation_targets

    now = time.time()
    ages = {f"old-{i:02d}": 7200 + i for i in range(12)} | {f"young-{i}": 60 + i for i in range(3)}
    for name, age in ages.items():
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (now - age, now - age))

    prune_invocation_targets(tmp_path)

    # the three young ones and the seven newest old ones make the ten newest; the other old ones go
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"young-{i}" for i in range(3)] + [f"old-{i:02d}" for i in range(7)])

    # fifteen folders all touched within the hour (five new, the old ones written to again): none goes
    for name in [f"old-{i:02d}" for i in range(7)]:
        os.utime(tmp_path / name, (now - 10, now - 10))
    for i in range(5):
        (tmp_path / f"new-{i}").mkdir()
    prune_invocation_targets(tmp_path)
    assert len(list(tmp_path.iterdir())) == 15
