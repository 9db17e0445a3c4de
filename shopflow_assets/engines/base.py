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

from shopflow_assets.export_contract import REJECT_REASONS
from shopflow_assets.resources.landing import DayExport


@dataclass
class LoadSummary:
    """What an ingest did, whichever engine did it."""

    days: list[dt.date]
    files: int = 0
    bytes: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rows_by_day: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """raw/orders' materialization metadata."""
        return {
            "dagster/row_count": self.rows_loaded,
            "rows_loaded": self.rows_loaded,
            "rows_rejected": self.rows_rejected,
            "files": self.files,
            "bytes": self.bytes,
            "rejected_by_reason": MetadataValue.json(self.rejected_by_reason),
            "rows_by_day": MetadataValue.json(self.rows_by_day),
            # one number per rule, 0 included, so that the UI can plot each across days
            **{f"rejected: {reason}": self.rejected_by_reason.get(reason, 0) for reason in REJECT_REASONS},
        }


class Warehouse(ConfigurableResource):
    """An engine: where raw/orders is ingested and where dbt builds the marts."""

    @property
    def engine(self) -> str:
        raise NotImplementedError

    def ingest(self, context: AssetExecutionContext, exports: Sequence[DayExport]) -> LoadSummary:
        """Replace exactly the exports' days of raw.orders and raw.orders_rejected.

        Raises BadExportError (permanent, nothing changed) when a file cannot be ingested as it is;
        any other exception is transient and the step is retried.
        """
        raise NotImplementedError

    @property
    def dbt_target(self) -> str:
        """The output of shopflow_dbt/profiles.yml that runs the models on this engine."""
        return self.engine

    def dbt_env(self) -> dict[str, str]:
        """Environment variables that point the dbt target at this warehouse (shopflow_dbt/
        profiles.yml reads them; not --vars, which would cost dbt a full parse on every change)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only DuckDB connection where raw.orders, raw.orders_rejected,
        analytics.fact_sales and analytics.daily_revenue can be queried (small reads: metadata,
        `shopflow-revenue`)."""
        raise NotImplementedError
        yield
