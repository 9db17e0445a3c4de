"""The code location loads fast: importing it touches no landing file and runs no dbt command. The
two instance files, dagster.yaml (local) and deploy/dagster.yaml (production), differ only by storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy
import yaml
from dagster import AssetKey, DagsterInstance, QueuedRunCoordinator

from shopflow_assets.definitions import defs
from shopflow_assets.settings import Settings, SettingsError

from .conftest import REPO_ROOT

# Python's audit hooks see every open, directory listing and subprocess of the import.
PROBE = r"""
import json, sys
events = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "subprocess.Popen", "os.exec", "os.posix_spawn"):
        events.append([event, " ".join(map(str, args[:2])) if args else ""])
sys.addaudithook(hook)
import shopflow_assets.definitions
print(json.dumps(events))
"""


def test_import_touches_no_landing_file_and_runs_no_dbt(tmp_path):
    landing = tmp_path / "landing"
    (landing / "orders" / "dt=2024-03-01").mkdir(parents=True)
    (landing / "orders" / "dt=2024-03-01" / "_SUCCESS").touch()
    env = dict(os.environ, SHOPFLOW_LANDING_DIR=str(landing), SHOPFLOW_WAREHOUSE=str(tmp_path / "w.duckdb"))

    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    events = json.loads(out.strip().splitlines()[-1])

    assert not [e for e in events if str(landing) in e[1] or str(tmp_path) in e[1]]
    # (dagster's vendored croniter runs `file` on the interpreter; no dbt, though)
    assert not [e for e in events if e[0] in ("subprocess.Popen", "os.exec", "os.posix_spawn") and "dbt" in e[1]]
    assert not (tmp_path / "w.duckdb").exists()


def test_the_contract_assets_and_partitions():
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    assert {AssetKey(["raw", "orders"]), AssetKey("fact_sales"), AssetKey("daily_revenue")} <= keys
    for key in (AssetKey(["raw", "orders"]), AssetKey("fact_sales"), AssetKey("daily_revenue")):
        partitions = graph.get(key).partitions_def
        assert partitions.get_first_partition_key() == "2024-01-01"
        assert partitions.timezone == "UTC"
    assert graph.get(AssetKey("fact_sales")).parent_keys == {AssetKey(["raw", "orders"])}
    assert graph.get(AssetKey("daily_revenue")).parent_keys == {AssetKey("fact_sales")}


def test_start_date_comes_from_the_environment():
    script = "from shopflow_assets.definitions import defs; from dagster import AssetKey; print(defs.resolve_asset_graph().get(AssetKey('fact_sales')).partitions_def.get_first_partition_key())"
    env = dict(os.environ, SHOPFLOW_START_DATE="2025-06-01")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2025-06-01"


def test_settings_defaults_and_clear_errors():
    settings = Settings.from_env({})
    assert settings.landing_dir == str(REPO_ROOT / "data" / "landing")
    assert settings.warehouse == REPO_ROOT / "data" / "shopflow.duckdb"
    assert str(settings.start_date) == "2024-01-01"
    assert (settings.sla_timezone, settings.slack_channel, settings.ui_url) == ("UTC", "#shopflow-alerts", "http://127.0.0.1:3000")
    assert settings.slack_bot_token is None and settings.pg_url is None
    assert Settings.from_env({"SHOPFLOW_WAREHOUSE": "/abs/w.duckdb"}).warehouse.as_posix() == "/abs/w.duckdb"
    assert settings.max_rejected_share == 0.5
    assert Settings.from_env({"SHOPFLOW_MAX_REJECTED_SHARE": "0.1"}).max_rejected_share == 0.1
    # a Spark warehouse may be a URI of any Hadoop file system, kept as it is; a path is resolved
    for uri in ("hdfs://nn:8020/warehouse", "s3a://bucket/warehouse", "file:///data/warehouse"):
        assert Settings.from_env({"SHOPFLOW_SPARK_WAREHOUSE": uri}).spark_warehouse == uri
    assert settings.spark_warehouse == str(REPO_ROOT / "data" / "spark-warehouse")
    assert settings.spark_thrift == "127.0.0.1:10000"
    assert Settings.from_env({"SHOPFLOW_SPARK_THRIFT": "spark-thrift.internal:10001"}).spark_thrift == "spark-thrift.internal:10001"
    # DuckDB's landing zone is a local folder, written as a path or a file:// URI
    for landing in ("/data/landing", "file:///data/landing", "file://localhost/data/landing"):
        assert Settings.from_env({"SHOPFLOW_LANDING_DIR": landing}).landing_dir == "/data/landing"
    assert Settings.from_env({"SHOPFLOW_LANDING_DIR": "file:///data/with%20space"}).landing_dir == "/data/with space"
    # Spark's may be a URI of a Hadoop file system, listed through fsspec: kept as written (file://
    # decoded, since Hadoop and fsspec both take a path as it is)
    spark = {"SHOPFLOW_ENGINE": "spark"}
    for uri in ("hdfs://nn:8020/landing", "hdfs:///landing", "s3a://bucket/landing", "file:///data/landing"):
        assert Settings.from_env({**spark, "SHOPFLOW_LANDING_DIR": uri + "/"}).landing_dir == uri
    assert Settings.from_env({**spark, "SHOPFLOW_LANDING_DIR": "file://localhost/data/with%20space"}).landing_dir == "file:///data/with space"
    assert Settings.from_env({**spark, "SHOPFLOW_LANDING_DIR": "/data/landing"}).landing_dir == "/data/landing"
    assert settings.spark_version_grace_minutes == 60
    assert Settings.from_env({"SHOPFLOW_SPARK_VERSION_GRACE_MINUTES": "0"}).spark_version_grace_minutes == 0
    # no Connect URL: the ingest is spark-submitted to SHOPFLOW_SPARK_MASTER
    assert settings.spark_remote is None
    for remote in ("sc://spark-connect.internal:15002", "sc://10.0.0.7", "sc://h:15003/"):
        assert Settings.from_env({"SHOPFLOW_SPARK_REMOTE": remote}).spark_remote == remote.rstrip("/")

    for env, words in (
        ({"SHOPFLOW_START_DATE": "01/02/2024"}, "SHOPFLOW_START_DATE='01/02/2024' is not a date"),
        ({"SHOPFLOW_SLA_TIMEZONE": "Mars/Olympus"}, "SHOPFLOW_SLA_TIMEZONE='Mars/Olympus' is not an IANA timezone"),
        ({"SHOPFLOW_MAX_REJECTED_SHARE": "1.5"}, "SHOPFLOW_MAX_REJECTED_SHARE='1.5' is not a share between 0 and 1"),
        ({"SHOPFLOW_MAX_REJECTED_SHARE": "nan"}, "SHOPFLOW_MAX_REJECTED_SHARE='nan' is not a share between 0 and 1"),
        ({"SHOPFLOW_MAX_REJECTED_SHARE": "half"}, "SHOPFLOW_MAX_REJECTED_SHARE='half' is not a share between 0 and 1"),
        # dbt's profile splits it at the last ':': a URL, a missing or bad port would reach dbt as junk
        *(
            ({"SHOPFLOW_SPARK_THRIFT": value}, f"SHOPFLOW_SPARK_THRIFT={value!r} is not host:port")
            for value in ("thrift://h:10000", "h", "h:", ":10000", "h:0", "h:65536", "h :1", "-h:1", "h;x:1", "[::1]:10000")
        ),
        *(
            ({"SHOPFLOW_LANDING_DIR": value}, f"SHOPFLOW_LANDING_DIR={value!r}: the DuckDB engine reads a local folder")
            for value in ("hdfs://nn:8020/landing", "s3a://bucket/landing", "http://host/landing")
        ),
        *(
            ({"SHOPFLOW_LANDING_DIR": value, **engine}, f"SHOPFLOW_LANDING_DIR={value!r}: a file:// URI names a folder of this machine")
            for value in ("file://otherhost/landing",)
            for engine in ({}, {"SHOPFLOW_ENGINE": "spark"})
        ),
        ({"SHOPFLOW_LANDING_DIR": "http://host/landing", "SHOPFLOW_ENGINE": "spark"}, "the Spark engine reads a landing zone on file://, hdfs://"),
        ({"SHOPFLOW_LANDING_DIR": "s3a:///landing", "SHOPFLOW_ENGINE": "spark"}, "name the bucket or container"),
        # a grace that is no time would remove a retired version at once, or never
        *(
            ({"SHOPFLOW_SPARK_VERSION_GRACE_MINUTES": value}, f"SHOPFLOW_SPARK_VERSION_GRACE_MINUTES={value!r} is not a non-negative float")
            for value in ("nan", "inf", "-1", "1e400", "an hour")
        ),
        # a token in the URL's parameters would show in the UI's settings; a path is no server
        *(
            ({"SHOPFLOW_SPARK_REMOTE": value}, f"SHOPFLOW_SPARK_REMOTE={value!r} is not a Spark Connect URL")
            for value in ("h:15002", "spark://h:7077", "sc://", "sc://h:0", "sc://h:70000", "sc://h:15002/;token=secret",
                          "sc://h/db", "sc://-h:1", "sc://h h:1", "sc://user@h:1")
        ),
    ):
        try:
            Settings.from_env(env)
        except SettingsError as error:
            assert words in str(error)
        else:
            raise AssertionError(f"{env} was accepted")


def test_token_is_not_in_the_settings_repr():
    settings = Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-secret", "DAGSTER_PG_URL": "postgresql://u:pw@h/db"})
    assert "xoxb-secret" not in repr(settings) and "pw" not in repr(settings)


def instance_file(path) -> dict:
    return yaml.safe_load((REPO_ROOT / path).read_text())


def test_the_production_instance_file_is_the_local_one_plus_postgres_storage():
    local, production = instance_file("dagster.yaml"), instance_file("deploy/dagster.yaml")
    assert "storage" not in local and "instance_class" not in local  # Dagster's embedded storage
    # Dagster's own postgres storage, its URL read from the environment by Dagster (`env:`)
    assert production.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert production == local, "deploy/dagster.yaml and dagster.yaml differ in more than `storage`"


def test_the_local_instance_file_makes_an_embedded_instance(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://u:pw@127.0.0.1:1/db")  # read by deploy/ only
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance) is DagsterInstance
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled


@pytest.mark.parametrize("url", ["postgresql://u:pw@h:5432/db", "postgresql+psycopg2://u:pw@h:5432/db"])
def test_both_postgres_url_forms_use_psycopg2(url):
    """dagster-postgres works on psycopg2 only (on psycopg 3 the webserver's connections close as
    they open): the contract's plain postgresql:// must keep meaning psycopg2 (SQLAlchemy 2.1 would
    make it psycopg 3; pyproject.toml keeps 2.0)."""
    assert sqlalchemy.engine.make_url(url).get_dialect().driver == "psycopg2"


@pytest.mark.parametrize("engine, resource", [("duckdb", "DuckDBWarehouse"), ("spark", "SparkWarehouse")])
def test_the_engine_swaps_the_warehouse_resource_and_never_imports_pyspark(engine, resource):
    """SHOPFLOW_ENGINE picks the warehouse resource; the assets and their keys stay the same, and
    the code location loads without pyspark (the Spark engine launches jobs, it imports no Spark)."""
    script = (
        "import sys, shopflow_assets.definitions as d\n"
        "w = d.defs.resources['warehouse']\n"
        "keys = sorted(k.to_user_string() for k in d.defs.resolve_asset_graph().get_all_asset_keys())\n"
        "print(type(w).__name__, w.dbt_target, 'pyspark' in sys.modules, keys)\n"
    )
    env = {**os.environ, "SHOPFLOW_ENGINE": engine}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    name, target, imported, keys = out.split(" ", 3)
    assert (name, target, imported) == (resource, engine, "False")
    assert keys.strip() == "['daily_revenue', 'fact_sales', 'raw/orders']"


def test_the_raw_schema_is_written_once_and_the_dbt_sources_and_spark_tables_follow_it():
    """contract/raw_schema.py renders DuckDB's DDL, the Spark job's columns and the asset's TableSchema; what
    dbt declares of raw.orders (its sources YAML) must say the same."""
    import yaml

    from shopflow_assets.contract import raw_schema
    from .conftest import raw_orders

    (source,) = yaml.safe_load((REPO_ROOT / "shopflow_dbt/models/staging/_sources.yml").read_text())["sources"]
    (orders,) = [t for t in source["tables"] if t["name"] == "orders"]
    declared = [(c["name"], c["data_type"]) for c in orders["columns"]]
    assert declared == [
        (c.name, raw_schema.TYPES[c.type][0].lower().replace(", ", ",")) for c in raw_schema.RAW_ORDERS
    ]
    schema = raw_orders.specs_by_key[raw_orders.key].metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns] == [(c.name, raw_schema.TYPES[c.type][2]) for c in raw_schema.RAW_ORDERS]
