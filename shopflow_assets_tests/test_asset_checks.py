"""The checks a user reads per day in the UI: raw/orders' rejected share and header, fact_sales'
08:00 promise; and the automation holding back the models of a day whose share failed."""

from __future__ import annotations

import datetime as dt
import gzip
import time

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    DagsterEventType,
    Definitions,
    evaluate_automation_conditions,
    materialize,
)

from shopflow_assets.defs.alerts.on_time import ON_TIME, deadline_for, on_time_evaluation
from shopflow_assets.defs.alerts.sensor import AlertsCursor, new_alerts
from shopflow_assets.defs.ingest.checks import HEADER, REJECTED_SHARE
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import ALL_ASSETS, REQUIRED_COLUMNS, TEST_SETTINGS, csv_text, failure_messages, line

DAY, NEXT = "2024-03-01", "2024-03-02"
RAW_ORDERS, FACT_SALES = AssetKey(["raw", "orders"]), AssetKey("fact_sales")


def check_results(instance, key: AssetKey, name: str) -> dict[str, object]:
    """partition -> the newest evaluation of the check for it."""
    records = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(key, name), limit=50)
    newest = {}
    for record in sorted(records, key=lambda r: r.id):
        event = record.event.dagster_event if record.event else None
        if event is not None and event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            newest[record.partition] = event.event_specific_data
    return newest


def junk_lines(valid: int, junk: int, day: str) -> bytes:
    rows = csv_text([line(f"O{i}", day=day) for i in range(valid)]).encode()
    return gzip.compress(rows + b"junk\n" * junk)


def range_run(resources, instance, first: str, last: str, selection="raw/orders"):
    return materialize(
        ALL_ASSETS,
        selection=selection,
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=False,
    )


def test_each_day_of_a_range_gets_its_own_share_and_header_results(landing, resources, instance):
    # DAY: clean. NEXT: two files each under the file rule's 1,000 lines, 1,400 of 1,600 lines
    # rejected, and a column the contract does not know.
    landing.export(DAY, {"a.csv": csv_text([line(f"A{i}") for i in range(3)])})
    landing.export(
        NEXT,
        {
            "x.csv.gz": junk_lines(100, 700, NEXT),
            "y.csv.gz": junk_lines(100, 700, NEXT),
            "z.csv": csv_text([{**line("Z", day=NEXT), "coupon": "X"}], columns=[*REQUIRED_COLUMNS, "coupon"]),
        },
    )

    result = range_run(resources, instance, DAY, NEXT)

    # the files were taken under the file rule: the ingest is a success, the day is flagged
    assert result.success, failure_messages(result)
    share = check_results(instance, RAW_ORDERS, REJECTED_SHARE)
    assert share[DAY].passed and share[DAY].metadata["rows_rejected"].value == 0
    assert not share[NEXT].passed and share[NEXT].severity == AssetCheckSeverity.WARN
    assert share[NEXT].metadata["rows_rejected"].value == 1400
    assert share[NEXT].metadata["data_lines"].value == 1601
    assert "1400 of 1601 data lines rejected" in share[NEXT].description

    header = check_results(instance, RAW_ORDERS, HEADER)
    assert header[DAY].passed
    assert not header[NEXT].passed and header[NEXT].severity == AssetCheckSeverity.WARN
    assert header[NEXT].metadata["extra_columns"].value == {"dt=2024-03-02/z.csv": ["coupon"]}


def test_a_missing_column_fails_the_ingest_and_its_day_s_header_check(landing, run, instance):
    columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
    landing.export(DAY, {"part-1.csv": csv_text([line("A")], columns=columns)})

    result = run(DAY, selection="raw/orders")

    assert not result.success
    header = check_results(instance, RAW_ORDERS, HEADER)[DAY]
    assert not header.passed and header.severity == AssetCheckSeverity.ERROR
    assert header.metadata["missing_columns"].value == {"dt=2024-03-01/part-1.csv": ["discount"]}


def test_a_hostile_header_is_reported_bounded_and_as_text(landing, run, instance):
    hostile = ["[click](http://evil.example)", *(f"{'x' * 5000}{i}" for i in range(199))]
    landing.export(DAY, {"a.csv": csv_text([{**line("A"), **{h: "1" for h in hostile}}], columns=[*REQUIRED_COLUMNS, *hostile])})

    result = run(DAY, selection="raw/orders")

    assert result.success, failure_messages(result)
    header = check_results(instance, RAW_ORDERS, HEADER)[DAY]
    (shown,) = header.metadata["extra_columns"].value.values()
    assert len(shown) == 51 and shown[-1] == "... and 150 more" and max(len(s) for s in shown) <= 103
    assert shown[0] == "[click](http://evil.example)"  # in the JSON metadata, shown as text
    assert "evil" not in header.description and "xxx" not in header.description


def test_the_automation_holds_back_the_models_of_a_day_whose_share_failed(landing, resources, instance, run):
    defs = Definitions(assets=ALL_ASSETS, resources=resources)
    before = evaluate_automation_conditions(defs=defs, instance=instance)  # the daemon's earlier tick
    landing.export(DAY, {"a.csv": csv_text([line(f"A{i}") for i in range(3)])})
    landing.export(NEXT, {"x.csv.gz": junk_lines(100, 700, NEXT), "y.csv.gz": junk_lines(100, 700, NEXT)})
    # one run per day, as the export sensor starts them
    assert run(DAY, selection="raw/orders").success and run(NEXT, selection="raw/orders").success

    after = evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    requested = after.get_requested_partitions(FACT_SALES)

    assert DAY in requested and NEXT not in requested


def test_on_time_is_judged_from_the_first_build_before_the_deadline(instance):
    now = dt.datetime.now(dt.timezone.utc)
    today = now.date()  # due tomorrow at 08:00 UTC: a build now is on time
    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=today.isoformat()))
    on_time = on_time_evaluation(instance, today, timezone="UTC", now=now)
    assert on_time.passed and on_time.metadata["minutes_late"].value == 0

    past = dt.date(2024, 3, 1)  # due 2024-03-02 08:00 UTC
    assert deadline_for(past, "UTC") == dt.datetime(2024, 3, 2, 8, tzinfo=dt.timezone.utc)
    missing = on_time_evaluation(instance, past, timezone="UTC", now=now)
    assert not missing.passed and "was not built by its deadline" in missing.description

    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=past.isoformat()))
    late = on_time_evaluation(instance, past, timezone="UTC", now=now)
    assert not late.passed and late.severity == AssetCheckSeverity.WARN
    assert late.metadata["minutes_late"].value > 60 * 24 * 365

    not_due = today + dt.timedelta(days=1)
    assert on_time_evaluation(instance, not_due, timezone="UTC", now=now) is None
    # a deadline east of UTC: Tokyo's 08:00 comes before the UTC day it is due for has ended
    assert deadline_for(past, "Asia/Tokyo") == dt.datetime(2024, 3, 3, 8, tzinfo=dt.timezone(dt.timedelta(hours=9)))


@pytest.mark.slow
def test_the_build_reports_each_day_on_time_or_late(landing, resources, instance):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    landing.export(NEXT, {"a.csv": csv_text([line("B", day=NEXT)])})

    assert range_run(resources, instance, DAY, NEXT, selection="*").success

    results = check_results(instance, FACT_SALES, ON_TIME)
    assert set(results) == {DAY, NEXT}
    assert not any(r.passed for r in results.values())  # 2024 was due long ago
    assert "min after its deadline" in results[DAY].description


def test_the_alerts_sensor_fails_the_check_of_a_day_missing_at_its_deadline(landing, instance):
    past_deadline = dt.datetime(2024, 3, 2, 8, 1, tzinfo=dt.timezone.utc).timestamp()

    alerts = new_alerts(instance, LandingZone(root=str(landing.root)), AlertsCursor(), past_deadline, TEST_SETTINGS)

    assert [a.kind for a in alerts] == ["LATE"]
    result = check_results(instance, FACT_SALES, ON_TIME)[DAY]
    assert not result.passed and "not built by its deadline" in result.description


@pytest.mark.slow
def test_failed_dbt_tests_are_counted_per_day_in_a_range(landing, resources, instance, warehouse_path):
    import duckdb

    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    landing.export(NEXT, {"a.csv": csv_text([line("B", day=NEXT)])})
    assert range_run(resources, instance, DAY, NEXT).success
    with duckdb.connect(str(warehouse_path)) as con:  # a bad row on NEXT only, behind the ingest's back
        con.execute(
            "INSERT INTO raw.orders SELECT * REPLACE ('Z' AS order_id, 0 AS quantity, -1.00 AS unit_price) "
            "FROM raw.orders WHERE dt = ?",
            [NEXT],
        )

    result = range_run(resources, instance, DAY, NEXT, selection=["fact_sales", "daily_revenue"])

    assert not result.success
    records = instance.fetch_materializations(FACT_SALES, limit=2).records
    failed = {r.asset_materialization.partition: r.asset_materialization.metadata["dbt_tests_failed"].value for r in records}
    assert failed == {DAY: 0, NEXT: 2}  # quantity >= 1 and unit_price >= 0
    rows = {r.asset_materialization.partition: r.asset_materialization.metadata["dagster/row_count"].value for r in records}
    assert rows == {DAY: 1, NEXT: 2}


@pytest.mark.parametrize("timezone", ["UTC", "America/Los_Angeles", "Europe/Berlin", "Asia/Tokyo", "Australia/Perth", "Pacific/Kiritimati"])
def test_each_day_s_deadline_is_the_one_at_which_the_late_alert_judges_it(timezone):
    from shopflow_assets.defs.alerts.lateness import due_days

    judged: dict[dt.date, list[dt.datetime]] = {}
    for n in range(370):  # every deadline of a year, both DST changes included
        days, deadline = due_days(dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc) + dt.timedelta(days=n), timezone)
        for day in days:
            judged.setdefault(day, []).append(deadline)
    for day in (dt.date(2024, 1, 1) + dt.timedelta(days=n) for n in range(10, 360)):
        assert judged[day] == [deadline_for(day, timezone)], day  # one deadline, the same one
        end_of_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), dt.timezone.utc)
        assert deadline_for(day, timezone) > end_of_day  # never before the day has ended


def test_a_range_of_one_day_keeps_its_day_s_results(landing, resources, instance):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})

    assert range_run(resources, instance, DAY, DAY).success

    assert check_results(instance, RAW_ORDERS, REJECTED_SHARE)[DAY].passed
    assert check_results(instance, RAW_ORDERS, HEADER)[DAY].passed


def test_the_checks_alone_judge_the_stored_day_and_change_nothing(landing, run, resources, instance, warehouse_path):
    from .conftest import snapshot

    landing.export(DAY, {"x.csv.gz": junk_lines(100, 700, DAY), "y.csv.gz": junk_lines(100, 700, DAY)})
    assert run(DAY, selection="raw/orders").success
    before = snapshot(warehouse_path)
    landing.export(DAY, {"z.csv": csv_text([{**line("Z"), "coupon": "1"}], columns=[*REQUIRED_COLUMNS, "coupon"])})

    # what the UI's "Execute" on the checks launches: the asset job, its checks selected alone
    checks = {AssetCheckKey(RAW_ORDERS, REJECTED_SHARE), AssetCheckKey(RAW_ORDERS, HEADER)}
    job = Definitions(assets=ALL_ASSETS, resources=resources).resolve_implicit_global_asset_job_def()
    checks_only = job.get_subset(asset_selection=set(), asset_check_selection=checks).execute_in_process(
        partition_key=DAY, instance=instance, raise_on_error=False
    )

    assert checks_only.success, failure_messages(checks_only)
    assert snapshot(warehouse_path) == before  # nothing ingested again
    assert len(instance.fetch_materializations(RAW_ORDERS, limit=10).records) == 1
    assert not check_results(instance, RAW_ORDERS, REJECTED_SHARE)[DAY].passed  # what was loaded
    assert check_results(instance, RAW_ORDERS, HEADER)[DAY].metadata["extra_columns"].value == {
        "dt=2024-03-01/z.csv": ["coupon"]  # the export as it is now
    }


@pytest.mark.slow
def test_a_day_whose_share_failed_is_ingested_and_its_models_wait(landing, run, instance, warehouse_path):
    from .conftest import query

    landing.export(DAY, {"x.csv.gz": junk_lines(100, 700, DAY), "y.csv.gz": junk_lines(100, 700, DAY)})

    result = run(DAY)  # raw/orders and its models in one run, as the export sensor starts them

    assert result.success, failure_messages(result)
    assert query(warehouse_path, "SELECT count(*) FROM raw.orders") == [(200,)]
    assert instance.fetch_materializations(FACT_SALES, limit=1).records == []
    said = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("rejected_share check failed for 2024-03-01" in m and "not built for it" in m for m in said)
    # at the deadline, the LATE alert says why
    past_deadline = dt.datetime(2024, 3, 2, 8, 1, tzinfo=dt.timezone.utc).timestamp()
    (late,) = new_alerts(instance, LandingZone(root=str(landing.root)), AlertsCursor(), past_deadline, TEST_SETTINGS)[-1:]
    assert late.kind == "LATE" and "more than SHOPFLOW_MAX_REJECTED_SHARE of its lines were rejected" in late.text


def test_a_rebuild_neither_makes_an_on_time_day_late_nor_a_late_day_later(instance):
    now = dt.datetime.now(dt.timezone.utc)
    today = now.date()
    for _ in range(2):
        instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=today.isoformat()))
    assert on_time_evaluation(instance, today, timezone="UTC", now=now).passed

    past = dt.date(2024, 3, 1)
    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=past.isoformat()))
    first = instance.fetch_materializations(FACT_SALES, limit=1).records[0].timestamp
    time.sleep(1.1)
    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=past.isoformat()))
    late = on_time_evaluation(instance, past, timezone="UTC", now=dt.datetime.now(dt.timezone.utc))
    assert not late.passed and late.metadata["built_at"].value == pytest.approx(first)


def test_the_header_check_shows_an_engines_header_reports_bounded_whatever_they_hold(tmp_path):
    """On Spark the header reports come from the job on the cluster: the check takes them as data,
    bounded, and a file without a usable report is unreadable, never passed."""
    from shopflow_assets.contract.export import SHOWN_COLUMNS, SHOWN_NAME_CHARS, header_report
    from shopflow_assets.contract.landing import DayExport, ExportFile
    from shopflow_assets.defs.ingest.checks import header_evaluation

    names = ["ok.csv", "wide.csv", "lacks.csv", "junk.csv", "none.csv", "list.csv"]
    export = DayExport(
        day=dt.date(2024, 3, 1), directory=str(tmp_path / "orders" / "dt=2024-03-01"), landing_root=str(tmp_path),
        files=tuple(ExportFile(name=n, path=str(tmp_path / n), size=1) for n in names), fingerprint="f",
    )
    header = ",".join(REQUIRED_COLUMNS)
    wide = header + "," + ",".join(f"extra_{i}_" + "x" * 200 for i in range(300))
    reports = {
        "ok.csv": header_report(header.encode(), "ok.csv"),
        "wide.csv": header_report(wide.encode(), "wide.csv"),
        "lacks.csv": header_report(b"order_id,status\r\n", "lacks.csv"),
        "junk.csv": header_report(b"\xff\xfe\n", "junk.csv"),
        "list.csv": ["not", "a", "report"],
    }  # none.csv: no report at all
    check = header_evaluation(export, reports)
    metadata = {k: v.value for k, v in check.metadata.items()}
    assert not check.passed
    extra = metadata["extra_columns"]["dt=2024-03-01/wide.csv"]
    assert len(extra) == SHOWN_COLUMNS + 1 and extra[-1] == f"... and {300 - SHOWN_COLUMNS} more"
    assert all(len(name) <= SHOWN_NAME_CHARS + 3 for name in extra)
    assert metadata["missing_columns"] == {"dt=2024-03-01/lacks.csv": [c for c in REQUIRED_COLUMNS if c not in ("order_id", "status")]}
    assert metadata["unreadable_files"] == [f"dt=2024-03-01/{n}" for n in ("junk.csv", "none.csv", "list.csv")]
    # a report bigger than the bound (an engine's own) is held to it here
    flood = {**reports, "wide.csv": {"readable": True, "missing": [], "extra": ["y" * 10_000] * 10_000}}
    shown = {k: v.value for k, v in header_evaluation(export, flood).metadata.items()}["extra_columns"]
    assert len(shown["dt=2024-03-01/wide.csv"]) == SHOWN_COLUMNS + 1
    assert header_evaluation(export, {n: reports["ok.csv"] for n in names}).passed
