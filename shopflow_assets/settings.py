"""The environment, read once and typed.

Every variable of docs/contract.md "Settings" lives here and nowhere else. Reading the settings does
no I/O beyond ``os.environ``: relative paths are joined to the repository root, not resolved on disk.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = REPO_ROOT / "shopflow_dbt"

DEFAULT_SLACK_API_URL = "https://slack.com/api/"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    landing_dir: str  # an absolute path; with the Spark engine possibly a URI (file://, hdfs://, s3a://)
    warehouse: Path
    start_date: dt.date
    sla_timezone: str
    ui_url: str
    slack_bot_token: str | None
    slack_channel: str
    slack_api_url: str
    pg_url: str | None
    retry_max_retries: int
    retry_delay_seconds: float
    sensor_interval_seconds: int
    alert_summary_after_seconds: int
    duckdb_memory_limit: str
    max_rejected_share: float
    engine: str
    git_url: str | None
    git_branch: str
    spark_master: str
    spark_warehouse: str  # a path, or a URI (file://, hdfs://, s3a://)
    spark_thrift: str  # host:port of the Spark Thrift Server dbt runs through
    spark_remote: str | None  # sc://host:port of the Spark Connect server the ingest runs on
    spark_version_grace_minutes: float  # how long a day's retired version stays readable

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = env.get(name, "").strip()
            return value or default

        engine = _parse_engine(get("SHOPFLOW_ENGINE", "duckdb"))
        return cls(
            landing_dir=_landing_location(get("SHOPFLOW_LANDING_DIR", "./data/landing"), engine),
            warehouse=_repo_path(get("SHOPFLOW_WAREHOUSE", "./data/shopflow.duckdb")),
            start_date=_parse_date("SHOPFLOW_START_DATE", get("SHOPFLOW_START_DATE", "2024-01-01")),
            sla_timezone=_parse_timezone(get("SHOPFLOW_SLA_TIMEZONE", "UTC")),
            ui_url=get("SHOPFLOW_UI_URL", "http://127.0.0.1:3000").rstrip("/"),
            slack_bot_token=env.get("SLACK_BOT_TOKEN") or None,
            slack_channel=get("SHOPFLOW_SLACK_CHANNEL", "#shopflow-alerts"),
            slack_api_url=get("SHOPFLOW_SLACK_API_URL", DEFAULT_SLACK_API_URL),
            pg_url=env.get("DAGSTER_PG_URL") or None,
            retry_max_retries=_parse_number("SHOPFLOW_RETRY_MAX_RETRIES", get("SHOPFLOW_RETRY_MAX_RETRIES", "4"), int),
            retry_delay_seconds=_parse_number("SHOPFLOW_RETRY_DELAY_SECONDS", get("SHOPFLOW_RETRY_DELAY_SECONDS", "2"), float),
            sensor_interval_seconds=_parse_number("SHOPFLOW_SENSOR_INTERVAL_SECONDS", get("SHOPFLOW_SENSOR_INTERVAL_SECONDS", "4"), int),
            alert_summary_after_seconds=_parse_number("SHOPFLOW_ALERT_SUMMARY_AFTER_SECONDS", get("SHOPFLOW_ALERT_SUMMARY_AFTER_SECONDS", "1800"), int),
            duckdb_memory_limit=_parse_memory_limit(get("SHOPFLOW_DUCKDB_MEMORY_LIMIT", "2GB")),
            max_rejected_share=_parse_share(get("SHOPFLOW_MAX_REJECTED_SHARE", "0.5")),
            engine=engine,
            git_url=_parse_git_url(get("SHOPFLOW_GIT_URL", "")) or None,
            git_branch=get("SHOPFLOW_GIT_BRANCH", "main"),
            spark_master=_parse_spark_master(get("SHOPFLOW_SPARK_MASTER", "local[2]")),
            spark_warehouse=_path_or_uri(get("SHOPFLOW_SPARK_WAREHOUSE", "./data/spark-warehouse")),
            spark_thrift=_parse_host_port("SHOPFLOW_SPARK_THRIFT", get("SHOPFLOW_SPARK_THRIFT", "127.0.0.1:10000")),
            spark_remote=_parse_spark_remote(get("SHOPFLOW_SPARK_REMOTE", "")) or None,
            spark_version_grace_minutes=_parse_number(
                "SHOPFLOW_SPARK_VERSION_GRACE_MINUTES", get("SHOPFLOW_SPARK_VERSION_GRACE_MINUTES", "60"), float
            ),
        )

    def __repr__(self) -> str:  # never print the Slack token or the Postgres password
        return (
            f"Settings(landing_dir={self.landing_dir}, warehouse={self.warehouse}, "
            f"start_date={self.start_date}, sla_timezone={self.sla_timezone}, ui_url={self.ui_url}, "
            f"slack={'token set' if self.slack_bot_token else 'log only'} -> {self.slack_channel}, "
            f"postgres={'set' if self.pg_url else 'embedded'}, engine={self.engine})"
        )


def _repo_path(value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(os.path.normpath(REPO_ROOT / path))


def _parse_git_url(value: str) -> str:
    """The repository's web address, for links to the code (https://github.com/org/repo)."""
    if value and not re.fullmatch(r"https?://\S+", value):
        raise SettingsError(
            f"SHOPFLOW_GIT_URL={value!r} is not a web address: use the repository's, e.g. "
            "SHOPFLOW_GIT_URL=https://github.com/shopflow/shopflow-daily"
        )
    return value.rstrip("/")


# The file systems a landing zone may be on with the Spark engine: Hadoop's names, each with an
# fsspec implementation for the listing (docs/spark.md says what to install for each).
LANDING_SCHEMES = ("file", "hdfs", "s3a", "gs", "abfs")


def _landing_location(value: str, engine: str) -> str:
    """SHOPFLOW_LANDING_DIR: a local folder (a path, or a file:// URI), or with the Spark engine a
    URI of a file system Hadoop and fsspec both reach, kept as written: the Spark executors read
    the files, the Dagster side lists them through fsspec."""
    name = "SHOPFLOW_LANDING_DIR"
    parts = urlsplit(value)
    if "://" not in value:
        return str(_repo_path(value))
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise SettingsError(f"{name}={value!r}: a file:// URI names a folder of this machine (file:///path)")
    if engine == "spark" and parts.scheme == "file":  # decoded: Hadoop and fsspec take the path as it is
        return "file://" + str(_repo_path(unquote(parts.path)))
    if engine == "spark" and parts.scheme in LANDING_SCHEMES:
        if not parts.netloc and parts.scheme != "hdfs":
            raise SettingsError(f"{name}={value!r}: name the bucket or container, e.g. s3a://bucket/landing")
        return value.rstrip("/")
    if parts.scheme == "file":  # DuckDB reads a local folder
        return str(_repo_path(unquote(parts.path)))
    if engine == "spark":
        raise SettingsError(
            f"{name}={value!r}: the Spark engine reads a landing zone on {', '.join(s + '://' for s in LANDING_SCHEMES)} "
            "or a local path"
        )
    raise SettingsError(
        f"{name}={value!r}: the DuckDB engine reads a local folder (a path or a file:// URI); a landing "
        "zone on HDFS or an object store needs SHOPFLOW_ENGINE=spark"
    )


def _path_or_uri(value: str) -> str:
    """A URI (scheme://...) as it is; a path resolved like the other paths."""
    return value if "://" in value else str(_repo_path(value))


def _parse_number(name: str, value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if not 0 <= number < float("inf"):  # nan and inf too
        raise SettingsError(f"{name}={value!r} is not a non-negative {kind.__name__}: e.g. {name}=2")
    return number


def _parse_share(value: str) -> float:
    """A share between 0 and 1 (checked here so that a typo fails at load)."""
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:  # NaN fails too
        raise SettingsError(
            f"SHOPFLOW_MAX_REJECTED_SHARE={value!r} is not a share between 0 and 1: e.g. "
            "SHOPFLOW_MAX_REJECTED_SHARE=0.5 (a file with more than half its lines rejected is refused)"
        )
    return share


_MEMORY_LIMIT = re.compile(r"[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)", re.IGNORECASE)


def _parse_memory_limit(value: str) -> str:
    """A DuckDB memory_limit such as 2GB or 512MB (checked here so that a typo fails at load)."""
    if not _MEMORY_LIMIT.fullmatch(value.strip()):
        raise SettingsError(
            f"SHOPFLOW_DUCKDB_MEMORY_LIMIT={value!r} is not a size: use a number and a unit, "
            "e.g. SHOPFLOW_DUCKDB_MEMORY_LIMIT=2GB"
        )
    return value.strip()


ENGINES = ("duckdb", "spark")


def _parse_engine(value: str) -> str:
    if value.lower() not in ENGINES:
        raise SettingsError(
            f"SHOPFLOW_ENGINE={value!r} is not an engine: use duckdb (the default, one machine) or "
            "spark (a Spark cluster, see SHOPFLOW_SPARK_MASTER)"
        )
    return value.lower()


_SPARK_MASTER = re.compile(r"local(\[([0-9]+|\*)\])?|spark://[^\s/:]+(:[0-9]+)?(,[^\s/:]+(:[0-9]+)?)*|yarn|k8s://\S+")


def _parse_spark_master(value: str) -> str:
    """A master URL spark-submit understands (checked here so that a typo fails at load)."""
    if not _SPARK_MASTER.fullmatch(value):
        raise SettingsError(
            f"SHOPFLOW_SPARK_MASTER={value!r} is not a Spark master URL: use spark://host:7077, "
            "local[2], yarn or k8s://https://host:port"
        )
    return value


_HOST_PORT = re.compile(r"([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})")


def _parse_host_port(name: str, value: str) -> str:
    """host:port of a server (a name or an IPv4 address; checked here so that a typo fails at load)."""
    match = _HOST_PORT.fullmatch(value)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise SettingsError(f"{name}={value!r} is not host:port: e.g. {name}=spark-thrift.internal:10000")
    return value


_SPARK_REMOTE = re.compile(r"sc://(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:(?P<port>[0-9]{1,5}))?/?")


def _parse_spark_remote(value: str) -> str:
    """A Spark Connect URL, sc://host[:port] (15002 if none). Its `/;key=value` parameters (a
    token, TLS) are not taken here: they would sit in the settings that the UI shows."""
    match = _SPARK_REMOTE.fullmatch(value)
    if value and (not match or not 0 < int(match.group("port") or 15002) < 65536):
        raise SettingsError(
            f"SHOPFLOW_SPARK_REMOTE={value!r} is not a Spark Connect URL: e.g. "
            "SHOPFLOW_SPARK_REMOTE=sc://spark-connect.internal:15002"
        )
    return value.rstrip("/")


def _parse_date(name: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not a date: set it as YYYY-MM-DD, e.g. {name}=2024-01-01"
        ) from None


def _parse_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"SHOPFLOW_SLA_TIMEZONE={value!r} is not an IANA timezone: "
            "use a name such as UTC or Europe/Berlin"
        ) from None
    return value


def read_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from the environment: what the definitions and the commands call, once.

    A bad value stops the process with one line that names the variable and the fix: nothing can
    run with it, and a stack trace would only hide the message.
    """
    try:
        return Settings.from_env(env)
    except SettingsError as error:
        raise SystemExit(f"shopflow_daily: {error}") from None
