"""The landing zone's rules: which folders are days, which entries of a day are its export files,
and what identifies one finished export. Written once, for every engine.

Pure standard library (the Spark ingest imports it outside the code location), and metadata only:
nothing here opens an export file. A day's folder is read with one `scandir` and `lstat`s, so a
symbolic link is never followed to decide what it is, and a FIFO, socket or device is never opened.

The rules (docs in the README's "The export and the landing zone"):
- A day is a folder `orders/dt=YYYY-MM-DD` of a real date, written exactly so. Anything else under
  `orders/` is not a day (the export sensor skips it with a warning).
- A day is finished when its `_SUCCESS` marker exists and no export file is newer than the marker
  (a newer file means a re-export is being written: the marker comes last).
- Names starting with `.` or `_` (other than `_SUCCESS`) are the writers' own (temporary files,
  checksums, `_temporary/`): ignored.
- Every other entry must be an export file: a regular file whose name ends in `.csv` or `.csv.gz`,
  in any case. A symbolic link counts as what it points to, if that lies inside the landing zone;
  a link out of the landing zone is never followed. Anything else (another suffix, a folder, a
  FIFO, socket or device, a link out) fails the day, named; so does a day without an export file.
- A file's name is a name, never a pattern: the engines read exactly the path listed here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

SUCCESS_MARKER = "_SUCCESS"
EXPORT_SUFFIXES = (".csv", ".csv.gz")
ORDERS_FOLDER = "orders"
DAY_FOLDER = re.compile(r"dt=([0-9]{4}-[0-9]{2}-[0-9]{2})")


def day_of_folder(name: str) -> dt.date | None:
    """The day of a canonical day folder name (`dt=YYYY-MM-DD`, a real date), else None."""
    match = DAY_FOLDER.fullmatch(name)
    if match is None:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def day_folder(day: dt.date) -> str:
    return f"dt={day.isoformat()}"


def is_export_name(name: str) -> bool:
    """An export file's name: `.csv` or `.csv.gz`, in any case, not hidden."""
    return name.lower().endswith(EXPORT_SUFFIXES) and not is_writers_own(name)


def is_writers_own(name: str) -> bool:
    """A name the rules ignore: hidden (`.x`) or a writer's own (`_x`), but the marker."""
    return name.startswith((".", "_")) and name != SUCCESS_MARKER


def shown_name(name: str) -> str:
    """A name as messages show it: bytes that are not UTF-8 as U+FFFD, control characters escaped
    (a newline in a file name must not start a new line of an error or an alert)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def is_gzip_name(name: str) -> bool:
    return name.lower().endswith(".gz")


@dataclass(frozen=True)
class ExportFile:
    """One export file of a day: its name in the day folder, and the path to read (the file
    itself, or for a link, the file it points to inside the landing zone)."""

    name: str
    path: str
    size: int

    @property
    def gzip(self) -> bool:
        return is_gzip_name(self.name)


@dataclass(frozen=True)
class DayFolder:
    """What one look at a day's folder found."""

    path: str
    marker: bool = False  # _SUCCESS is there
    files: tuple[ExportFile, ...] = ()  # sorted by name
    problems: tuple[str, ...] = ()  # entries the rules refuse, in words, each naming the entry
    newer_than_marker: tuple[str, ...] = ()  # export files written after _SUCCESS
    fingerprint: str | None = None  # of the finished export; None while not finished
    missing: bool = False  # no such folder

    @property
    def finished(self) -> bool:
        return self.fingerprint is not None


@dataclass
class _Scan:
    files: list[ExportFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    digest_parts: list[str] = field(default_factory=list)
    marker: os.stat_result | None = None
    mtimes: dict[str, int] = field(default_factory=dict)


def _inside(root_real: str, path_real: str) -> bool:
    return path_real == root_real or path_real.startswith(root_real.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _identity(st: os.stat_result) -> str:
    # ctime and inode too: a rewrite that keeps size and mtime (cp -p, rsync -a) still changes them
    return f"{stat.S_IFMT(st.st_mode)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def resolve_inside(landing_root: str, path: str) -> str | None:
    """`path` with every link resolved, if it lies inside the landing zone; else None."""
    root_real = os.path.realpath(landing_root)
    target = os.path.realpath(path)
    return target if _inside(root_real, target) else None


def scan_day(landing_root: str, directory: str, display: str | None = None) -> DayFolder:
    """One look at a day folder (see the module's rules). `display`: how problems name the folder
    (default: its name, e.g. dt=2024-03-01)."""
    display = display or os.path.basename(directory.rstrip(os.sep))
    root_real = os.path.realpath(landing_root)
    folder_real = os.path.realpath(directory)
    if not _inside(root_real, folder_real):
        try:
            link = os.lstat(directory)
        except FileNotFoundError:
            return DayFolder(path=directory, missing=True)
        return DayFolder(
            path=directory,
            marker=True,
            problems=(f"{display} is a symbolic link out of the landing zone: not followed",),
            fingerprint=_fingerprint([f"outside:{_identity(link)}"]),
        )
    scan = _Scan()
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return DayFolder(path=directory, missing=True)
    for entry in entries:
        name = entry.name
        if is_writers_own(name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed while looking: the fingerprint will differ next time
            continue
        shown = f"{display}/{shown_name(name)}"
        if name == SUCCESS_MARKER:
            if stat.S_ISREG(st.st_mode):
                scan.marker = st
                scan.digest_parts.append(f"{SUCCESS_MARKER}:{_identity(st)}")
            else:
                scan.problems.append(f"{shown} is {_kind(st.st_mode)}, not an empty marker file")
                scan.digest_parts.append(f"{name}:{_identity(st)}")
            continue
        read_path, target_st = entry.path, st
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(entry.path)
            if not _inside(root_real, target):
                scan.problems.append(f"{shown} is a symbolic link out of the landing zone: not followed")
                scan.digest_parts.append(f"{name}:{_identity(st)}")
                continue
            try:
                target_st = os.stat(target, follow_symlinks=False)
            except OSError:
                scan.problems.append(f"{shown} is a symbolic link to nothing")
                scan.digest_parts.append(f"{name}:{_identity(st)}")
                continue
            read_path = target
        scan.digest_parts.append(f"{name}:{_identity(st)}:{_identity(target_st)}")
        if not stat.S_ISREG(target_st.st_mode):
            what = _kind(target_st.st_mode)
            link = " (through a symbolic link)" if read_path != entry.path else ""
            scan.problems.append(f"{shown} is {what}{link}, not an export file: not opened")
            continue
        if not is_export_name(name):
            scan.problems.append(f"{shown} is not an export file (names end in .csv or .csv.gz)")
            continue
        if shown_name(name) != name:
            scan.problems.append(f"{shown}: the name is not printable UTF-8; rename the file")
            continue
        scan.files.append(ExportFile(name=name, path=read_path, size=target_st.st_size))
        scan.mtimes[name] = target_st.st_mtime_ns
    if scan.marker is None:
        return DayFolder(path=directory, files=tuple(scan.files), problems=tuple(scan.problems))
    if not scan.files and not scan.problems:
        scan.problems.append(
            f"{display} has {SUCCESS_MARKER} but no export file (an empty day is exported as a "
            "header-only .csv file)"
        )
    newer = tuple(n for n, mtime in scan.mtimes.items() if mtime > scan.marker.st_mtime_ns)
    return DayFolder(
        path=directory,
        marker=True,
        files=tuple(scan.files),
        problems=tuple(scan.problems),
        newer_than_marker=newer,
        fingerprint=None if newer else _fingerprint(scan.digest_parts),
    )


@dataclass(frozen=True)
class DayExport:
    """A finished export of one day: its files, sorted by name, and the fingerprint they had."""

    day: dt.date
    directory: Path
    files: tuple[ExportFile, ...]
    fingerprint: str
    landing_root: str

    @property
    def folder(self) -> str:
        return self.directory.name

    def changed(self) -> bool:
        """Whether the day's folder now holds another export than the one listed (a re-export
        landed, or is being written): what was read from it must not be published."""
        return scan_day(self.landing_root, str(self.directory)).fingerprint != self.fingerprint


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def export_fingerprint(landing_root: str, directory: str) -> str | None:
    """The fingerprint of the finished export in `directory`; None while it is not finished."""
    return scan_day(landing_root, directory).fingerprint
