"""How the Spark tables keep their days (docs/contract.md "Engines"): each day of a table is a
version folder, `<table folder>/dt=D/v=<version>/`, and the catalog's partition `dt=D` points at the
live one. A day is published by writing a new version, then swapping the partition's location in
one `ALTER TABLE` statement: a reader through the catalog sees the old day or the new one, never
neither and never a mix, on any file system (no rename of live data). A day whose rebuild is empty
has its partition dropped, also one statement. A version that stopped being live is marked retired
(`dt=D/_retired/v=<version>`, holding the time) and removed a grace period later, when no query
that began before the swap is still reading it.

Used by the Spark ingest (raw tables) and by the code location (marts, reads). Standard library
at import; a Thrift connection imports PyHive when it is opened.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from typing import Callable, Iterator, Sequence
from urllib.parse import unquote, urlsplit

VERSION = "v="  # a version folder's name: v=<version>, versions of a table sort by age
RETIRED = "_retired"  # dt=D/_retired/v=<version>: when that version stopped being live (epoch seconds)
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
TABLE = re.compile(r"[a-z_]+\.[a-z_]+")

SqlRunner = Callable[[str], list]  # a statement -> its rows (tuples)

# How a Spark server says that its metastore's database does not answer (after its own retries,
# minutes): an AnalysisException to Spark, but transient. PostgreSQL's JDBC driver, MySQL's, and
# Hive's own wrappers.
METASTORE_UNREACHABLE = (
    "refused. Check that the hostname and port are correct and that the postmaster is accepting",
    "Communications link failure",
    "JDOFatalDataStoreException",
    "Could not connect to meta store",
    "Unable to instantiate org.apache.hadoop.hive",
)


def sql_string(text: str) -> str:
    """A Spark SQL string literal (backslash escapes, as Spark parses them by default)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def version_folder(table_folder: str, day: str, version: str) -> str:
    return f"{table_folder.rstrip('/')}/dt={day}/{VERSION}{version}"


class Catalog:
    """The partitions of the tables, through a Spark SQL session (Connect or Thrift)."""

    def __init__(self, run: SqlRunner):
        self.run = run

    @staticmethod
    def spec(table: str, day: str) -> str:
        if not TABLE.fullmatch(table) or not DAY.fullmatch(day):
            raise ValueError(f"not a table and day: {table!r} {day!r}")
        return f"{table} PARTITION (dt = '{day}')"

    def exists(self, table: str) -> bool:
        database, name = table.split(".")
        if database not in {str(row[0]) for row in self.run("SHOW DATABASES")}:
            return False
        return name in {str(row[1]) for row in self.run(f"SHOW TABLES IN {database}")}

    def described(self, what: str) -> dict[str, str]:
        """`DESCRIBE <what>` (a database, `TABLE EXTENDED t`, ...) as key -> value: its Location, Type..."""
        return {str(row[0]).strip(): str(row[1]) for row in self.run(f"DESCRIBE {what}")}

    def table_locations(self, database: str, names: Sequence[str]) -> dict[str, str]:
        """Where each of the tables `names` of `database` that exist is (one statement)."""
        if not all(TABLE.fullmatch(f"{database}.{name}") for name in names):
            raise ValueError(f"not tables: {database!r} {names!r}")
        rows = self.run(f"SHOW TABLE EXTENDED IN {database} LIKE '{'|'.join(names)}'")
        return {str(row[1]): information_location(str(row[-1])) or "" for row in rows if str(row[1]) in names}

    def days(self, table: str) -> list[str]:
        return sorted(str(row[0]).split("=", 1)[1] for row in self.run(f"SHOW PARTITIONS {table}"))

    def location(self, table: str, day: str) -> str | None:
        """Where the live version of the day is, or None if the table has no such day (one statement
        for a day that exists, which is what a publish or a reader mostly asks)."""
        spec = self.spec(table, day)
        database, name = table.split(".")
        try:
            rows = self.run(f"SHOW TABLE EXTENDED IN {database} LIKE '{name}' PARTITION (dt = '{day}')")
        except Exception:  # no such day (PARTITIONS_NOT_FOUND), or an error of its own, raised
            if self.run(f"SHOW PARTITIONS {spec}"):
                raise
            return None
        location = information_location(str(rows[0][-1])) if rows else None
        if rows and location is None:
            raise RuntimeError(f"the catalog names no location for {table} {day}")
        return location

    def locations(self, table: str) -> dict[str, str]:
        return {day: location for day in self.days(table) if (location := self.location(table, day))}

    def publish(self, table: str, day: str, location: str) -> None:
        """The day becomes the version at `location`: one statement swaps a day that exists."""
        spec = self.spec(table, day)
        self.run(f"ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (dt = '{day}') LOCATION {sql_string(location)}")
        self.run(f"ALTER TABLE {spec} SET LOCATION {sql_string(location)}")

    def drop(self, table: str, day: str) -> None:
        """The day ends empty (the tables are external: its files stay until retired)."""
        self.spec(table, day)
        self.run(f"ALTER TABLE {table} DROP IF EXISTS PARTITION (dt = '{day}')")


def information_location(information: str) -> str | None:
    """The `Location: ...` line of what `SHOW TABLE EXTENDED` says of a table or a partition."""
    for line in information.splitlines():
        if line.startswith("Location: "):
            return line[len("Location: ") :].strip()
    return None


def same_location(location: str) -> str:
    """A warehouse location as one string however it is written: /w, file:/w, file:///w/, a link
    to /w -> file:///w; other schemes as they are, without a trailing slash."""
    parts = urlsplit(location)
    if parts.scheme in ("", "file") or len(parts.scheme) == 1:
        path = unquote(parts.path) if parts.scheme == "file" else location
        return "file://" + os.path.realpath(path)  # a link to the same folder is the same folder
    return location.rstrip("/")


def same_place(catalog_location: str, path: str) -> bool:
    """Whether a location the catalog shows is `path`. The catalog shows a location made from a
    plain path as written (`file:/w%41/x`), one made from a URI percent-encoded (`file:/w%2541/x`):
    either reading counts."""
    ours = same_location(path)
    if same_location(catalog_location) == ours:
        return True
    parts = urlsplit(catalog_location)
    return parts.scheme == "file" and same_location(parts.path) == ours  # the path as written


def live_version(location: str | None, day: str) -> str | None:
    """The version folder's name (v=...) a day's location names; None for no partition, "" for a
    location that is not a version of the day (an older layout: then nothing of the day is tidied)."""
    if location is None:
        return None
    parent, _, name = location.rstrip("/").rpartition("/")
    return name if name.startswith(VERSION) and parent.endswith(f"/dt={day}") else ""


def tidy_day(
    fs, day_folder: str, live: str | None, grace_seconds: float, now: float | None = None, below: str | None = None
) -> list[str]:
    """Retire what of a day's folder is not live and older than the live version (everything when
    the day has no partition; with `below`, only versions older than that one), then remove what
    was retired at least `grace_seconds` ago and is still not live. `fs` is an fsspec file system;
    returns what was removed. A newer version that is not live yet (a publish under way) is left
    alone while the day has a live version. A live version loses its mark: its grace counts from
    when it stops being live again."""
    if live == "":
        return []
    now = time.time() if now is None else now
    try:
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(day_folder, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    marks = f"{day_folder}/{RETIRED}"
    retired = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in fs.ls(marks, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            try:
                if name == live:
                    fs.rm(entry)
                    continue
                try:
                    since = float(fs.cat_file(entry).decode().strip())
                except (ValueError, UnicodeDecodeError):
                    since = math.nan
                if not math.isfinite(since) or since > now:  # not a time of the past: it counts from now
                    fs.pipe_file(entry, f"{now:.3f}".encode())
                    since = now
            except OSError:  # a mark that is not a file, or not ours to change: its version stays
                continue
            retired[name] = since
    newest = live or below
    for name in names:
        if name in (RETIRED, live) or name in retired or (newest and name.startswith(VERSION) and name > newest):
            continue
        try:
            fs.makedirs(marks, exist_ok=True)
            fs.pipe_file(f"{marks}/{name}", f"{now:.3f}".encode())
        except OSError:  # (see above)
            continue
        retired[name] = now
    removed = []
    for name, since in sorted(retired.items()):
        if name == live or now - since < grace_seconds:
            continue
        try:
            if name in names:
                fs.rm(f"{day_folder}/{name}", recursive=True)
                removed.append(name)
            fs.rm(f"{marks}/{name}")
        except OSError:  # (a link, a permission): left, with its mark, for a later tidy or a human
            continue
    return removed


@contextlib.contextmanager
def thrift_sql(hostport: str, timeout_seconds: float = 30) -> Iterator[SqlRunner]:
    """Statements through a Spark Thrift Server (PyHive, plain SASL as the server's default
    hive.server2.authentication NONE expects); raises OSError-like transport errors when it does
    not answer within `timeout_seconds`."""
    from pyhive import hive
    import thrift_sasl
    from thrift.transport import TSocket

    host, port = hostport.rsplit(":", 1)
    sock = TSocket.TSocket(host, int(port))
    sock.setTimeout(timeout_seconds * 1000)  # a server that accepts and never answers
    transport = thrift_sasl.TSaslClientTransport(
        lambda: hive.get_installed_sasl(host=host, sasl_auth="PLAIN", username="shopflow", password="x"),
        "PLAIN",
        sock,
    )
    connection = hive.connect(thrift_transport=transport)
    try:
        cursor = connection.cursor()

        def run(statement: str) -> list:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

        yield run
    finally:
        # The work is done: a server that fails to close the session (Spark's Thrift server may
        # throw from Hive's function registry there) changes nothing of it.
        with contextlib.suppress(Exception):
            connection.close()
