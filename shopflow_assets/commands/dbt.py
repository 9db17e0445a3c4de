"""`shopflow-dbt`, the dbt executable the dbt assets run: dbt's own command line, except that it
answers `--version` without starting dbt.

dagster-dbt asks its dbt executable for the version (`dbt --version`) once per dbt step, to tell dbt
Core from dbt Fusion. dbt answers by importing its whole command line first, a noticeable part of a
day's latency (benchmarks/latency.py prints it). This answers that one question from the installed
dbt-core package, in dbt's own words (the version is the same), and hands every other command,
unchanged, to dbt's entry point. DbtCliResource takes any executable (`dbt_executable`), so no part
of dagster-dbt is replaced.
"""

from __future__ import annotations

import sys
from importlib.metadata import version


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        print(f"Core:\n  - installed: {version('dbt-core')}")
        return
    from dbt.cli.main import cli

    cli()
