"""The asset keys of the contract (docs/contract.md "Asset keys and tables"), named once."""

from dagster import AssetKey

RAW_ORDERS = AssetKey(["raw", "orders"])
FACT_SALES = AssetKey("fact_sales")
DAILY_REVENUE = AssetKey("daily_revenue")
