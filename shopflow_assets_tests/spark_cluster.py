"""A throwaway Spark standalone cluster for the tests: one master and one worker on 127.0.0.1, on
free ports (a developer's own cluster on 7077/8080/8081 is left alone), from the venv's pip PySpark;
on demand (`start_sql()`) also the Hive metastore in a local PostgreSQL, the Spark Thrift Server and
the Spark Connect server on the cluster's own warehouse folder.

The starting, waiting and stopping is `scripts/spark-cluster`'s (the one implementation, also what
users run); this module picks the ports, reads the master's JSON page, and checks for leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "spark-cluster"
START_TIMEOUT_SECONDS = 90
SERVER_APPLICATIONS = ("shopflow-thrift", "shopflow-connect")  # scripts/spark-cluster's, running for good


def spark_home() -> str:
    """The pip PySpark's folder: SPARK_HOME for the cluster and for spark-submit."""
    import pyspark

    return os.path.dirname(pyspark.__file__)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class SparkApplication:
    """One application as the master's JSON page lists it."""

    id: str  # app-20261130082600-0000
    name: str  # spark.app.name (spark-submit --name)
    state: str  # WAITING, RUNNING (activeapps); FINISHED, KILLED, FAILED (completedapps)
    active: bool  # listed in activeapps (else completedapps)
    raw: Mapping = field(repr=False, compare=False)  # the page's whole entry (cores, duration, ...)


@dataclass(frozen=True)
class SparkProcess:
    pid: int
    pgid: int
    cmdline: str


class SparkClusterError(RuntimeError):
    pass


@dataclass
class SparkCluster:
    directory: Path  # pid files, ports, master.log, worker.log, work/ (the applications' files)
    master_port: int
    web_port: int
    worker_web_port: int
    thrift_port: int
    thrift_ui_port: int
    metastore_port: int
    connect_port: int
    connect_ui_port: int
    process_groups: set[int] = field(default_factory=set, init=False, repr=False)  # the daemons' groups
    _stopped: bool = field(default=False, init=False, repr=False)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def warehouse(self) -> Path:
        """The warehouse the Thrift server serves (SHOPFLOW_SPARK_WAREHOUSE of dbt on this cluster)."""
        return self.directory / "warehouse"

    @property
    def thrift(self) -> str:
        """SHOPFLOW_SPARK_THRIFT of this cluster."""
        return f"127.0.0.1:{self.thrift_port}"

    @property
    def remote(self) -> str:
        """SHOPFLOW_SPARK_REMOTE of this cluster: its Spark Connect server."""
        return f"sc://127.0.0.1:{self.connect_port}"

    @property
    def connect_ui(self) -> str:
        return f"http://127.0.0.1:{self.connect_ui_port}"

    def start_sql(self) -> "SparkCluster":
        """Start the metastore, the Thrift server and the Connect server beside the master and the
        worker (once)."""
        self._script("start", env={**os.environ, "SHOPFLOW_SPARK_WAREHOUSE": str(self.warehouse)})
        return self

    def thrift_sql_executions(self) -> int:
        """How many SQL statements the Thrift server's application has run (its newest execution's
        id + 1, from its REST API): what dbt's build and tests ran there."""
        base = f"http://127.0.0.1:{self.thrift_ui_port}/api/v1/applications"
        with urllib.request.urlopen(base, timeout=10) as response:
            (app,) = json.load(response)
        with urllib.request.urlopen(f"{base}/{app['id']}/sql?details=false&length=100000", timeout=10) as response:
            executions = json.load(response)
        return max((e["id"] for e in executions), default=-1) + 1

    def connect_jobs(self, status: str = "running") -> list[dict]:
        """The Connect server application's Spark jobs in `status` (its REST API): the work of the
        ingests that run there."""
        base = f"{self.connect_ui}/api/v1/applications"
        with urllib.request.urlopen(base, timeout=10) as response:
            (app,) = json.load(response)
        with urllib.request.urlopen(f"{base}/{app['id']}/jobs?status={status}", timeout=10) as response:
            return json.load(response)

    # --- the master's JSON page ------------------------------------------------------------------
    def page(self) -> dict:
        """The master's JSON page (`/json/`): workers, aliveworkers, activeapps, completedapps, ..."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=10) as response:
            return json.load(response)

    def applications(self) -> list[SparkApplication]:
        """The page's activeapps, then its completedapps."""
        page = self.page()
        return [
            SparkApplication(id=a["id"], name=a["name"], state=a["state"], active=active, raw=a)
            for key, active in (("activeapps", True), ("completedapps", False))
            for a in page.get(key, [])
        ]

    def running_jobs(self) -> list[SparkApplication]:
        """The active applications but the cluster's own long-running servers (the Thrift server)."""
        return [a for a in self.applications() if a.active and a.name not in SERVER_APPLICATIONS]

    def alive_workers(self) -> int:
        return sum(1 for w in self.page().get("workers", []) if w.get("state") == "ALIVE")

    def wait_for_application(
        self, name: str, states: Iterable[str] = ("FINISHED",), timeout: float = 30
    ) -> SparkApplication:
        """The newest application called `name` once it is in one of `states` (the master records
        an application's end a moment after its driver exits)."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        while True:
            apps = [a for a in self.applications() if a.name == name]
            newest = max(apps, key=lambda a: a.id) if apps else None
            if newest is not None and newest.state in wanted:
                return newest
            if time.monotonic() > deadline:
                raise SparkClusterError(
                    f"after {timeout} s the master lists {name!r} as "
                    f"{newest.state if newest else 'absent'}, not {sorted(wanted)}: "
                    f"{[(a.name, a.id, a.state) for a in self.applications()]}"
                )
            time.sleep(0.5)

    # --- the processes ---------------------------------------------------------------------------
    def kill_worker(self) -> None:
        """SIGKILL the worker and its executors (a lost worker); returns once the master no longer
        lists it ALIVE."""
        self._script("stop-worker", "--kill")

    def start_worker(self) -> None:
        """Start the worker again; returns once the master lists it ALIVE."""
        self._script("start-worker")

    def processes(self) -> list[SparkProcess]:
        """This cluster's processes still running: the master's and the worker's process groups
        (executors and their Python workers included), and anything whose command line names the
        cluster's folder. Read from /proc, what ps reads."""
        self._remember_groups()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            pgid = int(stat.rsplit(")", 1)[1].split()[2])
            spark_like = "org.apache.spark" in cmdline or "pyspark" in cmdline
            if (pgid in self.process_groups and spark_like) or str(self.directory) in cmdline:
                found.append(SparkProcess(int(entry.name), pgid, cmdline))
        return found

    def stop(self) -> None:
        """Stop the worker and the master with their children; raises if any process remains."""
        if self._stopped:
            return
        self._script("stop")
        self._stopped = True
        metastore = self.directory / "metastore-pg"
        if metastore.is_symlink():  # root's metastore lives in /tmp, where the postgres user can reach it
            shutil.rmtree(metastore.resolve(), ignore_errors=True)
        leftovers = self.processes()
        if leftovers:
            for p in leftovers:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise SparkClusterError(
                "processes left after scripts/spark-cluster stop (now SIGKILLed): "
                + "; ".join(f"{p.pid}: {p.cmdline[:200]}" for p in leftovers)
            )

    # --- spark-submit ----------------------------------------------------------------------------
    def submit(
        self,
        script: str | Path,
        *args: str,
        name: str,
        conf: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess:
        """`spark-submit --master <master_url>` of a PySpark script, in this venv's Python (driver and
        executors alike), driver on 127.0.0.1; never raises on failure (check returncode)."""
        settings = {
            "spark.cores.max": "1",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            **(conf or {}),
        }
        home = spark_home()
        command = [os.path.join(home, "bin", "spark-submit"), "--master", self.master_url, "--name", name]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        command += [str(script), *args]
        env = dict(
            os.environ,
            SPARK_HOME=home,
            SPARK_LOCAL_IP="127.0.0.1",
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
        )
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)

    # --- internals -------------------------------------------------------------------------------
    def _remember_groups(self) -> None:
        # each daemon leads its own process group: the pid in its pid file is the group's id
        for name in ("master", "worker", "thrift", "connect"):
            try:
                self.process_groups.add(int((self.directory / f"{name}.pid").read_text()))
            except (OSError, ValueError):
                pass

    def _script(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        result = subprocess.run(
            [str(SCRIPT), *args, "--dir", str(self.directory)],
            env=dict(env or os.environ, SPARK_CLUSTER_PYTHON=sys.executable),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_SECONDS + 60,
        )
        self._remember_groups()
        if result.returncode != 0:
            raise SparkClusterError(
                f"scripts/spark-cluster {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr.strip()}\n{result.stdout.strip()}".strip()
            )
        return result.stdout


def start_spark_cluster(
    directory: Path, *, timeout: int = START_TIMEOUT_SECONDS, worker_cores: int = 5, worker_memory: str = "7g"
) -> SparkCluster:
    """Start a master and one worker on free ports, their files in `directory`; returns once the
    master lists the worker ALIVE. Raises SparkClusterError with the logs' tail otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        ports = free_ports(8)
        cluster = SparkCluster(directory.resolve(), *ports)
        env = {
            **os.environ,
            "SPARK_MASTER_PORT": str(cluster.master_port),
            "SPARK_MASTER_WEBUI_PORT": str(cluster.web_port),
            "SPARK_WORKER_WEBUI_PORT": str(cluster.worker_web_port),
            "SPARK_THRIFT_PORT": str(cluster.thrift_port),
            "SPARK_THRIFT_UI_PORT": str(cluster.thrift_ui_port),
            "SPARK_METASTORE_PORT": str(cluster.metastore_port),
            "SPARK_CONNECT_PORT": str(cluster.connect_port),
            "SPARK_CONNECT_UI_PORT": str(cluster.connect_ui_port),
            "SPARK_WORKER_CORES": str(worker_cores),
            "SPARK_WORKER_MEMORY": worker_memory,
            "SPARK_CLUSTER_TIMEOUT": str(timeout),
        }
        try:
            cluster._script("start", "--without-sql", env=env)
            return cluster
        except SparkClusterError as error:
            # a free port taken between the pick and the start: pick again
            if attempt < 2 and ("in use" in str(error) or "BindException" in str(error)):
                continue
            raise
    raise AssertionError("unreachable")
