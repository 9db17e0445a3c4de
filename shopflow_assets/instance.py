"""The Dagster instance of this code location: Postgres storage when DAGSTER_PG_URL is set,
Dagster's embedded SQLite storage otherwise, from one and the same dagster.yaml.

dagster.yaml cannot say "Postgres if this variable is set", so it names this instance class, whose
defaults pick the storage. The URL is read from the environment in each process, never written into
the instance's serialized settings (so the password stays out of process arguments and logs).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage

PG_URL_VARIABLE = "DAGSTER_PG_URL"


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, which dagster-postgres cannot use: name
    the psycopg2 driver that dagster-postgres installs."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


class ShopflowPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres storage at $DAGSTER_PG_URL (read when the storage is created)."""

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]):
        url = os.environ.get(PG_URL_VARIABLE)
        if not url:
            raise RuntimeError(
                f"{PG_URL_VARIABLE} is not set in this process, but the instance was created with "
                "Postgres storage: set it to the same postgresql://user:pass@host:port/db."
            )
        check_reachable(url)
        return cls(postgres_url=psycopg2_url(url), inst_data=inst_data)


def masked(url: str) -> str:
    """The URL with its password replaced, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def check_reachable(url: str, timeout_seconds: int = 5) -> None:
    """Fail in one line, naming the fix, when Postgres does not answer (dagster-postgres would
    retry for a while and then print a long stack trace)."""
    import psycopg2

    try:
        psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=timeout_seconds).close()
    except psycopg2.OperationalError as error:
        reason = " ".join(str(error).split())[:300]
        raise SystemExit(
            f"shopflow_daily: {PG_URL_VARIABLE}={masked(url)} is unreachable ({reason}). Start that "
            f"Postgres or fix the URL, or unset {PG_URL_VARIABLE} to use Dagster's embedded storage."
        ) from None


class ShopflowInstance(DagsterInstance):
    """A DagsterInstance whose default storage follows DAGSTER_PG_URL."""

    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        if os.environ.get(PG_URL_VARIABLE):
            defaults["storage"] = ConfigurableClassData(
                __name__, ShopflowPostgresStorage.__name__, yaml.dump({})
            )
        return defaults
