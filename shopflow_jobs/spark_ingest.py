"""The Spark ingest: days of order exports -> raw.orders and raw.orders_rejected, Parquet tables in
the Spark warehouse, Hive-style partitioned by dt (DESIGN.md "Engines").

A Spark application, launched by the code location with spark-submit through Dagster Pipes (see
shopflow_assets/engines/spark.py); it imports nothing of Dagster but dagster_pipes. The driver reads
only the files' header lines; the rows are read, checked and written by the executors, one task per
file. The contract's rules come from shopflow_assets/export_contract.py, rendered as Spark SQL, the
same table the DuckDB ingest renders, so the two engines cannot drift apart.

The flow for a set of days:
1. check every file's header on the driver (a missing or doubled required column fails before
   anything is written);
2. read each file as lines with their physical line numbers (one partition per file, so the row's
   index in its partition is its line), joining the lines of records that hold quoted newlines;
3. split each record into fields, keeping malformed ones (too few or too many fields, invalid
   UTF-8) with their reason, then check every rule in one pass;
4. write valid and rejected rows into a staging folder of this run;
5. publish: per day and table, move the old partition folder aside and the staged one in (a day
   whose rebuild is empty ends empty); then delete what was moved aside.

Under Pipes the job always ends with a custom message {"verdict": ...}: "loaded", "bad_export"
(permanent: fix the file) or "failed" (transient: retried). It then exits 0, so the orchestrator
can read the verdict (a non-zero exit means the job died before it could say why).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import threading
import time
import traceback
import zlib
from dataclasses import dataclass
from functools import reduce
from typing import Any

from dagster_pipes import open_dagster_pipes
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shopflow_assets.export_contract import (
    MALFORMED_ROW,
    REQUIRED_COLUMNS,
    SPARK,
    BadExportError,
    display_name,
    required_positions,
)

RAW_DB = "raw.db"
SPLIT_FILE_LINE = 1 << 33  # monotonically_increasing_id() of the first row of a second partition
TABLES = ("orders", "orders_rejected")
HEADER_BYTES = 1024 * 1024  # a header line longer than this is not a header
# A quoted field, Friedl's unrolled loop (no regex recursion per character: fields may be MBs).
QUOTED_FIELD = '"[^"]*(?:""[^"]*)*"'
# A line that, read from outside quotes, ends inside a quoted field: its record goes on below.
OPENS_QUOTE = f'^(?:(?:{QUOTED_FIELD}|[^",][^,]*|),)*"[^"]*(?:""[^"]*)*$'
# A line that, read from inside a quoted field, ends inside one: it never closes the field, or it
# closes it and opens another at its end.
QUOTED_CONTENT = '[^"]*(?:""[^"]*)*'
STAYS_INSIDE = (
    f'^{QUOTED_CONTENT}$|^{QUOTED_CONTENT}"(?:,(?:{QUOTED_FIELD}|[^",][^,]*|))*,"{QUOTED_CONTENT}$'
)
# Quoted fields at the start of a field; removed before counting the delimiters of a record.
LEADING_QUOTED_FIELD = f'(?:^|(?<=,)){QUOTED_FIELD}'


@dataclass(frozen=True)
class ExportFile:
    idx: int
    day: str
    path: str
    name: str

    @property
    def display(self) -> str:
        return display_name(f"dt={self.day}", self.name)


class LostExecutors(RuntimeError):
    """The application has had no executor for too long (a worker died): transient."""


def main() -> None:
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        try:
            summary = ingest(extras, log=pipes.log)
        except BadExportError as error:
            pipes.log.error(str(error))
            pipes.report_custom_message({"verdict": "bad_export", "error": str(error)})
            return
        except Exception as error:  # anything else is worth another attempt (lost worker, I/O)
            pipes.log.error(traceback.format_exc())
            pipes.report_custom_message({"verdict": "failed", "error": first_line(error)})
            return
        # The run worker turns the summary into raw/orders' metadata, as it does for DuckDB's ingest.
        pipes.report_custom_message({"verdict": "loaded", "summary": summary})


def ingest(extras: dict[str, Any], log) -> dict[str, Any]:
    """Replace exactly the requested days of raw.orders and raw.orders_rejected; their counts."""
    warehouse = extras["warehouse"].rstrip("/")
    run_id = extras["run_id"]
    loaded_at = dt.datetime.fromisoformat(extras["loaded_at"])
    days = [d["day"] for d in extras["days"]]
    files = [
        ExportFile(idx, d["day"], path, path.rsplit("/", 1)[-1])
        for idx, (d, path) in enumerate(((d, p) for d in extras["days"] for p in d["files"]), start=1)
    ]
    headers = check_headers(files)  # before the session starts: a bad export costs no cluster time

    spark = SparkSession.builder.appName(f"shopflow-ingest {days[0]}..{days[-1]}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    fs = HadoopFiles(spark, warehouse)
    fs.delete_leftovers()  # of runs that died: one ingest writes the warehouse at a time
    stage = f"{warehouse}/_staging/{run_id}"
    watchdog = ExecutorWatchdog(spark, extras.get("executor_timeout_seconds", 60))
    watchdog.start()
    try:
        log.info(f"Reading {len(files)} file(s) of {len(days)} day(s) {days[0]}..{days[-1]}")
        multiline = files_with_multiline_records(spark, files)
        parsed = reduce(
            DataFrame.unionByName,
            [parsed_records(spark, f, headers[f.idx], f.idx in multiline) for f in files],
        ) if files else None
        checked = None
        if parsed is not None:
            checked = checked_rows(parsed, run_id, loaded_at).persist(StorageLevel.DISK_ONLY)
        try:
            if checked is not None:
                write_staged(valid_rows(checked), f"{stage}/orders")
                write_staged(rejected_rows(checked), f"{stage}/orders_rejected")
            counts = summary(checked, fs, days, files)
        except Exception as error:
            raise bad_file_error(error, files) or error
        finally:
            if checked is not None:
                checked.unpersist()
        watchdog.check()
        fs.publish(stage, days)
        log.info(
            f"Published {days[0]}..{days[-1]}: {sum(counts['rows_by_day'].values())} rows loaded, "
            f"{counts['rows_rejected']} rejected"
        )
        return counts
    except Exception:
        watchdog.check()  # say so when the cause is a lost worker
        raise
    finally:
        watchdog.stop()
        fs.delete(stage)
        spark.stop()


# --- 1. headers -----------------------------------------------------------------------------


def check_headers(files: list[ExportFile]) -> dict[int, list[str]]:
    """Every file's header as written; all problems in one error before anything is read."""
    headers, problems = {}, []
    for f in files:
        try:
            written = header_line(f)
            required_positions(f.day, f.display, written)
            headers[f.idx] = written
        except BadExportError as error:
            problems.append(str(error))
    if problems:
        raise BadExportError("\n".join(problems))
    return headers


def header_line(f: ExportFile) -> list[str]:
    """The names in the file's first line (a byte-order mark and CR removed)."""
    try:
        with open(f.path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if f.name.endswith(".gz") else raw
            first = stream.readline(HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        raise BadExportError(f"{f.display}: the file is corrupt: {first_line(error)}") from None
    try:
        text = first.decode("utf-8").lstrip("\ufeff").rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as error:
        raise BadExportError(f"{f.display}: cannot read the CSV header: {first_line(error)}") from None
    if not text.strip():
        return []
    return next(csv.reader(io.StringIO(text)))


# --- 2. lines and records -------------------------------------------------------------------


def hadoop_path(path: str) -> str:
    """A file name as a literal Hadoop path: glob characters escaped."""
    return "".join("\\" + c if c in "\\*?[]{}" else c for c in path)


def file_lines(spark: SparkSession, f: ExportFile) -> DataFrame:
    """The file's lines with their physical line number (header = 1).

    The job reads every file as one partition (spark.sql.files.maxPartitionBytes past any export's
    size and spark.sql.files.minPartitionNum 1, set by the engine; .gz files never split), so a
    line's index within its partition is its index in the file: monotonically_increasing_id() is
    exactly that for partition 0 (a second partition would start at 2^33: see summary()).
    """
    lines = spark.read.option("lineSep", "\n").text(hadoop_path(f.path))
    value = F.col("value")
    return lines.select(
        (F.monotonically_increasing_id() + 1).alias("line"),
        F.when(value.endswith("\r"), F.expr("substring(value, 1, length(value) - 1)")).otherwise(value).alias("value"),
        value.alias("raw"),  # as written: a CR inside a quoted field is data
    )


def files_with_multiline_records(spark: SparkSession, files: list[ExportFile]) -> set[int]:
    """The files where a quoted field holds a newline (rare): their records span lines."""
    if not files:
        return set()
    opens = reduce(
        DataFrame.unionByName,
        [
            file_lines(spark, f)
            .where(F.col("value").contains('"') & F.col("value").rlike(OPENS_QUOTE))
            .select(F.lit(f.idx).alias("file_idx"))
            for f in files
        ],
    )
    return {row.file_idx for row in opens.distinct().collect()}  # one job over every file


def records(spark: SparkSession, f: ExportFile, multiline: bool) -> DataFrame:
    """(line, record) of the file's data records: a record's line is its first physical line."""
    lines = file_lines(spark, f).where(F.col("line") > 1)
    if not multiline:
        return lines.where(F.col("value") != "").select("line", F.col("value").alias("record"))
    # Whether a line starts a record depends on the lines before it: a CSV state machine with two
    # states (outside or inside a quoted field) whose transition per line is known from the line
    # alone (two regular expressions). Most lines keep the state (no quote); a line with a quoted
    # newline toggles it; a line that ends outside (or inside) whatever the state resets it. The
    # state after a line is then the last reset's state, flipped by the toggles since.
    ends_inside_from_outside = F.col("value").rlike(OPENS_QUOTE)
    ends_inside_from_inside = F.col("value").rlike(STAYS_INSIDE)
    toggles = ends_inside_from_outside & ~ends_inside_from_inside
    resets = ends_inside_from_outside == ends_inside_from_inside
    in_file = Window.orderBy("line")
    so_far = in_file.rowsBetween(Window.unboundedPreceding, 0)
    classified = lines.select(
        "line", "value", "raw", resets.alias("resets"), ends_inside_from_outside.alias("reset_to_inside"),
        F.sum(toggles.cast("int")).over(so_far).alias("toggles_so_far"),
    )
    last_reset = F.last(
        F.when(F.col("resets"), F.struct("toggles_so_far", "reset_to_inside")), ignorenulls=True
    ).over(so_far)
    inside_after = classified.select(
        "line", "value", "raw",
        (
            F.coalesce(last_reset["reset_to_inside"], F.lit(False)).cast("int")
            + F.col("toggles_so_far") - F.coalesce(last_reset["toggles_so_far"], F.lit(0))
        ).alias("flips"),
    ).select("line", "value", "raw", (F.col("flips") % 2 == 1).alias("inside_after"))
    starts = inside_after.withColumn(
        "starts", ~F.coalesce(F.lag("inside_after").over(in_file), F.lit(False))
    )
    grouped = starts.withColumn(
        "record_line",
        F.max(F.when(F.col("starts"), F.col("line"))).over(so_far),
    )
    joined = grouped.groupBy("record_line").agg(
        F.array_join(
            F.transform(F.array_sort(F.collect_list(F.struct("line", "raw"))), lambda x: x["raw"]), "\n"
        ).alias("raw_record")
    ).select(
        "record_line",  # the record's own line end (CRLF) is not data; a CR inside its quotes is
        F.when(F.col("raw_record").endswith("\r"), F.expr("substring(raw_record, 1, length(raw_record) - 1)"))
        .otherwise(F.col("raw_record")).alias("record"),
    )
    return joined.where(F.col("record") != "").select(F.col("record_line").alias("line"), "record")


def parsed_records(spark: SparkSession, f: ExportFile, header: list[str], multiline: bool) -> DataFrame:
    """The file's records as the contract's columns (text), or a malformed reason and the raw text."""
    positions = required_positions(f.day, f.display, header)
    n = len(header)
    schema = ", ".join(f"c{i} STRING" for i in range(n))
    fields = F.from_csv(F.col("record"), schema, {"quote": '"', "escape": '"', "mode": "PERMISSIVE"})
    names = [name.lstrip("\ufeff") for name in header]
    # Fields = delimiters outside quoted fields + 1; only records with a quote need the regex.
    field_count = F.when(
        F.col("record").contains('"'), F.size(F.split(F.regexp_replace("record", LEADING_QUOTED_FIELD, ""), ",", -1))
    ).otherwise(F.length("record") - F.length(F.regexp_replace("record", ",", "")) + 1)
    first_invalid = F.coalesce(
        *[F.when(~F.expr(f"is_valid_utf8(fields.c{i})"), F.lit(names[i])) for i in range(n)], F.lit(names[0])
    )
    missing_from = F.element_at(F.array(*[F.lit(name) for name in names]), field_count + 1)
    malformed = (
        F.when(~F.expr("is_valid_utf8(record)"), F.concat(F.lit(f"{MALFORMED_ROW}: invalid encoding (from column "), first_invalid, F.lit(")")))
        .when(field_count < n, F.concat(F.lit(f"{MALFORMED_ROW}: missing columns (from column "), missing_from, F.lit(")")))
        .when(field_count > n, F.lit(f"{MALFORMED_ROW}: too many columns"))
    )
    rows = records(spark, f, multiline).select("line", "record", fields.alias("fields"))
    return rows.select(
        F.lit(f.day).cast("date").alias("dt"),
        F.lit(f.name).alias("_source_file"),
        F.col("line").alias("_source_line"),
        *[F.when(malformed.isNull(), F.col(f"fields.c{positions[c]}")).alias(c) for c in REQUIRED_COLUMNS],
        malformed.alias("malformed"),
        F.when(malformed.isNotNull(), F.expr("make_valid_utf8(record)")).alias("_raw_line"),
    )


# --- 3. rules -------------------------------------------------------------------------------


def checked_rows(parsed: DataFrame, run_id: str, loaded_at: dt.datetime) -> DataFrame:
    """Every record with its typed values and every rule it breaks ('' when none)."""
    typed = parsed.selectExpr("*", *SPARK.typed_columns())
    return typed.select(
        "*",
        F.coalesce(F.col("malformed"), F.expr(SPARK.reason())).alias("reason"),
        F.lit(loaded_at).cast("timestamp").alias("_loaded_at"),
        F.lit(run_id).alias("_run_id"),
    )


def valid_rows(checked: DataFrame) -> DataFrame:
    # status is published as written (it matched one of the statuses exactly); the rest typed
    return checked.where(F.col("reason") == "").select(
        "dt",
        *[F.col("status" if c == "status" else f"t_{c}").alias(c) for c in REQUIRED_COLUMNS],
        "_source_file",
        "_source_line",
        "_loaded_at",
        "_run_id",
    )


def rejected_rows(checked: DataFrame) -> DataFrame:
    return checked.where(F.col("reason") != "").select(
        "dt", "_source_file", "_source_line", "reason", *REQUIRED_COLUMNS, "_raw_line", "_loaded_at", "_run_id"
    )


# --- 4. staging and 5. publishing -------------------------------------------------------------


def write_staged(rows: DataFrame, path: str) -> None:
    rows.write.mode("overwrite").partitionBy("dt").parquet(path)


def bad_file_error(error: Exception, files: list[ExportFile]) -> BadExportError | None:
    """A file the reader could not decompress is permanent; name it."""
    text = str(error)
    if not any(m in text for m in ("Unexpected end of input stream", "Not in GZIP format", "invalid block type", "incorrect header check")):
        return None
    culprit = next((f for f in files if f.name in text), None)
    where = culprit.display if culprit else "a .csv.gz file"
    return BadExportError(
        f"{where}: the file is corrupt: {first_line(error)}. Re-export the file, then re-run the day."
    )


def summary(checked: DataFrame | None, fs: "HadoopFiles", days: list[str], files: list[ExportFile]) -> dict[str, Any]:
    """Rows per day, rejects per rule, files and bytes: one aggregation over the checked rows (the
    driver sees one row per day and reason, never an order row)."""
    rows_by_day = {day: 0 for day in days}
    rejected_by_reason: dict[str, int] = {}
    rejected = 0
    groups = (
        checked.groupBy("dt", "reason").agg(F.count("*").alias("count"), F.max("_source_line").alias("last_line")).collect()
        if checked is not None
        else []
    )
    if any(g.last_line >= SPLIT_FILE_LINE for g in groups):  # never published: see file_lines()
        raise RuntimeError("a file was read as several partitions, so its line numbers are wrong")
    for group in groups:
        if group.reason == "":
            rows_by_day[str(group.dt)] += group["count"]
            continue
        rejected += group["count"]
        rules = [MALFORMED_ROW] if group.reason.startswith(MALFORMED_ROW) else group.reason.split("; ")
        for rule in rules:
            rejected_by_reason[rule] = rejected_by_reason.get(rule, 0) + group["count"]
    return {
        "rows_by_day": rows_by_day,
        "rows_rejected": rejected,
        "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        "files": len(files),
        "bytes": sum(fs.size(f.path) for f in files),
    }


class HadoopFiles:
    """The warehouse's file system through Hadoop's API: a local folder, HDFS or an object store."""

    def __init__(self, spark: SparkSession, warehouse: str):
        jvm = spark.sparkContext._jvm
        self._Path = jvm.org.apache.hadoop.fs.Path
        self.warehouse = warehouse
        self.fs = self._Path(warehouse).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def exists(self, path: str) -> bool:
        return self.fs.exists(self._Path(path))

    def size(self, path: str) -> int:
        return self.fs.getFileStatus(self._Path(path)).getLen()

    def delete(self, path: str) -> None:
        self.fs.delete(self._Path(path), True)

    def move(self, source: str, target: str) -> None:
        self.fs.mkdirs(self._Path(target).getParent())
        if not self.fs.rename(self._Path(source), self._Path(target)):
            raise OSError(f"could not move {source} to {target}")

    def delete_leftovers(self) -> None:
        """The staging folders of runs that died. One killed between a publish's two renames left a
        day's partition moved aside and none in its place: that one goes back first, as it was."""
        staging = f"{self.warehouse}/_staging"
        for aside in self.fs.globStatus(self._Path(f"{hadoop_path(staging)}/*/replaced/*/dt=*")) or []:
            path = aside.getPath()
            live = f"{self.warehouse}/{RAW_DB}/{path.getParent().getName()}/{path.getName()}"
            if not self.exists(live):
                self.move(path.toString(), live)
        self.delete(staging)

    def publish(self, stage: str, days: list[str]) -> None:
        """Each day's partition of each table swapped for the staged one: a reader sees the old day,
        then (for the moment between two renames) no day, then the new day; never half a day."""
        for day in days:
            for table in TABLES:
                live = f"{self.warehouse}/{RAW_DB}/{table}/dt={day}"
                staged = f"{stage}/{table}/dt={day}"
                if self.exists(live):
                    self.move(live, f"{stage}/replaced/{table}/dt={day}")
                if self.exists(staged):
                    self.move(staged, live)
                else:
                    self.fs.mkdirs(self._Path(f"{self.warehouse}/{RAW_DB}/{table}"))


class ExecutorWatchdog:
    """Cancels the job when the application has had no executor for `timeout` seconds: a standalone
    cluster that lost its workers would otherwise keep the job waiting for resources forever."""

    def __init__(self, spark: SparkSession, timeout: float):
        self.sc = spark.sparkContext
        self.timeout = timeout
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def executors(self) -> int:
        return self.sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver

    def _watch(self) -> None:
        without_since = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if self.executors() > 0:
                    without_since = time.monotonic()
                elif time.monotonic() - without_since > self.timeout:
                    self.lost = True
                    self.sc.cancelAllJobs()
                    return
            except Exception:
                return  # the context is stopping

    def start(self) -> None:
        if not self.sc.master.startswith("local"):  # in local mode the driver is the executor
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        if self.lost:
            raise LostExecutors(
                f"the Spark application had no executor for {self.timeout:.0f} s (a worker was lost "
                "or none is free): retried"
            )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()
