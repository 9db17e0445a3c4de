"""The package installs like one: the wheel (scripts/build-wheel, not an editable install) in a fresh
virtualenv outside the checkout is a working code location that materializes a day, carries the dbt
project and the Spark job, and leaves the tests out."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb
import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_installed_in_a_fresh_venv_outside_the_checkout_materializes_a_day(tmp_path):
    run(["./scripts/build-wheel"], cwd=REPO_ROOT)
    (wheel,) = sorted((REPO_ROOT / "dist").glob("shopflow_assets-*.whl"), key=lambda p: p.stat().st_mtime)[-1:]
    names = zipfile.ZipFile(wheel).namelist()
    assert "shopflow_jobs/spark_ingest.py" in names
    assert "shopflow_assets/defs/models/dbt-project/dbt_project.yml" in names
    assert "shopflow_assets/defs/models/dbt-project/target/manifest.json" in names
    assert not [n for n in names if n.startswith("shopflow_assets_tests")]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    # the versions the suite runs with; pip's cache holds them from ./scripts/setup
    run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-c", str(REPO_ROOT / "constraints.txt"), str(wheel)])

    elsewhere = tmp_path / "elsewhere"  # no checkout here: nothing can be imported from it
    elsewhere.mkdir()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPFLOW_", "DAGSTER_", "SLACK_", "PYTHON"))}
    env.update(
        SHOPFLOW_LANDING_DIR=str(tmp_path / "landing"),
        SHOPFLOW_WAREHOUSE=str(tmp_path / "warehouse.duckdb"),
        DAGSTER_HOME=str(home),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
    )
    where = run([str(venv / "bin/python"), "-c", "import shopflow_assets; print(shopflow_assets.__file__)"], cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(venv))
    run([str(venv / "bin/shopflow-sample-data"), "--start", "2024-01-01", "--days", "1"], cwd=elsewhere, env=env)
    run(
        [str(venv / "bin/dagster"), "asset", "materialize", "-m", "shopflow_assets.definitions",
         "--select", "raw/orders*", "--partition", "2024-01-01"],
        cwd=elsewhere, env=env,
    )
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        ((day, orders),) = con.execute("SELECT dt::VARCHAR, orders FROM analytics.daily_revenue").fetchall()
    assert day == "2024-01-01" and orders > 0
    # dbt ran from the copy inside the installed package, not from the checkout
    assert list((venv / "lib").glob("python3*/site-packages/shopflow_assets/defs/models/dbt-project/target/runs/*"))
