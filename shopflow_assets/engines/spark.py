"""The Spark engine (`SHOPFLOW_ENGINE=spark`): the ingest is a program launched through Dagster
Pipes that runs its Spark work on the cluster's Spark Connect server (`SHOPFLOW_SPARK_REMOTE`; no
JVM on this machine), or, without that setting, a Spark application of its own (spark-submit,
client mode, against `SHOPFLOW_SPARK_MASTER`). The models run on dbt-spark through the cluster's
Spark Thrift Server (`SHOPFLOW_SPARK_THRIFT`), and the tables are Parquet in
`SHOPFLOW_SPARK_WAREHOUSE`, Hive-style partitioned by dt.

The run worker only starts the application, waits, streams its log into the run and records what it
reports; it never holds a row. Nothing here imports pyspark: the code location loads without it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import duckdb
from dagster import AssetExecutionContext, Failure, MetadataValue, PipesSubprocessClient, RunsFilter
from pydantic import Field

from shopflow_assets.engines.base import LoadSummary, Warehouse
from shopflow_assets.contract.export import BadExportError, ExportChangedError
from shopflow_assets.contract.landing import DayExport
from shopflow_assets.contract.spark_layout import Catalog, live_version, same_place, thrift_sql, tidy_day
from shopflow_assets.settings import REPO_ROOT

SPARK_INGEST_JOB = REPO_ROOT / "shopflow_jobs" / "spark_ingest.py"

# The tables as Spark lays them out under the warehouse (docs/contract.md "Engines"): DuckDB reads them.
TABLES = {
    "raw.orders": "raw.db/orders",
    "raw.orders_rejected": "raw.db/orders_rejected",
    "analytics.fact_sales": "analytics.db/fact_sales",
    "analytics.daily_revenue": "analytics.db/daily_revenue",
}


class SparkIngestFailed(RuntimeError):
    """The Spark application failed for a reason worth another attempt (a lost worker, I/O)."""


class SparkServerUnreachable(RuntimeError):
    """A server of the cluster does not answer: transient (retried)."""


class SparkWarehouse(Warehouse):
    """Parquet tables in a Spark warehouse directory, written by jobs on a Spark cluster."""

    master: str = Field(description="Spark master URL (SHOPFLOW_SPARK_MASTER).")
    warehouse_dir: str = Field(description="Spark's warehouse directory (SHOPFLOW_SPARK_WAREHOUSE).")
    thrift: str = Field(
        default="127.0.0.1:10000",
        description="host:port of the Spark Thrift Server that dbt runs through (SHOPFLOW_SPARK_THRIFT).",
    )
    remote: str = Field(
        default="",
        description="Spark Connect URL the ingest runs on (SHOPFLOW_SPARK_REMOTE); empty: spark-submit to `master`.",
    )
    cores_max: int = Field(default=2, description="spark.cores.max of each application.")
    executor_memory: str = Field(default="2g", description="spark.executor.memory of the ingest.")
    max_split_bytes: int = Field(
        default=128 * 1024 * 1024,
        description="spark.sql.files.maxPartitionBytes of the ingest: the most of a file one task reads.",
    )
    executor_timeout_seconds: int = Field(
        default=60,
        description="The ingest gives up (transient, retried) after this long without an executor.",
    )
    version_grace_minutes: float = Field(
        default=60,
        description="A day's version that stopped being live is removed this long after "
        "(SHOPFLOW_SPARK_VERSION_GRACE_MINUTES): longer than any query through the catalog takes.",
    )

    @property
    def engine(self) -> str:
        return "spark"

    def ingest(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> LoadSummary:
        if self.remote:
            self.check_connect_reachable()
        else:
            self.check_master_reachable()
        days = [e.day for e in exports]
        extras = {
            **self.job_extras(context, exports),
            "warehouse": self.warehouse_dir,
            "thrift": self.thrift,
            "version_grace_seconds": self.version_grace_minutes * 60,
            "session_conf": self.session_conf(),
            "loaded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "executor_timeout_seconds": self.executor_timeout_seconds,
            "max_rejected_share": self.max_rejected_share,
            "finished_runs": self.finished_runs_with_leftovers(context),
        }
        messages = self.run_job(context, extras, days)
        verdicts = [m for m in messages if "verdict" in m]
        verdict = verdicts[-1] if verdicts else {"verdict": "failed", "error": "the job reported nothing"}
        applications = [m["application"] for m in messages if isinstance(m.get("application"), dict)]
        # each file's header as the executors read it, for raw/orders' header check
        headers = next((m["headers"] for m in reversed(messages) if isinstance(m.get("headers"), dict)), None)
        if verdict["verdict"] == "bad_export":
            raise BadExportError(verdict["error"], headers=headers)
        if verdict["verdict"] == "export_changed":
            raise ExportChangedError(verdict["error"])
        if verdict["verdict"] == "superseded":  # a retry would fence out the later run in turn
            raise Failure(description=verdict["error"], allow_retries=False)
        if verdict["verdict"] == "permanent":  # Spark refused the job as it is: a retry cannot help
            raise Failure(
                description=f"The Spark ingest of {days[0]}..{days[-1]} failed: {verdict['error']}", allow_retries=False
            )
        if verdict["verdict"] != "loaded":
            raise SparkIngestFailed(f"The Spark ingest of {days[0]}..{days[-1]} failed: {verdict['error']}")
        summary = LoadSummary.from_json(verdict["summary"]["days"])
        summary.headers = headers
        if applications:
            summary.engine_metadata = application_metadata(applications[-1])
        return summary

    def export_headers(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> dict[str, dict[str, dict]]:
        """The header check without an ingest: the job reads each file's first line on the
        cluster (nothing of an export is read here) and reports it."""
        if self.remote:
            self.check_connect_reachable()
        days = [e.day for e in exports]
        extras = {**self.job_extras(context, exports), "mode": "headers", "session_conf": self.session_conf()}
        messages = self.run_job(context, extras, days)
        verdict = next((m for m in reversed(messages) if "verdict" in m), {"verdict": "failed", "error": "the job reported nothing"})
        if verdict["verdict"] != "headers" or not isinstance(verdict.get("headers"), dict):
            raise SparkIngestFailed(f"Reading the headers of {days[0]}..{days[-1]} on Spark failed: {verdict.get('error')}")
        return verdict["headers"]

    def job_extras(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> dict[str, Any]:
        """What the job reads of the exports: each day's folder, fingerprint and files."""
        return {
            "days": [
                {
                    "day": e.day.isoformat(),
                    "folder": e.folder,
                    "directory": str(e.directory),
                    "landing_root": e.landing_root,
                    "fingerprint": e.fingerprint,
                    "files": [{"name": f.name, "path": f.path, "gzip": f.gzip, "size": f.size} for f in e.files],
                }
                for e in exports
            ],
            "remote": self.remote,
            "run_id": context.run.run_id,
        }

    def run_job(self, context: AssetExecutionContext, extras: dict[str, Any], days: Sequence[dt.date]) -> list[dict]:
        """Run shopflow_jobs/spark_ingest.py through Pipes and wait: its custom messages."""
        client = PipesSubprocessClient(env=self.job_env(), cwd=str(REPO_ROOT))
        try:
            invocation = client.run(context=context, command=self.submit_command(days), extras=extras)
        # A cancelled run interrupts the wait (the asset fails the step, not retried) after the
        # client has sent spark-submit SIGINT, which stops the application; this is the client
        # giving up on an application that did not stop within its 20 s.
        except subprocess.TimeoutExpired:
            raise Failure(
                description=f"The Spark ingest of {days[0]}..{days[-1]} was interrupted (the run was "
                "cancelled): its application was stopped. Not retried; re-run the day(s) to load them.",
                allow_retries=False,
            ) from None
        # A non-zero exit (Dagster's DagsterPipesExecutionError, not exported): the job died before
        # it could say why.
        except Exception as error:
            raise SparkIngestFailed(
                f"The Spark ingest of {days[0]}..{days[-1]} ended without a verdict ({error}); "
                "its log is in the run's stderr. Retried."
            ) from None
        return [m for m in invocation.get_custom_messages() if isinstance(m, dict)]

    def warehouse_files(self):
        """(fsspec file system, the warehouse's path on it): metadata work on the warehouse (folder
        names), whatever storage it is on. fsspec comes with the spark extra."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.warehouse_dir)
        return fs, root.rstrip("/")

    def finished_runs_with_leftovers(self, context: AssetExecutionContext) -> list[str]:
        """The runs with a staging folder in the warehouse that Dagster reports finished: the job
        may clean those (and its own run's). A folder of a run still going, or one this instance
        does not know (another instance's), is left alone. Only folder names are read."""
        fs, root = self.warehouse_files()
        try:
            names = [
                e["name"].rstrip("/").rsplit("/", 1)[-1]
                for e in fs.ls(f"{root}/_staging", detail=True)
                if e["type"] == "directory" and not e.get("islink")  # a link is nobody's staging folder
            ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        others = [n for n in names if n != context.run.run_id]
        if not others:
            return []
        runs = context.instance.get_runs(filters=RunsFilter(run_ids=others))
        return sorted(run.run_id for run in runs if run.is_finished)

    def check_master_reachable(self, timeout_seconds: float = 5) -> None:
        """A standalone master that does not answer fails the step at once (transient, retried)
        instead of after Spark's own three 20-second registration attempts."""
        if not self.master.startswith("spark://"):
            return
        for hostport in self.master[len("spark://") :].split(","):
            address = urlsplit(f"spark://{hostport}")
            try:
                socket.create_connection((address.hostname, address.port or 7077), timeout_seconds).close()
                return
            except OSError as error:
                reason = error
        raise SparkIngestFailed(
            f"The Spark master {self.master} is unreachable ({reason}): start it or fix "
            "SHOPFLOW_SPARK_MASTER. Retried."
        )

    def check_connect_reachable(self, timeout_seconds: float = 5) -> None:
        """A Spark Connect server that does not answer fails the step at once (transient, retried)
        instead of after the client's own retries."""
        address = urlsplit(self.remote)
        try:
            socket.create_connection((address.hostname, address.port or 15002), timeout_seconds).close()
        except OSError as error:
            raise SparkServerUnreachable(
                f"The Spark Connect server {self.remote} is unreachable ({error}): start it "
                "(scripts/spark-cluster start) or fix SHOPFLOW_SPARK_REMOTE. Retried."
            ) from None

    def session_conf(self) -> dict[str, str]:
        """The ingest's session settings: the job sets them on its session (a Connect server's
        session, or its own application's)."""
        return {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
            # A big file is read by several tasks (the job numbers each split's lines)
            "spark.sql.files.maxPartitionBytes": str(self.max_split_bytes),
        }

    def spark_conf(self) -> dict[str, str]:
        """The settings of the ingest's own application (spark-submit)."""
        return {
            "spark.cores.max": str(self.cores_max),
            "spark.executor.memory": self.executor_memory,
            # The check's generated code is compiled, not interpreted (shopflow_jobs/spark_ingest.py)
            "spark.executor.extraJavaOptions": "-XX:-DontCompileHugeMethods",
            "spark.driver.extraJavaOptions": "-XX:-DontCompileHugeMethods",  # local mode's tasks
            **self.session_conf(),
            "spark.sql.warehouse.dir": self.warehouse_dir,
            "spark.sql.catalogImplementation": "in-memory",  # the ingest writes paths, not the metastore
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
            "spark.ui.showConsoleProgress": "false",
        }

    def submit_command(self, days: list[dt.date]) -> list[str]:
        # The job ends with the process that started it: a run worker that is killed leaves no
        # job behind to publish after a newer run (the job also watches, and the publish lease
        # fences what survives).
        tie = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        if self.remote:  # a Python program, a client of the Connect server: no JVM here
            return [*tie, sys.executable, str(SPARK_INGEST_JOB)]
        # An application of its own: a Connect URL in the environment (SPARK_REMOTE, or the mark a
        # Connect session leaves in its process's environment) would make spark-submit and
        # pyspark a Connect client instead.
        clean = ["env", "-u", "SPARK_REMOTE", "-u", "SPARK_CONNECT_MODE_ENABLED"]
        command = [*tie, *clean, str(spark_home() / "bin" / "spark-submit"), "--master", self.master]
        command += ["--name", f"shopflow-ingest {days[0]}..{days[-1]}"]
        for key, value in self.spark_conf().items():
            command += ["--conf", f"{key}={value}"]
        return command + [str(SPARK_INGEST_JOB)]

    def job_env(self) -> dict[str, str]:
        """The driver runs this interpreter (it has pyspark and dagster-pipes) and finds
        shopflow_assets.contract.export, the rules it renders, on the path."""
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        if self.remote:
            return {"PYTHONPATH": path}
        return {
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONPATH": path,
            "SPARK_HOME": str(spark_home()),
        }

    def dbt_env(self) -> dict[str, str]:
        return {"SHOPFLOW_SPARK_WAREHOUSE": self.warehouse_dir, "SHOPFLOW_SPARK_THRIFT": self.thrift}

    def check_dbt_target(self, timeout_seconds: float = 30) -> None:
        """The Thrift server answers, and its warehouse is this one, and so are the locations of
        the databases it catalogs: dbt would otherwise build the marts (and read raw/orders)
        somewhere the ingest and the readers never look."""
        from thrift.transport.TTransport import TTransportException

        try:
            with self.thrift_catalog(timeout_seconds) as catalog:
                locations = {"the warehouse": str(catalog.run("SET spark.sql.warehouse.dir")[0][1])}
                for (database,) in catalog.run("SHOW DATABASES"):
                    if database in ("raw", "analytics"):
                        location = catalog.described(f"DATABASE {database}").get("Location", "")
                        locations[f"database {database}"] = location.rsplit("/", 1)[0]
        except (TTransportException, OSError) as error:
            raise SparkServerUnreachable(
                f"The Spark Thrift Server at {self.thrift} does not answer ({first_line(error)}): start "
                "it (scripts/spark-cluster start) or fix SHOPFLOW_SPARK_THRIFT. Retried."
            ) from None
        elsewhere = {what: where for what, where in locations.items() if not same_place(where, self.warehouse_dir)}
        if elsewhere:
            found = ", ".join(f"{what} is {where}" for what, where in elsewhere.items())
            raise Failure(
                description=f"The Spark Thrift Server at {self.thrift} serves another warehouse than "
                f"SHOPFLOW_SPARK_WAREHOUSE={self.warehouse_dir} ({found}): point SHOPFLOW_SPARK_THRIFT at "
                "the cluster of this warehouse, or start its servers with it (scripts/spark-cluster).",
                allow_retries=False,
            )

    @contextlib.contextmanager
    def thrift_catalog(self, timeout_seconds: float = 30) -> Iterator[Catalog]:
        """The shared catalog through the cluster's Thrift server (PyHive: no JVM here)."""
        with thrift_sql(self.thrift, timeout_seconds) as run:
            yield Catalog(run)

    def after_dbt_build(self, models: Sequence[str], days: Sequence[dt.date]) -> None:
        """The marts' days that dbt re-published: retire their versions that are no longer live and
        remove those retired a grace period ago (names only; the catalog says which is live)."""
        fs, root = self.warehouse_files()
        with self.thrift_catalog() as catalog:
            for model in models:
                table = f"analytics.{model}"
                for day in map(str, days):
                    live = live_version(catalog.location(table, day), day)
                    tidy_day(fs, f"{root}/{TABLES[table]}/dt={day}", live, self.version_grace_minutes * 60)

    @contextlib.contextmanager
    def read(self, days: Sequence[dt.date] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDB over the live version of every day (or of `days` only: each day costs the
        catalog a question), as the catalog names it (through the Thrift server): what a reader
        through the catalog sees, read without Spark. A table with no day
        yet is not there (as in a new DuckDB warehouse). A warehouse that is not a local folder is
        read through its fsspec file system."""
        from fsspec.implementations.local import LocalFileSystem

        fs, _ = self.warehouse_files()
        local = isinstance(fs, LocalFileSystem)
        with self.thrift_catalog() as catalog:
            files = {table: self.live_files(fs, catalog, table, days) for table in TABLES}
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            if not local:
                con.register_filesystem(fs)
            con.execute("CREATE SCHEMA IF NOT EXISTS raw; CREATE SCHEMA IF NOT EXISTS analytics")
            for table, paths in files.items():
                if not paths:
                    continue
                listed = ", ".join("'" + (p if local else fs.unstrip_protocol(p)).replace("'", "''") + "'" for p in paths)
                only = "" if days is None else f"WHERE dt IN ({', '.join(f'DATE {chr(39)}{d}{chr(39)}' for d in days)})"
                con.execute(  # a view cannot take parameters: the paths are quoted literals
                    f"CREATE VIEW {table} AS SELECT * FROM (SELECT CAST(regexp_extract(filename, "
                    "'/dt=([0-9]{4}-[0-9]{2}-[0-9]{2})/(v=[^/]*/)?[^/]*$', 1) AS DATE) AS dt, * EXCLUDE (filename) "
                    f"FROM read_parquet([{listed}], filename = true, hive_partitioning = false, union_by_name = true)) {only}"
                )
            yield con
        finally:
            con.close()

    def live_files(self, fs, catalog: Catalog, table: str, days: Sequence[dt.date] | None = None) -> list[str]:
        """The Parquet files of the live version of each day of a table (paths on `fs`), or of
        `days`; when none of those has rows, of the latest day (read() filters it out: the table
        is there, with its columns, and empty for those days)."""
        if not catalog.exists(table):
            return []
        import fsspec

        files = []
        found = catalog.days(table)
        wanted = found if days is None else [str(day) for day in days if str(day) in found] or found[-1:]
        for location in filter(None, (catalog.location(table, day) for day in wanted)):
            _, path = fsspec.core.url_to_fs(location)
            # listed, not globbed: a path may hold [ ] * ?
            files += sorted(p for p in fs.ls(path.rstrip("/"), detail=False) if p.endswith(".parquet"))
        return files


def application_metadata(application: dict) -> dict[str, Any]:
    """The Spark application that did the ingest, as the job reported it (strings, checked)."""
    metadata: dict[str, Any] = {}
    if isinstance(application.get("id"), str):
        metadata["spark_application_id"] = application["id"][:200]
    ui = application.get("ui")
    if isinstance(ui, str) and re.fullmatch(r"https?://[^\s]{1,500}", ui):
        metadata["spark_ui"] = MetadataValue.url(ui)  # the driver's UI: it answers while the job runs
    return metadata


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def spark_home() -> Path:
    """SPARK_HOME, or the Spark that the pip pyspark ships (found without importing pyspark)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise Failure(  # a setup to fix, not a fault to retry
            description="SHOPFLOW_ENGINE=spark needs Spark: install the spark extra "
            "(pip install -e '.[spark]') or set SPARK_HOME.",
            allow_retries=False,
        )
    return Path(list(spec.submodule_search_locations)[0])
