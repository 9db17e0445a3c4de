"""The DuckDB warehouse file: one writer at a time, readers read-only, every session in UTC."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import duckdb
from dagster import ConfigurableResource
from pydantic import Field


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
        con = duckdb.connect(self.path, read_only=read_only)
        try:
            # timestamptz -> date follows the session time zone, which is the machine's by default.
            con.execute("SET TimeZone = 'UTC'")
            if self.memory_limit:
                con.execute("SET memory_limit = ?", [self.memory_limit])
            yield con
        finally:
            con.close()
