"""Resources: one for each outside system the pipeline talks to. The warehouse, one resource per
engine, is in shopflow_assets.engines."""

from shopflow_assets.resources.landing import DayExport, ExportNotReady, LandingZone, LandingZoneMissing

__all__ = ["DayExport", "ExportNotReady", "LandingZone", "LandingZoneMissing"]
