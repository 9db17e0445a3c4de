"""raw/orders: every rule of docs/contract.md "The export" and "Ingest rules", on real DuckDB."""

from __future__ import annotations

import csv
import gzip
import io
import random

import pytest

from shopflow_assets.commands.sample_data import write_day
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS

from .conftest import csv_text, day_of, failure_messages, line, money, query, snapshot

DAY = "2024-03-01"
RAW = "raw/orders"


def ingest(run, day: str = DAY):
    return run(day, selection=RAW)


def raw_rows(warehouse_path, day: str = DAY):
    return query(
        warehouse_path,
        "SELECT order_id, line_number, _source_file, _source_line FROM raw.orders WHERE dt = ? "
        "ORDER BY _source_file, _source_line",
        [day],
    )


def rejected(warehouse_path, day: str = DAY):
    return query(
        warehouse_path,
        "SELECT _source_file, _source_line, reason, order_id FROM raw.orders_rejected WHERE dt = ? "
        "ORDER BY _source_file, _source_line",
        [day],
    )


def test_multi_file_day_with_gzip_and_shuffled_columns(run, landing, warehouse_path):
    rng = random.Random(1)
    files, expected_gross = {}, money("0")
    for i, name in enumerate(["a.csv", "b.csv.gz", "c.csv", "d.csv.gz"]):
        rows = [
            line(f"O{i}-{n}", 1, quantity=rng.randint(1, 9), unit_price=f"{rng.randint(1, 99999) / 100:.2f}")
            for n in range(25)
        ]
        expected_gross += sum(int(r["quantity"]) * money(r["unit_price"]) for r in rows)
        columns = list(REQUIRED_COLUMNS)
        if i % 2:
            rng.shuffle(columns)
        files[name] = csv_text(rows, columns)
    landing.export(DAY, files)

    result = ingest(run)

    assert result.success, failure_messages(result)
    (count, gross, files_seen), = query(
        warehouse_path,
        "SELECT count(*), sum(quantity * unit_price), count(DISTINCT _source_file) FROM raw.orders",
    )
    assert (count, money(gross), files_seen) == (100, expected_gross, 4)
    assert rejected(warehouse_path) == []


# Each way a row can break the contract, and the reason it must be kept with.
BAD_ROWS = [
    ({"order_id": ""}, "order_id is empty"),
    ({"line_number": "0"}, "line_number is below 1"),
    ({"line_number": "1.5"}, "line_number is not an integer"),
    ({"customer_id": ""}, "customer_id is empty"),
    ({"product_id": "  "}, "product_id is empty"),
    ({"quantity": "0"}, "quantity is below 1"),
    ({"quantity": "two"}, "quantity is not an integer"),
    ({"unit_price": "-1.00", "discount": "0"}, "unit_price is negative"),
    ({"unit_price": "1.234"}, "unit_price is not a decimal(18,2)"),
    ({"unit_price": "12345678901234567.00"}, "unit_price is not a decimal(18,2)"),
    ({"discount": "-0.01"}, "discount is negative"),
    ({"discount": "abc"}, "discount is not a decimal(18,2)"),
    ({"quantity": "2", "unit_price": "5.00", "discount": "10.01"}, "discount exceeds quantity x unit_price"),
    ({"status": "lost"}, "status is not one of placed, shipped, delivered, cancelled, refunded"),
    ({"status": "Placed"}, "status is not one of placed, shipped, delivered, cancelled, refunded"),
    ({"ordered_at": "2024-03-01T10:00:00"}, "ordered_at is not an ISO-8601 timestamp with offset"),
    ({"ordered_at": "yesterday"}, "ordered_at is not an ISO-8601 timestamp with offset"),
    ({"ordered_at": "2024-03-01T23:30:00-01:00"}, "ordered_at is not on the export day (UTC)"),
    ({"ordered_at": "2024-03-01T00:30:00+02:00"}, "ordered_at is not on the export day (UTC)"),
    ({"updated_at": "2024-02-30T10:00:00Z"}, "updated_at is not an ISO-8601 timestamp with offset"),
]


def test_each_bad_row_is_rejected_with_its_reason_file_and_line(run, landing, warehouse_path):
    good = [line("G1"), line("G2", product_id="multi\nline product")]  # G2 spans lines 3-4
    bad = [dict(line(f"B{i}"), **change) for i, (change, _) in enumerate(BAD_ROWS)]
    text = csv_text(good + bad)
    malformed = "B99,1,C-1,P-1\n"  # too few columns
    landing.export(DAY, {"orders.csv": text + malformed, "edge.csv": csv_text([line("G3", ordered_at="2024-03-01T00:30:00-01:00")])})

    result = ingest(run)

    assert result.success, failure_messages(result)
    got = rejected(warehouse_path)
    # header = line 1, G1 = 2, G2 = 3..4, so bad row i is on line 5 + i
    expected = [
        ("orders.csv", 5 + i, reason, f"B{i}" if change.get("order_id", "x") else None)
        for i, (change, reason) in enumerate(BAD_ROWS)
    ]
    assert [g for g in got if g[0] == "orders.csv" and not g[2].startswith("malformed")] == expected
    malformed_rows = [g for g in got if g[2].startswith("malformed CSV row")]
    assert [(f, n) for f, n, _, _ in malformed_rows] == [("orders.csv", 5 + len(BAD_ROWS))]
    assert raw_rows(warehouse_path) == [
        ("G3", 1, "edge.csv", 2),
        ("G1", 1, "orders.csv", 2),
        ("G2", 1, "orders.csv", 3),
    ]
    # The rejected row's own fields are kept as text, for whoever fixes the export.
    assert query(
        warehouse_path,
        "SELECT unit_price, _raw_line FROM raw.orders_rejected WHERE order_id = 'B8' OR _raw_line IS NOT NULL ORDER BY _source_line",
    ) == [("1.234", None), (None, malformed.strip())]


def test_loaded_plus_rejected_equals_data_rows_and_metadata_tells(run, landing, warehouse_path, tmp_path):
    write_day(landing.root, day_of(DAY), orders=120, rng=random.Random(7))
    data_rows = 0
    for path in sorted(landing.day_dir(DAY).glob("*.csv*")):
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
        data_rows += sum(1 for _ in csv.reader(io.StringIO(text))) - 1  # minus the header
    files = sorted(landing.day_dir(DAY).glob("*.csv*"))

    result = ingest(run)

    assert result.success, failure_messages(result)
    (loaded,), = query(warehouse_path, "SELECT count(*) FROM raw.orders")
    (rejects,), = query(warehouse_path, "SELECT count(*) FROM raw.orders_rejected")
    assert loaded + rejects == data_rows
    assert rejects >= 15  # the generator writes one bad row of each kind, plus a malformed line
    metadata = result.asset_materializations_for_node("raw__orders")[0].metadata
    assert metadata["rows_loaded"].value == loaded
    assert metadata["dagster/row_count"].value == loaded
    assert metadata["rows_rejected"].value == rejects
    assert metadata["files"].value == len(files)
    assert metadata["bytes"].value == sum(p.stat().st_size for p in files)
    by_reason = metadata["rejected_by_reason"].value
    assert by_reason["malformed CSV row"] == 1
    assert by_reason["status is not one of placed, shipped, delivered, cancelled, refunded"] == 1


def test_provenance_columns(run, landing, warehouse_path):
    landing.export(DAY, {"x.csv": csv_text([line("A"), line("A")])})  # a duplicate is kept
    result = ingest(run)
    assert result.success
    rows = query(
        warehouse_path,
        "SELECT dt, _source_file, _source_line, _run_id, _loaded_at IS NOT NULL FROM raw.orders ORDER BY _source_line",
    )
    assert rows == [
        (day_of(DAY), "x.csv", 2, result.run_id, True),
        (day_of(DAY), "x.csv", 3, result.run_id, True),
    ]


def test_missing_column_fails_naming_file_and_column_and_changes_nothing(run, landing, warehouse_path):
    landing.export(DAY, {"good.csv": csv_text([line("A")])})
    landing.export("2024-03-02", {"good.csv": csv_text([line("B", day="2024-03-02")])})
    assert run(DAY).success and run("2024-03-02").success
    before = snapshot(warehouse_path)

    columns = [c for c in REQUIRED_COLUMNS if c != "discount"]
    landing.export(DAY, {"zz-drift.csv": csv_text([line("C")], columns)})
    result = run(DAY)

    assert not result.success
    message = failure_messages(result)
    assert "zz-drift.csv" in message and "'discount'" in message
    assert snapshot(warehouse_path) == before
    # permanent: one attempt only, no retry
    assert sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY") == 0


@pytest.mark.slow
def test_unfinished_export_is_not_ingested(run, landing, warehouse_path):
    landing.write(DAY, "part-0.csv", csv_text([line("A")]))  # no _SUCCESS yet

    result = ingest(run)

    assert not result.success
    assert "_SUCCESS" in failure_messages(result)
    assert not warehouse_path.exists() or query(warehouse_path, "SELECT count(*) FROM raw.orders") == [(0,)]


def test_three_runs_leave_what_one_run_leaves(run, landing, warehouse_path):
    write_day(landing.root, day_of(DAY), orders=60, rng=random.Random(3))
    columns = "* EXCLUDE (_loaded_at, _run_id)"

    assert ingest(run).success
    once = snapshot_without_run(warehouse_path, columns)
    assert ingest(run).success and ingest(run).success
    assert snapshot_without_run(warehouse_path, columns) == once


def snapshot_without_run(warehouse_path, columns):
    return {
        t: sorted(query(warehouse_path, f"SELECT {columns} FROM {t}"), key=repr)
        for t in ("raw.orders", "raw.orders_rejected")
    }


def test_reingest_replaces_exactly_that_day(run, landing, warehouse_path):
    landing.export("2024-03-01", {"a.csv": csv_text([line("A1"), line("A2")])})
    landing.export("2024-03-02", {"a.csv": csv_text([line("B1", day="2024-03-02")])})
    assert ingest(run, "2024-03-01").success and ingest(run, "2024-03-02").success
    other_day = query(warehouse_path, "SELECT * FROM raw.orders WHERE dt = '2024-03-02'")

    # D is re-exported with fewer lines: the old ones must go, the other day must stay as it was.
    landing.export("2024-03-01", {"a.csv": csv_text([line("A3")])})
    assert ingest(run, "2024-03-01").success

    assert query(warehouse_path, "SELECT order_id FROM raw.orders WHERE dt = '2024-03-01'") == [("A3",)]
    assert query(warehouse_path, "SELECT * FROM raw.orders WHERE dt = '2024-03-02'") == other_day


def test_a_day_of_fifty_files(run, landing, warehouse_path):
    files = {
        f"part-{i:04d}.csv{'.gz' if i % 3 == 0 else ''}": csv_text(
            [line(f"O{i}-{n}", quantity=i + 1) for n in range(20)]
        )
        for i in range(50)
    }
    landing.export(DAY, files)

    result = ingest(run)

    assert result.success, failure_messages(result)
    assert query(warehouse_path, "SELECT count(*), count(DISTINCT _source_file), sum(quantity) FROM raw.orders") == [
        (1000, 50, sum(20 * (i + 1) for i in range(50)))
    ]


def test_header_names_tolerate_case_and_spaces(run, landing, warehouse_path):
    header = ",".join(f" {c.upper()} " for c in REQUIRED_COLUMNS)
    body = csv_text([line("A")]).split("\n", 1)[1]
    landing.export(DAY, {"a.csv": header + "\n" + body})
    result = ingest(run)
    assert result.success, failure_messages(result)
    assert raw_rows(warehouse_path) == [("A", 1, "a.csv", 2)]


def test_a_day_outside_the_file_is_not_read(run, landing, warehouse_path):
    landing.export("2024-03-02", {"a.csv": csv_text([line("B1", day="2024-03-02")])})
    landing.export(DAY, {"a.csv": csv_text([line("A1")])})
    assert ingest(run).success
    assert query(warehouse_path, "SELECT DISTINCT dt FROM raw.orders") == [(day_of(DAY),)]


@pytest.mark.parametrize("crlf", [False, True])
def test_line_numbers_count_quoted_newlines(run, landing, warehouse_path, crlf):
    rows = [line("A", product_id="one\ntwo\nthree"), line("B", quantity="0"), line("C")]
    text = csv_text(rows)
    if crlf:
        text = text.replace("\n", "\r\n")
    landing.export(DAY, {"a.csv": text})
    assert ingest(run).success
    # A spans lines 2-4, B is line 5 (rejected), C line 6
    assert raw_rows(warehouse_path) == [("A", 1, "a.csv", 2), ("C", 1, "a.csv", 6)]
    assert [(f, n) for f, n, _, _ in rejected(warehouse_path)] == [("a.csv", 5)]


@pytest.mark.parametrize("crlf", [False, True])
def test_blank_lines_keep_every_row_at_its_physical_line(run, landing, warehouse_path, crlf):
    header, *rows = csv_text(
        [line("A"), line("B", product_id="two\nlines"), line("C"), line("D", quantity="0"), line("E")]
    ).splitlines(keepends=True)
    # 1 header, 2 A, 3 blank, 4-5 B (a quoted newline), 6 blank, 7 blank, 8 C, 9 malformed, 10 D, 11 blank, 12 E
    text = header + rows[0] + "\n" + rows[1] + rows[2] + "\n\n" + rows[3] + "X,1,C-1\n" + rows[4] + "\n" + rows[5]
    if crlf:
        text = text.replace("\n", "\r\n").replace("two\r\nlines", "two\nlines")
    landing.export(DAY, {"a.csv": text})

    result = ingest(run)

    assert result.success, failure_messages(result)
    assert [(o, n) for o, _, _, n in raw_rows(warehouse_path)] == [("A", 2), ("B", 4), ("C", 8), ("E", 12)]
    assert [(n, r.split(":")[0]) for _, n, r, _ in rejected(warehouse_path)] == [
        (9, "malformed CSV row"), (10, "quantity is below 1")
    ]


def test_a_range_is_one_run_that_logs_its_progress(landing, resources, instance, warehouse_path):
    from dagster import materialize

    from .conftest import ALL_ASSETS

    days = ["2024-03-01", "2024-03-02", "2024-03-03"]
    for n, day in enumerate(days):
        landing.export(day, {"a.csv": csv_text([line(f"O{i}", day=day) for i in range(n + 1)])})

    result = materialize(
        ALL_ASSETS,
        selection=RAW,
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )

    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if not e.is_dagster_event]
    progress = [m for m in messages if m.startswith("read 2024-03-0")]
    assert [m.split(";")[0] for m in progress] == [
        "read 2024-03-01: day 1/3, 1 files, 1 rows",
        "read 2024-03-02: day 2/3, 1 files, 2 rows",
        "read 2024-03-03: day 3/3, 1 files, 3 rows",
    ]
    assert all("s left to read" in m for m in progress)
    assert query(warehouse_path, "SELECT dt, count(*) FROM raw.orders GROUP BY dt ORDER BY dt") == [
        (day_of(d), n + 1) for n, d in enumerate(days)
    ]


def test_rejections_per_rule_are_numbers_the_ui_can_plot(run, landing):
    from shopflow_assets.engines.duckdb.loader import REJECT_REASONS

    landing.export(DAY, {"a.csv": csv_text([line("A"), line("B", quantity="0"), line("C", status="x", quantity="0")])})
    result = ingest(run)
    metadata = result.asset_materializations_for_node("raw__orders")[0].metadata
    numbers = {k[len("rejected: "):]: v.value for k, v in metadata.items() if k.startswith("rejected: ")}
    assert set(numbers) == set(REJECT_REASONS)
    assert numbers["quantity is below 1"] == 2 and numbers["status is not one of placed, shipped, delivered, cancelled, refunded"] == 1
    assert sum(numbers.values()) == 3


def test_a_truncated_gzip_fails_at_once_naming_the_file_and_changes_nothing(run, landing, warehouse_path):
    import gzip as gz

    landing.export(DAY, {"good.csv": csv_text([line("A")])})
    assert ingest(run).success
    before = snapshot(warehouse_path)
    rows = [line(f"O{n}", quantity=n % 9 + 1, unit_price=f"{n % 997}.{n % 100:02d}") for n in range(20000)]
    data = gz.compress(csv_text(rows).encode())
    landing.export(DAY, {"cut.csv.gz": data[: len(data) // 2]})  # written raw: already gzip

    result = ingest(run)

    assert not result.success
    assert events_of_type(result, "STEP_UP_FOR_RETRY") == 0  # corrupt: not retried
    assert "dt=2024-03-01/cut.csv.gz: the file is corrupt" in failure_messages(result)
    assert snapshot(warehouse_path) == before


def events_of_type(result, kind: str) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == kind)
