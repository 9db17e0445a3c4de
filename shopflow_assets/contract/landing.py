"""The landing zone's rules: which folders are days, which entries of a day are its export files,
and what identifies one finished export. Written once, for every engine.

Metadata only: nothing here opens an export file. The landing zone is a local folder (a path) or,
with the Spark engine, a URI (`file://`, `hdfs://`, `s3a://`, ...). A local folder's day is read with
one `scandir` and `lstat`s, so a symbolic link is never followed to decide what it is, and a FIFO,
socket or device is never opened. A URI's day is listed through fsspec (imported only then), the
file system library that reaches the storage the Spark executors read: one listing, whose entries
say their kind, size and modification time; a link there is never followed. The standard library
otherwise (the Spark ingest imports this outside the code location).

The rules (docs in the README's "The export and the landing zone"):
- A day is a folder `orders/dt=YYYY-MM-DD` of a real date, written exactly so. Anything else under
  `orders/` is not a day (the export sensor skips it with a warning).
- A day is finished when its `_SUCCESS` marker exists and no export file is newer than the marker
  (a newer file means a re-export is being written: the marker comes last).
- Names starting with `.` or `_` (other than `_SUCCESS`) are the writers' own (temporary files,
  checksums, `_temporary/`): ignored.
- Every other entry must be an export file: a regular file whose name ends in `.csv` or `.csv.gz`,
  in any case. In a local folder a symbolic link counts as what it points to, if that lies inside
  the landing zone; a link out of the landing zone is never followed; in a landing zone given as a
  URI no link is followed. Anything else (another suffix, a folder, a
  FIFO, socket or device, a link out) fails the day, named; so does a day without an export file.
- A file's name is a name, never a pattern: the engines read exactly the path listed here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field

SUCCESS_MARKER = "_SUCCESS"
EXPORT_SUFFIXES = (".csv", ".csv.gz")
ORDERS_FOLDER = "orders"
DAY_FOLDER = re.compile(r"dt=([0-9]{4}-[0-9]{2}-[0-9]{2})")
# What of an fsspec listing entry identifies one version of a file, across file systems: a
# rewrite changes at least one (local: ctime and inode too; object stores: ETag or generation).
IDENTITY_KEYS = ("type", "size", "mtime", "created", "ino", "LastModified", "ETag", "VersionId",
                 "last_modified", "updated", "generation", "etag", "md5Hash")
# Where an fsspec entry says when it was last written (the first one present).
MODIFIED_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


def is_uri(location: str) -> bool:
    """A landing zone or file given as a URI (scheme://...), listed through fsspec."""
    return "://" in location


def join(location: str, *names: str) -> str:
    """`names` under a folder given as a path or a URI (a URI always joins with "/")."""
    return "/".join([location.rstrip("/"), *names]) if is_uri(location) else os.path.join(location, *names)


def filesystem(location: str):
    """(fsspec file system, path on it) of a URI. HDFS and object stores need their fsspec package
    (pyarrow's libhdfs, s3fs, ...) where this runs."""
    import fsspec

    return fsspec.core.url_to_fs(location)


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
    marker: bool = False
    marker_mtime: int | None = None  # ns; None where the file system does not say
    mtimes: dict[str, int | None] = field(default_factory=dict)

    def add_file(self, shown: str, name: str, read_path: str, size: int, mtime: int | None) -> None:
        """A regular file of the day: an export file if its name says so; else a problem."""
        if not is_export_name(name):
            self.problems.append(f"{shown} is not an export file (names end in .csv or .csv.gz)")
        elif shown_name(name) != name:
            self.problems.append(f"{shown}: the name is not printable UTF-8; rename the file")
        else:
            self.files.append(ExportFile(name=name, path=read_path, size=size))
            self.mtimes[name] = mtime

    def day_folder(self, directory: str, display: str) -> DayFolder:
        """What the look found: finished once the marker is there and no export file is newer."""
        if not self.marker:
            return DayFolder(path=directory, files=tuple(self.files), problems=tuple(self.problems))
        if not self.files and not self.problems:
            self.problems.append(
                f"{display} has {SUCCESS_MARKER} but no export file (an empty day is exported as a "
                "header-only .csv file)"
            )
        marked = self.marker_mtime
        newer = tuple(
            n for n, mtime in self.mtimes.items() if marked is not None and mtime is not None and mtime > marked
        )
        return DayFolder(
            path=directory,
            marker=True,
            files=tuple(self.files),
            problems=tuple(self.problems),
            newer_than_marker=newer,
            fingerprint=None if newer else _fingerprint(self.digest_parts),
        )


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
    display = display or directory.rstrip("/" + os.sep).rsplit("/", 1)[-1]
    if is_uri(landing_root):
        return _scan_uri(directory, display)
    return _scan_local(landing_root, directory, display)


def _scan_local(landing_root: str, directory: str, display: str) -> DayFolder:
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
                scan.marker, scan.marker_mtime = True, st.st_mtime_ns
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
        scan.add_file(shown, name, read_path, target_st.st_size, target_st.st_mtime_ns)
    return scan.day_folder(directory, display)


def list_uri(folder: str) -> list[tuple[str, dict]] | None:
    """(name, fsspec entry) of everything in a folder given as a URI, by name; None if there is no
    such folder."""
    fs, path = filesystem(folder)
    try:
        if fs.info(path)["type"] != "directory":
            return None
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    named = [
        (str(info["name"]).rstrip("/").rsplit("/", 1)[-1], info)
        for info in entries
        if str(info["name"]).rstrip("/") != path.rstrip("/")  # an object store's placeholder of the folder
    ]
    return sorted(named, key=lambda entry: entry[0])


def folder_entries(folder: str) -> list[tuple[str, bool, bool]]:
    """(name, is a folder, is a link) of every entry of a folder given as a path or a URI, by
    name; none if there is no such folder. A link is not followed to say what it is."""
    if is_uri(folder):
        return [(name, info.get("type") == "directory", bool(info.get("islink"))) for name, info in list_uri(folder) or []]
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in entries)


def exists(location: str) -> bool:
    """Whether a path or a URI names something."""
    if is_uri(location):
        fs, path = filesystem(location)
        return fs.exists(path)
    return os.path.exists(location)


def _scan_uri(directory: str, display: str) -> DayFolder:
    """A day folder of a landing zone given as a URI: one fsspec listing."""
    entries = list_uri(directory)
    if entries is None:
        return DayFolder(path=directory, missing=True)
    scan = _Scan()
    for name, info in entries:
        if is_writers_own(name):
            continue
        shown = f"{display}/{shown_name(name)}"
        identity = json.dumps({k: str(info[k]) for k in IDENTITY_KEYS if k in info}, sort_keys=True)
        scan.digest_parts.append(f"{name}:{identity}")
        if info.get("islink"):
            scan.problems.append(f"{shown} is a symbolic link: a landing zone given as a URI follows none")
            continue
        kind = {"directory": "a folder", "file": None}.get(info.get("type"), "not a regular file")
        if name == SUCCESS_MARKER:
            if kind is None:
                scan.marker, scan.marker_mtime = True, _modified_ns(info)
            else:
                scan.problems.append(f"{shown} is {kind}, not an empty marker file")
            continue
        if kind is not None:
            scan.problems.append(f"{shown} is {kind}, not an export file: not opened")
            continue
        scan.add_file(shown, name, join(directory, name), int(info.get("size") or 0), _modified_ns(info))
    return scan.day_folder(directory, display)


def _modified_ns(info: dict) -> int | None:
    """When an fsspec entry was last written, in ns since the epoch; None if it does not say."""
    for key in MODIFIED_KEYS:
        value = info.get(key)
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, dt.datetime):
            value = value.replace(tzinfo=value.tzinfo or dt.timezone.utc).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value * 1_000_000_000)
    return None


@dataclass(frozen=True)
class DayExport:
    """A finished export of one day: its files, sorted by name, and the fingerprint they had."""

    day: dt.date
    directory: str  # a path, or a URI
    files: tuple[ExportFile, ...]
    fingerprint: str
    landing_root: str

    @property
    def folder(self) -> str:
        return day_folder(self.day)

    def changed(self) -> bool:
        """Whether the day's folder now holds another export than the one listed (a re-export
        landed, or is being written): what was read from it must not be published."""
        return scan_day(self.landing_root, self.directory).fingerprint != self.fingerprint


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def export_fingerprint(landing_root: str, directory: str) -> str | None:
    """The fingerprint of the finished export in `directory`; None while it is not finished."""
    return scan_day(landing_root, directory).fingerprint
