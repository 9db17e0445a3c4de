"""The export landing zone: `<root>/orders/dt=YYYY-MM-DD/*.csv[.gz]`, with `_SUCCESS` written last."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

SUCCESS_MARKER = "_SUCCESS"
EXPORT_SUFFIXES = (".csv", ".csv.gz")


class ExportNotReady(Exception):
    """The day's export has not finished landing (no `_SUCCESS` yet): try again later."""


@dataclass(frozen=True)
class DayExport:
    """A finished export of one day: its files, sorted by name."""

    day: dt.date
    directory: Path
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class LandingZone(ConfigurableResource):
    """Where the order system drops its daily exports (`SHOPFLOW_LANDING_DIR`)."""

    root: str = Field(description="Absolute path of the landing zone root.")

    @property
    def orders_dir(self) -> Path:
        return Path(self.root) / "orders"

    def day_dir(self, day: dt.date) -> Path:
        return self.orders_dir / f"dt={day.isoformat()}"

    def finished_export(self, day: dt.date) -> DayExport:
        """The files of `day`'s export, or ExportNotReady while it is still being written."""
        if not Path(self.root).is_dir():
            raise ExportNotReady(
                f"The landing zone {self.root} does not exist: create it or point "
                "SHOPFLOW_LANDING_DIR at the export landing zone."
            )
        directory = self.day_dir(day)
        if not (directory / SUCCESS_MARKER).is_file():
            raise ExportNotReady(
                f"The export of {day} has not finished: {directory / SUCCESS_MARKER} is missing. "
                "It is ingested once the order system writes it."
            )
        files = tuple(
            sorted(
                (p for p in directory.iterdir() if is_export_file(p.name) and p.is_file()),
                key=lambda p: p.name,
            )
        )
        return DayExport(day=day, directory=directory, files=files)


def is_export_file(name: str) -> bool:
    return name.endswith(EXPORT_SUFFIXES) and not name.startswith((".", "_"))
