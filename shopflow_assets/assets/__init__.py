"""Software-defined assets: the ingest (raw/orders) and the dbt models (fact_sales, daily_revenue)."""

from shopflow_assets.assets.dbt import shopflow_dbt_models
from shopflow_assets.assets.ingest import raw_orders

__all__ = ["raw_orders", "shopflow_dbt_models"]
