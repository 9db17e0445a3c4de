"""Nothing silently wrong, on the Spark engine, on the suite's real standalone cluster:
file names are names, never patterns (the same rows as DuckDB, each once under its own file name,
one day and a two-day run, and from a landing zone and warehouse given as file:// URIs); links inside
the landing zone are read under the link's name, a link out
of it leaks nothing; a file that is mostly not order lines is refused before anything is staged;
an export rewritten while Spark reads it is read again, never published mixed.

Each Spark ingest costs tens of seconds of start-up on two cores: each test runs as few as it needs.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import duckdb
import pytest
from dagster import (
    AssetCheckKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    materialize,
    serialize_value,
)

from shopflow_assets.contract import export
from shopflow_assets.contract.asset_keys import RAW_ORDERS
from shopflow_assets.contract.export import REQUIRED_COLUMNS
from shopflow_assets.engines import DuckDBWarehouse, SparkWarehouse, Warehouse
from shopflow_assets.defs.ingest.checks import HEADER
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import Landing, csv_text, failure_messages, line, raw_orders
from .spark_helpers import live_folders
from .test_spark_faults import events, in_background, published, publish_earlier, wait_until

# a daemon, a subprocess, Spark, Postgres or a browser; loads into a warehouse of its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_catalog")]

D1, D2 = "2024-03-01", "2024-03-02"
ROW_COLUMNS = (
    "dt, order_id, line_number, customer_id, product_id, quantity, unit_price, discount, status, "
    "ordered_at, updated_at, _source_file, _source_line"
)
# (as test_spark_hostile_input: the engines replace invalid UTF-8 in _raw_line differently)
REJECT_COLUMNS = "dt, _source_file, _source_line, reason, order_id, quantity, _raw_line IS NULL"
# Names that are patterns to a glob (each would match others here, or nothing), then names that
# URIs, shells or Hadoop read as something else.
GLOB_NAMES = ["a*.csv", "a.csv", "b.csv", "b[1].csv", "b1.csv", "c\\d.csv", "e{x,y}.csv", "q?.csv"]
ODD_NAMES = ["sp ace.csv", "100%.csv", "%2A.csv", "h#1.csv", "a:b.csv", "-lead.csv", "x:[1].csv.gz", "UP.CSV.GZ"]


def run_raw_orders(
    landing: Landing, warehouse: Warehouse, days: list[str], instance: DagsterInstance, root: str | None = None
) -> ExecuteInProcessResult:
    """raw/orders for `days` (one day, or a range as one run), in process; never raises. `root`: the
    landing zone as the resource names it (default: its path)."""
    partition = {"partition_key": days[0]} if len(days) == 1 else {
        "tags": {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
    }
    return materialize(
        [raw_orders],
        resources={"landing": LandingZone(root=root or str(landing.root)), "warehouse": warehouse},
        instance=instance,
        raise_on_error=False,
        **partition,
    )


def tables(warehouse: Warehouse) -> tuple[list[tuple], list[tuple]]:
    with warehouse.read() as con:
        rows = con.execute(f"SELECT {ROW_COLUMNS} FROM raw.orders ORDER BY ALL").fetchall()
        rejects = con.execute(f"SELECT {REJECT_COLUMNS} FROM raw.orders_rejected ORDER BY ALL").fetchall()
    return rows, rejects


def day_metadata(result: ExecuteInProcessResult) -> dict[str, tuple[int, int, int]]:
    """partition -> (dagster/row_count, rows_rejected, files) of raw/orders' materializations."""
    found = {}
    for m in result.asset_materializations_for_node("raw__orders"):
        meta = m.metadata
        found[m.partition] = (meta["dagster/row_count"].value, meta["rows_rejected"].value, meta["files"].value)
    return found


def engines(spark_cluster, root: Path) -> dict[str, Warehouse]:
    return {
        "duckdb": DuckDBWarehouse(path=str(root / "w.duckdb")),
        # over Connect: no application to start per run
        "spark": SparkWarehouse(
            master=spark_cluster.master_url, thrift=spark_cluster.thrift, remote=spark_cluster.remote,
            warehouse_dir=str(root / "spark-warehouse"),
        ),
    }


# ---------------------------------------------------------------------------------------------
# 1. names are names; links inside the landing zone are read under their own name


def named_files(day: str, names: list[str], valid: int, rejected: int, tag: str) -> tuple[dict[str, str | bytes], set]:
    """One file per name, each with its own order ids: `valid` valid lines, then `rejected` lines
    with quantity 0. Returns the files and {(name, order_id)} of the valid rows."""
    files, expected = {}, set()
    for n, name in enumerate(names):
        ids = [f"{tag}{n:02d}-{k}" for k in range(valid)]
        bad = [line(f"{tag}{n:02d}-BAD{k}", day=day, quantity="0") for k in range(rejected)]
        text = csv_text([line(i, day=day) for i in ids] + bad)
        files[name] = gzip.compress(text.encode()) if name.lower().endswith(".gz") else text
        expected |= {(name, i) for i in ids}
    return files, expected


def test_file_names_are_names_and_in_landing_links_keep_their_names_on_spark_like_duckdb(
    landing, tmp_path, spark_cluster
):
    d1_files, d1_expected = named_files(D1, GLOB_NAMES + ODD_NAMES, valid=2, rejected=1, tag="A")
    d2_files, d2_expected = named_files(D2, GLOB_NAMES[::2] + ["a:b.csv"], valid=3, rejected=2, tag="B")
    # Read by Python on the executors (Hadoop cannot name it): a quoted newline and invalid UTF-8
    # must come out as Spark's own reader makes them.
    bad_bytes = csv_text([line("RAW-BAD", day=D1)]).split("\n", 1)[1].encode().replace(b"RAW-BAD", b"RAW-BAD\xff\xfe")
    d1_files["raw:bytes.csv"] = (
        csv_text([line("RAW-1", day=D1, product_id="two\nlines")]).encode()
        + bad_bytes
        + csv_text([line("RAW-2", day=D1)]).split("\n", 1)[1].encode()
    )
    d1_expected |= {("raw:bytes.csv", "RAW-1"), ("raw:bytes.csv", "RAW-2")}
    landing.export(D1, d1_files)
    landing.export(D2, d2_files)
    # Two links of D1 to files elsewhere in the landing zone: one plain, one gzipped whose target's
    # name says nothing of gzip (the link's name does).
    archive = landing.root / "archive"
    archive.mkdir()
    (archive / "plain rows.csv").write_text(csv_text([line("LINK-1", day=D1), line("LINK-2", day=D1)]))
    (archive / "blob").write_bytes(gzip.compress(csv_text([line("ZLINK-1", day=D1)]).encode()))
    (landing.day_dir(D1) / "_SUCCESS").unlink()
    os.symlink("../../archive/plain rows.csv", landing.day_dir(D1) / "link.csv")
    os.symlink(archive / "blob", landing.day_dir(D1) / "zlink.csv.gz")
    landing.finish(D1)
    d1_expected |= {("link.csv", "LINK-1"), ("link.csv", "LINK-2"), ("zlink.csv.gz", "ZLINK-1")}
    d1_files_count = len(d1_files) + 2
    d1_rejected = len(d1_files)

    warehouses = engines(spark_cluster, tmp_path)
    for days, expected in (([D1], {D1: d1_expected}), ([D1, D2], {D1: d1_expected, D2: d2_expected})):
        got = {}
        for name, warehouse in warehouses.items():
            started = time.monotonic()
            with DagsterInstance.ephemeral() as instance:
                result = run_raw_orders(landing, warehouse, days, instance)
            print(f"\n{name}: {days[0]}..{days[-1]}: {time.monotonic() - started:.0f} s")
            assert result.success, failure_messages(result)
            # each day's own numbers on its own materialization
            want = {D1: (len(d1_expected), d1_rejected, d1_files_count), D2: (len(d2_expected), 2 * len(d2_files), len(d2_files))}
            assert day_metadata(result) == {d: want[d] for d in days}, name
            got[name] = rows, rejects = tables(warehouse)
            for day in days:
                loaded = [(r[11], r[1]) for r in rows if r[0].isoformat() == day]
                assert len(loaded) == len(set(loaded)), f"{name}: a row loaded twice on {day}"
                assert set(loaded) == expected[day], (name, day, set(loaded) ^ expected[day])
                # every rejected row under its own file, once
                bad = [(r[1], r[4]) for r in rejects if r[0].isoformat() == day]
                assert len(bad) == len(set(bad)), bad
                assert all(o.startswith(("A", "B")) if f != "raw:bytes.csv" else o is None for f, o in bad), bad
                assert {file for file, _ in bad} == {f for f in (d1_files if day == D1 else d2_files)}, name
        assert got["spark"] == got["duckdb"], f"{days}: Spark and DuckDB differ"


def test_a_landing_zone_and_warehouse_given_as_file_uris_load_the_same_rows_as_duckdb_from_the_path(
    landing, tmp_path, spark_cluster, monkeypatch
):
    """file:// URIs, as HDFS or S3 would be given: the listing goes through fsspec, every file (the
    header too) is read by the executors, by its exact name; the names Hadoop cannot take as they
    are are read by Python on an executor through fsspec. The rows are DuckDB's from the path, and
    so is the header check, which on Spark comes from the headers the executors read: the run
    worker opens no export file, for the ingest or for the check alone."""
    files, expected = named_files(D2, GLOB_NAMES + ODD_NAMES, valid=2, rejected=1, tag="U")
    rejected = len(files)  # one a file; the two below reject none
    files["raw:bom.csv"] = "\ufeff" + csv_text([line("U-BOM", day=D2)]).replace("\n", "\r\n")
    expected.add(("raw:bom.csv", "U-BOM"))
    files["note:1.csv"] = csv_text([{**line("U-NOTE", day=D2), "Note ": "x"}], columns=[*REQUIRED_COLUMNS, "Note "])
    expected.add(("note:1.csv", "U-NOTE"))
    landing.export(D2, files)
    (tmp_path / "duckdb").mkdir()
    duckdb_warehouse = engines(spark_cluster, tmp_path / "duckdb")["duckdb"]
    spark_warehouse = SparkWarehouse(
        master=spark_cluster.master_url, thrift=spark_cluster.thrift, remote=spark_cluster.remote,
        warehouse_dir=(tmp_path / "spark-warehouse").as_uri(),
    )
    got, header_checks = {}, {}
    for name, warehouse, root in (
        ("duckdb", duckdb_warehouse, str(landing.root)), ("spark", spark_warehouse, landing.root.as_uri())
    ):
        if name == "spark":  # from here on, a read of an export file in this process fails the test
            monkeypatch.setattr(export, "read_first_line", opened_here)
        with DagsterInstance.ephemeral() as instance:
            result = run_raw_orders(landing, warehouse, [D2], instance, root=root)
            assert result.success, failure_messages(result)
            assert day_metadata(result) == {D2: (len(expected), rejected, len(files))}, name
            header_checks[name] = header_check(result.get_asset_check_evaluations())
            # the checks alone, as the UI's "Execute" launches them: no ingest
            checks_only = raw_orders_checks_only(landing, warehouse, D2, instance, root)
            assert checks_only.success, failure_messages(checks_only)
            assert header_check(checks_only.get_asset_check_evaluations()) == header_checks[name], name
        got[name] = rows, _ = tables(warehouse)
        assert {(r[11], r[1]) for r in rows} == expected, name
    assert got["spark"] == got["duckdb"]
    # the same header check on both engines: the unknown column reported, nothing missing
    assert header_checks["spark"] == header_checks["duckdb"]
    assert header_checks["spark"][1]["extra_columns"] == {f"dt={D2}/note:1.csv": ["Note "]}


def opened_here(path, is_gzip, display):
    raise AssertionError(f"the run worker opened {display}: on Spark only the executors read export files")


def header_check(evaluations) -> tuple[bool, dict]:
    (header,) = [e for e in evaluations if e.check_name == HEADER]
    return header.passed, {k: v.value for k, v in header.metadata.items()}


def raw_orders_checks_only(landing: Landing, warehouse: Warehouse, day: str, instance: DagsterInstance, root: str):
    """raw/orders' checks without its materialization (the UI's "Execute" on the checks)."""
    resources = {"landing": LandingZone(root=root), "warehouse": warehouse}
    job = Definitions(assets=[raw_orders], resources=resources).resolve_implicit_global_asset_job_def()
    checks = {AssetCheckKey(RAW_ORDERS, HEADER)}
    return job.get_subset(asset_selection=set(), asset_check_selection=checks).execute_in_process(
        partition_key=day, instance=instance, raise_on_error=False
    )


# ---------------------------------------------------------------------------------------------
# 2. a link out of the landing zone


SECRET = "S3CRET-9d41c7e0-never-to-be-read"


def test_a_link_out_of_the_landing_zone_fails_the_day_on_spark_naming_it_and_nothing_of_its_target_leaks(
    landing, tmp_path, spark_cluster
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "orders.csv").write_text(csv_text([line(SECRET, day=D1, customer_id=SECRET)]))
    warehouse_dir = tmp_path / "spark-warehouse"
    publish_earlier(warehouse_dir, spark_cluster.thrift, D1, 10, "earlier-run")
    before = published(warehouse_dir, spark_cluster.thrift)
    landing.write(D1, "good.csv", csv_text([line("G1", day=D1)]))
    os.symlink(outside / "orders.csv", landing.day_dir(D1) / "out.csv")
    landing.finish(D1)
    apps_before = {a.id for a in spark_cluster.applications()}

    warehouse = SparkWarehouse(master=spark_cluster.master_url, thrift=spark_cluster.thrift, warehouse_dir=str(warehouse_dir))
    with DagsterInstance.ephemeral() as instance:
        result = run_raw_orders(landing, warehouse, [D1], instance)
        logs = instance.all_logs(result.run_id)

    assert not result.success
    assert events(result, DagsterEventType.STEP_RESTARTED) == []  # permanent
    message = failure_messages(result)
    assert f"dt={D1}/out.csv is a symbolic link out of the landing zone: not followed" in message, message
    # not a byte of the target: in no event of the run, no table, no file of the warehouse
    assert logs and not [e for e in logs if SECRET in serialize_value(e)]
    assert published(warehouse_dir, spark_cluster.thrift) == before
    for folder, _, names in os.walk(warehouse_dir):
        for name in names:
            assert SECRET.encode() not in Path(folder, name).read_bytes(), Path(folder, name)
    # the listing refused it before Spark was asked for anything
    assert {a.id for a in spark_cluster.applications()} == apps_before
    assert not (warehouse_dir / "_staging").exists()


# ---------------------------------------------------------------------------------------------
# 3. a file that is mostly not order lines


def test_a_mostly_junk_file_is_refused_on_spark_leaving_nothing_and_a_half_rejected_file_is_taken(
    landing, tmp_path, spark_cluster
):
    header = csv_text([])
    junk = header + "".join(f"~~ not an order line {i} ~~\n" for i in range(5_000))
    half = csv_text(
        [line(f"H{i}", day=D1) for i in range(500)] + [line(f"HX{i}", day=D1, status="lost") for i in range(500)]
    )
    landing.export(D1, {"half.csv": half, "junk.csv": junk})
    warehouse_dir = tmp_path / "spark-warehouse"
    publish_earlier(warehouse_dir, spark_cluster.thrift, D1, 100, "earlier-run")
    before = published(warehouse_dir, spark_cluster.thrift)
    warehouses = engines(spark_cluster, tmp_path)
    refusal = f"dt={D1}/junk.csv: 100.0% of its 5000 data lines are not valid order lines, more than SHOPFLOW_MAX_REJECTED_SHARE=0.5 allows"

    with DagsterInstance.ephemeral() as instance:
        result = run_raw_orders(landing, warehouses["spark"], [D1], instance)
    assert not result.success
    assert events(result, DagsterEventType.STEP_RESTARTED) == []  # permanent: one attempt
    message = failure_messages(result)
    assert refusal in message and "half.csv" not in message, message
    assert published(warehouse_dir, spark_cluster.thrift) == before  # nothing of the day changed
    # the rows were checked into the run's staging folder (one pass), which the refusal removed
    assert not list((warehouse_dir / "_staging").glob("*/*")), "the refused day's staged rows were left"
    # DuckDB refuses it in the same words
    with DagsterInstance.ephemeral() as instance:
        duck = run_raw_orders(landing, warehouses["duckdb"], [D1], instance)
    assert not duck.success and refusal in failure_messages(duck), failure_messages(duck)

    # the day re-exported without the junk: exactly half of half.csv rejected is taken
    (landing.day_dir(D1) / "junk.csv").unlink()
    landing.finish(D1)
    with DagsterInstance.ephemeral() as instance:
        result = run_raw_orders(landing, warehouses["spark"], [D1], instance)
    assert result.success, failure_messages(result)
    assert day_metadata(result) == {D1: (500, 500, 1)}
    rows, rejects = tables(warehouses["spark"])
    assert sorted(r[1] for r in rows) == sorted(f"H{i}" for i in range(500))
    assert sorted(r[4] for r in rejects) == sorted(f"HX{i}" for i in range(500))


# ---------------------------------------------------------------------------------------------
# 4. an export rewritten while Spark reads it


def export_version(tag: str, files: int = 4, lines: int = 10_000) -> dict[str, str]:
    return {
        f"part-{n}.csv": csv_text([line(f"{tag}-{n}-{i}", day=D1) for i in range(lines)]) for n in range(files)
    }


def test_an_export_rewritten_while_spark_reads_it_is_read_again_and_never_published_mixed(
    landing, tmp_path, spark_cluster
):
    old, new = export_version("OLD"), export_version("NEW")
    landing.export(D1, old)
    warehouse_dir = tmp_path / "spark-warehouse"
    warehouse = engines(spark_cluster, tmp_path)["spark"]

    def rewrite_while_it_reads():
        wait_until(lambda: spark_cluster.connect_jobs(), "the ingest's Spark jobs to run", interval=0.1)
        # the exporter rewrites every file in place, then writes _SUCCESS again
        for name, content in new.items():
            landing.write(D1, name, content)
        landing.finish(D1)
        return time.monotonic()

    rewriter = in_background(rewrite_while_it_reads)
    with DagsterInstance.ephemeral() as instance:
        result = run_raw_orders(landing, warehouse, [D1], instance)
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if "changed while it was read" in e.user_message]
    rewriter.result(timeout=60)

    assert result.success, failure_messages(result)
    assert any("Reading it again (1/3)" in w for w in warnings), warnings  # a second ingest read it
    # the new export, complete, and nothing of the old
    with duckdb.connect() as con:
        live = live_folders(spark_cluster.thrift, "raw.orders")[D1]
        ids = [r[0] for r in con.execute(f"SELECT order_id FROM read_parquet('{live}/*.parquet')").fetchall()]
    assert len(ids) == len(set(ids)) == 40_000
    assert all(i.startswith("NEW-") for i in ids), sorted(i for i in ids if not i.startswith("NEW-"))[:5]
    assert day_metadata(result) == {D1: (40_000, 0, 4)}
