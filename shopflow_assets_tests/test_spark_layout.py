"""The Spark tables' versions of a day (shopflow_assets/contract/spark_layout.py), on a local
folder through fsspec: what is retired, when it is removed, and what is never touched."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from shopflow_assets.contract.spark_layout import Catalog, live_version, same_place, sql_string, tidy_day

V1, V2, V3 = (f"v=00000000000{n}.run-{n}.nonce" for n in (1, 2, 3))
FS = fsspec.filesystem("file")


def day_folder(tmp_path: Path, *names: str) -> Path:
    """A day's folder with these version folders (a Parquet file each) and loose files."""
    day = tmp_path / "raw.db" / "orders" / "dt=2024-03-01"
    for name in names:
        if name.startswith("v="):
            (day / name).mkdir(parents=True)
            (day / name / "part-00000.parquet").write_bytes(b"PAR1")
        else:
            day.mkdir(parents=True, exist_ok=True)
            (day / name).write_bytes(b"PAR1")
    return day


def contents(day: Path) -> list[str]:
    return sorted(p.name for p in day.iterdir() if p.name != "_retired")


def marks(day: Path) -> dict[str, str]:
    folder = day / "_retired"
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else {}


def test_what_stopped_being_live_is_removed_a_grace_period_later_and_a_newer_version_is_left_alone(tmp_path):
    day = day_folder(tmp_path, V1, V2, V3, "part-legacy.parquet")
    # V2 is live; V3 is newer and not live yet (a publish under way); V1 and the older layout's file retire
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=1000) == []
    assert marks(day) == {V1: "1000.000", "part-legacy.parquet": "1000.000"}
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=1059.9) == []
    assert marks(day)[V1] == "1000.000"  # a later tidy keeps the first time
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=1060) == ["part-legacy.parquet", V1]
    assert contents(day) == [V2, V3] and marks(day) == {}


def test_a_day_without_a_partition_retires_everything_and_a_location_of_another_layout_nothing(tmp_path):
    day = day_folder(tmp_path, V1, V2, V3)
    assert tidy_day(FS, str(day), "", grace_seconds=0, now=1000) == []  # the catalog points elsewhere
    assert contents(day) == [V1, V2, V3] and marks(day) == {}
    assert tidy_day(FS, str(day), None, grace_seconds=0, now=1000) == [V1, V2, V3]  # the day was dropped
    assert tidy_day(FS, str(tmp_path / "no-such-day"), None, grace_seconds=0) == []


def test_a_retired_version_that_is_live_again_loses_its_mark_and_gets_a_whole_grace_period_later(tmp_path):
    day = day_folder(tmp_path, V1, V2, V3)
    (day / "_retired").mkdir()
    (day / "_retired" / V2).write_text("1000.0")  # marked while another was live, then swapped live
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=5000) == []
    assert V2 not in marks(day) and V2 in contents(day)
    # swapped out again: its grace counts from now, not from the old mark
    assert tidy_day(FS, str(day), V3, grace_seconds=60, now=8000) == [V1]  # retired at 5000
    assert marks(day) == {V2: "8000.000"}
    assert tidy_day(FS, str(day), V3, grace_seconds=60, now=8060) == [V2]


def test_a_dropped_day_leaves_versions_newer_than_its_publishers_alone(tmp_path):
    day = day_folder(tmp_path, V1, V2, V3)
    # an ingest whose version would have been V2 dropped the day; V3, a later ingest's, is being published
    assert tidy_day(FS, str(day), None, grace_seconds=0, now=1000, below=V2) == [V1, V2]
    assert contents(day) == [V3]
    assert tidy_day(FS, str(day), None, grace_seconds=0, now=1000) == [V3]


def test_a_mark_that_is_a_folder_is_left_with_its_version(tmp_path):
    day = day_folder(tmp_path, V1, V2)
    (day / "_retired" / V1).mkdir(parents=True)
    assert tidy_day(FS, str(day), V2, grace_seconds=0, now=1000) == []
    assert contents(day) == [V1, V2]


@pytest.mark.parametrize("mark", ["nan", "inf", "-inf", "1e400", "not a time", "\xff", "99999999999"])
def test_a_mark_that_is_not_a_time_of_the_past_counts_from_now(tmp_path, mark):
    day = day_folder(tmp_path, V1, V2)
    (day / "_retired").mkdir()
    (day / "_retired" / V1).write_bytes(mark.encode("latin-1"))
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=1000) == []
    assert marks(day)[V1] == "1000.000"
    assert tidy_day(FS, str(day), V2, grace_seconds=60, now=1060) == [V1]


def test_a_link_among_the_versions_is_removed_as_a_link_not_its_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.parquet").write_bytes(b"PAR1")
    day = day_folder(tmp_path, V2, V3)
    os.symlink(outside, day / V1)  # a link someone put among the versions
    assert tidy_day(FS, str(day), V3, grace_seconds=0, now=1000) == [V1, V2]
    assert (outside / "keep.parquet").exists() and contents(day) == [V3]


def test_the_catalogs_statements_take_only_a_table_name_and_a_date_and_quote_locations():
    statements = []
    catalog = Catalog(lambda s: statements.append(s) or [])
    catalog.publish("raw.orders", "2024-03-01", "/w/it's\\x")
    assert statements == [
        "ALTER TABLE raw.orders ADD IF NOT EXISTS PARTITION (dt = '2024-03-01') LOCATION '/w/it\\'s\\\\x'",
        "ALTER TABLE raw.orders PARTITION (dt = '2024-03-01') SET LOCATION '/w/it\\'s\\\\x'",
    ]
    statements.clear()
    for table, day in [("raw.orders; drop", "2024-03-01"), ("raw.orders", "2024-03-01') or ('1"), ("orders", "2024-03-01")]:
        with pytest.raises(ValueError):
            catalog.publish(table, day, "/w")
        with pytest.raises(ValueError):
            catalog.drop(table, day)
    assert statements == []  # refused before any statement
    assert catalog.location("raw.orders", "2024-03-01") is None  # no such partition
    assert sql_string("a'b\\") == "'a\\'b\\\\'"


def test_a_days_location_costs_one_statement_and_only_a_missing_day_reads_as_none():
    """What `SHOW TABLE EXTENDED ... PARTITION` answers, or how it fails: a day that is not there
    (then SHOW PARTITIONS agrees), or a catalog error, which must not read as "no such day"."""
    information = "Database: raw\nTable: orders\nLocation: file:/w/raw.db/orders/dt=2024-03-01/v=2\nSerde: x\n"
    statements = []

    def run(statement: str) -> list:
        statements.append(statement)
        there = "2024-03-01" in statement or "2024-03-03" in statement
        if statement.startswith("SHOW TABLE EXTENDED") and "PARTITION" in statement:
            if "2024-03-01" not in statement:  # 02: no such day; 03: the catalog fails
                raise RuntimeError("[PARTITIONS_NOT_FOUND]" if "2024-03-02" in statement else "Communications link failure")
            return [("raw", "orders", False, information)]
        if statement.startswith("SHOW TABLE EXTENDED"):  # the tables
            return [("raw", "orders", False, "Location: file:/w/raw.db/orders\n"), ("raw", "order_notes", False, "")]
        return [("dt=...",)] if there else []  # SHOW PARTITIONS

    catalog = Catalog(run)
    assert catalog.location("raw.orders", "2024-03-01") == "file:/w/raw.db/orders/dt=2024-03-01/v=2"
    assert len(statements) == 1
    assert catalog.location("raw.orders", "2024-03-02") is None
    with pytest.raises(RuntimeError, match="Communications link failure"):
        catalog.location("raw.orders", "2024-03-03")  # the day is there: the error is the catalog's
    # the tables asked for that exist, in one statement; a name is never a pattern of its own
    statements.clear()
    assert catalog.table_locations("raw", ["orders", "orders_rejected"]) == {"orders": "file:/w/raw.db/orders"}
    assert statements == ["SHOW TABLE EXTENDED IN raw LIKE 'orders|orders_rejected'"]
    for names in (["orders' OR '1"], ["orders*"], ["Orders"]):
        with pytest.raises(ValueError):
            catalog.table_locations("raw", names)
    assert len(statements) == 1


def test_the_live_version_is_read_from_the_location_the_catalog_names():
    day = "2024-03-01"
    assert live_version(f"file:/w/raw.db/orders/dt={day}/{V2}", day) == V2
    assert live_version(f"hdfs://nn/w/raw.db/orders/dt={day}/{V2}/", day) == V2
    assert live_version(f"file:/w/raw.db/orders/dt={day}", day) == ""  # the older layout
    assert live_version(f"file:/w/raw.db/orders/dt=2024-03-02/{V2}", day) == ""  # another day's
    assert live_version(None, day) is None


def test_a_warehouse_path_with_percent_signs_and_spaces_is_found_however_the_catalog_spells_it(tmp_path):
    """Spark's catalog shows a location made from a plain path as written, one made from a URI
    percent-encoded (both seen with the pip pyspark's DESCRIBE TABLE EXTENDED)."""
    warehouse = tmp_path / "a%41b c"
    table = f"{warehouse}/raw.db/orders"
    assert same_place(f"file:{table}", table)  # from the plain path
    assert same_place(f"file:{str(tmp_path)}/a%2541b%20c/raw.db/orders", table)  # from a URI
    assert same_place(f"file://{table}/", table)
    assert not same_place(f"file:{tmp_path}/other/raw.db/orders", table)
    assert not same_place(f"file:{tmp_path}/a%41b c/raw.db/orders_rejected", table)
    assert same_place("hdfs://nn:8020/w/raw.db/orders/", "hdfs://nn:8020/w/raw.db/orders")
    assert not same_place("hdfs://nn:8020/w2/raw.db/orders", "hdfs://nn:8020/w/raw.db/orders")
