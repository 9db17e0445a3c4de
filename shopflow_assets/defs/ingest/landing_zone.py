"""The export landing zone: `<root>/orders/dt=YYYY-MM-DD/*.csv[.gz]`, with `_SUCCESS` written last.
What counts as a day and as an export file is shopflow_assets/contract/landing.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterator

from dagster import ConfigurableResource
from pydantic import Field

from shopflow_assets.contract.export import BadExportError
from shopflow_assets.contract.landing import (
    ORDERS_FOLDER,
    SUCCESS_MARKER,
    DayFolder,
    DayExport,
    ExportFile,
    day_folder,
    day_of_folder,
    exists,
    folder_entries,
    join,
    scan_day,
    shown_name,
)

__all__ = ["DayExport", "ExportFile", "ExportNotReady", "LandingZone", "LandingZoneMissing", "SUCCESS_MARKER"]


class ExportNotReady(Exception):
    """The day's export has not finished landing (no `_SUCCESS` yet, or a re-export is being
    written): try again later."""


class LandingZoneMissing(Exception):
    """SHOPFLOW_LANDING_DIR points nowhere: a setting to fix, not a fault to retry."""


class LandingRuleError(BadExportError):
    """The day's folder holds what the landing-zone rules refuse: permanent until it is fixed."""


@dataclass(frozen=True)
class FolderUnderOrders:
    """An entry of `orders/`: a day's folder, or something that is not a day (`day` None)."""

    name: str
    day: dt.date | None
    folder: DayFolder | None = None


class LandingZone(ConfigurableResource):
    """Where the order system drops its daily exports (`SHOPFLOW_LANDING_DIR`): a local folder, or
    with the Spark engine a URI that fsspec lists and the Spark executors read (file://, hdfs://,
    s3a://). Only metadata is looked at here; no export file is opened."""

    root: str = Field(description="The landing zone's root: an absolute path, or a URI (Spark engine).")

    @property
    def orders_dir(self) -> str:
        return join(self.root, ORDERS_FOLDER)

    def day_dir(self, day: dt.date) -> str:
        return join(self.orders_dir, day_folder(day))

    def marker(self, day: dt.date) -> str:
        return join(self.day_dir(day), SUCCESS_MARKER)

    def scan_orders(self) -> Iterator[FolderUnderOrders]:
        """Every entry of `orders/`, by name: each day folder looked at once (metadata only)."""
        for name, is_folder, is_link in folder_entries(self.orders_dir):
            day = day_of_folder(name)
            if day is None or not (is_folder or is_link):
                yield FolderUnderOrders(shown_name(name), None)
                continue
            folder = scan_day(self.root, join(self.orders_dir, name))
            if folder.missing:  # a link to nothing or to a file, or removed meanwhile
                if is_link:
                    yield FolderUnderOrders(shown_name(name), None)
                continue
            yield FolderUnderOrders(name, day, folder)

    def export_fingerprint(self, day: dt.date) -> str | None:
        """The fingerprint of `day`'s finished export; None while it is not finished."""
        return scan_day(self.root, self.day_dir(day)).fingerprint

    def finished_export(self, day: dt.date) -> DayExport:
        """The files of `day`'s export. ExportNotReady while it is still being written;
        LandingRuleError (permanent) when its folder holds what the rules refuse."""
        if not exists(self.root):
            raise LandingZoneMissing(
                f"The landing zone {self.root} does not exist: point SHOPFLOW_LANDING_DIR at the "
                "export landing zone (or create it)."
            )
        directory = self.day_dir(day)
        folder = scan_day(self.root, directory)
        if folder.problems and folder.marker:
            raise LandingRuleError(
                f"The export of {day} breaks the landing-zone rules: {'; '.join(folder.problems)}. "
                f"Nothing of {day} was changed. Fix the folder {directory} (or re-export the day)."
            )
        if not folder.marker:
            raise ExportNotReady(
                f"The export of {day} has not finished: {self.marker(day)} is missing. "
                "It is ingested once the order system writes it."
            )
        if folder.newer_than_marker:
            names = ", ".join(shown_name(n) for n in folder.newer_than_marker[:5])
            raise ExportNotReady(
                f"The export of {day} is being rewritten: {names} is newer than its {SUCCESS_MARKER}. "
                f"Nothing of {day} was changed; the new export is ingested once its {SUCCESS_MARKER} "
                "is written again."
            )
        return DayExport(
            day=day,
            directory=directory,
            files=folder.files,
            fingerprint=folder.fingerprint or "",
            landing_root=self.root,
        )
