"""A hostile landing zone, on real DuckDB and the real raw/orders asset: file names that look like
patterns, links out of the landing zone, FIFOs, sockets and devices, names the rules do not
recognise, folders that are not days, an export rewritten while it is read, a file that is mostly
not order lines, and the per-day numbers of a range."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import socket
import stat
import tempfile
import threading
import time

import duckdb
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, build_sensor_context, materialize

from shopflow_assets.contract.export import ExportChangedError
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS, load_days
from shopflow_assets.engines import DuckDBWarehouse
from shopflow_assets.defs.ingest.checks import header_evaluation
from shopflow_assets.defs.ingest.landing_zone import ExportNotReady, LandingRuleError, LandingZone
from shopflow_assets.core.run_window import EXPORT_TAG, export_tag_value
from shopflow_assets.defs.ingest import sensor as export_landed

from .conftest import ALL_ASSETS, csv_text, day_of, export_landed_sensor, failure_messages, line, query, snapshot

DAY = "2024-03-01"
NEXT = "2024-03-02"
RAW = "raw/orders"
SECRET = "TOP-SECRET-TARGET-7f3a"  # what a link out of the landing zone points at

PATTERN_NAMES = ["a*.csv", "a.csv", "b.csv", "b[1].csv", "b1.csv", "c\\d.csv", "e{x,y}.csv", "q?.csv", "[ab].csv", "x].csv"]


def rows_by_file(warehouse_path, day: str = DAY) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, order_id in query(
        warehouse_path,
        "SELECT _source_file, order_id FROM raw.orders WHERE dt = ? ORDER BY _source_file, _source_line",
        [day],
    ):
        found.setdefault(name, []).append(order_id)
    return found


def export_named(landing, day: str, names: list[str]) -> dict[str, list[str]]:
    """One file per name, each with its own two order ids; returns name -> ids."""
    expected = {}
    for n, name in enumerate(names):
        ids = [f"{day}-F{n}-{i}" for i in range(2)]
        landing.write(day, name, csv_text([line(i, day=day) for i in ids]))
        expected[name] = ids
    landing.finish(day)
    return expected


def all_event_text(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(str(e) for e in instance.all_logs(run_id))


def events_of_type(result, kind: str) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == kind)


# --- 1. a file name is a name, never a pattern ---------------------------------------------------


def test_names_with_pattern_characters_are_read_as_themselves(run, landing, warehouse_path):
    expected = export_named(landing, DAY, PATTERN_NAMES)

    result = run(DAY, selection=RAW)

    assert result.success, failure_messages(result)
    assert rows_by_file(warehouse_path) == expected  # every file once, under its own name


def test_names_with_pattern_characters_in_a_range_of_days(landing, resources, instance, warehouse_path):
    expected = {day: export_named(landing, day, PATTERN_NAMES) for day in (DAY, NEXT)}

    result = materialize(
        ALL_ASSETS,
        selection=RAW,
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": DAY, "dagster/asset_partition_range_end": NEXT},
    )

    assert result.success, failure_messages(result)
    assert {day: rows_by_file(warehouse_path, day) for day in (DAY, NEXT)} == expected


# --- 2. only what the exporter wrote is read -----------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A file and a folder outside the landing zone, holding text that must never be read."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    secret = folder / "secret.csv"
    secret.write_text(csv_text([line(SECRET)]) + SECRET + "\n")
    (folder / "inner.csv").write_text(SECRET)
    return secret


@pytest.mark.parametrize("points_to", ["file", "folder", "day folder"])
def test_a_link_out_of_the_landing_zone_fails_the_day_naming_it_and_leaks_nothing(
    points_to, run, landing, warehouse_path, instance, outside
):
    landing.export(DAY, {"a.csv": csv_text([line("KEPT")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    day_dir = landing.day_dir(DAY)
    if points_to == "file":
        (day_dir / "more.csv").symlink_to(outside)
        link = f"dt={DAY}/more.csv"
    elif points_to == "folder":
        (day_dir / "more.csv").symlink_to(outside.parent, target_is_directory=True)
        link = f"dt={DAY}/more.csv"
    else:
        moved = day_dir.rename(landing.root / "moved")
        day_dir.symlink_to(outside.parent, target_is_directory=True)
        (outside.parent / "_SUCCESS").touch()
        link = f"dt={DAY}"
        del moved

    result = run(DAY, selection=RAW)

    assert not result.success
    message = failure_messages(result)
    assert f"{link} is a symbolic link out of the landing zone: not followed" in message
    assert events_of_type(result, "STEP_UP_FOR_RETRY") == 0  # permanent
    assert SECRET not in all_event_text(instance, result.run_id)
    assert str(outside.parent) not in message  # not even where it points
    assert snapshot(warehouse_path) == before


def test_a_link_inside_the_landing_zone_is_read_under_its_own_name(run, landing, warehouse_path):
    landing.write(NEXT, "shared.csv", csv_text([line("SHARED")]))  # another folder of the landing zone
    landing.write(DAY, "own.csv", csv_text([line("OWN")]))
    (landing.day_dir(DAY) / "linked.CSV").symlink_to(landing.day_dir(NEXT) / "shared.csv")
    landing.finish(DAY)

    result = run(DAY, selection=RAW)

    assert result.success, failure_messages(result)
    assert rows_by_file(warehouse_path) == {"linked.CSV": ["SHARED"], "own.csv": ["OWN"]}


@pytest.mark.parametrize("kind", ["FIFO", "socket", "device"])
def test_fifos_sockets_and_devices_are_never_opened(kind, run, landing, warehouse_path, tmp_path):
    landing.export(DAY, {"a.csv": csv_text([line("KEPT")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    path = landing.day_dir(DAY) / "orders.csv"
    if kind == "FIFO":
        os.mkfifo(path)  # opening it for reading would block the run forever
        shown = "a FIFO"
    elif kind == "socket":
        short = tempfile.mkdtemp(dir="/tmp")  # a socket's path must be short; bind there, then move
        server = socket.socket(socket.AF_UNIX)
        server.bind(f"{short}/s")
        os.rename(f"{short}/s", path)
        shown = "a socket"
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero: endless bytes
        shown = "a device"
    (landing.day_dir(DAY) / "_SUCCESS").touch()

    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run(DAY, selection=RAW)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), f"the run opened the {kind}"
    result = outcome["result"]
    assert not result.success
    assert f"dt={DAY}/orders.csv is {shown}, not an export file: not opened" in failure_messages(result)
    assert snapshot(warehouse_path) == before


# --- 3. which files count: one rule ---------------------------------------------------------------


def test_suffixes_in_any_case_and_writers_own_names_ignored(run, landing, warehouse_path):
    landing.write(DAY, "upper.CSV", csv_text([line("U")]))
    landing.write(DAY, "mixed.Csv.GZ", gzip.compress(csv_text([line("M")]).encode()))
    landing.write(DAY, ".upper.CSV.crc", "checksum")  # hidden: a writer's own
    landing.write(DAY, "_temporary.csv", "x")  # a writer's own
    landing.finish(DAY)

    result = run(DAY, selection=RAW)

    assert result.success, failure_messages(result)
    assert rows_by_file(warehouse_path) == {"mixed.Csv.GZ": ["M"], "upper.CSV": ["U"]}


@pytest.mark.parametrize(
    "files, named",
    [
        ({}, f"dt={DAY} has _SUCCESS but no export file"),
        ({"orders.txt": "x"}, f"dt={DAY}/orders.txt is not an export file"),
        ({"orders.csv.zip": "x", "orders.csv": csv_text([line("A")])}, f"dt={DAY}/orders.csv.zip is not an export file"),
    ],
    ids=["nothing", "only another suffix", "an unrecognised file beside an export"],
)
def test_a_day_without_export_files_or_with_unknown_files_fails_and_keeps_its_rows(
    files, named, run, landing, warehouse_path
):
    landing.export(DAY, {"a.csv": csv_text([line("KEPT")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    (landing.day_dir(DAY) / "a.csv").unlink()
    landing.export(DAY, files)

    result = run(DAY, selection=RAW)

    assert not result.success
    assert named in failure_messages(result)
    assert events_of_type(result, "STEP_UP_FOR_RETRY") == 0
    assert snapshot(warehouse_path) == before  # never emptied silently


def test_an_empty_day_is_a_header_only_file(run, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("GONE")])})
    assert run(DAY, selection=RAW).success
    landing.export(DAY, {"a.csv": ",".join(REQUIRED_COLUMNS) + "\n"})

    assert run(DAY, selection=RAW).success
    assert rows_by_file(warehouse_path) == {}


# --- 4. only canonical day folders are days; 5. a day that lands early is not lost --------------


def sensor_tick(landing, cursor=None, instance=None):
    instance = instance or DagsterInstance.ephemeral()
    context = build_sensor_context(
        cursor=cursor, instance=instance, resources={"landing": LandingZone(root=str(landing.root))}
    )
    result = export_landed_sensor(context)
    return [r.partition_key for r in result.run_requests or []], result.cursor


def test_folders_that_are_not_days_are_skipped_with_one_warning_each(landing, capfd):
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    not_days = ["dt=20240105", "dt=2024-W01-1", "dt=2024-1-5", "dt=2024-02-30", "dt=2024-03-01 ", "DT=2024-03-03", "typo"]
    for name in not_days:
        (landing.root / "orders" / name).mkdir()
        (landing.root / "orders" / name / "_SUCCESS").touch()
    (landing.root / "orders" / "dt=2024-03-04").write_text("a stray file named like a day")
    (landing.root / "orders" / "README").write_text("stray")

    capfd.readouterr()
    requests, cursor = sensor_tick(landing)  # the sensor's log goes to the console (and the tick's log)
    assert requests == [DAY]  # the real day is requested all the same
    logged = capfd.readouterr().err
    for name in [*not_days, "dt=2024-03-04", "README"]:
        assert f"Skipping orders/{name}: not a day folder" in logged, name
    landing.export(NEXT, {"a.csv": csv_text([line("B", day=NEXT)])})
    requests, cursor = sensor_tick(landing, cursor)
    assert requests == [NEXT]  # nothing blocks a later day
    assert "Skipping" not in capfd.readouterr().err  # each is warned about once


def test_a_day_that_lands_before_its_partition_exists_is_requested_once_it_does(landing, monkeypatch):
    # The exporter finished D just before UTC midnight: D is not a partition until D ends.
    before_midnight = dt.datetime(2024, 3, 1, 23, 59, 30, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(export_landed, "utc_now", lambda: before_midnight)
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    requests, cursor = sensor_tick(landing)
    assert requests == []
    assert sensor_tick(landing, cursor)[0] == []

    monkeypatch.setattr(export_landed, "utc_now", lambda: before_midnight + dt.timedelta(minutes=1))
    requests, cursor = sensor_tick(landing, cursor)
    assert requests == [DAY]
    assert sensor_tick(landing, cursor)[0] == []  # once


# --- 6. the run builds the export the sensor saw -----------------------------------------------


def test_a_re_export_before_the_run_starts_is_built_by_that_run_and_not_again(landing, instance, resources, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("OLD")])})
    requests, cursor = sensor_tick(landing, instance=instance)
    assert requests == [DAY]
    requested = export_tag_value(DAY, LandingZone(root=str(landing.root)).export_fingerprint(day_of(DAY)))
    # the order system re-exports the day before the run reads it
    (landing.day_dir(DAY) / "a.csv").unlink()
    landing.export(DAY, {"b.csv": csv_text([line("NEW-1"), line("NEW-2")])})
    newer = export_tag_value(DAY, LandingZone(root=str(landing.root)).export_fingerprint(day_of(DAY)))

    result = materialize(
        ALL_ASSETS, selection=RAW, partition_key=DAY, resources=resources, instance=instance,
        tags={EXPORT_TAG: requested},
    )

    assert result.success, failure_messages(result)
    assert rows_by_file(warehouse_path) == {"b.csv": ["NEW-1", "NEW-2"]}
    assert instance.get_run_by_id(result.run_id).tags[EXPORT_TAG] == newer
    assert sensor_tick(landing, cursor, instance=instance)[0] == []  # not built a second time


def test_an_export_rewritten_while_it_is_read_is_not_published(landing, tmp_path):
    """Two days in one read; while the second is read, the first is re-exported: nothing of either
    day is published (ExportChangedError), and reading again publishes the new export whole."""
    landing.export(DAY, {"a.csv": csv_text([line("OLD-A")]), "b.csv": csv_text([line("OLD-B")])})
    landing.export(NEXT, {"a.csv": csv_text([line("N", day=NEXT)])})
    zone = LandingZone(root=str(landing.root))
    exports = [zone.finished_export(day_of(d)) for d in (DAY, NEXT)]
    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))

    def re_export_mid_read(message: str) -> None:
        if message.startswith(f"read {DAY}"):
            landing.write(DAY, "a.csv", csv_text([line("NEW-A")]))  # b.csv not yet rewritten

    with warehouse.connect() as con, pytest.raises(ExportChangedError, match=DAY):
        load_days(con, exports, "run-1", dt.datetime.now(dt.timezone.utc), progress=re_export_mid_read)
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM raw.orders").fetchall() == [(0,)]

    landing.write(DAY, "b.csv", csv_text([line("NEW-B")]))
    landing.finish(DAY)
    exports = [zone.finished_export(day_of(d)) for d in (DAY, NEXT)]
    with warehouse.connect() as con:
        load_days(con, exports, "run-2", dt.datetime.now(dt.timezone.utc))
        assert sorted(r[0] for r in con.execute("SELECT order_id FROM raw.orders").fetchall()) == ["N", "NEW-A", "NEW-B"]


def test_a_file_rewritten_into_junk_while_read_is_a_changed_export_not_a_bad_one(landing, tmp_path):
    """The second day's file is rewritten (into lines that are no order lines) after the listing and
    before it is read: what was read is a mix of two exports, not a bad file to refuse for good."""
    landing.export(DAY, {"a.csv": csv_text([line("A")])})
    landing.export(NEXT, {"a.csv": csv_text([line(f"N{i}", day=NEXT) for i in range(1500)])})
    zone = LandingZone(root=str(landing.root))
    exports = [zone.finished_export(day_of(d)) for d in (DAY, NEXT)]

    def rewrite_next_day(message: str) -> None:
        if message.startswith(f"read {DAY}"):
            landing.write(NEXT, "a.csv", csv_text([]) + "junk\n" * 1500)

    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    with warehouse.connect() as con, pytest.raises(ExportChangedError, match=NEXT):
        load_days(con, exports, "run-1", dt.datetime.now(dt.timezone.utc), progress=rewrite_next_day)


@pytest.mark.slow
def test_a_day_being_rewritten_is_not_read(run, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("OLD")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    marker = landing.day_dir(DAY) / "_SUCCESS"
    path = landing.write(DAY, "a.csv", csv_text([line("HALF")]))
    later = marker.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))  # newer than _SUCCESS: the exporter has not finished

    result = run(DAY, selection=RAW)

    assert not result.success
    assert f"The export of {DAY} is being rewritten: a.csv is newer than its _SUCCESS" in failure_messages(result)
    assert snapshot(warehouse_path) == before


# --- 7. a file that is mostly not order lines ----------------------------------------------------


def junk_file(valid: int, junk: int, junk_line: bytes = b"junk") -> bytes:
    rows = csv_text([line(f"V{i}") for i in range(valid)]).encode()
    return gzip.compress(rows + (junk_line + b"\n") * junk)


@pytest.mark.parametrize(
    "junk_line", [b"junk", b"x,x,x,x,x,x,x,x,x,x", b"\xff\xfe binary"], ids=["unparseable", "every rule broken", "not UTF-8"]
)
def test_a_file_mostly_not_order_lines_is_refused_naming_it_and_the_share(junk_line, run, landing, warehouse_path):
    landing.export(DAY, {"a.csv": csv_text([line("KEPT")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    landing.export(DAY, {"b.csv.gz": junk_file(400, 20_000, junk_line)})

    result = run(DAY, selection=RAW)

    assert not result.success
    message = failure_messages(result)
    assert f"dt={DAY}/b.csv.gz: 98.0% of its 20400 data lines are not valid order lines" in message
    assert "SHOPFLOW_MAX_REJECTED_SHARE=0.5" in message
    assert events_of_type(result, "STEP_UP_FOR_RETRY") == 0
    assert snapshot(warehouse_path) == before


def test_the_share_is_a_setting_and_small_or_half_bad_files_are_taken(run, landing, warehouse_path, resources, instance):
    # half its lines rejected: not more than the share, taken; 999 lines: too few to judge, taken
    landing.export(DAY, {"half.csv.gz": junk_file(1000, 1000), "small.csv.gz": junk_file(0, 999)})
    result = run(DAY, selection=RAW)
    assert result.success, failure_messages(result)
    assert query(warehouse_path, "SELECT count(*) FROM raw.orders") == [(1000,)]
    assert query(warehouse_path, "SELECT count(*) FROM raw.orders_rejected") == [(1999,)]

    stricter = {**resources, "warehouse": DuckDBWarehouse(path=str(warehouse_path), max_rejected_share=0.25)}
    result = materialize(ALL_ASSETS, selection=RAW, partition_key=DAY, resources=stricter, instance=instance, raise_on_error=False)
    assert not result.success
    assert "half.csv.gz: 50.0% of its 2000 data lines" in failure_messages(result)


# --- 9. per-day numbers are per day --------------------------------------------------------------


@pytest.mark.slow
def test_a_range_in_one_run_reports_each_days_own_numbers(landing, resources, instance, slack, slack_server):
    landing.export(DAY, {"a.csv": csv_text([line(f"A{i}", unit_price="1.00") for i in range(3)] + [line("R", quantity="0")])})
    landing.export(NEXT, {"a.csv": csv_text([line(f"B{i}", day=NEXT, unit_price="2.00") for i in range(5)])})

    result = materialize(
        ALL_ASSETS,
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": DAY, "dagster/asset_partition_range_end": NEXT},
    )

    assert result.success, failure_messages(result)

    def by_day(key: AssetKey, name: str) -> dict[str, object]:
        records = instance.fetch_materializations(key, limit=10).records
        return {r.asset_materialization.partition: r.asset_materialization.metadata[name].value for r in records}

    raw, fact, rollup = AssetKey(["raw", "orders"]), AssetKey("fact_sales"), AssetKey("daily_revenue")
    assert by_day(raw, "dagster/row_count") == {DAY: 3, NEXT: 5}
    assert by_day(raw, "rows_rejected") == {DAY: 1, NEXT: 0}
    assert by_day(raw, "rejected: quantity is below 1") == {DAY: 1, NEXT: 0}
    assert by_day(fact, "dagster/row_count") == {DAY: 3, NEXT: 5}
    assert by_day(fact, "net_revenue") == {DAY: 3.0, NEXT: 10.0}
    assert by_day(rollup, "dagster/row_count") == {DAY: 1, NEXT: 1}
    assert by_day(rollup, "net_revenue") == {DAY: 3.0, NEXT: 10.0}
    # READY for each day says that day's numbers
    from .test_failures_and_alerts import alert_ticks

    alert_ticks(instance, slack, landing)
    ready = sorted(m for m in slack_server.delivered if "READY" in m)
    assert [(m.splitlines()[0], [l for l in m.splitlines() if l.startswith(("• Rows", "• Net"))]) for m in ready] == [
        (f":white_check_mark: READY: fact_sales for {DAY} landed", ["• Rows: 3", "• Net revenue: 3.00"]),
        (f":white_check_mark: READY: fact_sales for {NEXT} landed", ["• Rows: 5", "• Net revenue: 10.00"]),
    ]


# --- 10. errors are blamed on the right thing ----------------------------------------------------


@pytest.mark.slow
def test_duckdb_out_of_memory_is_transient_and_names_the_memory_setting(run, landing, resources, instance, warehouse_path):
    rows = [line(f"O{i}", product_id="P" * 200) for i in range(60_000)]
    landing.export(DAY, {"a.csv": csv_text(rows), "b.csv": csv_text(rows)})
    tiny = {**resources, "warehouse": DuckDBWarehouse(path=str(warehouse_path), memory_limit="4MB")}

    result = materialize(ALL_ASSETS, selection=RAW, partition_key=DAY, resources=tiny, instance=instance, raise_on_error=False)

    assert not result.success
    assert events_of_type(result, "STEP_UP_FOR_RETRY") >= 1  # transient: retried
    message = failure_messages(result)
    assert "SHOPFLOW_DUCKDB_MEMORY_LIMIT" in message
    assert "re-export" not in message.lower()


def test_an_interrupted_read_is_a_cancellation_not_a_bad_file(landing, tmp_path):
    from shopflow_assets.engines.base import IngestCancelled

    rows = [line(f"O{i}") for i in range(200_000)]
    landing.export(DAY, {f"{n}.csv": csv_text(rows) for n in range(4)})
    export = LandingZone(root=str(landing.root)).finished_export(day_of(DAY))
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    stop = threading.Event()

    def interrupt_until_stopped() -> None:  # an interrupt lands only inside a running statement
        while not stop.wait(0.05):
            con.interrupt()

    interrupter = threading.Thread(target=interrupt_until_stopped, daemon=True)
    interrupter.start()
    try:
        with pytest.raises(IngestCancelled, match="cancelled"):
            load_days(con, [export], "run-1", dt.datetime.now(dt.timezone.utc))
    finally:
        stop.set()
        interrupter.join()
        con.close()


# --- 6. a landing zone given as a URI (the Spark engine's HDFS or object store) -------------------


def test_a_landing_zone_given_as_a_uri_is_listed_through_fsspec_by_the_same_rules(landing, tmp_path):
    """A file:// URI stands for HDFS or an object store: the days are listed through fsspec, the
    files named by URI for the Spark executors, and the rules hold. Writers' own names are ignored;
    a file newer than _SUCCESS is a re-export being written; a rewrite changes the fingerprint; a
    folder, a FIFO (never opened), a file of another suffix and any link are refused, each named."""
    uri = landing.root.as_uri()
    zone = LandingZone(root=uri)
    landing.export(DAY, {"a.csv": csv_text([line("A")]), "b.CSV.gz": csv_text([line("B")]), ".a.csv.crc": "x"})
    (landing.day_dir(DAY) / "_temporary").mkdir()  # a writer's own folder
    (landing.root / "orders" / "not-a-day").mkdir()

    export = zone.finished_export(day_of(DAY))
    assert [(f.name, f.path, f.gzip) for f in export.files] == [
        ("a.csv", f"{uri}/orders/dt={DAY}/a.csv", False),
        ("b.CSV.gz", f"{uri}/orders/dt={DAY}/b.CSV.gz", True),
    ]
    assert export.directory == f"{uri}/orders/dt={DAY}" and not export.changed()
    # the embedded engine's header check reads the first lines here, through fsspec
    reports = DuckDBWarehouse(path=str(tmp_path / "w.duckdb")).export_headers(None, [export])
    assert header_evaluation(export, reports[DAY]).passed
    assert [(e.name, e.day) for e in zone.scan_orders()] == [(f"dt={DAY}", day_of(DAY)), ("not-a-day", None)]

    time.sleep(0.05)  # past the file system's clock tick
    landing.write(DAY, "a.csv", csv_text([line("A2")]))
    assert export.changed()
    with pytest.raises(ExportNotReady, match="a.csv is newer than its _SUCCESS"):
        zone.finished_export(day_of(DAY))
    landing.finish(DAY)
    assert zone.finished_export(day_of(DAY)).fingerprint not in (None, export.fingerprint)

    outside = tmp_path / "outside.csv"
    outside.write_text(csv_text([line(SECRET)]))
    landing.write(NEXT, "ok.csv", csv_text([line("OK", day=NEXT)]))
    os.mkfifo(landing.day_dir(NEXT) / "fifo.csv")
    (landing.day_dir(NEXT) / "folder.csv").mkdir()
    os.symlink(outside, landing.day_dir(NEXT) / "out.csv")
    os.symlink(landing.day_dir(NEXT) / "ok.csv", landing.day_dir(NEXT) / "in.csv")
    landing.write(NEXT, "notes.txt", "hello")
    landing.finish(NEXT)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(error=pytest.raises(LandingRuleError, zone.finished_export, day_of(NEXT))), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the listing opened the FIFO"
    message = str(outcome["error"].value)
    for problem in (
        f"dt={NEXT}/fifo.csv is not a regular file, not an export file: not opened",
        f"dt={NEXT}/folder.csv is a folder, not an export file: not opened",
        f"dt={NEXT}/out.csv is a symbolic link: a landing zone given as a URI follows none",
        f"dt={NEXT}/in.csv is a symbolic link: a landing zone given as a URI follows none",
        f"dt={NEXT}/notes.txt is not an export file (names end in .csv or .csv.gz)",
    ):
        assert problem in message, message
    assert SECRET not in message
