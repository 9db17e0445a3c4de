"""The dbt project, as dagster-dbt sees it. No @dbt_assets here, so that scripts/setup can import it
to parse the project (target/manifest.json, with dagster-dbt's preparer) before the code location
loads.

In a checkout the project is `shopflow_dbt/` beside the package. An installed wheel carries a copy in
the package (`dbt-project/`, written by scripts/build-wheel), which dagster-dbt uses when the
checkout's folder is not there. Under `dagster dev`, an edited model is parsed again at load
(`prepare_if_dev`), so no manual manifest step is needed.
"""

import os
import sys
from pathlib import Path

from dagster_dbt import DbtProject

from shopflow_assets.settings import DBT_PROJECT_DIR

PACKAGED_PROJECT_DIR = Path(__file__).resolve().parent / "dbt-project"


def _prepare_when_developing(project: DbtProject) -> None:
    """Under `dagster dev` and `dg` (Dagster sets DAGSTER_IS_DEV_CLI), parse the project again so
    that an edited model shows at once. dagster-dbt runs `dbt` from PATH for that: put this
    interpreter's folder first, so a venv need not be activated."""
    if os.environ.get("DAGSTER_IS_DEV_CLI"):
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        project.prepare_if_dev()


shopflow_dbt_project = DbtProject(
    # an installed wheel has no checkout beside it: its copy of the project is inside the package
    project_dir=DBT_PROJECT_DIR if DBT_PROJECT_DIR.is_dir() else PACKAGED_PROJECT_DIR,
    packaged_project_dir=PACKAGED_PROJECT_DIR,
)
_prepare_when_developing(shopflow_dbt_project)


def dbt_executable() -> str:
    """This command beside the running interpreter (a venv need not be activated); else dbt."""
    bin_dir = Path(sys.executable).parent
    for name in ("shopflow-dbt", "dbt"):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    return "dbt"
