"""The export contract (docs/contract.md "The export"), written once and rendered for each SQL dialect.

Pure Python with no imports beyond the standard library (and fsspec, for a file given as a URI):
the DuckDB ingest (engines/duckdb/loader.py) and the Spark ingest (shopflow_jobs/spark_ingest.py,
which runs outside the code location) both render their checks from the tables below, so the two
engines cannot drift apart without the parity test saying so.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

from shopflow_assets.contract.landing import filesystem, is_uri, shown_name

REQUIRED_COLUMNS = (
    "order_id",
    "line_number",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "discount",
    "status",
    "ordered_at",
    "updated_at",
)
STATUSES = ("placed", "shipped", "delivered", "cancelled", "refunded")
MALFORMED_ROW = "malformed CSV row"  # the reason of a line that is not valid CSV

# What a value's text must look like; the casts alone are too lenient ('1.5' -> 2, '1e3', no offset).
ISO_TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)"
DECIMAL_18_2 = r"[+-]?([0-9]+(\.[0-9]{0,2})?|\.[0-9]{1,2})"
INTEGER = r"[+]?[0-9]+"

# column -> (pattern, logical type) for the typed columns; the others are text.
TYPED_COLUMNS = {
    "line_number": (INTEGER, "integer"),
    "quantity": (INTEGER, "integer"),
    "unit_price": (DECIMAL_18_2, "money"),
    "discount": (DECIMAL_18_2, "money"),
    "ordered_at": (ISO_TIMESTAMP, "timestamp"),
    "updated_at": (ISO_TIMESTAMP, "timestamp"),
}
TEXT_COLUMNS = ("order_id", "customer_id", "product_id")

# The rules, column by column: (condition, reason); the first condition that holds names the
# column's problem, and a row breaking several rules lists them all. Conditions read the typed
# values t_<column>, the raw `status` and the day `dt`; {utc_date} is the dialect's UTC date.
RULES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("t_order_id IS NULL", "order_id is empty"),),
    (("t_line_number IS NULL", "line_number is not an integer"), ("t_line_number < 1", "line_number is below 1")),
    (("t_customer_id IS NULL", "customer_id is empty"),),
    (("t_product_id IS NULL", "product_id is empty"),),
    (("t_quantity IS NULL", "quantity is not an integer"), ("t_quantity < 1", "quantity is below 1")),
    (("t_unit_price IS NULL", "unit_price is not a decimal(18,2)"), ("t_unit_price < 0", "unit_price is negative")),
    (
        ("t_discount IS NULL", "discount is not a decimal(18,2)"),
        ("t_discount < 0", "discount is negative"),
        # A discount not above the unit price of a quantity of at least 1 is within the product,
        # which then need not be computed (a wide decimal product costs more than the rest).
        (
            "t_unit_price >= 0 AND NOT (t_quantity >= 1 AND t_discount <= t_unit_price) "
            "AND t_discount > t_quantity * t_unit_price",
            "discount exceeds quantity x unit_price",
        ),
    ),
    ((f"status IS NULL OR status NOT IN {STATUSES!r}", f"status is not one of {', '.join(STATUSES)}"),),
    (
        ("t_ordered_at IS NULL", "ordered_at is not an ISO-8601 timestamp with offset"),
        ("{utc_date} <> dt", "ordered_at is not on the export day (UTC)"),
    ),
    (("t_updated_at IS NULL", "updated_at is not an ISO-8601 timestamp with offset"),),
)
REJECT_REASONS = tuple(reason for checks in RULES for _, reason in checks) + (MALFORMED_ROW,)


@dataclass(frozen=True)
class SqlDialect:
    """How one SQL engine spells what the rules need."""

    name: str
    types: dict[str, str]  # logical type -> SQL type
    full_match: Callable[[str, str], str]  # (expression, regular expression) -> boolean
    utc_date: Callable[[str], str]  # timestamp expression -> its UTC date
    # Only ASCII spaces are trimmed: DuckDB's plain cast ignores them and nothing else (a plain
    # trim() would also strip a no-break space, which the cast then refuses).
    trim_spaces: Callable[[str], str]
    # The text a timestamp cast understands, from text that matched ISO_TIMESTAMP.
    timestamp_text: Callable[[str], str] = lambda e: e

    def typed(self, column: str, pattern: str, logical_type: str, matched: str | None = None) -> str:
        """The column's value when its text is of the pattern (surrounding spaces allowed), else
        NULL. The untrimmed text is tried first: trimming costs as much as the match. `matched`, if
        given, is a cheaper condition that implies the untrimmed text is of the pattern: where it
        holds the value is cast at once, the pattern is matched only where it does not."""
        sql_type = self.types[logical_type]
        trimmed = self.trim_spaces(column)
        value = self.timestamp_text if logical_type == "timestamp" else (lambda e: e)
        shortcut = f"WHEN {matched} THEN TRY_CAST({value(column)} AS {sql_type}) " if matched else ""
        return (
            f"CASE {shortcut}WHEN {self.full_match(column, pattern)} THEN TRY_CAST({value(column)} AS {sql_type}) "
            f"WHEN {self.full_match(trimmed, pattern)} THEN TRY_CAST({value(trimmed)} AS {sql_type}) END"
        )

    def text(self, column: str) -> str:
        """The column's text without surrounding spaces, trimming only the values that have them."""
        return f"CASE WHEN {column} LIKE ' %' OR {column} LIKE '% ' THEN {self.trim_spaces(column)} ELSE {column} END"

    def typed_row_match(self, prefix: str = "") -> str:
        """One match for all the typed columns of a row: true only when every one's untrimmed text
        is of its pattern (a single match of the row costs less than one per column).

        The texts are joined with '|', which no pattern matches, so a match splits the joined text
        at exactly its separators, back into the columns' texts, each matching its own pattern; a
        text holding a '|' makes more separators than the pattern has and the row does not match.
        A NULL joins as '', which no pattern matches either. False and NULL imply nothing."""
        joined = ", '|', ".join(prefix + c for c in TYPED_COLUMNS)
        pattern = r"\|".join(f"(?:{p})" for p, _ in TYPED_COLUMNS.values())
        return self.full_match(f"concat({joined})", pattern)

    def typed_columns(self, prefix: str = "", matched: str | None = None) -> list[str]:
        """`<expr> AS t_<column>` for every column the rules read; `matched`, if given, a condition
        that implies every typed column's untrimmed text is of its pattern (see typed_row_match)."""
        columns = [f"nullif({self.text(prefix + c)}, '') AS t_{c}" for c in TEXT_COLUMNS]
        columns += [
            f"{self.typed(prefix + c, pattern, kind, matched)} AS t_{c}" for c, (pattern, kind) in TYPED_COLUMNS.items()
        ]
        return columns

    def reason(self, guarded: bool = False) -> str:
        """Every broken rule of a row, '; '-separated ('' for a valid row), over the t_ columns.

        `guarded`: the reasons are spelled out only for rows where a condition holds; the others
        get '' at once. The same text: a rule's CASE gives a reason exactly when one of its
        conditions is true, so where none is (false or NULL) every CASE is NULL and concat_ws ''."""
        conditions = [
            [condition.format(utc_date=self.utc_date("t_ordered_at")) for condition, _ in checks] for checks in RULES
        ]
        cases = ",\n".join(
            "CASE " + " ".join(f"WHEN {condition} THEN '{reason}'" for condition, (_, reason) in zip(conds, checks)) + " END"
            for conds, checks in zip(conditions, RULES)
        )
        reasons = f"concat_ws('; ',\n{cases})"
        if not guarded:
            return reasons
        broken = " OR ".join(f"({condition})" for conds in conditions for condition in conds)
        return f"CASE WHEN {broken} THEN {reasons} ELSE '' END"

    def reason_bits(self) -> str:
        """The broken rules of a row as an integer, one bit per check (0 for a valid row): what
        `reason_text` spells out. Cheaper to keep for millions of rows than their text."""
        conditions = [
            [condition.format(utc_date=self.utc_date("t_ordered_at")) for condition, _ in checks] for checks in RULES
        ]
        bits, first = [], 0
        for conds in conditions:
            whens = " ".join(f"WHEN {c} THEN {1 << (first + i)}" for i, c in enumerate(conds))
            bits.append(f"CASE {whens} ELSE 0 END")
            first += len(conds)
        broken = " OR ".join(f"({condition})" for conds in conditions for condition in conds)
        return f"CASE WHEN {broken} THEN {' + '.join(bits)} ELSE 0 END"

    @staticmethod
    def reason_text(bits: str) -> str:
        """The text of `reason_bits`: every broken rule, '; '-separated, in the order of RULES."""
        checks = [reason for rule in RULES for _, reason in rule]
        cases = ", ".join(f"CASE WHEN ({bits} & {1 << i}) <> 0 THEN '{reason}' END" for i, reason in enumerate(checks))
        return f"concat_ws('; ', {cases})"


DUCKDB = SqlDialect(
    name="duckdb",
    types={"integer": "INTEGER", "money": "DECIMAL(18, 2)", "timestamp": "TIMESTAMPTZ"},
    # standard SQL string literals: backslashes are literal
    full_match=lambda expr, pattern: f"regexp_full_match({expr}, '{pattern}')",
    # The instant's microseconds as a UTC wall-clock time, then its date: the same date as
    # timezone('UTC', ...), in any session time zone, without the time zone library's cost.
    utc_date=lambda expr: f"CAST(make_timestamp(epoch_us({expr})) AS DATE)",
    trim_spaces=lambda expr: f"trim({expr}, ' ')",
)


ANCHOR_END = r"\z"


def spark_string(text: str) -> str:
    """A Spark SQL string literal: Spark unescapes backslashes in literals, so they are doubled."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


SPARK = SqlDialect(
    name="spark",
    types={"integer": "INT", "money": "DECIMAL(18, 2)", "timestamp": "TIMESTAMP"},
    # RLIKE finds anywhere: anchor it, with \z (Java's $ also matches before a final newline).
    full_match=lambda expr, pattern: f"({expr} RLIKE {spark_string('^(?:' + pattern + ')' + ANCHOR_END)})",
    # The session time zone is UTC (set by the job), so a timestamp's date is its UTC date.
    utc_date=lambda expr: f"CAST({expr} AS DATE)",
    trim_spaces=lambda expr: f"trim(BOTH ' ' FROM {expr})",
    # Spark's cast refuses a time without seconds, which DuckDB takes (both refuse a lower-case z).
    # A text of ISO_TIMESTAMP has its seconds' ':' at 17 or none: only the latter is rewritten.
    timestamp_text=lambda expr: (
        f"CASE WHEN substring({expr}, 17, 1) = ':' THEN {expr} "
        f"ELSE regexp_replace({expr}, '^([0-9-]{{10}}[T ][0-9]{{2}}:[0-9]{{2}})([^:0-9])', '$1:00$2') END"
    ),
)


class BadExportError(Exception):
    """An export file that cannot be ingested as it is (permanent: retrying cannot fix it).
    `headers`: the export's header reports (day -> file name -> header_report), when the engine
    read them before it failed."""

    def __init__(self, message: str, headers: dict[str, dict[str, dict]] | None = None):
        super().__init__(message)
        self.headers = headers


class MissingColumnsError(BadExportError):
    """A file's header lacks required columns (or has one twice): permanent, fix the export."""


class ExportChangedError(Exception):
    """A day's files changed while the ingest read them (a re-export landed): nothing was published;
    the newest complete export is read again."""


class RejectedShareError(BadExportError):
    """A file that is mostly not order lines: refused, permanent."""


# A file needs this many data lines before its share of rejected lines can refuse it.
MIN_LINES_FOR_REJECTED_SHARE = 1000


def rejected_share_error(display: str, rejected: int, rows: int, max_share: float) -> RejectedShareError | None:
    """The error refusing a file of `rows` data lines, `rejected` of them rejected, if their share
    is larger than `max_share` (SHOPFLOW_MAX_REJECTED_SHARE); None if the file is taken."""
    if rows < MIN_LINES_FOR_REJECTED_SHARE or rejected <= max_share * rows:
        return None
    return RejectedShareError(
        f"{display}: {rejected / rows:.1%} of its {rows} data lines are not valid order lines, more than "
        f"SHOPFLOW_MAX_REJECTED_SHARE={max_share:g} allows: the file is refused and nothing of the day "
        "was changed. Re-export the file (or raise SHOPFLOW_MAX_REJECTED_SHARE), then re-run the day."
    )


def display_name(day_dir: str, name: str) -> str:
    """How errors name a file: its day folder and name, e.g. dt=2024-03-01/part-7.csv."""
    return f"{day_dir}/{shown_name(name)}"


HEADER_BYTES = 1024 * 1024  # a first line longer than this is not a header


def read_header(path: str, is_gzip: bool, display: str) -> list[str]:
    """The column names in a file's first line, as written (a byte-order mark and CR removed)."""
    return header_names(read_first_line(path, is_gzip, display), display)


def read_first_line(path: str, is_gzip: bool, display: str) -> bytes:
    """A file's first line (at most HEADER_BYTES). Only that line is read: an engine's CSV sniffer
    would read on through a file of junk. A URI (a landing zone on HDFS or an object store) is
    opened through fsspec."""
    try:
        with (open_uri(path) if is_uri(path) else open(path, "rb")) as raw:
            stream = gzip.GzipFile(fileobj=raw) if is_gzip else raw
            return stream.readline(HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        raise BadExportError(f"{display}: the file is corrupt: {error}. Re-export the file, then re-run the day.") from None


# What the header check shows of a header, which the exporter wrote, is bounded.
SHOWN_COLUMNS = 50
SHOWN_NAME_CHARS = 100


def shown_columns(names: Sequence[str]) -> list[str]:
    shown = [name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "..." for name in names]
    if len(shown) > SHOWN_COLUMNS:
        shown = shown[:SHOWN_COLUMNS] + [f"... and {len(shown) - SHOWN_COLUMNS} more"]
    return shown


def header_report(first: bytes | None, display: str) -> dict:
    """A file's header against the contract, as raw/orders' header check shows it (JSON: the Spark
    job sends it from the cluster): the required columns it lacks or has twice, and, bounded, the
    columns the contract does not know; or that it has no readable header."""
    try:
        missing, extra = header_differences(header_names(first, display))
    except (BadExportError, csv.Error):  # the ingest fails on it, saying why
        return {"readable": False}
    return {"readable": True, "missing": missing, "extra": shown_columns(extra)}


def read_header_report(path: str, is_gzip: bool, display: str) -> dict:
    """header_report of a file read here (its first line only)."""
    try:
        first = read_first_line(path, is_gzip, display)
    except BadExportError:
        return {"readable": False}
    return header_report(first, display)


def open_uri(uri: str):
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


def header_names(first: bytes | None, display: str) -> list[str]:
    """The column names in a file's first line as read (bytes; None for an empty file)."""
    try:
        text = (first or b"").decode("utf-8").lstrip("\ufeff").rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as error:
        raise BadExportError(f"{display}: cannot read the CSV header: {error}") from None
    if not text.strip():
        return []
    return next(csv.reader(io.StringIO(text)))


def header_key(name: str) -> str:
    """A header name as the contract compares it: case and surrounding spaces (and a BOM) ignored."""
    return name.strip().lstrip("\ufeff").strip().lower()


def header_differences(written: Sequence[str]) -> tuple[list[str], list[str]]:
    """(required columns missing or written twice, columns the contract does not know) of a header
    as written."""
    keys = [header_key(name) for name in written]
    # a column written twice is as good as missing: which one would hold the data?
    missing = [c for c in REQUIRED_COLUMNS if keys.count(c) != 1]
    extra = [name for name, key in zip(written, keys) if key not in REQUIRED_COLUMNS]
    return missing, extra


def required_positions(day: str, file: str, written: Sequence[str]) -> dict[str, int]:
    """Required column -> its position in the header as written in the file.

    Raises MissingColumnsError naming the file and the columns when one is missing or written
    twice (which one would hold the data?), or when the file has no header at all.
    """
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(written):
        positions.setdefault(header_key(name), []).append(position)
    missing = [c for c in REQUIRED_COLUMNS if c not in positions]
    twice = [c for c in REQUIRED_COLUMNS if len(positions.get(c, ())) > 1]
    problems = []
    if not written:
        problems.append("the file is empty: it has no header row")
    elif missing:
        problems.append(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}"
        )
    for column in twice:
        columns = " and ".join(str(p + 1) for p in positions[column])
        problems.append(f"required column {column!r} appears more than once (columns {columns})")
    if problems:
        raise MissingColumnsError(
            f"{file} line 1 (header): {'; '.join(problems)}"
            f"{'; the header has ' + ', '.join(written) if written else ''}. Fix the export of {day} and re-run; "
            f"nothing of {day} was changed."
        )
    return {c: positions[c][0] for c in REQUIRED_COLUMNS}
