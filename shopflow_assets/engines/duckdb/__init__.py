"""The embedded engine: one DuckDB file (`SHOPFLOW_WAREHOUSE`), one writer at a time, readers
read-only, every session in UTC. The ingest is DuckDB SQL over the files (engines/duckdb/loader.py), the
models run on dbt-duckdb."""

from __future__ import annotations

import contextlib
import os
import datetime as dt
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
from dagster import AssetExecutionContext
from pydantic import Field

from shopflow_assets.engines.base import LoadSummary, Warehouse
from shopflow_assets.contract.landing import DayExport


class WarehouseLockedError(duckdb.IOException):
    """Another process holds the DuckDB file (DuckDB allows one writer per file)."""


class DuckDBWarehouse(Warehouse):
    """Connections to the warehouse file (`SHOPFLOW_WAREHOUSE`)."""

    path: str = Field(description="Absolute path of the DuckDB warehouse file.")
    memory_limit: str | None = Field(
        default=None, description="DuckDB memory_limit for pipeline sessions, e.g. '2GB'."
    )

    @property
    def engine(self) -> str:
        return "duckdb"

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            # Transient: retried with backoff. The message says who holds the file.
            raise WarehouseLockedError(
                f"The warehouse {self.path} is locked by another process: "
                f"{str(error).split(': ', 1)[-1].split(' See also')[0]} "
                "Close that program (an open duckdb shell, say) or wait for the other run."
            ) from None
        try:
            # timestamptz -> date follows the session time zone, which is the machine's by default.
            con.execute("SET TimeZone = 'UTC'")
            if self.memory_limit:
                con.execute("SET memory_limit = ?", [self.memory_limit])
            yield con
        finally:
            con.close()

    def ingest(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> LoadSummary:
        from shopflow_assets.engines.duckdb.loader import load_days

        with self.connect() as con:
            return load_days(
                con,
                exports,
                run_id=context.run_id,
                loaded_at=dt.datetime.now(dt.timezone.utc),
                progress=context.log.info,
                max_rejected_share=self.max_rejected_share,
            )

    def dbt_env(self) -> dict[str, str]:
        limit = {"SHOPFLOW_DUCKDB_MEMORY_LIMIT": self.memory_limit} if self.memory_limit else {}
        # absolute: dbt runs in the dbt project folder
        return {"SHOPFLOW_WAREHOUSE": os.path.abspath(self.path), **limit}

    @contextlib.contextmanager
    def read(self, days: Sequence[dt.date] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect(read_only=True) as con:
            yield con
