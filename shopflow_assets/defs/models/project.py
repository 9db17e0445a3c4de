"""The dbt project, as dagster-dbt sees it. No @dbt_assets here, so that
`dagster-dbt project prepare-and-package --file shopflow_assets/defs/models/project.py` can import it to parse
the project (target/manifest.json) before the code location loads."""

import sys
from pathlib import Path

from dagster_dbt import DbtProject

from shopflow_assets.settings import DBT_PROJECT_DIR

shopflow_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """This command beside the running interpreter (a venv need not be activated); else dbt."""
    bin_dir = Path(sys.executable).parent
    for name in ("shopflow-dbt", "dbt"):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    return "dbt"
