"""The export landing zone: `<root>/orders/dt=YYYY-MM-DD/*.csv[.gz]`, with `_SUCCESS` written last."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dagster import ConfigurableResource
from pydantic import Field

SUCCESS_MARKER = "_SUCCESS"
EXPORT_SUFFIXES = (".csv", ".csv.gz")


class ExportNotReady(Exception):
    """The day's export has not finished landing (no `_SUCCESS` yet): try again later."""


class LandingZoneMissing(Exception):
    """SHOPFLOW_LANDING_DIR points nowhere: a setting to fix, not a fault to retry."""


@dataclass(frozen=True)
class DayExport:
    """A finished export of one day: its files, sorted by name."""

    day: dt.date
    directory: Path
    files: tuple[Path, ...]


class LandingZone(ConfigurableResource):
    """Where the order system drops its daily exports (`SHOPFLOW_LANDING_DIR`)."""

    root: str = Field(description="Absolute path of the landing zone root.")

    @property
    def orders_dir(self) -> Path:
        return Path(self.root) / "orders"

    def day_dir(self, day: dt.date) -> Path:
        return self.orders_dir / f"dt={day.isoformat()}"

    def finished_export_fingerprints(self) -> Iterator[tuple[str, str]]:
        """(day, fingerprint) of every finished export: one directory listing per day, no reads."""
        try:
            days = [e for e in os.scandir(self.orders_dir) if e.name.startswith("dt=") and e.is_dir()]
        except FileNotFoundError:
            return
        for day_dir in sorted(days, key=lambda e: e.name):
            fingerprint = export_fingerprint(day_dir.path)
            if fingerprint is not None:
                yield day_dir.name[len("dt=") :], fingerprint

    def export_fingerprint(self, day: dt.date) -> str | None:
        """The fingerprint of `day`'s finished export; None while it is not finished."""
        return export_fingerprint(self.day_dir(day))

    def finished_export(self, day: dt.date) -> DayExport:
        """The files of `day`'s export, or ExportNotReady while it is still being written."""
        if not Path(self.root).is_dir():
            raise LandingZoneMissing(
                f"The landing zone {self.root} does not exist: point SHOPFLOW_LANDING_DIR at the "
                "export landing zone (or create it)."
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


def export_fingerprint(directory: str | os.PathLike) -> str | None:
    """What identifies one finished export of a day: each export file's name, size and mtime and
    the `_SUCCESS` marker's mtime, so a re-export (new or changed files, a new `_SUCCESS`) changes
    it. None while the export is still being written (no `_SUCCESS`) or the folder is gone."""
    try:
        entries = {e.name: e.stat() for e in os.scandir(directory) if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):  # removed while scanning
        return None
    marker = entries.get(SUCCESS_MARKER)
    if marker is None:
        return None
    digest = hashlib.sha256(f"{SUCCESS_MARKER}:{marker.st_mtime_ns}".encode())
    for name in sorted(n for n in entries if is_export_file(n)):
        digest.update(f"|{name}:{entries[name].st_size}:{entries[name].st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
