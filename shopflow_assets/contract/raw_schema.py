"""The columns of `raw.orders` and `raw.orders_rejected`, written once and rendered for each use:
DuckDB's DDL, the Spark job's output, Spark's table DDL and the asset's TableSchema. The dbt sources
(shopflow_dbt/models/staging/_sources.yml) are checked against it by a test.

Pure standard library: the Spark job imports it outside the code location.
"""

from __future__ import annotations

from dataclasses import dataclass

from shopflow_assets.contract.export import REQUIRED_COLUMNS, TYPED_COLUMNS


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # logical: text, integer, bigint, money, timestamp, date
    description: str
    nullable: bool = False


# logical type -> (DuckDB, Spark, what the asset's TableSchema shows)
TYPES = {
    "text": ("VARCHAR", "STRING", "VARCHAR"),
    "integer": ("INTEGER", "INT", "INTEGER"),
    "bigint": ("BIGINT", "BIGINT", "BIGINT"),
    "money": ("DECIMAL(18, 2)", "DECIMAL(18,2)", "DECIMAL(18,2)"),
    "timestamp": ("TIMESTAMPTZ", "TIMESTAMP", "TIMESTAMPTZ"),
    "date": ("DATE", "DATE", "DATE"),
}

_EXPORT_DESCRIPTIONS = {
    "order_id": "the order",
    "line_number": "the line within the order, >= 1",
    "customer_id": "who ordered",
    "product_id": "what was ordered",
    "quantity": "units, >= 1",
    "unit_price": "price per unit, >= 0",
    "discount": "discount on the line, 0..quantity x unit_price",
    "status": "placed, shipped, delivered, cancelled or refunded",
    "ordered_at": "when the order was placed; its UTC date is dt",
    "updated_at": "when this version of the line was exported",
}

DT = Column("dt", "date", "the export day (UTC), the partition key")
SOURCE = (
    Column("_source_file", "text", "the export file's name"),
    Column("_source_line", "bigint", "the row's physical line in that file, header = 1"),
)
LOADED = (
    Column("_loaded_at", "timestamp", "when the ingest published the row"),
    Column("_run_id", "text", "the Dagster run that published the row"),
)

RAW_ORDERS = (
    DT,
    *(Column(c, TYPED_COLUMNS[c][1] if c in TYPED_COLUMNS else "text", _EXPORT_DESCRIPTIONS[c]) for c in REQUIRED_COLUMNS),
    *SOURCE,
    *LOADED,
)
RAW_ORDERS_REJECTED = (
    DT,
    *SOURCE,
    Column("reason", "text", "every rule the row breaks, '; '-separated, or 'malformed CSV row: ...'"),
    *(Column(c, "text", f"{_EXPORT_DESCRIPTIONS[c]} (as written)", nullable=True) for c in REQUIRED_COLUMNS),
    Column("_raw_line", "text", "the line as written, for a line that is not valid CSV", nullable=True),
    *LOADED,
)
TABLES = {"raw.orders": RAW_ORDERS, "raw.orders_rejected": RAW_ORDERS_REJECTED}


def duckdb_ddl() -> str:
    """CREATE SCHEMA and CREATE TABLE IF NOT EXISTS statements of both tables, for DuckDB."""
    statements = ["CREATE SCHEMA IF NOT EXISTS raw;"]
    for table, columns in TABLES.items():
        body = ",\n".join(
            f"    {c.name} {TYPES[c.type][0]}{'' if c.nullable else ' NOT NULL'}" for c in columns
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} (\n{body}\n);")
    return "\n".join(statements)


def spark_columns(table: str, partition: bool = True) -> str:
    """`name TYPE, ...` of a table for Spark SQL (the partition column dt last, where Spark keeps it)."""
    columns = [c for c in TABLES[table] if c.name != "dt"] + ([DT] if partition else [])
    return ", ".join(f"{c.name} {TYPES[c.type][1]}" for c in columns)


def column_names(table: str) -> list[str]:
    return [c.name for c in TABLES[table]]
