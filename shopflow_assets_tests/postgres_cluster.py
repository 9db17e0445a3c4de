"""A throwaway PostgreSQL cluster for the tests: Debian's initdb/pg_ctl, loopback only, trust auth;
and a DAGSTER_HOME holding the production instance file, deploy/dagster.yaml, that stores in it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEPLOY_INSTANCE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "dagster.yaml"


def production_dagster_home(home: Path) -> Path:
    """`home` made a DAGSTER_HOME as the README's production section makes one: a copy of
    deploy/dagster.yaml, whose storage is the Postgres at $DAGSTER_PG_URL."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY_INSTANCE_FILE, home / "dagster.yaml")
    return home


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (.ci/run does)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: run the cluster as Debian's `postgres` user then
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresCluster:
    directory: Path
    port: int

    def url(self, database: str = "dagster") -> str:
        """A DAGSTER_PG_URL of the contract's plain form (psycopg2 under SQLAlchemy 2.0)."""
        return f"postgresql://dagster@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres_user([pg_bin("pg_ctl"), "-D", str(self.directory / "data"), *args]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self.pg_ctl(
            "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1",
            "-l", str(self.directory / "postgres.log"), "-w", "start",
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")


def start_cluster() -> PostgresCluster:
    directory = Path(tempfile.mkdtemp(prefix="shopflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    subprocess.run(
        _as_postgres_user([pg_bin("initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", "dagster"]),
        check=True,
        capture_output=True,
    )
    cluster = PostgresCluster(directory, _free_port())
    cluster.start()
    subprocess.run(
        _as_postgres_user([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "dagster", "dagster"]),
        check=True,
        capture_output=True,
    )
    return cluster
