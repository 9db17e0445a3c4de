"""The ingest of order exports into `raw.orders`, as DuckDB SQL over the files.

No order row becomes a Python object: Python only lists files and reads their headers, DuckDB reads,
validates and publishes the rows. The flow for a set of days:

1. check every file's header (a missing required column fails before anything is written);
2. read each file once into a temp table: every value checked against the export contract and cast
   to its type in the same pass, all broken rules of a row collected, the text kept for the broken
   rows only; DuckDB's CSV reader keeps unparseable lines in its rejects table;
3. give every record its physical line (header = line 1), counting quoted newlines;
4. publish: in one transaction, replace exactly those days in `raw.orders` (a copy of the typed
   rows) and `raw.orders_rejected`.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable, Sequence

import duckdb

from shopflow_assets.engines.base import LoadSummary
from shopflow_assets.resources.landing import DayExport

from shopflow_assets.export_contract import (  # noqa: F401  (re-exported: the contract's names)
    DUCKDB,
    MALFORMED_ROW,
    REJECT_REASONS,
    REQUIRED_COLUMNS,
    STATUSES,
    TYPED_COLUMNS,
    BadExportError,
    MissingColumnsError,
    display_name,
    required_positions,
)

# read_csv caps a line at 2 MB by default; a long free-text field must not fail the day.
MAX_LINE_BYTES = 32 * 1024 * 1024
# The dialect is fixed by the contract; only the header is read from the file.
CSV_OPTIONS = (
    "header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"', "
    f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {4 * MAX_LINE_BYTES}, "
    "encoding = 'utf-8', compression = 'auto', hive_partitioning = false"
)
REJECTS_OPTIONS = (
    "store_rejects = true, rejects_table = '_shopflow_csv_errors', "
    "rejects_scan = '_shopflow_csv_scans', rejects_limit = 0"
)

RAW_TABLES_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE TABLE IF NOT EXISTS raw.orders (
    dt            DATE           NOT NULL,
    order_id      VARCHAR        NOT NULL,
    line_number   INTEGER        NOT NULL,
    customer_id   VARCHAR        NOT NULL,
    product_id    VARCHAR        NOT NULL,
    quantity      INTEGER        NOT NULL,
    unit_price    DECIMAL(18, 2) NOT NULL,
    discount      DECIMAL(18, 2) NOT NULL,
    status        VARCHAR        NOT NULL,
    ordered_at    TIMESTAMPTZ    NOT NULL,
    updated_at    TIMESTAMPTZ    NOT NULL,
    _source_file  VARCHAR        NOT NULL,
    _source_line  BIGINT         NOT NULL,
    _loaded_at    TIMESTAMPTZ    NOT NULL,
    _run_id       VARCHAR        NOT NULL
);
CREATE TABLE IF NOT EXISTS raw.orders_rejected (
    dt            DATE           NOT NULL,
    _source_file  VARCHAR        NOT NULL,
    _source_line  BIGINT         NOT NULL,
    reason        VARCHAR        NOT NULL,
    order_id      VARCHAR,
    line_number   VARCHAR,
    customer_id   VARCHAR,
    product_id    VARCHAR,
    quantity      VARCHAR,
    unit_price    VARCHAR,
    discount      VARCHAR,
    status        VARCHAR,
    ordered_at    VARCHAR,
    updated_at    VARCHAR,
    _raw_line     VARCHAR,
    _loaded_at    TIMESTAMPTZ    NOT NULL,
    _run_id       VARCHAR        NOT NULL
);
"""


def ensure_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(RAW_TABLES_DDL)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _header(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[list[str], list[str]]:
    """The file's column names as DuckDB reads them (duplicates renamed, e.g. `note_1`) and as
    they are written in the file, in the same order."""
    # ignore_errors: a malformed data row must not stop the sniffer from reading the header.
    names = [
        r[0]
        for r in con.execute(
            f"DESCRIBE SELECT * FROM read_csv($path, {CSV_OPTIONS}, ignore_errors = true)",
            {"path": str(path)},
        ).fetchall()
    ]
    written = con.execute(
        f"SELECT * FROM read_csv($path, {CSV_OPTIONS.replace('header = true', 'header = false')}, "
        "ignore_errors = true) LIMIT 1",
        {"path": str(path)},
    ).fetchall()
    if not written:
        return names, []  # an empty file: DuckDB still names one column, `column0`
    as_written = [str(v or "") for v in written[0]]
    return names, as_written if len(as_written) == len(names) else names


def _column_map(export: DayExport, path: Path, names: Sequence[str], written: Sequence[str]) -> dict[str, str]:
    """Required column -> DuckDB's name for it (the contract's header rules, export_contract.py)."""
    positions = required_positions(str(export.day), _display(path), written)
    return {c: names[p] for c, p in positions.items()}


def _display(path: Path) -> str:
    return display_name(path.parent.name, path.name)


def check_headers(con: duckdb.DuckDBPyConnection, exports: Sequence[DayExport]) -> dict[Path, tuple[list[str], dict[str, str]]]:
    """Every file's header and column mapping; all problems in one error before anything is read."""
    headers: dict[Path, tuple[list[str], dict[str, str]]] = {}
    problems: list[str] = []
    for export in exports:
        for path in export.files:
            try:
                names, written = _header(con, path)
                headers[path] = (names, _column_map(export, path, names, written))
            except MissingColumnsError as e:
                problems.append(str(e))
            except duckdb.IOException as e:
                if not _is_corrupt_file(e):
                    raise  # transient
                problems.append(f"{_display(path)}: the file is corrupt: {_first_line(e)}")
            except duckdb.Error as e:
                problems.append(f"{_display(path)}: cannot read the CSV header: {_first_line(e)}")
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
    paths: Sequence[Path],
    header: Sequence[str],
    columns: dict[str, str],
) -> None:
    """Stage files of one day and one header, numbered first_idx, first_idx + 1, ... in order.

    They are read in one statement, whose threads then share the files' work (a file read alone
    leaves threads idle at its start and end). Should that fail, nothing of it remains (the
    statement is undone, DuckDB's rejects tables too) and the files are read one by one, so that
    the error names the file."""
    extra = [h for h in header if h not in set(columns.values())]
    # A column of the file named like the reader's virtual column would hide it.
    if len(paths) > 1 and not any(h.lower() == "file_index" for h in header):
        try:
            con.execute(
                _stage_sql(columns, extra, several=True),
                {
                    "file_idx": first_idx,
                    "day": day,
                    "path": [str(path) for path in paths],
                    "columns": {name: "VARCHAR" for name in header},
                },
            )
            return
        except duckdb.InterruptException:
            raise
        except duckdb.Error:
            pass
    for offset, path in enumerate(paths):
        _stage_file(con, first_idx + offset, day, path, header, columns, extra)


def _stage_file(
    con: duckdb.DuckDBPyConnection,
    file_idx: int,
    day: dt.date,
    path: Path,
    header: Sequence[str],
    columns: dict[str, str],
    extra: Sequence[str],
) -> None:
    try:
        con.execute(
            _stage_sql(columns, extra),
            {
                "file_idx": file_idx,
                "day": day,
                "path": str(path),
                "columns": {name: "VARCHAR" for name in header},
            },
        )
    except duckdb.IOException as error:
        if not _is_corrupt_file(error):
            raise  # the file system or a lock: transient, the step is retried
        raise BadExportError(
            f"{_display(path)}: the file is corrupt: {_first_line(error)}. "
            "Re-export the file, then re-run the day."
        ) from None
    except duckdb.Error as error:
        raise BadExportError(
            f"{_display(path)}: DuckDB cannot read it as CSV: {_first_line(error)}. "
            "Fix or re-export the file, then re-run the day."
        ) from None


def _is_corrupt_file(error: duckdb.IOException) -> bool:
    """A truncated or damaged .csv.gz: the same on every attempt, so not worth a retry."""
    return "gzip" in str(error).lower()


# Where the whole row matches at once, no column is matched on its own (export_contract.py).
_TYPED_COLUMNS = ",\n               ".join(DUCKDB.typed_columns(matched="_matched"))
_TYPED_MATCH = DUCKDB.typed_row_match()
_REASON = DUCKDB.reason(guarded=True)
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
       CASE WHEN reason = '' THEN {_newlines([*_CLEAN_ROW_TEXT, *others])}
            ELSE {_newlines([*REQUIRED_COLUMNS, *others])} END,
       {", ".join(f"t_{c}" if c != "status" else "status" for c in REQUIRED_COLUMNS)},
       reason, CASE WHEN reason <> '' THEN [{", ".join(REQUIRED_COLUMNS)}] END
FROM (
    SELECT *, {_REASON} AS reason
    FROM (
        SELECT *, CAST($day AS DATE) AS dt,
               {_TYPED_COLUMNS}
        FROM (
            SELECT *, {_TYPED_MATCH} AS _matched
            FROM (
                SELECT {picked}{picked_others}
                FROM read_csv($path, {CSV_OPTIONS}, {REJECTS_OPTIONS}, auto_detect = false, columns = $columns)
            )
        )
    )
)
"""


_CREATE_STAGE = f"""
CREATE OR REPLACE TEMP TABLE _shopflow_files (
    file_idx INTEGER, dt DATE, path VARCHAR, name VARCHAR, first_row BIGINT
);
CREATE OR REPLACE TEMP TABLE _shopflow_stage (
    file_idx INTEGER, _newlines BIGINT,
    order_id VARCHAR, line_number INTEGER, customer_id VARCHAR, product_id VARCHAR, quantity INTEGER,
    unit_price DECIMAL(18, 2), discount DECIMAL(18, 2), status VARCHAR, ordered_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ, reason VARCHAR,
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
# newlines) and accepted ones not at all. In the common case the line is the record number + 1.
# Otherwise accepted records fill, in order, the record slots that rejected ones leave free; each
# record then moves down by the newlines inside the records before it.
_LINES_SQL = f"""
CREATE OR REPLACE TEMP TABLE _shopflow_parse_rejects AS
SELECT f.file_idx,
       e.line AS slot,
       '{MALFORMED_ROW}: ' || string_agg(DISTINCT lower(e.error_type), ', ')
           || coalesce(' (from column ' || arg_min(e.column_name, e.column_idx) || ')', '') AS reason,
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
  AND NOT EXISTS (SELECT 1 FROM _shopflow_stage s WHERE s.file_idx = f.file_idx AND s._newlines > 0);

CREATE OR REPLACE TEMP TABLE _shopflow_lines AS
WITH counts AS (
    SELECT f.file_idx,
           (SELECT count(*) FROM _shopflow_stage s WHERE s.file_idx = f.file_idx) AS accepted,
           (SELECT count(*) FROM _shopflow_parse_rejects r WHERE r.file_idx = f.file_idx) AS rejected,
           (SELECT coalesce(max(slot), 0) FROM _shopflow_parse_rejects r WHERE r.file_idx = f.file_idx) AS last_rejected
    FROM _shopflow_files f
    WHERE f.file_idx NOT IN (SELECT file_idx FROM _shopflow_simple_files)
),
free_slots AS (
    SELECT c.file_idx, g.slot,
           row_number() OVER (PARTITION BY c.file_idx ORDER BY g.slot) AS _record
    FROM counts c, generate_series(2, CAST(greatest(c.accepted + c.rejected + 1, c.last_rejected) AS BIGINT)) AS g(slot)
    WHERE NOT EXISTS (
        SELECT 1 FROM _shopflow_parse_rejects r WHERE r.file_idx = c.file_idx AND r.slot = g.slot
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
WHERE s.reason = ''
""",
    f"""
INSERT INTO raw.orders_rejected
SELECT f.dt, f.name, {_LINE}, s.reason, {", ".join(f"s._text[{i}]" for i in range(1, len(REQUIRED_COLUMNS) + 1))}, NULL,
       $loaded_at, $run_id
FROM _shopflow_stage s
JOIN _shopflow_files f USING (file_idx)
{_LINE_JOIN}
WHERE s.reason <> ''
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
) -> LoadSummary:
    """Replace `raw.orders` and `raw.orders_rejected` for the exports' days, in one transaction.

    Raises BadExportError (nothing changed) when a file cannot be ingested as it is, for example
    when its header lacks a required column; duckdb.IOException on a transient I/O fault.
    """
    summary = LoadSummary(days=[e.day for e in exports])
    headers = check_headers(con, exports)
    ensure_raw_tables(con)

    # Records are numbered by their place in the stage (see _stage_sql), which needs this (the default).
    con.execute("SET preserve_insertion_order = true")
    con.execute(_CREATE_STAGE)
    con.execute("CREATE OR REPLACE TEMP TABLE _shopflow_files_days (dt DATE)")
    con.executemany("INSERT INTO _shopflow_files_days VALUES (?)", [[e.day] for e in exports])
    file_idx = 0
    started = time.monotonic()
    for done, export in enumerate(exports, start=1):
        first_file = file_idx + 1
        groups: dict[tuple, list[Path]] = {}  # the day's files by header
        for path in export.files:
            header, columns = headers[path]
            groups.setdefault((tuple(header), tuple(columns.items())), []).append(path)
        for (header, columns), paths in groups.items():
            for path in paths:
                file_idx += 1
                con.execute(
                    "INSERT INTO _shopflow_files VALUES (?, ?, ?, ?, NULL)",
                    [file_idx, export.day, str(path), path.name],
                )
                summary.files += 1
                summary.bytes += path.stat().st_size
            _stage_files(con, file_idx - len(paths) + 1, export.day, paths, header, dict(columns))
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
    _ensure_reject_tables(con)
    con.execute(_LINES_SQL)

    con.execute("BEGIN TRANSACTION")
    try:
        for statement in _PUBLISH_STATEMENTS:
            params = {"loaded_at": loaded_at, "run_id": run_id} if "$run_id" in statement else None
            con.execute(statement, params)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise

    summary.rows_by_day = {
        str(d): n
        for d, n in con.execute(
            "SELECT dt, count(*) FROM raw.orders WHERE dt IN (SELECT dt FROM _shopflow_files_days) GROUP BY dt ORDER BY dt"
        ).fetchall()
    }
    for d in summary.days:
        summary.rows_by_day.setdefault(str(d), 0)
    summary.rows_loaded = sum(summary.rows_by_day.values())
    summary.rejected_by_reason = dict(
        con.execute(
            f"""
            SELECT rule, count(*)
            FROM raw.orders_rejected,
                 unnest(CASE WHEN reason LIKE '{MALFORMED_ROW}%' THEN ['{MALFORMED_ROW}']
                             ELSE string_split(reason, '; ') END) AS u(rule)
            WHERE dt IN (SELECT dt FROM _shopflow_files_days)
            GROUP BY rule ORDER BY rule
            """
        ).fetchall()
    )
    summary.rows_rejected = con.execute(
        "SELECT count(*) FROM raw.orders_rejected WHERE dt IN (SELECT dt FROM _shopflow_files_days)"
    ).fetchall()[0][0]
    return summary


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
