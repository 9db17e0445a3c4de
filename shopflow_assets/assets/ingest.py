"""`raw/orders`: a day's export, ingested by DuckDB SQL into raw.orders / raw.orders_rejected."""


import datetime as dt

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from shopflow_assets.asset_keys import RAW_ORDERS
from shopflow_assets.orders_loader import REJECT_REASONS, BadExportError, load_days
from shopflow_assets.partitions import daily_partitions
from shopflow_assets.retries import TRANSIENT_RETRY_POLICY
from shopflow_assets.resources import DuckDBWarehouse, ExportNotReady, LandingZone, LandingZoneMissing
from shopflow_assets.run_window import days_of, rerun_command

RAW_ORDERS_COLUMNS = (
    ("dt", "DATE", "the export day (UTC), the partition key"),
    ("order_id", "VARCHAR", "the order"),
    ("line_number", "INTEGER", "the line within the order, >= 1"),
    ("customer_id", "VARCHAR", "who ordered"),
    ("product_id", "VARCHAR", "what was ordered"),
    ("quantity", "INTEGER", "units, >= 1"),
    ("unit_price", "DECIMAL(18,2)", "price per unit, >= 0"),
    ("discount", "DECIMAL(18,2)", "discount on the line, 0..quantity x unit_price"),
    ("status", "VARCHAR", "placed, shipped, delivered, cancelled or refunded"),
    ("ordered_at", "TIMESTAMPTZ", "when the order was placed; its UTC date is dt"),
    ("updated_at", "TIMESTAMPTZ", "when this version of the line was exported"),
    ("_source_file", "VARCHAR", "the export file's name"),
    ("_source_line", "BIGINT", "the row's line in that file, header = 1"),
    ("_loaded_at", "TIMESTAMPTZ", "when the ingest published the row"),
    ("_run_id", "VARCHAR", "the Dagster run that published the row"),
)

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
    metadata={
        "dagster/table_name": "raw.orders",
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(name, type_, description=text) for name, type_, text in RAW_ORDERS_COLUMNS]
        ),
    },
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
                con,
                exports,
                run_id=context.run_id,
                loaded_at=dt.datetime.now(dt.timezone.utc),
                progress=context.log.info,
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
            # one number per rule, 0 included, so that the UI can plot each across days
            **{
                f"rejected: {reason}": summary.rejected_by_reason.get(reason, 0)
                for reason in REJECT_REASONS
            },
        }
    )
