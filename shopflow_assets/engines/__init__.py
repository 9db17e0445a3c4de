"""Engines: where the data work runs (`SHOPFLOW_ENGINE`). Each is a `Warehouse` resource; the
assets ask it for the ingest, the dbt target and reads, and never branch on the engine."""

from shopflow_assets.engines.base import LoadSummary, Warehouse
from shopflow_assets.engines.duckdb import DuckDBWarehouse, WarehouseLockedError
from shopflow_assets.engines.spark import SparkWarehouse
from shopflow_assets.settings import Settings


def warehouse_for(settings: Settings) -> Warehouse:
    """The warehouse resource of the configured engine."""
    if settings.engine == "spark":
        return SparkWarehouse(
            master=settings.spark_master,
            warehouse_dir=str(settings.spark_warehouse),
            thrift=settings.spark_thrift,
            remote=settings.spark_remote or "",
            version_grace_minutes=settings.spark_version_grace_minutes,
            max_rejected_share=settings.max_rejected_share,
        )
    return DuckDBWarehouse(
        path=str(settings.warehouse),
        memory_limit=settings.duckdb_memory_limit,
        max_rejected_share=settings.max_rejected_share,
    )


__all__ = ["DuckDBWarehouse", "LoadSummary", "SparkWarehouse", "Warehouse", "WarehouseLockedError", "warehouse_for"]
