"""Resources: one for each outside system the pipeline talks to."""

from shopflow_assets.resources.landing import DayExport, ExportNotReady, LandingZone, LandingZoneMissing
from shopflow_assets.resources.warehouse import DuckDBWarehouse

__all__ = ["DayExport", "DuckDBWarehouse", "ExportNotReady", "LandingZone", "LandingZoneMissing"]
