"""Hostile input: every row is loaded or rejected with its reason, or the run fails naming the file;
loaded + rejected = data rows whenever the run succeeds; nothing of any other day changes.

The first half runs the real raw/orders asset on one export each; the second half throws random
exports (hypothesis) at the loader and checks each row's fate and physical line against what the
test itself wrote.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS, BadExportError, load_days
from shopflow_assets.engines import DuckDBWarehouse
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import csv_text, failure_messages, line, query, snapshot

DAY = "2024-03-01"
OTHER_DAY = "2024-02-29"
RAW = "raw/orders"


def other_day_rows(warehouse_path: Path) -> list[tuple]:
    return sorted(
        query(warehouse_path, "SELECT * FROM raw.orders WHERE dt = ? UNION ALL "
              "SELECT dt, _source_file, _source_line, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
              "NULL, NULL, NULL, NULL FROM raw.orders_rejected WHERE dt = ?", [OTHER_DAY, OTHER_DAY]),
        key=repr,
    )


@pytest.fixture
def with_other_day(run, landing, warehouse_path):
    """The day before, loaded first: no hostile export of DAY may change it."""
    landing.export(OTHER_DAY, {"a.csv": csv_text([line("Y1", day=OTHER_DAY), line("Y2", quantity="0", day=OTHER_DAY)])})
    assert run(OTHER_DAY, selection=RAW).success
    before = other_day_rows(warehouse_path)
    assert len(before) == 2
    yield
    assert other_day_rows(warehouse_path) == before


def counts(warehouse_path: Path) -> tuple[int, int]:
    (loaded,) = query(warehouse_path, "SELECT count(*) FROM raw.orders WHERE dt = ?", [DAY])[0]
    (rejected,) = query(warehouse_path, "SELECT count(*) FROM raw.orders_rejected WHERE dt = ?", [DAY])[0]
    return loaded, rejected


HEADER = ",".join(REQUIRED_COLUMNS)


def row_text(order_id: str, product_id: str = "P-1") -> str:
    return csv_text([line(order_id, product_id=product_id)]).split("\n", 1)[1].rstrip("\n")


@dataclass
class Case:
    files: dict[str, bytes]
    loaded: list[tuple[str, str, int]]  # (order_id, file, line)
    rejected: list[tuple[str, int, str]]  # (file, line, start of the reason)


ACCEPTED_CASES = {
    "byte-order mark": Case(
        {"a.csv": ("\ufeff" + HEADER + "\n" + row_text("A") + "\n").encode()},
        [("A", "a.csv", 2)], [],
    ),
    "CRLF with quoted commas and newlines": Case(
        {"a.csv": (HEADER + "\r\n" + row_text("A", "one, two\nthree") + "\r\n" + row_text("B,\"quoted\"") + "\r\n").encode()},
        [("A", "a.csv", 2), ('B,"quoted"', "a.csv", 4)], [],
    ),
    "invalid UTF-8": Case(
        {"a.csv": (HEADER + "\n" + row_text("A") + "\n").encode() + row_text("B").encode().replace(b"B", b"B\xff\xfe", 1) + b"\n" + row_text("C").encode() + b"\n"},
        [("A", "a.csv", 2), ("C", "a.csv", 4)], [("a.csv", 3, "malformed CSV row: invalid encoding")],
    ),
    "no-break spaces around values (only ASCII spaces are trimmed)": Case(
        {"a.csv": (HEADER + "\n" + csv_text([line("A", quantity="2\u00a0")]).split("\n", 1)[1]
                   + csv_text([line("\u00a0B", quantity=" 3 ")]).split("\n", 1)[1]).encode()},
        [("\u00a0B", "a.csv", 3)], [("a.csv", 2, "quantity is not an integer")],
    ),
    "header only": Case({"a.csv": (HEADER + "\n").encode(), "b.csv": HEADER.encode()}, [], []),
    "extra columns": Case(
        {"a.csv": (HEADER + ",note,Note_1\n" + row_text("A") + ",hello,x\n").encode()},
        [("A", "a.csv", 2)], [],
    ),
    "a duplicated extra column": Case(
        {"a.csv": (HEADER + ",note,note\n" + row_text("A") + ",x,y\n").encode()},
        [("A", "a.csv", 2)], [],
    ),
    "a huge field (3 MB, above DuckDB's 2 MB default line limit)": Case(
        {"a.csv": (HEADER + "\n" + row_text("A", "x" * 3_000_000) + "\n" + row_text("B") + "\n").encode()},
        [("A", "a.csv", 2), ("B", "a.csv", 3)], [],
    ),
    # more fields than a CSV parser allocates by default (Spark's: 20,480), outside and inside quotes
    "thirty thousand fields in a line, and thirty thousand commas in a quoted field": Case(
        {"a.csv": (HEADER + "\n" + row_text("A") + ",x" * 30_000 + "\n" + row_text("B", "," * 30_000) + "\n").encode()},
        [("B", "a.csv", 3)],
        [("a.csv", 2, "malformed CSV row: too many columns")],
    ),
    "too few and too many fields": Case(
        {"a.csv": (HEADER + "\nB,1,C\n" + row_text("A") + ",surplus\n" + row_text("C") + "\n").encode()},
        [("C", "a.csv", 4)],
        [("a.csv", 2, "malformed CSV row: missing columns"), ("a.csv", 3, "malformed CSV row: too many columns")],
    ),
    "file names with quotes, spaces, non-ASCII and SQL": Case(
        {
            "it's \"quoted\" part.csv": (HEADER + "\n" + row_text("A") + "\n").encode(),
            "ünïcødé 注文.csv.gz": gzip.compress((HEADER + "\n" + row_text("B") + "\n").encode()),
            "x'); DROP TABLE raw.orders; --.csv": (HEADER + "\n" + row_text("C") + "\n").encode(),
        },
        [("A", "it's \"quoted\" part.csv", 2), ("B", "ünïcødé 注文.csv.gz", 2), ("C", "x'); DROP TABLE raw.orders; --.csv", 2)],
        [],
    ),
}


@pytest.mark.parametrize("name", ACCEPTED_CASES)
def test_hostile_export_is_loaded_or_rejected_row_by_row(name, run, landing, warehouse_path, with_other_day):
    case = ACCEPTED_CASES[name]
    landing.export(DAY, case.files)
    result = run(DAY, selection=RAW)
    assert result.success, failure_messages(result)
    loaded = query(warehouse_path, "SELECT order_id, _source_file, _source_line FROM raw.orders WHERE dt = ? ORDER BY 2, 3", [DAY])
    assert sorted(loaded) == sorted(case.loaded)
    rejected = query(warehouse_path, "SELECT _source_file, _source_line, reason, _raw_line FROM raw.orders_rejected WHERE dt = ? ORDER BY 1, 2", [DAY])
    assert [(f, n) for f, n, _, _ in rejected] == [(f, n) for f, n, _ in case.rejected]
    for (_, _, reason, raw_line), (_, _, expected) in zip(rejected, case.rejected):
        assert reason.startswith(expected), reason
        if expected.startswith("malformed CSV row"):
            assert raw_line  # a line that is not CSV is kept as it was read
    if name.startswith("no-break"):  # a row that breaks a rule keeps its fields as text
        assert query(warehouse_path, "SELECT quantity FROM raw.orders_rejected WHERE dt = ?", [DAY]) == [("2\u00a0",)]
    data_rows = len(case.loaded) + len(case.rejected)
    assert counts(warehouse_path) == (len(case.loaded), len(case.rejected)) and sum(counts(warehouse_path)) == data_rows
    if name.startswith("a huge field"):
        assert query(warehouse_path, "SELECT length(product_id) FROM raw.orders WHERE order_id = 'A'") == [(3_000_000,)]
    if name.startswith("CRLF"):
        assert query(warehouse_path, "SELECT product_id FROM raw.orders WHERE order_id = 'A'") == [("one, two\nthree",)]


FAILING_CASES = {
    "an empty file": ({"b.csv": b""}, "b.csv line 1 (header): the file is empty"),
    "a required column twice": (
        {"b.csv": (HEADER + ",Order_ID\n" + row_text("A") + ",B\n").encode()},
        "b.csv line 1 (header): required column 'order_id' appears more than once (columns 1 and 11)",
    ),
    "a truncated gzip": (
        {"b.csv.gz": gzip.compress((HEADER + "\n" + "\n".join(row_text(f"R{i}") for i in range(5000)) + "\n").encode())[:-200]},
        "b.csv.gz: the file is corrupt",
    ),
    "a header without required columns": ({"b.csv": b"id,amount\n1,2\n"}, "b.csv line 1 (header): missing required columns"),
}


@pytest.mark.parametrize("name", FAILING_CASES)
def test_hostile_file_fails_the_day_naming_the_file_and_changes_nothing(name, run, landing, warehouse_path, with_other_day):
    landing.export(DAY, {"a.csv": csv_text([line("KEPT")])})
    assert run(DAY, selection=RAW).success
    before = snapshot(warehouse_path)
    files, expected = FAILING_CASES[name]
    landing.export(DAY, files)  # a.csv is still there, fine; the bad file joins it
    result = run(DAY, selection=RAW)
    assert not result.success
    message = failure_messages(result)
    assert f"dt={DAY}/{expected}" in message, message
    assert "Traceback" not in message
    assert snapshot(warehouse_path) == before
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []  # permanent: fails at once


# --- random exports -------------------------------------------------------------------------------

# (field, bad value, the reason it must get); None: the row is valid.
DEFECTS = [
    None,
    ("order_id", "   ", "order_id is empty"),
    ("line_number", "1.5", "line_number is not an integer"),
    ("line_number", "0", "line_number is below 1"),
    ("quantity", "1e3", "quantity is not an integer"),
    ("quantity", "0", "quantity is below 1"),
    ("unit_price", "1.005", "unit_price is not a decimal(18,2)"),
    ("unit_price", "-1.00", "unit_price is negative"),
    ("discount", "999999999.00", "discount exceeds quantity x unit_price"),
    ("status", "Placed", "status is not one of"),
    ("ordered_at", "2024-03-01 12:00:00", "ordered_at is not an ISO-8601 timestamp with offset"),
    ("ordered_at", "2024-03-01T23:30:00-02:00", "ordered_at is not on the export day (UTC)"),
    ("updated_at", "yesterday", "updated_at is not an ISO-8601 timestamp with offset"),
]

# Free text as an exporter may write it: commas, quotes, newlines, any script; no NUL and no bare CR
# (neither is a line of its own in the contract's sense).
free_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=12)
padded = st.sampled_from(["{}", " {}", "{} ", "  {}  "])


@st.composite
def order_rows(draw):
    fields = {
        "order_id": "O" + draw(free_text),
        "line_number": str(draw(st.integers(1, 99))),
        "customer_id": "C" + draw(free_text),
        "product_id": draw(free_text) + "P",
        "quantity": str(draw(st.integers(1, 50))),
        "unit_price": draw(st.sampled_from(["0", "0.5", "12.34", ".99", "1000000.00", "7."])),
        "discount": "0.00",
        "status": draw(st.sampled_from(["placed", "shipped", "delivered", "cancelled", "refunded"])),
        "ordered_at": draw(st.sampled_from([f"{DAY}T00:00:00Z", f"{DAY}T12:34:56.789+00:00", f"{DAY}T23:59:59+0000", f"{DAY} 08:00:00+01:00"])),
        "updated_at": f"{DAY}T13:00:00+00:00",
    }
    for numeric in ("line_number", "quantity", "unit_price"):
        fields[numeric] = draw(padded).format(fields[numeric])
    defect = draw(st.sampled_from(DEFECTS))
    if defect:
        fields[defect[0]] = defect[1]
    return fields, (defect[2] if defect else None)


@st.composite
def exports(draw):
    files = {}
    for n in range(draw(st.integers(1, 3))):
        columns = draw(st.permutations(REQUIRED_COLUMNS))
        if draw(st.booleans()):
            columns = [*columns, "comment"]
        files[f"part {n}{draw(st.sampled_from(['.csv', '.csv.gz']))}"] = (
            columns,
            draw(st.lists(order_rows(), max_size=8)),
            draw(st.sampled_from(["\n", "\r\n"])),
            draw(st.booleans()),  # byte-order mark
            draw(free_text),  # the comment column's text
        )
    return files


def finished(directory: Path):
    """The finished export of DAY in `directory` (orders/dt=DAY under a landing root), as the run lists it."""
    (directory / "_SUCCESS").touch()
    return LandingZone(root=str(directory.parent.parent)).finished_export(dt.date.fromisoformat(DAY))


def written_export(directory: Path, spec) -> dict[tuple[str, int], tuple[dict, str | None]]:
    """Write the files; return (file, physical line) -> (fields, expected reason) for every row."""
    expected = {}
    for name, (columns, rows, terminator, bom, comment) in spec.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=terminator)
        writer.writerow(columns)
        for fields, reason in rows:
            line_no = buffer.getvalue().count("\n") + 1
            writer.writerow([fields.get(c, comment) for c in columns])
            expected[(name, line_no)] = (fields, reason)
        data = ("\ufeff" if bom else "") + buffer.getvalue()
        raw = data.encode("utf-8")
        (directory / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=exports())
def test_random_exports_every_row_loaded_or_rejected_at_its_line(spec):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "landing" / "orders" / f"dt={DAY}"
        directory.mkdir(parents=True)
        expected = written_export(directory, spec)
        export = finished(directory)
        warehouse = DuckDBWarehouse(path=str(Path(tmp) / "w.duckdb"))
        with warehouse.connect() as con:
            summary = load_days(con, [export], "run-1", dt.datetime.now(dt.timezone.utc))
            loaded = {
                (f, n): oid
                for f, n, oid in con.execute("SELECT _source_file, _source_line, order_id FROM raw.orders").fetchall()
            }
            rejected = {
                (f, n): (reason, oid)
                for f, n, reason, oid in con.execute(
                    "SELECT _source_file, _source_line, reason, order_id FROM raw.orders_rejected"
                ).fetchall()
            }

    assert summary.rows_loaded + summary.rows_rejected == len(expected)
    assert len(loaded) + len(rejected) == len(expected)  # one row per (file, line): none lost, none twice
    for key, (fields, reason) in expected.items():
        if reason is None:
            assert loaded.get(key) == fields["order_id"].strip(" "), (key, fields, rejected.get(key))
        else:
            assert key in rejected, (key, fields, reason)
            got, order_id = rejected[key]
            assert reason in got, (key, got)
            assert order_id == fields["order_id"]  # the row's fields kept as text


def test_random_export_written_twice_loads_once():
    """Re-running a day, whatever the export holds, leaves what one run leaves."""
    spec = {"a.csv": (list(REQUIRED_COLUMNS), [(line(f"O{i}", quantity=str(i % 3)), None) for i in range(30)], "\n", False, "")}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "landing" / "orders" / f"dt={DAY}"
        directory.mkdir(parents=True)
        written_export(directory, spec)
        export = finished(directory)
        warehouse = DuckDBWarehouse(path=str(Path(tmp) / "w.duckdb"))
        tables = []
        for attempt in range(3):
            with warehouse.connect() as con:
                load_days(con, [export], f"run-{attempt}", dt.datetime(2024, 3, 2, tzinfo=dt.timezone.utc))
                tables.append(
                    (
                        con.execute("SELECT * EXCLUDE (_run_id) FROM raw.orders ORDER BY _source_line").fetchall(),
                        con.execute("SELECT * EXCLUDE (_run_id) FROM raw.orders_rejected ORDER BY _source_line").fetchall(),
                    )
                )
    assert tables[0] == tables[1] == tables[2]
    assert len(tables[0][0]) == 20 and len(tables[0][1]) == 10  # quantity 0 for every third line


def test_bad_export_error_is_raised_before_anything_is_written(tmp_path):
    directory = tmp_path / "landing" / "orders" / f"dt={DAY}"
    directory.mkdir(parents=True)
    (directory / "a.csv").write_text(csv_text([line("A")]))
    (directory / "b.csv").write_text("order_id\nX\n")
    warehouse = DuckDBWarehouse(path=str(tmp_path / "w.duckdb"))
    export = finished(directory)
    with warehouse.connect() as con, pytest.raises(BadExportError, match=r"dt=2024-03-01/b.csv line 1 \(header\)"):
        load_days(con, [export], "run-1", dt.datetime.now(dt.timezone.utc))
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw'").fetchall() == [(0,)]
