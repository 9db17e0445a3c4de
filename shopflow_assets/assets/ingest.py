"""`raw/orders`: a day's export, ingested by DuckDB SQL into raw.orders / raw.orders_rejected."""


import datetime as dt

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from shopflow_assets.orders_loader import BadExportError, load_days
from shopflow_assets.partitions import daily_partitions
from shopflow_assets.retries import TRANSIENT_RETRY_POLICY
from shopflow_assets.resources import DuckDBWarehouse, ExportNotReady, LandingZone, LandingZoneMissing
from shopflow_assets.run_window import days_of, rerun_command

RAW_ORDERS = AssetKey(["raw", "orders"])
# Runs that write the DuckDB file take a slot of this pool: DuckDB allows one writer per file.
WAREHOUSE_POOL = "shopflow_warehouse"


@asset(
    key=RAW_ORDERS,
    partitions_def=daily_partitions,
    # A backfill of many days is one run: one pass over the landing zone, one transaction.
    backfill_policy=BackfillPolicy.single_run(),
    group_name="ingest",
    kinds={"duckdb", "csv"},
    pool=WAREHOUSE_POOL,
    retry_policy=TRANSIENT_RETRY_POLICY,
    description=(
        "The order system's export of day D (landing zone orders/dt=D/*.csv[.gz], after _SUCCESS), "
        "loaded by DuckDB SQL: valid rows in raw.orders, broken rows with their reason in "
        "raw.orders_rejected. Re-running D replaces exactly D, in one transaction."
    ),
    metadata={"dagster/table_name": "raw.orders"},
)
def raw_orders(
    context: AssetExecutionContext, landing: LandingZone, warehouse: DuckDBWarehouse
) -> MaterializeResult:
    days = days_of(context.partition_time_window)
    # The file list is read here, inside the run, never when the definitions load.
    try:
        exports = [landing.finished_export(day) for day in days]
    except ExportNotReady as not_ready:  # transient: retried, the export may still land
        raise Failure(description=str(not_ready), allow_retries=True) from None
    except LandingZoneMissing as missing:  # a setting to fix: retrying cannot help
        raise Failure(description=str(missing), allow_retries=False) from None
    context.log.info(
        f"Ingesting {len(days)} day(s) {days[0]}..{days[-1]}: "
        f"{sum(len(e.files) for e in exports)} file(s)"
    )
    try:
        with warehouse.connect() as con:
            summary = load_days(
                con, exports, run_id=context.run_id, loaded_at=dt.datetime.now(dt.timezone.utc)
            )
    except BadExportError as error:  # permanent: retrying cannot fix the file
        raise Failure(
            description=f"{error}\nRe-run with: {rerun_command('raw/orders', days)}",
            allow_retries=False,
        ) from None

    return MaterializeResult(
        metadata={
            "dagster/row_count": summary.rows_loaded,
            "rows_loaded": summary.rows_loaded,
            "rows_rejected": summary.rows_rejected,
            "files": summary.files,
            "bytes": summary.bytes,
            "rejected_by_reason": MetadataValue.json(summary.rejected_by_reason),
            "rows_by_day": MetadataValue.json(summary.rows_by_day),
        }
    )
