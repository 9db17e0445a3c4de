"""`raw/orders`: a day's export, ingested by the engine (DuckDB SQL, or a Spark application) into
raw.orders / raw.orders_rejected."""

from typing import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Failure,
    MaterializeResult,
    RetryPolicy,
    TableColumn,
    TableSchema,
    multi_asset,
)

from shopflow_assets.contract import raw_schema
from shopflow_assets.contract.asset_keys import RAW_ORDERS
from shopflow_assets.contract.raw_schema import TYPES
from shopflow_assets.engines import Warehouse
from shopflow_assets.engines.base import IngestCancelled
from shopflow_assets.contract.export import BadExportError, ExportChangedError
from shopflow_assets.core.check_results import per_day_results
from shopflow_assets.core.retries import not_retried_when_cancelled
from shopflow_assets.defs.ingest.checks import (
    HEADER,
    REJECTED_SHARE,
    header_evaluation,
    ingest_check_specs,
    loaded,
    rejected_share_evaluation,
)
from shopflow_assets.defs.ingest.landing_zone import DayExport, ExportNotReady, LandingZone, LandingZoneMissing
from shopflow_assets.core.run_window import EXPORT_METADATA, EXPORT_TAG, WAREHOUSE_POOL, days_of, export_tag_value, rerun_command

# Who answers for raw/orders, and how it is tagged in the UI (the dbt models': dbt_project.yml).
OWNERS = ["team:data-platform"]
TAGS = {"domain": "orders", "layer": "raw"}
# An export that changes while it is read is read again, the newest complete one, this many times.
READS_OF_A_CHANGING_EXPORT = 3


def build_raw_orders(
    *, partitions_def: DailyPartitionsDefinition, retry_policy: RetryPolicy, engine: str
) -> AssetsDefinition:
    """raw/orders with the code location's partitions, retry policy and engine (its kind)."""

    # A multi_asset of one asset: its checks report one result per day, not one per run, which
    # needs check outputs that may be left unset (can_subset).
    @multi_asset(
        name="raw__orders",
        specs=[
            AssetSpec(
                RAW_ORDERS,
                group_name="ingest",
                kinds={engine, "csv"},
                owners=OWNERS,
                tags=TAGS,
                description=(
                    "The order system's export of day D (landing zone orders/dt=D/*.csv[.gz], after _SUCCESS), "
                    "loaded by the engine (DuckDB SQL, or a Spark job on SHOPFLOW_ENGINE=spark): valid rows in "
                    "raw.orders, broken rows with their reason in raw.orders_rejected. Re-running D replaces "
                    "exactly D, in one transaction."
                ),
                metadata={
                    "dagster/table_name": "raw.orders",
                    "dagster/column_schema": TableSchema(
                        columns=[
                            TableColumn(c.name, TYPES[c.type][2], description=c.description)
                            for c in raw_schema.RAW_ORDERS
                        ]
                    ),
                },
            )
        ],
        check_specs=ingest_check_specs(partitions_def),
        can_subset=True,
        partitions_def=partitions_def,
        # A backfill of many days is one run: one pass over the landing zone, one transaction.
        backfill_policy=BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        retry_policy=retry_policy,
    )
    def raw_orders(
        context: AssetExecutionContext, landing: LandingZone, warehouse: Warehouse
    ) -> Iterator[MaterializeResult | AssetCheckResult | AssetCheckEvaluation]:
        yield from ingest(context, landing, warehouse)

    return raw_orders


def ingest(
    context: AssetExecutionContext, landing: LandingZone, warehouse: Warehouse
) -> Iterator[MaterializeResult | AssetCheckResult | AssetCheckEvaluation]:
    """Replace the run's days of raw.orders and raw.orders_rejected with their finished exports,
    and report each day's checks."""
    days = days_of(context.partition_time_window)
    checks = {key.name for key in context.selected_asset_check_keys}
    if RAW_ORDERS not in context.selected_asset_keys:  # the checks alone ("Execute" in the UI)
        yield from checks_of_stored_days(context, landing, warehouse, days, checks)
        return
    for attempt in range(1, READS_OF_A_CHANGING_EXPORT + 1):
        # The file list is read here, inside the run, never when the definitions load.
        exports = finished_exports(landing, days)
        claim_export(context, exports)
        context.log.info(
            f"Ingesting {len(days)} day(s) {days[0]}..{days[-1]}: "
            f"{sum(len(e.files) for e in exports)} file(s)"
        )
        try:
            with not_retried_when_cancelled(f"The ingest of {days[0]}..{days[-1]}"):
                summary = warehouse.ingest(context, exports)
            break
        except ExportChangedError as changed:  # nothing published: read the newest export
            context.log.warning(f"{changed} Reading it again ({attempt}/{READS_OF_A_CHANGING_EXPORT}).")
        except BadExportError as error:  # permanent: retrying cannot fix the file
            if HEADER in checks:  # a day whose header fails the ingest shows why in its Checks tab too
                try:
                    evaluations = header_evaluations(context, warehouse, exports, error.headers)
                except Exception as unread:  # noqa: BLE001 - the file's own error is what the run reports
                    context.log.warning(f"The header check was not evaluated: {unread}")
                    evaluations = []
                yield from per_day_results(context, evaluations)
            raise Failure(
                description=f"{error}\nRe-run with: {rerun_command('raw/orders', days)}",
                allow_retries=False,
            ) from None
        except IngestCancelled as cancelled:
            raise Failure(description=f"{cancelled} Not retried; re-run to build it.", allow_retries=False) from None
    else:
        raise Failure(
            description=f"The export of {days[0]}..{days[-1]} kept changing while it was read "
            f"({READS_OF_A_CHANGING_EXPORT} times): nothing was changed. Re-run once the exporter has "
            f"finished: {rerun_command('raw/orders', days)}",
            allow_retries=True,
        )
    # Each day's own numbers on its own materialization (a range is one run: see the README).
    fingerprints = {export.day: export.fingerprint for export in exports}
    for day in days:
        metadata = {**summary.metadata(day), EXPORT_METADATA: fingerprints[day]}
        context.add_asset_metadata(metadata, partition_key=day.isoformat())
    yield MaterializeResult(asset_key=RAW_ORDERS)
    if HEADER in checks:
        yield from per_day_results(context, header_evaluations(context, warehouse, exports, summary.headers))
    if REJECTED_SHARE in checks:
        shares = [rejected_share_evaluation(day, load, warehouse.max_rejected_share) for day, load in summary.days.items()]
        yield from per_day_results(context, shares)


def checks_of_stored_days(
    context: AssetExecutionContext, landing: LandingZone, warehouse: Warehouse, days: list, checks: set[str]
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """The checks without an ingest: the headers of the exports as they are now, the share of
    what the newest ingest of each day loaded and rejected."""
    if HEADER in checks:
        exports = finished_exports(landing, days)
        yield from per_day_results(context, header_evaluations(context, warehouse, exports, None))
    if REJECTED_SHARE in checks:
        loads = {day: loaded(context.instance, day.isoformat()) for day in days}
        shares = [
            rejected_share_evaluation(day.isoformat(), load, warehouse.max_rejected_share)
            for day, load in loads.items()
            if load is not None
        ]
        yield from per_day_results(context, shares)


def header_evaluations(
    context: AssetExecutionContext, warehouse: Warehouse, exports: list[DayExport], reported: dict | None
) -> list[AssetCheckEvaluation]:
    """Each day's header check, from the headers the ingest reported (an engine that reads the
    files elsewhere, e.g. on a Spark cluster), else as the engine reads them now."""
    reports = reported if reported is not None else warehouse.export_headers(context, exports)
    return [header_evaluation(e, reports.get(e.day.isoformat(), {})) for e in exports]


def finished_exports(landing: LandingZone, days: list) -> list[DayExport]:
    try:
        return [landing.finished_export(day) for day in days]
    except ExportNotReady as not_ready:  # transient: retried, the export may still land
        raise Failure(description=str(not_ready), allow_retries=True) from None
    except LandingZoneMissing as missing:  # a setting to fix: retrying cannot help
        raise Failure(description=str(missing), allow_retries=False) from None
    except BadExportError as refused:  # the day's folder breaks the landing-zone rules
        raise Failure(
            description=f"{refused}\nRe-run with: {rerun_command('raw/orders', days)}",
            allow_retries=False,
        ) from None


def claim_export(context: AssetExecutionContext, exports: list[DayExport]) -> None:
    """A day's run is tagged with the export it builds (the export sensor and shopflow-push-export
    start nothing for an export that has a run). If the day was re-exported since the run was
    requested, the run builds the newer export, and says so in its tag."""
    if len(exports) != 1:
        return
    export = export_tag_value(exports[0].day.isoformat(), exports[0].fingerprint)
    requested = context.run.tags.get(EXPORT_TAG)
    if requested is not None and requested != export:
        context.log.info(f"The export changed since the run was requested ({requested}): building {export}")
    if requested != export:
        context.instance.add_run_tags(context.run_id, {EXPORT_TAG: export})
