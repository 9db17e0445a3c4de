"""ShopFlow's shopflow_daily code location."""
