"""What every engine offers the assets: the ingest, the dbt target, and reading the tables.

The assets ask the `warehouse` resource for the work and never branch on the engine: a third engine
(a cloud warehouse, say) is one more subclass here and one more dbt target in profiles.yml.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import duckdb
from dagster import AssetExecutionContext, ConfigurableResource, MetadataValue
from pydantic import Field

from shopflow_assets.contract.export import REJECT_REASONS, display_name, read_header_report
from shopflow_assets.contract.landing import DayExport


class OutOfMemory(RuntimeError):
    """The engine ran out of memory: transient (retried), and not the export's fault."""


class IngestCancelled(RuntimeError):
    """The engine's work was interrupted because the run is being cancelled: not retried."""


@dataclass
class DayLoad:
    """What an ingest did to one day."""

    files: int = 0
    bytes: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The day's raw/orders materialization metadata."""
        return {
            "dagster/row_count": self.rows_loaded,
            "rows_loaded": self.rows_loaded,
            "rows_rejected": self.rows_rejected,
            "files": self.files,
            "bytes": self.bytes,
            "rejected_by_reason": MetadataValue.json(self.rejected_by_reason),
            # one number per rule, 0 included, so that the UI can plot each across days
            **{f"rejected: {reason}": self.rejected_by_reason.get(reason, 0) for reason in REJECT_REASONS},
        }


@dataclass
class LoadSummary:
    """What an ingest did, day by day, whichever engine did it."""

    days: dict[str, DayLoad]
    engine_metadata: dict[str, Any] = field(default_factory=dict)  # of the whole ingest, on every day
    # day -> file name -> contract.export.header_report, when the engine read the headers itself
    headers: dict[str, dict[str, dict]] | None = None

    @classmethod
    def of_days(cls, days: Sequence[dt.date]) -> "LoadSummary":
        return cls({day.isoformat(): DayLoad() for day in days})

    @classmethod
    def from_json(cls, data: dict[str, dict[str, Any]]) -> "LoadSummary":
        return cls({day: DayLoad(**load) for day, load in data.items()})

    @property
    def rows_loaded(self) -> int:
        return sum(d.rows_loaded for d in self.days.values())

    @property
    def rows_rejected(self) -> int:
        return sum(d.rows_rejected for d in self.days.values())

    def metadata(self, day: dt.date | str) -> dict[str, Any]:
        return {**self.days[str(day)].metadata(), **self.engine_metadata}


class Warehouse(ConfigurableResource):
    """An engine: where raw/orders is ingested and where dbt builds the marts."""

    max_rejected_share: float = Field(
        default=0.5,
        description="SHOPFLOW_MAX_REJECTED_SHARE: a file of at least 1,000 data lines with a larger "
        "share of rejected lines is refused.",
    )

    @property
    def engine(self) -> str:
        raise NotImplementedError

    def ingest(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> LoadSummary:
        """Replace exactly the exports' days of raw.orders and raw.orders_rejected.

        Raises BadExportError (permanent, nothing changed) when a file cannot be ingested as it is;
        any other exception is transient and the step is retried.
        """
        raise NotImplementedError

    def export_headers(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> dict[str, dict[str, dict]]:
        """Each export file's header against the contract (day -> file name ->
        contract.export.header_report), read where this engine reads the files: here, by default
        (the first line of each file only)."""
        return {
            e.day.isoformat(): {f.name: read_header_report(f.path, f.gzip, display_name(e.folder, f.name)) for f in e.files}
            for e in exports
        }

    @property
    def dbt_target(self) -> str:
        """The output of shopflow_dbt/profiles.yml that runs the models on this engine."""
        return self.engine

    def dbt_env(self) -> dict[str, str]:
        """Environment variables that point the dbt target at this warehouse (shopflow_dbt/
        profiles.yml reads them; not --vars, which would cost dbt a full parse on every change)."""
        raise NotImplementedError

    def check_dbt_target(self) -> None:
        """Before dbt runs: raise if the dbt target cannot work (unreachable, another warehouse)."""

    def after_dbt_build(self, models: Sequence[str], days: Sequence[dt.date]) -> None:
        """After dbt built these models' days: the engine's housekeeping (none by default)."""

    @contextlib.contextmanager
    def read(self, days: Sequence[dt.date] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only DuckDB connection where raw.orders, raw.orders_rejected,
        analytics.fact_sales and analytics.daily_revenue can be queried (small reads: metadata,
        `shopflow-revenue`): every day, or at least `days`."""
        raise NotImplementedError
        yield
