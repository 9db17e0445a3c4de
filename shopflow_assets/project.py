"""The dbt project, as dagster-dbt sees it. No @dbt_assets here, so that
`dagster-dbt project prepare-and-package --file shopflow_assets/project.py` can import it to parse
the project (target/manifest.json) before the code location loads."""

from dagster_dbt import DbtProject

from shopflow_assets.settings import DBT_PROJECT_DIR

shopflow_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
