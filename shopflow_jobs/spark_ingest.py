"""The Spark ingest: days of order exports -> raw.orders and raw.orders_rejected, Parquet tables in
the Spark warehouse, Hive-style partitioned by dt (docs/contract.md "Engines").

A program launched by the code location through Dagster Pipes (see shopflow_assets/engines/spark.py);
it imports nothing of Dagster but dagster_pipes. With a Spark Connect URL in its extras it is a
client of the cluster's Connect server (plain Python: no JVM where it runs); without one it runs
under spark-submit as a Spark application of its own. Past the start of its session it uses only
what both kinds of session offer (no sparkContext, no JVM gateway). It opens no export file:
the files (a path or a URI: file://, hdfs://, s3a://) are read, checked and written by the
executors, a big file in several tasks; the driver gets counts and each file's header line. The contract's rules come from shopflow_assets/contract/export.py, rendered as Spark SQL,
the same table the DuckDB ingest renders, so the two engines cannot drift apart.

The flow for a set of days:
1. take each day's publish lease (a later ingest of the day fences this one out), and clean up
   this run's own leftovers and those of the runs the engine says Dagster reports finished;
2. read each file as lines with their physical line numbers: Spark splits a big file into several
   tasks, so a first job counts each split's lines (and notes whether a line may open a quoted
   newline, and brings each file's first line), and a split's first line is the lines of the
   splits before it + 1;
3. check every file's header (a missing or doubled required column fails before any row is
   parsed or anything written); then the lines of records that hold quoted newlines are joined,
   across splits too;
4. split each record into fields, keeping malformed ones (too few or too many fields, invalid
   UTF-8) with their reason, check every rule and write every row into a staging folder of this
   run, all in one pass over the data (see staged_rows);
5. count per file and rule from the staged rows; refuse a file whose share of rejected lines is
   above SHOPFLOW_MAX_REJECTED_SHARE; rewrite the (few) rejected rows as their table's columns;
6. if every day's folder still holds the export that was listed, every day with rows has its
   staged rows, and every day's lease is still this ingest's: publish, per day and table, by moving
   the staged rows to a new version folder of the day and swapping the partition's location in the
   catalog to it, one statement (a day whose rebuild is empty has its partition dropped); then
   retire the versions that are no longer live and remove those retired a grace period ago
   (shopflow_assets/contract/spark_layout.py).

A file is read by its exact path (a name is never a pattern), with the compression its name says.

Under Pipes the job always ends with a custom message {"verdict": ...}: "loaded", "bad_export"
(permanent: fix the file), "export_changed" (a day's export changed while it was read: nothing was
published; read it again), "superseded" (a later ingest of a day took its lease: not retried),
"permanent" (Spark refused the job as it is: an analysis error, a permission denied, a Spark older
than the job needs; not retried) or "failed" (transient: a lost executor, I/O; retried). Once the
session is up it also reports {"application": {"id", "ui"}}, the Spark application that does the
work. It then exits 0, so the orchestrator can read the verdict (a
non-zero exit means the job died before it could say why).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gzip
import json
import os
import re
import signal
import threading
import time
import traceback
import urllib.request
import uuid
import zlib
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Iterator

from dagster_pipes import open_dagster_pipes
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F

from shopflow_assets.contract.export import (
    HEADER_BYTES,
    MALFORMED_ROW,
    REQUIRED_COLUMNS,
    SPARK,
    BadExportError,
    ExportChangedError,
    display_name,
    header_names,
    header_report,
    rejected_share_error,
    required_positions,
)
from shopflow_assets.contract.landing import is_uri, scan_day
from shopflow_assets.contract.raw_schema import column_names, spark_columns
from shopflow_assets.contract.spark_layout import (
    METASTORE_UNREACHABLE,
    VERSION,
    Catalog,
    live_version,
    same_place,
    sql_string,
    thrift_sql,
    tidy_day,
    version_folder,
)

RAW_DB = "raw.db"
STAGING = "_staging"
LEASES = "_leases"  # <warehouse>/_leases/dt=D/<token>.<owner>: who may publish day D
ROW_IN_PARTITION = (1 << 33) - 1  # monotonically_increasing_id(): partition << 33 | row in partition
TABLES = ("orders", "orders_rejected")
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
# The fields Spark's CSV parser holds per record (its maxColumns); a record with more fails the task.
PARSED_FIELDS_MAX = 20480
# Quoted fields at the start of a field; removed before counting the delimiters of a record.
LEADING_QUOTED_FIELD = f'(?:^|(?<=,)){QUOTED_FIELD}'
# The suffixes by which Hadoop picks a decompressor (case-sensitive), whatever the name says.
HADOOP_CODEC_SUFFIXES = (".gz", ".bz2", ".deflate", ".snappy", ".lz4", ".zst", ".lzo", ".br")
# How a file read in Python on an executor names itself in a task's error (see python_file_lines).
CORRUPT_FILE_MARK = "shopflow-unreadable-file-"
# The reason of a blank line's record: no table holds it, and it is no data line of its file.
BLANK_LINE = "blank line"


@dataclass(frozen=True)
class ExportFile:
    idx: int
    day: str
    folder: str  # dt=YYYY-MM-DD
    name: str  # the file's name in the day folder: _source_file and messages
    path: str  # what is read: the file, or the file a link inside the landing zone points to
    gzip: bool  # from the name, in any case
    size: int

    @property
    def display(self) -> str:
        return display_name(self.folder, self.name)


@dataclass
class FileCount:
    """One file's records as checked: lines of records (a quoted newline makes a record of several
    lines), lines of rejected records, valid rows, and rejected rows per reason."""

    lines: int = 0
    rejected_lines: int = 0
    valid: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class LostExecutors(RuntimeError):
    """The application has had no executor for too long (a worker died): transient."""


class Superseded(RuntimeError):
    """A later ingest of a day took the day's publish lease: this one must not publish it."""


class StagedRowsMissing(RuntimeError):
    """A day that has rows has no staged rows at publish: never published as an empty day."""


def main() -> None:
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        try:
            if extras.get("mode") == "headers":  # raw/orders' header check without an ingest
                pipes.report_custom_message({"verdict": "headers", "headers": read_headers(extras, pipes.log)})
                return
            summary = ingest(extras, log=pipes.log)
        except BadExportError as error:
            pipes.log.error(str(error))
            pipes.report_custom_message({"verdict": "bad_export", "error": str(error)})
            return
        except ExportChangedError as error:
            pipes.log.warning(str(error))
            pipes.report_custom_message({"verdict": "export_changed", "error": str(error)})
            return
        except Superseded as error:
            pipes.log.error(str(error))
            pipes.report_custom_message({"verdict": "superseded", "error": str(error)})
            return
        except Exception as error:  # anything else is worth another attempt (lost worker, I/O) ...
            pipes.log.error(traceback.format_exc())
            verdict = "permanent" if is_permanent(error) else "failed"  # ... unless Spark says no for good
            pipes.report_custom_message({"verdict": verdict, "error": first_line(error)})
            return
        # The run worker turns each day's summary into its raw/orders metadata, as for DuckDB's ingest.
        pipes.report_custom_message({"verdict": "loaded", "summary": summary})


def export_files(days: list[dict[str, Any]]) -> list[ExportFile]:
    idx = 0
    files = []
    for d in days:
        for f in d["files"]:
            idx += 1
            files.append(ExportFile(idx, d["day"], d["folder"], f["name"], f["path"], bool(f["gzip"]), int(f["size"])))
    return files


def ingest(extras: dict[str, Any], log) -> dict[str, Any]:
    """Replace exactly the requested days of raw.orders and raw.orders_rejected; each day's counts.
    A file found bad in an export that changed while it was read may be a mix of two exports: that
    is said as ExportChangedError (read it again), not as a bad export."""
    try:
        return ingest_days(extras, log)
    except BadExportError:
        check_unchanged(extras["days"])
        raise


def ingest_days(extras: dict[str, Any], log) -> dict[str, Any]:
    days = [d["day"] for d in extras["days"]]
    files = export_files(extras["days"])

    spark = start_session(extras, f"shopflow-ingest {days[0]}..{days[-1]}")
    application = application_of(spark, bool(extras.get("remote")))
    log.info(f"Spark {spark.version}, application {application['id']} (UI {application['ui']})")
    if not compiles_huge_methods(spark):
        log.warning(
            f"The executors run without {HUGE_METHODS_COMPILED}: the check runs without whole-stage code "
            "generation, slower (docs/spark.md)"
        )
    report({"application": application})
    interrupt_on_signals(spark)
    try:
        check_spark_version(spark.version)
        with catalog_of(spark, extras) as catalog:
            return load_days(spark, catalog, extras, files, application, log)
    finally:
        spark.stop()


def load_days(spark: SparkSession, catalog: Catalog, extras: dict[str, Any], files: list[ExportFile],
              application: dict[str, str | None], log) -> dict[str, Any]:
    """Read, check and stage the days' rows on the cluster, then publish them (steps 1 to 6)."""
    warehouse = extras["warehouse"].rstrip("/")
    create_raw_tables(catalog, warehouse)  # before any work: the catalog is this warehouse's
    run_id = extras["run_id"]
    loaded_at = dt.datetime.fromisoformat(extras["loaded_at"])
    max_share = float(extras.get("max_rejected_share", 0.5))
    exports = extras["days"]
    days = [d["day"] for d in exports]
    fs = WarehouseFiles(warehouse, grace_seconds=float(extras.get("version_grace_seconds", 3600)))
    stage = f"{warehouse}/{STAGING}/{run_id}"
    try:
        lease = fs.take_leases(days, run_id)  # first: from now on an older ingest of these days is fenced out
        fs.delete_leftovers(run_id, extras.get("finished_runs", []))
        watchdog = ExecutorWatchdog(spark, application, extras.get("executor_timeout_seconds", 60))
        watchdog.start()
        try:
            log.info(f"Reading {len(files)} file(s) of {len(days)} day(s) {days[0]}..{days[-1]}")
            added = provenance(files, run_id, loaded_at)
            try:
                splits = split_lines(spark, files)
                multiline = sum(s.multiline for s in splits.values())
                log.info(
                    f"{sum(len(s.lines_before) for s in splits.values())} split(s) counted; "
                    f"{multiline} file(s) with quoted newlines"
                )
                report({"headers": header_reports(files, {f.idx: splits[f.idx].header for f in files})})
                headers = check_headers(files, splits)
                written: dict[str, int] = {}  # the rows of each kind, counted as the pass writes them
                if files:
                    parsed = reduce(
                        DataFrame.unionByName,
                        [parsed_records(spark, f, headers[f.idx], splits[f.idx]) for f in files],
                    )
                    staged = staged_rows(checked_rows(parsed, added["dt"]), added)
                    observed = Observation("staged")
                    kinds = [F.count_if(F.col("kind") == kind).alias(kind) for kind in KINDS]
                    write_staged(staged.observe(observed, *kinds), f"{stage}/{CHECKED}", "kind")
                    written = observed.get
                counts = staged_counts(spark, fs, stage, files, splits, written)
                refuse_mostly_rejected(files, counts, max_share)  # before anything is published
                if written.get("rejected"):
                    stage_rejected_rows(spark, fs, stage)
            except Exception as error:
                raise bad_file_error(error, files) or error
            watchdog.check()
            summary = day_summary(days, files, counts)
            check_unchanged(exports)
            fs.publish(stage, summary, lease, catalog, log)
            log.info(
                f"Published {days[0]}..{days[-1]}: {sum(d['rows_loaded'] for d in summary.values())} rows "
                f"loaded, {sum(d['rows_rejected'] for d in summary.values())} rejected"
            )
            return {"days": summary}
        except Exception:
            watchdog.check()  # say so when the cause is a lost worker
            raise
        finally:
            watchdog.stop()
    finally:
        fs.delete(stage)


def start_session(extras: dict[str, Any], name: str) -> SparkSession:
    """A session on the Connect server the extras name, else this application's own (spark-submit);
    with the job's session settings either way."""
    if extras.get("remote"):
        spark = SparkSession.builder.remote(extras["remote"]).getOrCreate()
    else:
        die_with_launcher()
        spark = SparkSession.builder.appName(name).getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
    for key, value in extras.get("session_conf", {}).items():
        spark.conf.set(key, value)
    # The check is one wide projection: fused into one generated method per stage (whole-stage
    # code generation) it grows past the size the JVM compiles, and would run interpreted, unless
    # the JVMs that run the tasks were started with -XX:-DontCompileHugeMethods (the cluster's
    # setting, docs/spark.md). Without it each operator's own code is generated instead.
    spark.conf.set("spark.sql.codegen.wholeStage", str(compiles_huge_methods(spark)).lower())
    # Each file's check generates the same code (see by_split) but for the stage's number in the
    # class name: without it, the files share one class, compiled and warmed up once per JVM.
    spark.conf.set("spark.sql.codegen.useIdInClassName", "false")
    return spark


HUGE_METHODS_COMPILED = "-XX:-DontCompileHugeMethods"


def compiles_huge_methods(spark: SparkSession) -> bool:
    """Whether the JVMs that run this session's tasks compile huge methods: the executors, or in
    local mode the driver."""
    local = str(spark.conf.get("spark.master", "")).startswith("local")
    options = spark.conf.get("spark.driver.extraJavaOptions" if local else "spark.executor.extraJavaOptions", "") or ""
    return HUGE_METHODS_COMPILED in options.split()


@contextlib.contextmanager
def catalog_of(spark: SparkSession, extras: dict[str, Any]) -> Iterator[Catalog]:
    """The shared catalog (the metastore), where days are published: through the Connect
    session, or, for an application of its own (whose catalog is in-memory), through the
    cluster's Thrift server."""
    if extras.get("remote"):
        yield Catalog(lambda statement: [tuple(row) for row in spark.sql(statement).collect()])
    else:
        with thrift_sql(extras["thrift"]) as run:
            yield Catalog(run)


def create_raw_tables(catalog: Catalog, warehouse: str) -> None:
    """The raw tables are the ingest's: external (dropping a partition or the table never deletes
    a version a reader may still be reading), over <warehouse>/raw.db/<table>. Tables that are
    there already cost two statements."""
    catalog.run("CREATE DATABASE IF NOT EXISTS raw")
    found = catalog.table_locations("raw", TABLES)
    for table in TABLES:
        location = f"{warehouse}/{RAW_DB}/{table}"
        if table not in found:
            try:
                catalog.run(
                    f"CREATE TABLE IF NOT EXISTS raw.{table} ({spark_columns(f'raw.{table}')}) "
                    f"USING parquet PARTITIONED BY (dt) LOCATION {sql_string(location)}"
                )
            except Exception:
                if not catalog.exists(f"raw.{table}"):
                    raise
                # another ingest created it meanwhile: checked below like any existing table
            found[table] = catalog.table_locations("raw", [table]).get(table, "")
        if not same_place(found[table], location):
            raise WarehouseMismatch(
                f"raw.{table} in the cluster's catalog is at {found[table]}, not in this warehouse "
                f"({warehouse}): point SHOPFLOW_SPARK_WAREHOUSE at the catalog's warehouse, or drop the table "
                "from the catalog (its files stay) and load its days again. Not retried."
            )


def application_of(spark: SparkSession, remote: bool) -> dict[str, str | None]:
    """The Spark application that runs the work (the Connect server's, or this job's own) and the
    address of its web UI: a Connect session reads them from the server's settings; an
    application of its own asks its context (its UI may have taken a port after spark.ui.port)."""
    if not remote:
        context = spark.sparkContext
        return {"id": context.applicationId, "ui": context.uiWebUrl}
    conf = {key: spark.conf.get(key, None) for key in ("spark.app.id", "spark.driver.host", "spark.ui.port")}
    ui = f"http://{conf['spark.driver.host']}:{conf['spark.ui.port'] or 4040}" if conf["spark.driver.host"] else None
    return {"id": conf["spark.app.id"], "ui": ui}


def interrupt_on_signals(spark: SparkSession) -> None:
    """A cancelled run sends SIGINT (then SIGTERM): this session's running Spark work is
    interrupted, so that the call waiting for it returns and the job ends, rather than a Connect
    server finishing work nobody waits for."""

    def interrupt(signum, _frame) -> None:
        threading.Thread(target=spark.interruptAll, name="shopflow-interrupt", daemon=True).start()
        raise KeyboardInterrupt(f"signal {signum}: the run was cancelled")

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


MINIMUM_SPARK = (4, 0)  # the rules' SQL (is_valid_utf8, make_valid_utf8) and the readers' options


class WarehouseMismatch(RuntimeError):
    """The catalog's raw tables are in another warehouse: permanent."""


class SparkTooOld(RuntimeError):
    """The cluster's Spark is older than the job needs: permanent."""


def check_spark_version(version: str) -> None:
    found = tuple(int(part) for part in re.findall(r"[0-9]+", version)[:2])
    if found < MINIMUM_SPARK:
        raise SparkTooOld(
            f"The Spark ingest needs Spark {'.'.join(map(str, MINIMUM_SPARK))} or later; the cluster runs "
            f"Spark {version}: upgrade it, or point SHOPFLOW_SPARK_MASTER/SPARK_HOME at a newer one. Not retried."
        )


# Spark's words for a job that cannot succeed as it is, however often it runs.
PERMANENT_JAVA_ERRORS = ("org.apache.hadoop.security.AccessControlException", "java.nio.file.AccessDeniedException")


def is_permanent(error: BaseException) -> bool:
    """An analysis error (a query Spark cannot plan), a permission denied, or a Spark too old:
    retrying cannot help. A lost executor, an unreachable master or metastore, or an I/O fault can."""
    from pyspark.errors import AnalysisException

    text = str(error)
    if any(marker in text for marker in METASTORE_UNREACHABLE):
        return False
    if isinstance(error, (AnalysisException, PermissionError, SparkTooOld, WarehouseMismatch)):
        return True
    return any(name in text for name in PERMANENT_JAVA_ERRORS) or "Permission denied" in text


def report(message: dict[str, Any]) -> None:
    """A custom message to the run worker, when the job runs under Pipes."""
    from dagster_pipes import PipesContext

    if PipesContext.is_initialized():
        PipesContext.get().report_custom_message(message)


def check_unchanged(exports: list[dict[str, Any]]) -> None:
    """What was read is the export that was listed, unless a day's folder changed meanwhile (a
    re-export landed or is being written): then nothing is published (ExportChangedError)."""
    changed = [
        d["day"] for d in exports if scan_day(d["landing_root"], d["directory"]).fingerprint != d["fingerprint"]
    ]
    if changed:
        raise ExportChangedError(
            f"The export of {', '.join(changed)} changed while it was read (a re-export landed): "
            "nothing was published."
        )


# --- the launcher ---------------------------------------------------------------------------


def parent_of(pid: int) -> int:
    text = open(f"/proc/{pid}/stat").read()
    return int(text[text.rindex(")") + 2 :].split()[1])


def die_with_launcher() -> None:
    """This process is spark-submit's child, and spark-submit the run worker's. A run worker that is
    killed leaves nobody to read this job's verdict, and a newer run of the same days may be under
    way: the JVM and this process end with it. (The engine also starts spark-submit under setpriv
    --pdeathsig where it can; the publish lease fences whatever survives.)"""
    jvm = os.getppid()
    try:
        launcher = parent_of(jvm)
        with open(f"/proc/{jvm}/cmdline", "rb") as cmdline:
            if b"org.apache.spark.deploy.SparkSubmit" not in cmdline.read():
                return  # not started by spark-submit: the parent is not the driver's JVM
    except (OSError, ValueError, IndexError):
        return  # no /proc: nothing to watch
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: end with the JVM
    except (OSError, AttributeError):
        pass
    if parent_of(jvm) != launcher:  # it died before the tie was made
        os.kill(jvm, signal.SIGKILL)
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1)
            try:
                now = parent_of(jvm)
            except (OSError, ValueError, IndexError):
                now = None
            if now != launcher:
                try:
                    os.kill(jvm, signal.SIGKILL)
                except OSError:
                    pass
                os._exit(1)

    threading.Thread(target=watch, name="shopflow-launcher-watch", daemon=True).start()


# --- 1. headers -----------------------------------------------------------------------------


def check_headers(files: list[ExportFile], splits: dict[int, "FileSplits"]) -> dict[int, list[str]]:
    """Every file's header as written (its first line, read by the executors with the line
    counts); all problems in one error before any row is parsed."""
    headers, problems = {}, []
    for f in files:
        try:
            written = header_names(splits[f.idx].header, f.display)
            required_positions(f.day, f.display, written)
            headers[f.idx] = written
        except BadExportError as error:
            problems.append(str(error))
    if problems:
        raise BadExportError("\n".join(problems))
    return headers


def header_reports(files: list[ExportFile], first_lines: dict[int, bytes | None]) -> dict[str, dict[str, dict]]:
    """Each file's header against the contract, for raw/orders' header check (day -> file name ->
    header_report): what the run worker shows, so that it never opens an export file."""
    reports: dict[str, dict[str, dict]] = {}
    for f in files:
        reports.setdefault(f.day, {})[f.name] = header_report(first_lines[f.idx], f.display)
    return reports


def read_headers(extras: dict[str, Any], log) -> dict[str, dict[str, dict]]:
    """The header check alone: each file's first line read on the cluster (a short job per file:
    the first split's first line), as header_reports. A file that cannot be read (a corrupt
    .csv.gz) is reported unreadable, which the check says."""
    files = export_files(extras["days"])
    spark = start_session(extras, "shopflow-headers")
    try:
        first_lines: dict[int, bytes | None] = {}
        unreadable = []
        for f in files:
            try:
                first_lines[f.idx] = file_first_line(spark, f)
            except Exception as error:
                if bad_file_error(error, [f]) is None:
                    raise
                log.warning(f"{f.display}: no readable header: {first_line(error)}")
                unreadable.append(f)
        reports = header_reports([f for f in files if f.idx in first_lines], first_lines)
        for f in unreadable:
            reports.setdefault(f.day, {})[f.name] = {"readable": False}
        return reports
    finally:
        spark.stop()


def file_first_line(spark: SparkSession, f: ExportFile) -> bytes | None:
    """The file's first line (at most HEADER_BYTES); None for an empty file."""
    first = (
        numbered_lines(spark, f)
        .where((F.col("split") == 0) & (F.col("row") == 0))
        .select(F.expr(f"substring(cast(value AS BINARY), 1, {HEADER_BYTES})").alias("first"))
        .limit(1)
        .collect()
    )
    return bytes(first[0].first) if first else None


# --- 2. lines and records -------------------------------------------------------------------


def hadoop_path(path: str) -> str:
    """A file name as a literal Hadoop path: glob characters escaped."""
    return "".join("\\" + c if c in "\\*?[]{}" else c for c in path)


def hadoop_reads_literally(f: ExportFile) -> bool:
    """Whether Spark's file reader takes the path as itself, with the compression the name says.
    Hadoop cannot hold a ':' in a file name (it parses it as a URI scheme), and it picks the
    decompressor from the path's suffix, case-sensitively (a .CSV.GZ file would be read as bytes,
    and a link's target may have another suffix than the link)."""
    codec = next((s for s in HADOOP_CODEC_SUFFIXES if f.path.endswith(s)), None)
    path = urlsplit(f.path).path if is_uri(f.path) else f.path
    return ":" not in path and codec == (".gz" if f.gzip else None)


@dataclass(frozen=True)
class FileSplits:
    """A file's splits as the first job counted them: the line number before each split's first
    line (by the split's start offset), and whether a line may open a quoted newline."""

    lines_before: dict[int, int]
    multiline: bool
    header: bytes | None = None  # the file's first line (at most HEADER_BYTES); None: an empty file
    lines: int = 0  # the file's physical lines


def numbered_lines(spark: SparkSession, f: ExportFile) -> DataFrame:
    """(split, row, value) of every physical line of the file: the split's start offset, the line's
    index within its split. Spark cuts a big file into splits at line ends and reads each in a task
    of its own (a .gz file is one split); a task reads its split's lines in order, so a line's
    index in its task is monotonically_increasing_id()'s low 33 bits. A file Hadoop cannot name as
    itself is read by Python on an executor instead, as one split."""
    if hadoop_reads_literally(f):
        lines = spark.read.option("lineSep", "\n").text(hadoop_path(f.path))
        return lines.select(
            F.col("_metadata.file_block_start").alias("split"),
            F.expr(f"monotonically_increasing_id() & {ROW_IN_PARTITION}").alias("row"),
            "value",
        )
    return python_file_lines(spark, f).select(F.lit(0).cast("bigint").alias("split"), (F.col("line") - 1).alias("row"), "value")


def split_lines(spark: SparkSession, files: list[ExportFile]) -> dict[int, FileSplits]:
    """One job over every file's lines: each split's count of lines, first and last row index,
    first line, and whether a line of it may open a quoted newline (a quote, then the regular
    expression). The driver gets one row per split; the first split's first line is the header. A task that read more than one split (its rows would not start
    at 0 or would run past the count) fails the ingest before anything is written."""
    if not files:
        return {}
    value = F.col("value")
    lines = reduce(
        DataFrame.unionByName, [numbered_lines(spark, f).select(F.lit(f.idx).alias("file_idx"), "*") for f in files]
    )
    per_split = (
        lines.groupBy("file_idx", "split")
        .agg(
            F.count("*").alias("lines"),
            F.min("row").alias("first_row"),
            F.max("row").alias("last_row"),
            F.max((value.contains('"') & value.rlike(OPENS_QUOTE)).cast("int")).alias("opens"),
            F.max(F.when(F.col("row") == 0, F.expr(f"substring(cast(value AS BINARY), 1, {HEADER_BYTES})"))).alias("first"),
        )
        .collect()
    )
    splits: dict[int, FileSplits] = {}
    for f in files:
        mine = sorted((r for r in per_split if r.file_idx == f.idx), key=lambda r: r.split)
        if any(r.first_row != 0 or r.last_row != r.lines - 1 for r in mine):
            raise RuntimeError(f"{f.display} was read with several splits in one task: its line numbers would be wrong")
        before, total = {}, 0
        for r in mine:
            before[r.split] = total
            total += r.lines
        splits[f.idx] = FileSplits(before, any(r.opens for r in mine), bytes(mine[0].first) if mine else None, total)
    return splits


def by_split(values: dict[int, int]) -> Column:
    """The value of the row's split, from a map literal. A number written into the plan would be
    compiled into each file's generated code; a map is passed to it as an object, so the files of
    one header share one generated class (compiled, and warmed up by the JVM, once)."""
    if not values:  # an empty file: no row asks
        return F.lit(None).cast("bigint")
    return F.element_at(F.create_map(*[F.lit(x).cast("bigint") for kv in sorted(values.items()) for x in kv]), F.col("split"))


def file_lines(spark: SparkSession, f: ExportFile, splits: FileSplits) -> DataFrame:
    """The file's lines with their physical line number (header = 1): the lines of the splits
    before the line's split, plus its index in its split, plus 1; and the file's index."""
    numbered = numbered_lines(spark, f).select(
        by_split({split: f.idx for split in splits.lines_before}).cast("int").alias("_file_idx"),
        (by_split(splits.lines_before) + F.col("row") + 1).alias("line"),
        "value",
    )
    value = F.col("value")
    return numbered.select(
        "_file_idx",
        "line",
        F.when(value.endswith("\r"), F.expr("substring(value, 1, length(value) - 1)")).otherwise(value).alias("value"),
        value.alias("raw"),  # as written: a CR inside a quoted field is data
    )


def python_file_lines(spark: SparkSession, f: ExportFile) -> DataFrame:
    """(line, value) of a file read by its exact path in Python on an executor, split at "\n" like
    Spark's reader. The lines travel as bytes and become text by a cast, which keeps invalid UTF-8
    as it is (the rules then reject it as Spark's reader would)."""
    path, gzipped, mark = f.path, f.gzip, f"{CORRUPT_FILE_MARK}{f.idx}"

    def lines(_batches):  # runs on the executor: the standard library, pyarrow and fsspec
        import fsspec
        import pyarrow as pa

        numbers, texts = [], []

        def batch():
            return pa.RecordBatch.from_arrays([pa.array(numbers, pa.int64()), pa.array(texts, pa.binary())], ["line", "bytes"])

        try:
            with fsspec.open(path, "rb") as raw:  # a path or a URI (file://, hdfs://, s3a://)
                stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
                for number, text in enumerate(stream, start=1):
                    numbers.append(number)
                    texts.append(text[:-1] if text.endswith(b"\n") else text)
                    if len(numbers) == 10_000:
                        yield batch()
                        numbers, texts = [], []
        except (OSError, EOFError, zlib.error) as error:
            raise OSError(f"{mark}: {error}") from None
        yield batch()

    return spark.range(0, 1, 1, 1).mapInArrow(lines, "line BIGINT, bytes BINARY").select(
        "line", F.col("bytes").cast("string").alias("value")
    )


def records(spark: SparkSession, f: ExportFile, splits: FileSplits) -> DataFrame:
    """(_file_idx, line, record, lines) of the file's data records: a record's line is its first
    physical line, `lines` how many physical lines it spans. A blank line is a record of its own
    (it is counted, then dropped)."""
    lines = file_lines(spark, f, splits).where(F.col("line") > 1)
    if not splits.multiline:
        return lines.select("_file_idx", "line", F.col("value").alias("record"), F.lit(1).alias("lines"))
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
        ).alias("raw_record"),
        F.count("*").alias("lines"),
    ).select(
        "record_line",
        "lines",  # the record's own line end (CRLF) is not data; a CR inside its quotes is
        F.when(F.col("raw_record").endswith("\r"), F.expr("substring(raw_record, 1, length(raw_record) - 1)"))
        .otherwise(F.col("raw_record")).alias("record"),
    )
    return joined.select(F.lit(f.idx).alias("_file_idx"), F.col("record_line").alias("line"), "record", "lines")


def parsed_records(spark: SparkSession, f: ExportFile, header: list[str], splits: FileSplits) -> DataFrame:
    """The file's records as the contract's columns (text), or a malformed reason and the raw text."""
    positions = required_positions(f.day, f.display, header)
    n = len(header)
    schema = ", ".join(f"c{i} STRING" for i in range(n))
    options = {"quote": '"', "escape": '"', "mode": "PERMISSIVE", "maxColumns": str(PARSED_FIELDS_MAX)}
    # a record of more fields than the parser holds is malformed anyway: it is not parsed
    fields = F.when(F.col("_field_count") < PARSED_FIELDS_MAX, F.from_csv(F.col("record"), schema, options))
    names = [name.lstrip("\ufeff") for name in header]
    # Fields = delimiters outside quoted fields + 1; only records with a quote need the regex, the
    # others count their commas (one byte each in UTF-8) with a plain replace.
    record = F.col("record")
    field_count = F.when(
        record.contains('"'), F.size(F.split(F.regexp_replace(record, LEADING_QUOTED_FIELD, ""), ",", -1))
    ).otherwise(F.octet_length(record) - F.octet_length(F.expr("replace(record, ',', '')")) + 1)
    first_invalid = F.coalesce(
        *[F.when(~F.expr(f"is_valid_utf8(fields.c{i})"), F.lit(names[i])) for i in range(n)], F.lit(names[0])
    )
    count = F.col("_field_count")
    missing_from = F.element_at(F.array(*[F.lit(name) for name in names]), count + 1)
    malformed = (
        F.when(record == "", F.lit(BLANK_LINE))
        .when(~F.expr("is_valid_utf8(record)"), F.concat(F.lit(f"{MALFORMED_ROW}: invalid encoding (from column "), first_invalid, F.lit(")")))
        .when(count < n, F.concat(F.lit(f"{MALFORMED_ROW}: missing columns (from column "), missing_from, F.lit(")")))
        .when(count > n, F.lit(f"{MALFORMED_ROW}: too many columns"))
    )
    # Each step its own projection: a value that later steps read several times is computed once
    # (Spark does not inline an expensive expression into each of its readers).
    rows = (
        records(spark, f, splits)
        .select("_file_idx", "line", "record", "lines", field_count.alias("_field_count"))
        .select("_file_idx", "line", "record", "lines", "_field_count", fields.alias("fields"))
        .select("_file_idx", "line", "record", "lines", "fields", malformed.alias("malformed"))
    )
    return rows.select(
        "_file_idx",
        F.col("lines").alias("_lines"),
        F.col("line").alias("_source_line"),
        *[F.when(F.col("malformed").isNull(), F.col(f"fields.c{positions[c]}")).alias(c) for c in REQUIRED_COLUMNS],
        "malformed",
        F.when(F.col("malformed").isNotNull(), F.expr("make_valid_utf8(record)")).alias("_raw_line"),
    )


# --- 3. rules -------------------------------------------------------------------------------


def checked_rows(parsed: DataFrame, day: Any) -> DataFrame:
    """Every record with every rule it breaks ('' when none), and its values once: typed for a
    valid row (raw.orders), as written for a rejected one (raw.orders_rejected). What is the same
    for a whole file (its day and name) or run is added by staged_rows."""
    # One match of the row's typed texts first; only a row that fails it is matched column by
    # column (export.SqlDialect.typed_row_match).
    typed = (
        parsed.withColumn("_matched", F.expr(SPARK.typed_row_match()))
        .selectExpr("*", *SPARK.typed_columns(matched="_matched"))
        .withColumn("dt", day)  # the rules read the row's day
        .withColumn("reason", F.coalesce(F.col("malformed"), F.expr(SPARK.reason())))
    )
    valid = F.col("reason") == ""
    return typed.select(
        "_file_idx", "_lines", "_source_line", "_raw_line", "reason", "status",
        *[F.when(valid, F.col(f"t_{c}")).alias(f"t_{c}") for c in REQUIRED_COLUMNS if c != "status"],
        *[F.when(~valid, F.col(c)).alias(c) for c in REQUIRED_COLUMNS if c != "status"],
    )


def provenance(files: list[ExportFile], run_id: str, loaded_at: dt.datetime) -> dict[str, Any]:
    """The columns a row gets from its file (looked up by _file_idx, 1-based) and from the run."""
    by_idx = sorted(files, key=lambda f: f.idx)  # export_files numbers them 1, 2, ...

    def of_file(values: list[str]):
        return F.element_at(F.array(*[F.lit(v) for v in values]), F.col("_file_idx"))

    return {
        "dt": of_file([f.day for f in by_idx]).cast("date").alias("dt"),
        "_source_file": of_file([f.name for f in by_idx]).alias("_source_file"),
        "_loaded_at": F.lit(loaded_at).cast("timestamp").alias("_loaded_at"),
        "_run_id": F.lit(run_id).alias("_run_id"),
    }


# --- 4. staging and 5. publishing -------------------------------------------------------------

# The checked rows are written once, in one pass over the data, as raw.orders' columns in a folder
# per kind: `valid` (a valid row, as it is published), `rejected` (its reason, line count and
# values as written go as JSON in `status`, raw.orders' one free-text column) and `blank` (a blank
# line: no table holds it; it is staged to be counted). One pass that writes both tables, with no
# cache of the checked rows, is what keeps the ingest near bare Spark; the rejected rows, few in
# any export worth loading, are then rewritten as raw.orders_rejected's columns.
CHECKED = "checked"
KINDS = ("valid", "rejected", "blank")
TABLE_OF_KIND = {"valid": "orders", "rejected": "orders_rejected", "blank": "blank lines"}
REJECTION = f"reason STRING, lines BIGINT, {', '.join(f'{c} STRING' for c in REQUIRED_COLUMNS)}, _raw_line STRING"


def staged_rows(checked: DataFrame, added: dict[str, Any]) -> DataFrame:
    """Every checked record as raw.orders' columns, with its kind (valid, rejected or blank)."""
    reason = F.col("reason")
    kind = F.when(reason == "", "valid").when(reason == BLANK_LINE, "blank").otherwise("rejected")
    rejection = F.to_json(F.struct(reason, F.col("_lines").alias("lines"), *REQUIRED_COLUMNS, "_raw_line"))
    columns = {
        **{c: F.col(f"t_{c}").alias(c) for c in REQUIRED_COLUMNS if c != "status"},
        # status is published as written (it matched one of the statuses exactly)
        "status": F.when(reason == "", F.col("status")).when(reason != BLANK_LINE, rejection).alias("status"),
        **added,
    }
    return checked.select(*[columns.get(c, c) for c in column_names("raw.orders")], kind.alias("kind"))


def write_staged(rows: DataFrame, path: str, *partitions: str) -> None:
    rows.write.mode("overwrite").partitionBy(*partitions, "dt").parquet(path)


def read_staged(spark: SparkSession, fs: "WarehouseFiles", stage: str, kind: str | None = None) -> DataFrame | None:
    """The staged rows (of one kind), read by their schema; None when nothing is staged."""
    path = f"{stage}/{CHECKED}"
    if not any(name.startswith("kind=") for name in fs.names(path)):
        return None
    rows = spark.read.schema(f"{spark_columns('raw.orders')}, kind STRING").option("basePath", path).parquet(path)
    return rows if kind is None else rows.where(F.col("kind") == kind)


def staged_table(stage: str, table: str) -> str:
    """Where a table's staged rows are, by day (dt=D/): the valid rows as the check wrote them,
    the rejected ones as stage_rejected_rows rewrote them."""
    return f"{stage}/{CHECKED}/kind=valid" if table == "orders" else f"{stage}/{table}"


def staged_folder(stage: str, table: str, day: str) -> str:
    return f"{staged_table(stage, table)}/dt={day}"


def stage_rejected_rows(spark: SparkSession, fs: "WarehouseFiles", stage: str) -> None:
    """The staged rejected rows, rewritten as raw.orders_rejected's columns."""
    rows = read_staged(spark, fs, stage, "rejected")
    if rows is None:
        return
    rejection = F.from_json(F.col("status"), REJECTION)
    columns = {c: rejection[c].alias(c) for c in ["reason", *REQUIRED_COLUMNS, "_raw_line"]}
    rejected = rows.select(*[columns.get(c, c) for c in column_names("raw.orders_rejected")])
    write_staged(rejected, staged_table(stage, "orders_rejected"))


def staged_counts(spark: SparkSession, fs: "WarehouseFiles", stage: str, files: list[ExportFile],
                  splits: dict[int, "FileSplits"], written: dict[str, int]) -> dict[int, FileCount]:
    """Each file's lines and rows, valid and per reason: one aggregation over the staged rows'
    small columns (the driver sees one row per file, kind and reason, never an order row). A
    file's lines are its physical lines but the header and blank lines; a valid row's lines are
    those no rejected record holds. The staged rows must be those `written` (the rows of each
    kind, as the check wrote them): staged rows removed by another process would otherwise be
    counted, then published, as rows the export does not have."""
    counts: dict[int, FileCount] = {}
    rows = read_staged(spark, fs, stage)
    groups = [] if rows is None else staged_groups(rows)
    found = {kind: sum(g.rows for g in groups if g.kind == kind) for kind in KINDS}
    missing = [
        f"{TABLE_OF_KIND.get(kind, kind)} ({found[kind]} of {written.get(kind, 0)} rows)"
        for kind in KINDS
        if found[kind] != written.get(kind, 0)
    ]
    if missing:
        raise StagedRowsMissing(
            f"the staged rows of {', '.join(missing)} are missing before they were counted (removed by "
            "another process?): nothing was published"
        )
    by_name = {(f.day, f.name): f for f in files}
    blank: dict[int, int] = {}
    for g in groups:
        f = by_name[(g.day, g._source_file)]
        count = counts.setdefault(f.idx, FileCount())
        if g.kind == "valid":
            count.valid += g.rows
        elif g.kind == "blank":
            blank[f.idx] = blank.get(f.idx, 0) + g.rows
        else:
            count.rejected_lines += g.lines
            count.rejected[g.reason] = count.rejected.get(g.reason, 0) + g.rows
    for idx, count in counts.items():
        count.lines = splits[idx].lines - 1 - blank.get(idx, 0)
    return counts


def staged_groups(rows: DataFrame) -> list:
    """(kind, day, _source_file, reason, rows, lines) of the staged rows: a rejected row's reason and
    lines from its JSON."""
    rejected = F.col("kind") == "rejected"
    return (
        rows.groupBy(
            "kind",
            F.col("dt").cast("string").alias("day"),
            "_source_file",
            F.when(rejected, F.get_json_object("status", "$.reason")).alias("reason"),
        )
        .agg(
            F.count("*").alias("rows"),
            F.sum(F.when(rejected, F.get_json_object("status", "$.lines").cast("bigint"))).alias("lines"),
        )
        .collect()
    )


def bad_file_error(error: Exception, files: list[ExportFile]) -> BadExportError | None:
    """A file the reader could not decompress is permanent; name it."""
    text = str(error)
    marked = re.search(re.escape(CORRUPT_FILE_MARK) + r"([0-9]+)", text)
    hadoop = ("Unexpected end of input stream", "Not in GZIP format", "invalid block type", "incorrect header check")
    if marked is None and not any(m in text for m in hadoop):
        return None
    if marked is not None:
        culprit = next((f for f in files if f.idx == int(marked.group(1))), None)
    else:
        culprit = next((f for f in files if f.path in text or hadoop_path(f.path) in text), None)
    where = culprit.display if culprit else "a .csv.gz file"
    return BadExportError(
        f"{where}: the file is corrupt: {first_line(error)}. Re-export the file, then re-run the day."
    )


def refuse_mostly_rejected(files: list[ExportFile], counts: dict[int, FileCount], max_share: float) -> None:
    """A file of at least 1,000 data lines with a larger share of rejected lines than
    SHOPFLOW_MAX_REJECTED_SHARE is refused (BadExportError), every such file named at once."""
    problems = []
    for f in files:
        count = counts.get(f.idx, FileCount())
        error = rejected_share_error(f.display, count.rejected_lines, count.lines, max_share)
        if error is not None:
            problems.append(str(error))
    if problems:
        raise BadExportError("\n".join(problems))


def day_summary(days: list[str], files: list[ExportFile], counts: dict[int, FileCount]) -> dict[str, dict[str, Any]]:
    """Each day's numbers, as the engine's LoadSummary.from_json reads them."""
    summary: dict[str, dict[str, Any]] = {
        day: {"files": 0, "bytes": 0, "rows_loaded": 0, "rows_rejected": 0, "rejected_by_reason": {}} for day in days
    }
    for f in files:
        day, count = summary[f.day], counts.get(f.idx, FileCount())
        day["files"] += 1
        day["bytes"] += f.size
        day["rows_loaded"] += count.valid
        for reason, rows in count.rejected.items():
            day["rows_rejected"] += rows
            rules = [MALFORMED_ROW] if reason.startswith(MALFORMED_ROW) else reason.split("; ")
            for rule in rules:
                day["rejected_by_reason"][rule] = day["rejected_by_reason"].get(rule, 0) + rows
    for day in summary.values():
        day["rejected_by_reason"] = dict(sorted(day["rejected_by_reason"].items()))
    return summary


LEASE_NAME = re.compile(r"([0-9]{12})\.([A-Za-z0-9_-]+)\.([0-9a-f]{32})")


@dataclass
class Lease:
    """This ingest's publish lease of each of its days: the file `<token>.<run id>.<nonce>` in
    `<warehouse>/_leases/dt=D/`. The lease of D is the file with the highest name (the token is
    zero-padded): a later ingest of D takes a higher token, and from then on this one may not
    publish D. The nonce tells two attempts of one run apart."""

    run_id: str
    nonce: str
    tokens: dict[str, int]

    def name(self, day: str) -> str:
        return f"{self.tokens[day]:012d}.{self.run_id}.{self.nonce}"


class WarehouseFiles:
    """The warehouse's folders, for what is not rows: leases, staging folders, versions. Through
    fsspec, which reaches the storage the cluster writes to (a local folder, or HDFS and object
    stores with their fsspec package installed); rows are read and written by Spark only."""

    def __init__(self, warehouse: str, grace_seconds: float = 3600):
        import fsspec

        self.warehouse = warehouse
        self.fs, _ = fsspec.core.url_to_fs(warehouse)
        self.grace_seconds = grace_seconds

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def delete(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def names(self, folder: str) -> list[str]:
        """The names in a folder; none if there is no such folder."""
        try:
            return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(folder, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def has_parquet(self, folder: str) -> bool:
        return any(name.endswith(".parquet") for name in self.names(folder))

    def mkdirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def move(self, source: str, target: str) -> None:
        """Rename `source` to `target`, which must not exist (a folder would be moved into an
        existing one, not over it)."""
        if self.exists(target):
            raise OSError(f"could not move {source} to {target}: it exists")
        self.mkdirs(target.rstrip("/").rsplit("/", 1)[0])
        self.fs.mv(source, target, recursive=True)
        if not self.exists(target):
            raise OSError(f"could not move {source} to {target}")

    # --- leases ---------------------------------------------------------------------------------

    def lease_holder(self, day: str) -> str | None:
        names = [n for n in self.names(f"{self.warehouse}/{LEASES}/dt={day}") if LEASE_NAME.fullmatch(n)]
        return max(names) if names else None

    def take_leases(self, days: list[str], run_id: str) -> Lease:
        lease = Lease(re.sub(r"[^A-Za-z0-9_-]", "_", run_id), uuid.uuid4().hex, {})
        for day in days:
            holder = self.lease_holder(day)
            lease.tokens[day] = int(holder[:12]) + 1 if holder else 1
            folder = f"{self.warehouse}/{LEASES}/dt={day}"
            self.mkdirs(folder)
            self.fs.touch(f"{folder}/{lease.name(day)}")
        self.check_leases(lease, days)  # two ingests that start together: the higher one goes on
        return lease

    def check_leases(self, lease: Lease, days: list[str], published: list[str] | None = None) -> None:
        holders = {day: self.lease_holder(day) for day in days}
        lost = [day for day, holder in holders.items() if holder != lease.name(day)]
        if not lost:
            return
        taken = ", ".join(
            f"{day} (run {LEASE_NAME.fullmatch(holders[day]).group(2) if holders[day] else 'unknown'})" for day in lost
        )
        done = f" It had published {', '.join(published)}." if published else ""
        raise Superseded(
            f"A later ingest took over {taken}: this run published nothing of {', '.join(lost)} and "
            f"left the later one's data in place.{done} Not retried."
        )

    def drop_older_leases(self, lease: Lease, day: str) -> None:
        """Lease files of D below this ingest's (never its own: it is what fences older ones)."""
        folder = f"{self.warehouse}/{LEASES}/dt={day}"
        for name in self.names(folder):
            if name < lease.name(day):
                self.delete(f"{folder}/{name}")

    # --- leftovers and publishing ---------------------------------------------------------------

    def delete_leftovers(self, run_id: str, finished_runs: list[str]) -> None:
        """The staging folders of this run (an earlier attempt) and of the runs Dagster reports
        finished; a running ingest's folder is never touched."""
        for run in [run_id, *finished_runs]:
            if "/" in run or run in ("", ".", ".."):
                continue
            self.delete(f"{self.warehouse}/{STAGING}/{run}")

    def publish(self, stage: str, summary: dict[str, dict[str, Any]], lease: Lease, catalog: Catalog, log) -> None:
        """Each day of each table becomes its staged rows: moved to a new version folder of the day
        (no reader looks there yet), then the partition's location swapped to it in one catalog
        statement; a day whose rebuild is empty has its partition dropped. A reader through the
        catalog sees the old day, then the new one: never no day, never half a day.

        Nothing is published unless every day that has rows has them staged and every day's lease
        is still this ingest's; the lease is checked again right before each swap."""
        days = list(summary)
        missing = [
            f"{table} of {day}"
            for day in days
            for table, rows in (("orders", summary[day]["rows_loaded"]), ("orders_rejected", summary[day]["rows_rejected"]))
            if rows > 0 and not self.has_parquet(staged_folder(stage, table, day))
        ]
        if missing:
            raise StagedRowsMissing(
                f"the staged rows of {', '.join(missing)} are missing at publish (removed by another "
                "process?): nothing was published"
            )
        self.check_leases(lease, days)
        published: list[str] = []
        for day in days:
            for table in TABLES:
                rows = summary[day]["rows_loaded" if table == "orders" else "rows_rejected"]
                table_folder = f"{self.warehouse}/{RAW_DB}/{table}"
                ours = f"{VERSION}{lease.name(day)}"
                self.check_leases(lease, [day], published)
                self.check_live(catalog, f"raw.{table}", day, ours, published)
                if rows > 0:
                    version = version_folder(table_folder, day, lease.name(day))
                    self.move(staged_folder(stage, table, day), version)
                    self.check_leases(lease, [day], published)
                    self.check_live(catalog, f"raw.{table}", day, ours, published)
                    catalog.publish(f"raw.{table}", day, version)
                else:  # the day's rebuild is empty: it ends empty
                    catalog.drop(f"raw.{table}", day)
                try:  # housekeeping: what is left now goes with a later publish of the day
                    # (a later publish that swapped since is newer than ours: tidy_day leaves it)
                    live = ours if rows > 0 else None
                    tidy_day(self.fs, f"{table_folder}/dt={day}", live, self.grace_seconds, below=ours)
                except Exception as error:  # noqa: BLE001
                    log.warning(f"The retired versions of raw.{table} {day} were not removed: {first_line(error)}")
            published.append(day)
            self.drop_older_leases(lease, day)

    def check_live(self, catalog: Catalog, table: str, day: str, ours: str, published: list[str]) -> None:
        """The day's live version is older than this ingest's (a later ingest may have passed its
        own lease check and swapped first), and of this layout (a day published by renaming
        folders, `dt=D/` itself, would show a version written into it to readers at once)."""
        live = live_version(catalog.location(table, day), day)
        if live == "":
            raise WarehouseMismatch(
                f"{table} {day} is in the older layout (its partition is the folder dt={day} itself): drop "
                "raw.orders and raw.orders_rejected from the catalog (their files stay) and load their "
                "days again (docs/spark.md). Not retried."
            )
        if live and live > ours:
            done = f" It had published {', '.join(published)}." if published else ""
            raise Superseded(f"A later ingest published {table} {day} first: this run left it in place.{done} Not retried.")


class ExecutorWatchdog:
    """Interrupts the job when the application has had no executor for `timeout` seconds: a
    standalone cluster that lost its workers would otherwise keep the job waiting for resources
    forever. It asks the application's REST API (its web UI), which a Connect session reaches too."""

    def __init__(self, spark: SparkSession, application: dict[str, str | None], timeout: float):
        self.spark = spark
        ui, app = application["ui"], application["id"]
        self.url = f"{ui}/api/v1/applications/{app}/executors" if ui and app else None  # None: no UI to ask
        self.local = str(spark.conf.get("spark.master", "")).startswith("local")
        self.timeout = timeout
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shopflow-executor-watch", daemon=True)

    def executors(self) -> int:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return sum(1 for e in json.load(response) if e.get("id") != "driver" and e.get("isActive", True))

    def _watch(self) -> None:
        without_since = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                if self.executors() > 0:
                    without_since = time.monotonic()
            except (OSError, ValueError):  # the UI does not answer (or is off): no news, which is
                without_since = time.monotonic()  # not "no executor"
            if time.monotonic() - without_since > self.timeout:
                self.lost = True
                self.spark.interruptAll()
                return

    def start(self) -> None:
        if not self.local and self.url:  # in local mode the driver is the executor
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
