"""raw/orders' asset checks, one result per day: the day's share of rejected lines, and its
export's header against the contract.

The ingest evaluates both itself (it holds the numbers and the headers) and reports each day's
result under that day's partition, so a backfill of a range shows every day's own result.
"""

from typing import Mapping, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetRecordsFilter,
    DagsterInstance,
    DailyPartitionsDefinition,
    MetadataValue,
)

from shopflow_assets.contract.asset_keys import RAW_ORDERS
from shopflow_assets.contract.export import MIN_LINES_FOR_REJECTED_SHARE, SHOWN_COLUMNS, SHOWN_NAME_CHARS, display_name
from shopflow_assets.contract.landing import DayExport
from shopflow_assets.engines.base import DayLoad

REJECTED_SHARE = "rejected_share"
HEADER = "header_matches_contract"


def ingest_check_specs(partitions_def: DailyPartitionsDefinition) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            REJECTED_SHARE,
            asset=RAW_ORDERS,
            partitions_def=partitions_def,
            # A failed day's models are not built (the automation waits, the dbt step of a one-day
            # run leaves the day out) until the day is re-exported or the setting raised. A
            # warning, not an error: the files were taken under the file rule, and the ingest run
            # stays a success.
            blocking=True,
            description=(
                "The day's rejected lines stay within SHOPFLOW_MAX_REJECTED_SHARE of its data lines "
                f"(judged on days of at least {MIN_LINES_FOR_REJECTED_SHARE:,} data lines, as files are). "
                "When it fails, the automation does not build the day's models."
            ),
        ),
        AssetCheckSpec(
            HEADER,
            asset=RAW_ORDERS,
            partitions_def=partitions_def,
            description=(
                "Every file of the day has the contract's columns, no more: a missing column fails the "
                "ingest; columns the contract does not know are not loaded and are reported here."
            ),
        ),
    ]


def share_failed(load: DayLoad, max_share: float) -> bool:
    lines = load.rows_loaded + load.rows_rejected
    return lines >= MIN_LINES_FOR_REJECTED_SHARE and load.rows_rejected > max_share * lines


def newest_ingest_metadata(instance: DagsterInstance, day: str) -> dict:
    """The metadata of the newest raw/orders materialization of `day` ({} if none)."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=RAW_ORDERS, asset_partitions=[day]), limit=1).records
    return dict(records[0].asset_materialization.metadata) if records and records[0].asset_materialization else {}


def loaded(instance: DagsterInstance, day: str) -> DayLoad | None:
    """What the newest ingest of `day` loaded and rejected (its materialization's metadata)."""
    metadata = newest_ingest_metadata(instance, day)
    if "rows_loaded" not in metadata or "rows_rejected" not in metadata:
        return None
    return DayLoad(rows_loaded=int(metadata["rows_loaded"].value), rows_rejected=int(metadata["rows_rejected"].value))


def held_back_days(instance: DagsterInstance, days: Sequence[str], max_share: float) -> list[str]:
    """The days whose models wait: their newest ingest failed the rejected share."""
    return [day for day in days if (load := loaded(instance, day)) is not None and share_failed(load, max_share)]


def rejected_share_evaluation(day: str, load: DayLoad, max_share: float) -> AssetCheckEvaluation:
    lines = load.rows_loaded + load.rows_rejected
    share = load.rows_rejected / lines if lines else 0.0
    passed = not share_failed(load, max_share)
    return AssetCheckEvaluation(
        asset_key=RAW_ORDERS,
        check_name=REJECTED_SHARE,
        partition=day,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        blocking=True,
        description=(
            f"{load.rows_rejected} of {lines} data lines rejected ({share:.1%}); "
            f"SHOPFLOW_MAX_REJECTED_SHARE={max_share:g}"
            + ("" if passed else ": the automation holds the day's models back. See raw.orders_rejected for the "
               "reasons; re-export the day, or build its models by hand if the numbers are right")
        ),
        metadata={
            "rejected_share": MetadataValue.float(share),
            "max_rejected_share": MetadataValue.float(max_share),
            "rows_rejected": load.rows_rejected,
            "data_lines": lines,
        },
    )


def header_evaluation(export: DayExport, reports: Mapping[str, dict]) -> AssetCheckEvaluation:
    """Each file's header against the contract, from its report (file name -> header_report, as
    the engine read it where it reads the files)."""
    missing_by_file: dict[str, list[str]] = {}
    extra_by_file: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for f in export.files:
        display = display_name(export.folder, f.name)
        report = reports.get(f.name) if isinstance(reports, Mapping) else None
        report = report if isinstance(report, Mapping) else {}
        if not report.get("readable"):  # the ingest fails on it, saying why
            unreadable.append(display)
        elif report.get("missing"):
            # (a file without a header row: its first data row is no list of extra columns)
            missing_by_file[display] = bounded(report["missing"])
        elif report.get("extra"):
            extra_by_file[display] = bounded(report["extra"])
    passed = not (missing_by_file or extra_by_file or unreadable)
    return AssetCheckEvaluation(
        asset_key=RAW_ORDERS,
        check_name=HEADER,
        partition=export.day.isoformat(),
        passed=passed,
        # a missing column fails the ingest itself; an unknown one is only not loaded
        severity=AssetCheckSeverity.ERROR if missing_by_file or unreadable else AssetCheckSeverity.WARN,
        description=header_description(missing_by_file, extra_by_file, unreadable, len(export.files)),
        metadata={
            "files": len(export.files),
            "missing_columns": MetadataValue.json(first_files(missing_by_file)),
            "extra_columns": MetadataValue.json(first_files(extra_by_file)),
            "files_with_missing_columns": len(missing_by_file),
            "files_with_extra_columns": len(extra_by_file),
            "unreadable_files": MetadataValue.json(unreadable[:SHOWN_FILES]),
        },
    )


SHOWN_FILES = 50  # files named in the check's metadata


def bounded(names: Sequence) -> list[str]:
    """Column names of a report as the check shows them: already bounded by shown_columns where
    the report was made, and held to that bound here whoever made it."""
    return [str(name)[: SHOWN_NAME_CHARS + 3] for name in list(names)[: SHOWN_COLUMNS + 1]]


def first_files(by_file: dict[str, list[str]]) -> dict[str, list[str]]:
    return dict(list(by_file.items())[:SHOWN_FILES])


def header_description(
    missing: dict[str, list[str]], extra: dict[str, list[str]], unreadable: Sequence[str], files: int
) -> str:
    """Counts only: names written by the exporter (files, columns) stay in the JSON metadata, where
    the UI shows them as text, never as markdown."""
    if not (missing or extra or unreadable):
        return f"All {files} file(s) have exactly the contract's columns."
    parts = []
    if missing:
        parts.append(f"{len(missing)} file(s) lack contract columns (missing_columns); the ingest fails")
    if extra:
        parts.append(f"{len(extra)} file(s) have columns the contract does not know, not loaded (extra_columns)")
    if unreadable:
        parts.append(f"{len(unreadable)} file(s) have no readable header; the ingest fails")
    return f"Of {files} file(s): " + "; ".join(parts) + "."
