"""The DuckDB warehouse file: one writer at a time, readers read-only, every session in UTC."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import duckdb
from dagster import ConfigurableResource
from pydantic import Field


class WarehouseLockedError(duckdb.IOException):
    """Another process holds the DuckDB file (DuckDB allows one writer per file)."""


class DuckDBWarehouse(ConfigurableResource):
    """Connections to the warehouse file (`SHOPFLOW_WAREHOUSE`)."""

    path: str = Field(description="Absolute path of the DuckDB warehouse file.")
    memory_limit: str | None = Field(
        default=None, description="DuckDB memory_limit for pipeline sessions, e.g. '2GB'."
    )

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
