"""Helpers of test_spark_engine.py: hand-written export files whose every line is known, the
`dagster` CLI on either engine, the tables of a warehouse as rows, and the Spark tables' folders as
content (to prove that a day did or did not change)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import datetime as dt
import hashlib
import io
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from shopflow_assets.contract.spark_layout import Catalog, thrift_sql
from shopflow_assets.engines import DuckDBWarehouse, SparkWarehouse, Warehouse
from shopflow_assets.engines.spark import TABLES as SPARK_TABLES
from shopflow_assets.contract.export import MALFORMED_ROW, REJECT_REASONS, REQUIRED_COLUMNS

from .conftest import BIN, REPO_ROOT

# --- the CLI ----------------------------------------------------------------------------------


@dataclass
class CliRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def tail(self, chars: int = 6000) -> str:
        return f"$ dagster {' '.join(self.args)}  (exit {self.returncode}, {self.seconds:.0f} s)\n" + self.output[-chars:]


def materialize_cli(env: dict[str, str], *args: str, timeout: float = 1200) -> CliRun:
    """`dagster asset materialize -m shopflow_assets.definitions ARGS` from the repository root."""
    argv = ["asset", "materialize", "-m", "shopflow_assets.definitions", *args]
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "dagster"), *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return CliRun(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - started)


# --- the tables -------------------------------------------------------------------------------

TABLE_NAMES = tuple(SPARK_TABLES)  # raw.orders, raw.orders_rejected, analytics.fact_sales, analytics.daily_revenue
NOT_COMPARED = {"_loaded_at", "_run_id"}  # the only columns that differ between engines


def columns_of(warehouse: Warehouse, table: str) -> dict[str, str]:
    """column -> type of a table as the warehouse's read() shows it."""
    with warehouse.read() as con:
        return {name: type_ for name, type_, *_ in con.execute(f"DESCRIBE {table}").fetchall()}


def rows_of(warehouse: Warehouse, table: str, columns: Sequence[str], where: str = "") -> list[tuple]:
    """The table's rows (the columns named, in that order), sorted: comparable across engines."""
    with warehouse.read() as con:
        names = [name for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema || '.' || table_name = ?", [table]
        ).fetchall()]
        if not names:  # Spark: a table with no Parquet file yet is not there
            return []
        return con.execute(
            f"SELECT {', '.join(columns)} FROM {table} {'WHERE ' + where if where else ''} ORDER BY ALL"
        ).fetchall()


def spark_folders(spark_dir: Path, day: str) -> dict[str, Path]:
    """table -> its folder of day D in the Spark warehouse (docs/contract.md "Engines", a must)."""
    return {table: spark_dir / folder / f"dt={day}" for table, folder in SPARK_TABLES.items()}


def live_locations(warehouse: SparkWarehouse, day: str) -> dict[str, str | None]:
    """table -> where the catalog says day D of it is (None: the table has no such day)."""
    with warehouse.thrift_catalog() as catalog:
        return {table: catalog.location(table, day) if catalog.exists(table) else None for table in SPARK_TABLES}


@contextlib.contextmanager
def catalog_at(thrift: str) -> Iterator[Catalog]:
    """The cluster's shared catalog, through its Thrift server at host:port."""
    with thrift_sql(thrift) as run:
        yield Catalog(run)


def live_folders(thrift: str, table: str) -> dict[str, Path]:
    """day -> the folder of its live version, of a table in the catalog (none if no such table)."""
    with catalog_at(thrift) as catalog:
        if not catalog.exists(table):
            return {}
        return {day: Path(urlsplit(location).path) for day, location in catalog.locations(table).items()}


def reset_catalog(thrift: str) -> None:
    """The shared catalog without the four tables (their files stay): a test with a warehouse of
    its own starts from an empty one."""
    with catalog_at(thrift) as catalog:
        for table in SPARK_TABLES:
            if catalog.exists(table):
                catalog.run(f"DROP TABLE {table}")


def folder_content(spark_dir: Path, day: str) -> dict[str, str]:
    """Every file of day D's folders of the four tables -> the sha256 of its bytes."""
    found = {}
    for folder in spark_folders(spark_dir, day).values():
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                found[str(path.relative_to(spark_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def spark_warehouse(master: str, spark_dir: Path | str, thrift: str = "127.0.0.1:10000", remote: str = "") -> SparkWarehouse:
    return SparkWarehouse(master=master, warehouse_dir=str(spark_dir), thrift=thrift, remote=remote)


def java_trap(folder: Path) -> tuple[Path, Path]:
    """A bin folder whose `java` records its arguments in a file and fails: first on a Dagster
    process's PATH (JAVA_HOME unset), it proves that nothing there starts a JVM. (bin, calls file)"""
    trap, calls = folder / "java-trap", folder / "java-calls.log"
    trap.mkdir()
    (trap / "java").write_text(f'#!/bin/sh\necho "java $*" >> "{calls}"\nexit 1\n')
    (trap / "java").chmod(0o755)
    return trap, calls


def duckdb_warehouse(path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(path))


def rule_names(reasons: Sequence[str]) -> set[str]:
    """The rules named by a set of reject reasons ("; "-joined; a malformed row's reason has detail)."""
    rules = set()
    for reason in reasons:
        if reason.startswith(MALFORMED_ROW):
            rules.add(MALFORMED_ROW)
        else:
            rules.update(reason.split("; "))
    return rules


# --- hand-written exports ---------------------------------------------------------------------


def row(order_id: str, day: str, line_number: int | str = 1, **fields: str | int) -> dict[str, str]:
    """A valid order line of `day` unless `fields` break it (every value text)."""
    values = {
        "order_id": order_id,
        "line_number": str(line_number),
        "customer_id": "C-9",
        "product_id": "P-9",
        "quantity": "1",
        "unit_price": "10.00",
        "discount": "0.00",
        "status": "placed",
        "ordered_at": f"{day}T12:00:00+00:00",
        "updated_at": f"{day}T12:00:00+00:00",
    }
    values.update({k: str(v) for k, v in fields.items()})
    return values


@dataclass
class ExportFile:
    """One CSV file written record by record; remembers the physical line each record starts on."""

    name: str
    columns: list[str]
    newline: str = "\n"
    bom: bool = False
    records: list[tuple[str, int]] = field(default_factory=list)  # (text with its newline, first line)
    _next_line: int = 2  # the header is line 1

    def add(self, values: dict[str, str]) -> int:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=self.newline).writerow([values[c] for c in self.columns])
        return self.add_raw(buffer.getvalue())

    def add_raw(self, text: str) -> int:
        """A line as written (a malformed one, say); returns its line number."""
        if not text.endswith(self.newline):
            text += self.newline
        line = self._next_line
        self.records.append((text, line))
        self._next_line += text.count("\n")
        return line

    def content(self) -> bytes:
        header = io.StringIO()
        csv.writer(header, lineterminator=self.newline).writerow(self.columns)
        text = header.getvalue() + "".join(text for text, _ in self.records)
        return ("\ufeff" if self.bom else "").encode() + text.encode("utf-8")


@dataclass
class EdgeExport:
    """Files of one day with every case of the contract: the data and what each engine must make
    of it, independently of either engine."""

    files: list[ExportFile]
    winners: dict[str, dict[str, str]]  # order_id -> the winning version's fields (line_number 1)
    rejected_at: dict[tuple[str, int], str]  # (file, line) -> the rule broken ("malformed CSV row")
    loaded_at: dict[str, tuple[str, int]]  # order_id (line 1's first version) -> (file, line)


def edge_export(day: str) -> EdgeExport:
    """Several files, one gzipped, shuffled columns, one with CRLF and a byte-order mark; re-emitted
    updates; exact ties broken by file name (as text: c9 after c10) then line; one row for every
    reject rule plus one breaking several; lines with too few and too many fields; quoted newlines
    and commas and doubled quotes inside fields, in valid and in rejected rows."""
    previous_day = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).isoformat()
    shuffled = ["status", "updated_at", "quantity", "order_id", "discount", "ordered_at", "product_id",
                "line_number", "unit_price", "customer_id"]
    a = ExportFile("x-edge-a.csv", list(REQUIRED_COLUMNS))
    b = ExportFile("x-edge-b.csv.gz", shuffled)
    c9 = ExportFile("x-edge-c9.csv", list(reversed(REQUIRED_COLUMNS)), newline="\r\n", bom=True)
    c10 = ExportFile("x-edge-c10.csv", list(REQUIRED_COLUMNS))
    winners: dict[str, dict[str, str]] = {}
    rejected_at: dict[tuple[str, int], str] = {}
    loaded_at: dict[str, tuple[str, int]] = {}

    def at(time_: str) -> str:
        return f"{day}T{time_}"

    # Re-emitted updates: the latest updated_at wins, whatever the file order.
    a.add(row("UPD-1", day, status="placed", updated_at=at("08:00:00+00:00")))
    winners["UPD-1"] = b_upd = row("UPD-1", day, status="shipped", quantity=2, updated_at=at("09:30:00+00:00"))
    b.add(b_upd)
    winners["UPD-2"] = a_upd = row("UPD-2", day, status="delivered", quantity=4, updated_at=at("10:00:00+00:00"))
    a.add(a_upd)
    b.add(row("UPD-2", day, status="placed", quantity=9, updated_at=at("07:00:00+00:00")))
    # A later version that is cancelled: the line leaves fact_sales.
    a.add(row("UPD-3", day, quantity=3))
    b.add(row("UPD-3", day, status="cancelled", quantity=3, updated_at=at("13:00:00+00:00")))
    winners["UPD-3"] = {}

    # Exact ties. The same instant in two offsets, in two files: the later file name wins.
    a.add(row("TIE-FILE", day, quantity=1, updated_at=at("10:00:00Z")))
    winners["TIE-FILE"] = tie = row("TIE-FILE", day, quantity=3, updated_at=at("11:00:00+01:00"))
    b.add(tie)
    # The same updated_at twice in one file: the later line wins.
    a.add(row("TIE-LINE", day, quantity=5, updated_at=at("11:00:00Z")))
    a.add(row("TIE-LINE", day, quantity=6, unit_price="1.00", updated_at=at("11:00:00Z")))
    winners["TIE-LINE"] = row("TIE-LINE", day, quantity=6, unit_price="1.00", updated_at=at("11:00:00Z"))
    # File names compare as text: x-edge-c9.csv sorts after x-edge-c10.csv.
    c10.add(row("TIE-SORT", day, quantity=7, updated_at=at("12:30:00Z")))
    winners["TIE-SORT"] = sort_winner = row("TIE-SORT", day, quantity=8, updated_at=at("12:30:00Z"))
    c9.add(sort_winner)
    # Exact re-sends of a whole line (same values, two files).
    a.add(row("RESEND", day, quantity=2))
    winners["RESEND"] = resend = row("RESEND", day, quantity=2)
    c10.add(resend)

    # Quoted newlines, commas and quotes inside fields: the record's line is its first line, and
    # the next record's line counts the newlines.
    winners["QNL"] = qnl = row("QNL", day, customer_id="C-multi\nline\ncustomer", product_id='P-"quoted", too')
    loaded_at["QNL"] = ("x-edge-a.csv", a.add(qnl))
    winners["QCOMMA"] = qcomma = row("QCOMMA", day, product_id="P-1,5", discount="1.50")
    loaded_at["QCOMMA"] = ("x-edge-a.csv", a.add(qcomma))
    rejected_at[("x-edge-a.csv", a.add(row("QNL-BAD", day, status="lost\nand found")))] = (
        "status is not one of placed, shipped, delivered, cancelled, refunded"
    )
    winners["AFTER"] = after = row("AFTER", day, customer_id="C-after")
    loaded_at["AFTER"] = ("x-edge-a.csv", a.add(after))
    winners["CRLF-QNL"] = crlf = row("CRLF-QNL", day, customer_id="C-crlf\r\nline")
    loaded_at["CRLF-QNL"] = ("x-edge-c9.csv", c9.add(crlf))
    winners["CRLF-AFTER"] = crlf_after = row("CRLF-AFTER", day)
    loaded_at["CRLF-AFTER"] = ("x-edge-c9.csv", c9.add(crlf_after))

    # Malformed lines: too few fields, too many fields.
    rejected_at[("x-edge-a.csv", a.add_raw(f"MAL-FEW,1,C-1,P-1"))] = MALFORMED_ROW
    too_many = io.StringIO()
    csv.writer(too_many, lineterminator="\n").writerow([*row("MAL-MANY", day).values(), "surplus"])
    rejected_at[("x-edge-a.csv", a.add_raw(too_many.getvalue()))] = MALFORMED_ROW
    rejected_at[("x-edge-c9.csv", c9.add_raw("MAL-CRLF,1"))] = MALFORMED_ROW

    # One row for every rule, in the gzipped file with shuffled columns (and one in the CRLF file).
    bad = [
        ({"order_id": ""}, "order_id is empty"),
        ({"line_number": "one"}, "line_number is not an integer"),
        ({"line_number": "0"}, "line_number is below 1"),
        ({"customer_id": ""}, "customer_id is empty"),
        ({"product_id": "  "}, "product_id is empty"),
        ({"quantity": "two"}, "quantity is not an integer"),
        ({"quantity": "1.5"}, "quantity is not an integer"),
        ({"quantity": "0"}, "quantity is below 1"),
        ({"unit_price": "12.345"}, "unit_price is not a decimal(18,2)"),
        ({"unit_price": "-1.00"}, "unit_price is negative"),
        ({"discount": "ten"}, "discount is not a decimal(18,2)"),
        ({"discount": "-0.50"}, "discount is negative"),
        ({"discount": "99999.00"}, "discount exceeds quantity x unit_price"),
        ({"status": "lost"}, "status is not one of placed, shipped, delivered, cancelled, refunded"),
        ({"status": "Placed"}, "status is not one of placed, shipped, delivered, cancelled, refunded"),
        ({"ordered_at": "yesterday"}, "ordered_at is not an ISO-8601 timestamp with offset"),
        ({"ordered_at": f"{day}T12:00:00"}, "ordered_at is not an ISO-8601 timestamp with offset"),
        ({"ordered_at": f"{previous_day}T23:30:00+00:00"}, "ordered_at is not on the export day (UTC)"),
        ({"ordered_at": f"{day}T00:30:00+01:00"}, "ordered_at is not on the export day (UTC)"),
        ({"updated_at": "2024-13-01T00:00:00Z"}, "updated_at is not an ISO-8601 timestamp with offset"),
    ]
    for i, (fields, reason) in enumerate(bad):
        values = {**row(f"BAD-{i:02d}", day), **fields}
        rejected_at[("x-edge-b.csv.gz", b.add(values))] = reason
    several = row("BAD-SEVERAL", day, quantity="0", status="lost")
    rejected_at[("x-edge-b.csv.gz", b.add(several))] = "quantity is below 1; status is not one of placed, shipped, delivered, cancelled, refunded"
    rejected_at[("x-edge-c9.csv", c9.add(row("BAD-CRLF", day, unit_price="abc")))] = "unit_price is not a decimal(18,2)"
    # Spaces around values are the exporter's padding, not an error.
    winners["PADDED"] = padded = row("PADDED", day, quantity=" 2 ", unit_price=" 3.50")
    b.add(padded)

    assert rule_names(rejected_at.values()) == set(REJECT_REASONS), "every rule has a row"
    return EdgeExport([a, b, c9, c10], winners, rejected_at, loaded_at)


def data_records(day_dir: Path) -> int:
    """The CSV records below the header in a day's export files (Python's csv module counting)."""
    total = 0
    for path in sorted(day_dir.glob("*.csv*")):
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        total += sum(1 for record in records[1:] if record)
    return total
