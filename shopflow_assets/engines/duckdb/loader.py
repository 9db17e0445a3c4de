"""The ingest of order exports into `raw.orders`, as DuckDB SQL over the files.

No order row becomes a Python object: Python only lists files and reads their headers, DuckDB reads,
validates and publishes the rows. The flow for a set of days:

1. check every file's header (a missing required column fails before anything is written);
2. read each file once into a temp table: every value checked against the export contract and cast
   to its type in the same pass, all broken rules of a row collected, the text kept for the broken
   rows only; lines the CSV reader cannot parse are skipped; count each file's physical lines;
3. refuse a file whose share of rejected lines is above SHOPFLOW_MAX_REJECTED_SHARE; for the other
   files that had unparseable lines, read them again to collect those (DuckDB's rejects tables);
4. give every record its physical line (header = line 1), counting quoted newlines;
5. if no day's files changed meanwhile, publish: in one transaction, replace exactly those days in
   `raw.orders` (a copy of the typed rows) and `raw.orders_rejected`.

A file is read by its exact path (a name is never a pattern) with the compression its name says.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import gzip
import itertools
import os
import re
import stat
import time
import zlib
from typing import Callable, Iterator, Sequence

import duckdb

from shopflow_assets.engines.base import IngestCancelled, LoadSummary, OutOfMemory
from shopflow_assets.contract.landing import ExportFile
from shopflow_assets.contract.raw_schema import duckdb_ddl
from shopflow_assets.contract.landing import DayExport

from shopflow_assets.contract.export import (  # noqa: F401  (re-exported: the contract's names)
    DUCKDB,
    MALFORMED_ROW,
    REJECT_REASONS,
    REQUIRED_COLUMNS,
    STATUSES,
    TYPED_COLUMNS,
    BadExportError,
    ExportChangedError,
    MissingColumnsError,
    display_name,
    read_header,
    rejected_share_error,
    required_positions,
)

# read_csv caps a line at 2 MB by default; a long free-text field must not fail the day. Its buffers
# must hold a whole line, and no more than that: a .csv.gz is read into whole buffers, two at a
# time, whatever its size, and they count against SHOPFLOW_DUCKDB_MEMORY_LIMIT.
MAX_LINE_BYTES = 32 * 1024 * 1024
# The dialect is fixed by the contract; only the header is read from the file. Compression follows
# the file's name in any case (.CSV.GZ too), not DuckDB's guess from the path.
CSV_OPTIONS = (
    "header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"', "
    f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {MAX_LINE_BYTES + (1 << 20)}, "
    "encoding = 'utf-8', compression = $compression, hive_partitioning = false"
)
# Unparseable lines are only collected (in DuckDB's rejects tables, which its memory limit does not
# bound) for a file that has some and is not refused for its share of rejected lines.
REJECTS_OPTIONS = (
    "store_rejects = true, rejects_table = '_shopflow_csv_errors', "
    "rejects_scan = '_shopflow_csv_scans', rejects_limit = 0"
)
RAW_TABLES_DDL = duckdb_ddl()


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(RAW_TABLES_DDL)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal_pattern(path: str) -> str:
    """A path as read_csv's file argument, matching that one file: read_csv takes a glob pattern,
    in which `*`, `?` and `[` are special; each goes in brackets, where it is itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def _compression(f: ExportFile) -> str:
    return "gzip" if f.gzip else "none"


class _Reader:
    """DuckDB errors of reading one file, said in the words of what to do."""

    def __init__(self, display: str):
        self.display = display

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or not isinstance(error, duckdb.Error):
            return False
        raise engine_error(error, f"reading {self.display}") or _bad_file(self.display, error) from None


def engine_error(error: duckdb.Error, doing: str) -> Exception | None:
    """The error to raise for a DuckDB error that is not the file's fault, or None if it may be."""
    if isinstance(error, duckdb.OutOfMemoryException):
        return OutOfMemory(
            f"DuckDB ran out of memory {doing} (SHOPFLOW_DUCKDB_MEMORY_LIMIT): "
            f"{_first_line(error)}. Retried; if it persists, raise SHOPFLOW_DUCKDB_MEMORY_LIMIT "
            "or free memory on the host."
        )
    if isinstance(error, duckdb.InterruptException):
        return IngestCancelled(f"Interrupted while {doing}: the run was cancelled.")
    if isinstance(error, duckdb.IOException) and not _is_corrupt_file(error):
        return error  # the file system or a lock: transient, the step is retried
    return None


def _bad_file(display: str, error: duckdb.Error) -> BadExportError:
    if isinstance(error, duckdb.IOException):
        return BadExportError(
            f"{display}: the file is corrupt: {_first_line(error)}. Re-export the file, then re-run the day."
        )
    return BadExportError(
        f"{display}: DuckDB cannot read it as CSV: {_first_line(error)}. "
        "Fix or re-export the file, then re-run the day."
    )


def _header(con: duckdb.DuckDBPyConnection, f: ExportFile, display: str) -> list[str]:
    """The file's column names as written. The read's columns are then named by position (c0,
    c1, ...), whatever the header says."""
    # The pattern must name exactly this file: a name is a name, never a pattern.
    found = [r[0] for r in con.execute("SELECT file FROM glob($path)", {"path": literal_pattern(f.path)}).fetchall()]
    if found != [f.path]:
        raise RuntimeError(f"the file {f.path!r} was not found as itself (found {len(found)}): retried")
    return read_header(f.path, f.gzip, display)


def check_headers(
    con: duckdb.DuckDBPyConnection, exports: Sequence[DayExport]
) -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """Every file's columns (named by position), which holds each required column, and the names
    as written, by path; all problems in one error before anything is read."""
    headers: dict[str, tuple[list[str], dict[str, str], list[str]]] = {}
    problems: list[str] = []
    for export in exports:
        for f in export.files:
            display = display_name(export.folder, f.name)
            try:
                written = _header(con, f, display)
                positions = required_positions(str(export.day), display, written)
                names = [f"c{i}" for i in range(len(written))]
                as_written = [name.lstrip("\ufeff") for name in written]
                headers[f.path] = (names, {c: names[p] for c, p in positions.items()}, as_written)
            except BadExportError as e:
                problems.append(str(e))
    if problems:
        raise BadExportError("\n".join(problems))
    return headers


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _newline_count(expr: str) -> str:
    return f"coalesce(length({expr}) - length(replace({expr}, chr(10), '')), 0)"


def _newlines(columns: Sequence[str]) -> str:
    """The newlines inside a record's fields. Counting is dear and quoted newlines are rare: count
    only in records that have one."""
    return (
        f"CASE WHEN contains(concat({', '.join(columns)}), chr(10)) "
        f"THEN {' + '.join(_newline_count(c) for c in columns)} ELSE 0 END"
    )


def _stage_files(
    con: duckdb.DuckDBPyConnection,
    first_idx: int,
    day: dt.date,
    files: Sequence[ExportFile],
    displays: Sequence[str],
    header: Sequence[str],
    columns: dict[str, str],
) -> None:
    """Stage files of one day, one header and one compression, numbered first_idx, first_idx + 1,
    ... in order.

    They are read in one statement, whose threads then share the files' work (a file read alone
    leaves threads idle at its start and end). Should that fail, nothing of it remains (the
    statement is undone, DuckDB's rejects tables too) and the files are read one by one, so that
    the error names the file."""
    extra = [h for h in header if h not in set(columns.values())]
    compression = _compression(files[0])
    stage = {"day": day, "compression": compression, "columns": {name: "VARCHAR" for name in header}}
    if len(files) > 1:
        try:
            paths = [literal_pattern(f.path) for f in files]
            con.execute(_stage_sql(columns, extra, several=True), {**stage, "file_idx": first_idx, "path": paths})
            return
        except duckdb.Error as error:
            failure = engine_error(error, f"reading {displays[0]} and {len(files) - 1} other file(s)")
            if failure is not None and not isinstance(failure, duckdb.IOException):
                raise failure from None
    for offset, (f, display) in enumerate(zip(files, displays)):
        one = {"file_idx": first_idx + offset, "path": literal_pattern(f.path)}
        with _Reader(display):
            con.execute(_stage_sql(columns, extra), {**stage, **one})


LINE_COUNT_CHUNK = 1 << 20


@contextlib.contextmanager
def _open_export(f: ExportFile, display: str) -> Iterator:
    """The file's bytes, decompressed, if it is still a regular file (a link or a FIFO put in its
    place since the listing is not opened)."""
    try:
        fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise ExportChangedError(f"{display} changed while it was read ({error.strerror})") from None
    with os.fdopen(fd, "rb") as raw:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ExportChangedError(f"{display} is no longer a regular file")
        try:
            yield gzip.GzipFile(fileobj=raw) if f.gzip else raw
        except (OSError, EOFError, zlib.error) as error:
            raise BadExportError(
                f"{display}: the file is corrupt: {error}. Re-export the file, then re-run the day."
            ) from None


def count_lines(f: ExportFile, display: str) -> tuple[int, int]:
    """(physical lines, blank lines) of a file, counted as bytes (`wc -l`, decompressed): no
    record is parsed. DuckDB's reader skips blank lines and, with ignore_errors, lines it cannot
    parse (invalid UTF-8 among them); these counts are what it cannot say."""
    lines = blank = 0
    last, previous = b"", b""
    with _open_export(f, display) as stream:
        while chunk := stream.read(LINE_COUNT_CHUNK):
            lines += chunk.count(b"\n")
            joined = previous + chunk  # a blank line may straddle two chunks
            if b"\n\n" in joined or b"\n\r\n" in joined:
                blank += len(_BLANK_LINE.findall(chunk, 0)) + _blank_at_start(previous, chunk)
            previous, last = chunk[-2:], chunk
    if last and not last.endswith(b"\n"):
        lines += 1  # a last line without its newline
    return lines, blank


def blank_slots(f: ExportFile, display: str) -> Iterator[int]:
    """The record number DuckDB gives each blank line of the file (its reader skips them, but
    numbers the lines after them as if they were records): the physical line less the newlines
    inside quoted fields before it. Only for the rare file that has blank lines."""
    physical = quoted = 0
    inside = False
    with _open_export(f, display) as stream:
        for raw in stream:
            physical += 1
            if not inside and raw in (b"\n", b"\r\n"):
                yield physical - quoted
                continue
            if raw.count(b'"') % 2:
                inside = not inside
            if inside and raw.endswith(b"\n"):
                quoted += 1


# A blank line: a line end right after a line end (CR allowed), within a chunk.
_BLANK_LINE = re.compile(rb"(?<=\n)\r?\n")


def _blank_at_start(previous: bytes, chunk: bytes) -> int:
    """A blank line whose start is in the previous chunk's end and whose end starts this chunk."""
    return int(
        (previous.endswith(b"\n") and (chunk.startswith(b"\n") or chunk.startswith(b"\r\n")))
        or (previous.endswith(b"\n\r") and chunk.startswith(b"\n"))
    )


def _is_corrupt_file(error: duckdb.IOException) -> bool:
    """A truncated or damaged .csv.gz: the same on every attempt, so not worth a retry."""
    return "gzip" in str(error).lower()


# Where the whole row matches at once, no column is matched on its own (contract/export.py).
_TYPED_COLUMNS = ",\n               ".join(DUCKDB.typed_columns(matched="_matched"))
_TYPED_MATCH = DUCKDB.typed_row_match()
_REASON_BITS = DUCKDB.reason_bits()
# A row that broke no rule has no newline in its typed columns (each matched its pattern, spaces
# aside) nor in its status (one of the statuses): only its text columns can hold one.
_CLEAN_ROW_TEXT = [c for c in REQUIRED_COLUMNS if c not in TYPED_COLUMNS and c != "status"]


def _stage_sql(columns: dict[str, str], extra: Sequence[str], several: bool = False) -> str:
    """One pass over a file: every value is checked against the contract and cast once; the typed
    row is kept for publishing and, when it broke a rule, its fields' text (for `raw.orders_rejected`).

    No window numbers the records (it would run the pass on one thread): the stage is appended in
    file order (DuckDB preserves insertion order), so a record's number is its rowid less the rowid
    of its file's first record, plus one. `several`: $path is a list of files, numbered from
    $file_idx on in the order of the list."""
    picked = ", ".join(f"{quote_ident(columns[c])} AS {c}" for c in REQUIRED_COLUMNS)
    if several:
        picked = f"file_index AS _file, {picked}"
    others = [f"_extra_{i}" for i in range(len(extra))]
    picked_others = "".join(f", {quote_ident(h)} AS {o}" for h, o in zip(extra, others))
    return f"""
INSERT INTO _shopflow_stage
SELECT {"$file_idx + _file" if several else "$file_idx"},
       CASE WHEN reason_bits = 0 THEN {_newlines([*_CLEAN_ROW_TEXT, *others])}
            ELSE {_newlines([*REQUIRED_COLUMNS, *others])} END,
       {", ".join(f"t_{c}" if c != "status" else "status" for c in REQUIRED_COLUMNS)},
       reason_bits, CASE WHEN reason_bits <> 0 THEN [{", ".join(REQUIRED_COLUMNS)}] END
FROM (
    SELECT *, {_REASON_BITS} AS reason_bits
    FROM (
        SELECT *, CAST($day AS DATE) AS dt,
               {_TYPED_COLUMNS}
        FROM (
            SELECT *, {_TYPED_MATCH} AS _matched
            FROM (
                SELECT {picked}{picked_others}
                FROM read_csv($path, {CSV_OPTIONS}, ignore_errors = true, auto_detect = false, columns = $columns)
            )
        )
    )
)
"""


_CREATE_STAGE = f"""
CREATE OR REPLACE TEMP TABLE _shopflow_files (
    file_idx INTEGER, dt DATE, path VARCHAR, name VARCHAR, first_row BIGINT,
    header VARCHAR[]  -- the column names as written: the reader's are c0, c1, ...
);
CREATE OR REPLACE TEMP TABLE _shopflow_line_counts (file_idx INTEGER, lines BIGINT, blank BIGINT);
CREATE OR REPLACE TEMP TABLE _shopflow_blank_slots (file_idx INTEGER, slot BIGINT);
CREATE OR REPLACE TEMP TABLE _shopflow_stage (
    file_idx INTEGER, _newlines BIGINT,
    order_id VARCHAR, line_number INTEGER, customer_id VARCHAR, product_id VARCHAR, quantity INTEGER,
    unit_price DECIMAL(18, 2), discount DECIMAL(18, 2), status VARCHAR, ordered_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ, reason_bits INTEGER,  -- the broken rules (export_contract.reason_bits)
    _text VARCHAR[]  -- a broken row's fields as text, in the order of REQUIRED_COLUMNS (one list
                     -- costs less to stage than ten columns, NULL in all but a few rows)
);
DROP TABLE IF EXISTS _shopflow_csv_errors;
DROP TABLE IF EXISTS _shopflow_csv_scans;
"""

# Each file's records are one run of rows in the stage, in file order (see _stage_sql).
_FIRST_ROWS_SQL = """
UPDATE _shopflow_files f SET first_row = r.first_row
FROM (SELECT file_idx, min(rowid) AS first_row FROM _shopflow_stage GROUP BY file_idx) r
WHERE f.file_idx = r.file_idx
"""
# A staged record's number in its file (1 = the first data record), from its rowid.
_RECORD = "s.rowid - f.first_row + 1"

# Records get their physical line: DuckDB numbers rejected records by line (not counting quoted
# newlines, counting the blank lines it skips) and accepted ones not at all. In the common case the
# line is the record number + 1. Otherwise accepted records fill, in order, the record slots that
# rejected records and blank lines leave free; each record then moves down by the newlines inside
# the records before it.
_LINES_SQL = f"""
CREATE OR REPLACE TEMP TABLE _shopflow_parse_rejects AS
SELECT f.file_idx,
       e.line AS slot,
       '{MALFORMED_ROW}: ' || string_agg(DISTINCT lower(e.error_type), ', ')
           || coalesce(' (from column ' || first(f.header)[CAST(substr(arg_min(e.column_name, e.column_idx), 2) AS INTEGER) + 1] || ')', '') AS reason,
       ltrim(first(e.csv_line ORDER BY e.byte_position), chr(13) || chr(10)) AS raw_line
FROM _shopflow_csv_errors e
JOIN _shopflow_csv_scans s USING (scan_id, file_id)
JOIN _shopflow_files f ON f.path = s.file_path
GROUP BY ALL;

-- Files where record n is line n + 1 (no malformed rows, no newlines inside fields): the common case
-- needs no line table at all.
CREATE OR REPLACE TEMP TABLE _shopflow_simple_files AS
SELECT file_idx FROM _shopflow_files f
WHERE NOT EXISTS (SELECT 1 FROM _shopflow_parse_rejects r WHERE r.file_idx = f.file_idx)
  AND NOT EXISTS (SELECT 1 FROM _shopflow_blank_slots b WHERE b.file_idx = f.file_idx)
  AND NOT EXISTS (SELECT 1 FROM _shopflow_stage s WHERE s.file_idx = f.file_idx AND s._newlines > 0);

CREATE OR REPLACE TEMP TABLE _shopflow_lines AS
WITH counts AS (
    SELECT f.file_idx,
           (SELECT count(*) FROM _shopflow_stage s WHERE s.file_idx = f.file_idx) AS accepted,
           (SELECT count(*) FROM _shopflow_parse_rejects r WHERE r.file_idx = f.file_idx) AS rejected,
           (SELECT coalesce(max(slot), 0) FROM _shopflow_parse_rejects r WHERE r.file_idx = f.file_idx) AS last_rejected,
           (SELECT count(*) FROM _shopflow_blank_slots b WHERE b.file_idx = f.file_idx) AS blank,
           (SELECT coalesce(max(slot), 0) FROM _shopflow_blank_slots b WHERE b.file_idx = f.file_idx) AS last_blank
    FROM _shopflow_files f
    WHERE f.file_idx NOT IN (SELECT file_idx FROM _shopflow_simple_files)
),
free_slots AS (
    SELECT c.file_idx, g.slot,
           row_number() OVER (PARTITION BY c.file_idx ORDER BY g.slot) AS _record
    FROM counts c,
         generate_series(2, CAST(greatest(c.accepted + c.rejected + c.blank + 1, c.last_rejected, c.last_blank) AS BIGINT)) AS g(slot)
    WHERE NOT EXISTS (
        SELECT 1 FROM _shopflow_parse_rejects r WHERE r.file_idx = c.file_idx AND r.slot = g.slot
    ) AND NOT EXISTS (
        SELECT 1 FROM _shopflow_blank_slots b WHERE b.file_idx = c.file_idx AND b.slot = g.slot
    )
),
staged AS (
    SELECT s.file_idx, {_RECORD} AS _record, s._newlines
    FROM _shopflow_stage s
    JOIN _shopflow_files f USING (file_idx)
    WHERE s.file_idx IN (SELECT file_idx FROM counts)
),
records AS (
    SELECT s.file_idx, f.slot, s._record, s._newlines AS newlines
    FROM staged s JOIN free_slots f USING (file_idx, _record)
    UNION ALL
    SELECT file_idx, slot, NULL, length(raw_line) - length(replace(raw_line, chr(10), ''))
    FROM _shopflow_parse_rejects
)
SELECT file_idx, slot, _record,
       slot + coalesce(sum(newlines) OVER (
           PARTITION BY file_idx ORDER BY slot ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0
       ) AS line
FROM records;
"""

# A staged record's physical line: from the line table where the file needed one, else record + 1.
_LINE = f"coalesce(l.line, {_RECORD} + 1)"
_LINE_JOIN = f"LEFT JOIN _shopflow_lines l ON l.file_idx = s.file_idx AND l._record = {_RECORD}"

_PUBLISH_STATEMENTS = (
    "DELETE FROM raw.orders WHERE dt IN (SELECT dt FROM _shopflow_files_days)",
    "DELETE FROM raw.orders_rejected WHERE dt IN (SELECT dt FROM _shopflow_files_days)",
    # The rows that broke no rule, as the check cast them.
    f"""
INSERT INTO raw.orders
SELECT f.dt, s.order_id, s.line_number, s.customer_id, s.product_id, s.quantity, s.unit_price, s.discount,
       s.status, s.ordered_at, s.updated_at, f.name, {_LINE}, $loaded_at, $run_id
FROM _shopflow_stage s
JOIN _shopflow_files f USING (file_idx)
{_LINE_JOIN}
WHERE s.reason_bits = 0
""",
    f"""
INSERT INTO raw.orders_rejected
SELECT f.dt, f.name, {_LINE}, {DUCKDB.reason_text("s.reason_bits")}, {", ".join(f"s._text[{i}]" for i in range(1, len(REQUIRED_COLUMNS) + 1))}, NULL,
       $loaded_at, $run_id
FROM _shopflow_stage s
JOIN _shopflow_files f USING (file_idx)
{_LINE_JOIN}
WHERE s.reason_bits <> 0
UNION ALL
SELECT f.dt, f.name, l.line, r.reason, {", ".join("NULL" for _ in REQUIRED_COLUMNS)}, r.raw_line, $loaded_at, $run_id
FROM _shopflow_parse_rejects r
JOIN _shopflow_files f USING (file_idx)
JOIN _shopflow_lines l ON l.file_idx = r.file_idx AND l.slot = r.slot AND l._record IS NULL
""",
)


def load_days(
    con: duckdb.DuckDBPyConnection,
    exports: Sequence[DayExport],
    run_id: str,
    loaded_at: dt.datetime,
    progress: Callable[[str], None] | None = None,
    max_rejected_share: float = 0.5,
) -> LoadSummary:
    """Replace `raw.orders` and `raw.orders_rejected` for the exports' days, in one transaction.

    Raises BadExportError (nothing changed) when a file cannot be ingested as it is, for example
    when its header lacks a required column or most of its lines are not order lines;
    ExportChangedError (nothing changed) when a day's files changed while they were read;
    IngestCancelled when interrupted; OutOfMemory or duckdb.IOException on a transient fault.
    """
    try:
        return _load_days(con, exports, run_id, loaded_at, progress, max_rejected_share)
    except duckdb.Error as error:  # what reading a file did not already say
        raise engine_error(error, "ingesting") or error from None
    except BadExportError:
        # A file read while a re-export rewrote it is no bad file: read the new export instead.
        changed = [e for e in exports if e.changed()]
        if changed:
            raise _changed(changed) from None
        raise


def _changed(exports: Sequence[DayExport]) -> ExportChangedError:
    return ExportChangedError(
        f"The export of {', '.join(str(e.day) for e in exports)} changed while it was read "
        "(a re-export landed): nothing was published."
    )


def _load_days(con, exports, run_id, loaded_at, progress, max_rejected_share) -> LoadSummary:
    headers = check_headers(con, exports)
    ensure_raw_tables(con)

    # Records are numbered by their place in the stage (see _stage_sql), which needs this (the default).
    con.execute("SET preserve_insertion_order = true")
    con.execute(_CREATE_STAGE)
    con.execute("CREATE OR REPLACE TEMP TABLE _shopflow_files_days (dt DATE)")
    con.executemany("INSERT INTO _shopflow_files_days VALUES (?)", [[e.day] for e in exports])
    summary = LoadSummary.of_days([e.day for e in exports])
    files: dict[int, tuple[DayExport, ExportFile]] = {}
    started = time.monotonic()
    for done, export in enumerate(exports, start=1):
        first_file = len(files) + 1
        groups: dict[tuple, list[ExportFile]] = {}  # the day's files by header and compression
        for f in export.files:
            header, columns, _ = headers[f.path]
            groups.setdefault((tuple(header), tuple(columns.items()), f.gzip), []).append(f)
            day = summary.days[export.day.isoformat()]
            day.files += 1
            day.bytes += f.size
        for (header, columns, _), group in groups.items():
            first = len(files) + 1
            for f in group:
                files[len(files) + 1] = (export, f)
                con.execute(
                    "INSERT INTO _shopflow_files VALUES (?, ?, ?, ?, NULL, ?)",
                    [len(files), export.day, f.path, f.name, headers[f.path][2]],
                )
            displays = [display_name(export.folder, f.name) for f in group]
            # the byte count runs beside DuckDB's read (which leaves Python's lock free)
            with concurrent.futures.ThreadPoolExecutor(1) as counter:
                counts = counter.map(count_lines, group, displays)
                _stage_files(con, first, export.day, group, displays, header, dict(columns))
                counted = list(counts)
            con.executemany(
                "INSERT INTO _shopflow_line_counts VALUES (?, ?, ?)",
                [[first + n, *count] for n, count in enumerate(counted)],
            )
        if progress and len(exports) > 1:
            (rows,) = con.execute(
                "SELECT count(*) FROM _shopflow_stage WHERE file_idx >= ?", [first_file]
            ).fetchall()[0]
            elapsed = time.monotonic() - started
            left = elapsed / done * (len(exports) - done)
            progress(
                f"read {export.day}: day {done}/{len(exports)}, {len(export.files)} files, "
                f"{rows} rows; {elapsed:.0f} s so far, about {left:.0f} s left to read"
            )
    con.execute(_FIRST_ROWS_SQL)
    with_unparsed_lines = _check_rejected_shares(con, files, max_rejected_share)
    for (file_idx,) in con.execute("SELECT file_idx FROM _shopflow_line_counts WHERE blank > 0").fetchall():
        export, f = files[file_idx]
        slots = blank_slots(f, display_name(export.folder, f.name))
        while batch := list(itertools.islice(slots, 100_000)):
            con.execute("INSERT INTO _shopflow_blank_slots SELECT ?, unnest(?)", [file_idx, batch])
    for file_idx in with_unparsed_lines:  # collect their unparseable lines, with DuckDB's rejects
        export, f = files[file_idx]
        header, _, _ = headers[f.path]
        with _Reader(display_name(export.folder, f.name)):
            # every column read (a plain count(*) would not parse the fields, and find no error)
            con.execute(
                f"SELECT sum({' + '.join(f'coalesce(length({quote_ident(h)}), 0)' for h in header)}) "
                f"FROM read_csv($path, {CSV_OPTIONS}, {REJECTS_OPTIONS}, auto_detect = false, columns = $columns)",
                {"path": literal_pattern(f.path), "compression": _compression(f), "columns": {n: "VARCHAR" for n in header}},
            ).fetchall()  # a SELECT runs as it is fetched
    _ensure_reject_tables(con)
    con.execute(_LINES_SQL)

    # What was read is one export of each day, unless a day's files changed meanwhile.
    changed = [e for e in exports if e.changed()]
    if changed:
        raise _changed(changed)
    publish(con, {"loaded_at": loaded_at, "run_id": run_id})

    for day, loaded in con.execute(
        "SELECT dt, count(*) FROM raw.orders WHERE dt IN (SELECT dt FROM _shopflow_files_days) GROUP BY dt"
    ).fetchall():
        summary.days[day.isoformat()].rows_loaded = loaded
    for day, rule, rejected in con.execute(
        f"""
        SELECT dt, rule, count(*)
        FROM raw.orders_rejected,
             unnest(CASE WHEN reason LIKE '{MALFORMED_ROW}%' THEN ['{MALFORMED_ROW}']
                         ELSE string_split(reason, '; ') END) AS u(rule)
        WHERE dt IN (SELECT dt FROM _shopflow_files_days)
        GROUP BY ALL ORDER BY ALL
        """
    ).fetchall():
        summary.days[day.isoformat()].rejected_by_reason[rule] = rejected
    for day, rejected in con.execute(
        "SELECT dt, count(*) FROM raw.orders_rejected WHERE dt IN (SELECT dt FROM _shopflow_files_days) GROUP BY dt"
    ).fetchall():
        summary.days[day.isoformat()].rows_rejected = rejected
    return summary


# Per file: its data lines (not the header, not blank), the lines of its valid records and of all
# the records the CSV reader parsed (valid or breaking a rule), and its blank lines.
_FILE_LINES_SQL = """
SELECT f.file_idx,
       greatest(coalesce(c.lines, 0) - 1 - coalesce(c.blank, 0), 0) AS data_lines,
       coalesce(s.valid_lines, 0), coalesce(s.parsed_lines, 0), coalesce(c.blank, 0)
FROM _shopflow_files f
LEFT JOIN (SELECT file_idx, sum(lines) AS lines, sum(blank) AS blank FROM _shopflow_line_counts GROUP BY ALL) c
    USING (file_idx)
LEFT JOIN (
    SELECT file_idx,
           count(*) FILTER (WHERE reason_bits = 0) + coalesce(sum(_newlines) FILTER (WHERE reason_bits = 0), 0) AS valid_lines,
           count(*) + coalesce(sum(_newlines), 0) AS parsed_lines
    FROM _shopflow_stage GROUP BY ALL
) s USING (file_idx)
ORDER BY f.file_idx
"""


def _check_rejected_shares(
    con: duckdb.DuckDBPyConnection, files: dict[int, tuple[DayExport, ExportFile]], max_share: float
) -> list[int]:
    """Refuse (BadExportError) a file whose share of rejected lines is larger than `max_share`,
    before its unparseable lines are collected; return the files that have unparseable lines."""
    unparsed, problems = [], []
    for file_idx, data_lines, valid_lines, parsed_lines, blank in con.execute(_FILE_LINES_SQL).fetchall():
        export, f = files[file_idx]
        error = rejected_share_error(
            display_name(export.folder, f.name), max(data_lines - valid_lines, 0), data_lines, max_share
        )
        if error is not None:
            problems.append(str(error))
        elif parsed_lines < data_lines or blank:  # (a blank line may be inside a quoted field)
            unparsed.append(file_idx)
    if problems:
        raise BadExportError("\n".join(problems))
    return unparsed


def publish(con: duckdb.DuckDBPyConnection, params: dict) -> None:
    """The staged days replace theirs in raw.orders and raw.orders_rejected, in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        for statement in _PUBLISH_STATEMENTS:
            con.execute(statement, params if "$run_id" in statement else None)
        con.execute("COMMIT")
    except BaseException as error:
        try:
            con.execute("ROLLBACK")
        except Exception as rollback_error:  # noqa: BLE001 (the first error is the one to report)
            error.add_note(f"(and the rollback failed too: {_first_line(rollback_error)})")
        if isinstance(error, duckdb.Error):
            raise engine_error(error, "publishing the days") or error from None
        raise


def _ensure_reject_tables(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB creates its rejects tables on the first scan; a day without files has none."""
    con.execute(
        """
        CREATE TEMP TABLE IF NOT EXISTS _shopflow_csv_scans (scan_id UBIGINT, file_id UBIGINT, file_path VARCHAR);
        CREATE TEMP TABLE IF NOT EXISTS _shopflow_csv_errors (
            scan_id UBIGINT, file_id UBIGINT, line UBIGINT, byte_position UBIGINT,
            column_idx UBIGINT, column_name VARCHAR, error_type VARCHAR, error_message VARCHAR,
            csv_line VARCHAR);
        """
    )
