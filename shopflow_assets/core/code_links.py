"""Links from each asset to its code: "View code" in the UI opens the ingest's Python or the dbt
model's SQL, locally, or on the git host when SHOPFLOW_GIT_URL says where the repository lives."""

from __future__ import annotations

from typing import Sequence

from dagster import AnchorBasedFilePathMapping, AssetsDefinition, link_code_references_to_git, with_source_code_references

from shopflow_assets.settings import REPO_ROOT, Settings


def linked_to_code(assets: Sequence[AssetsDefinition], settings: Settings) -> list[AssetsDefinition]:
    """`assets` with references to their source (a dbt asset's are its models' files, set by the
    translator), as links into the git repository if one is configured."""
    linked = with_source_code_references(list(assets))
    if settings.git_url:
        linked = link_code_references_to_git(
            linked,
            git_url=settings.git_url,
            git_branch=settings.git_branch,
            file_path_mapping=AnchorBasedFilePathMapping(local_file_anchor=REPO_ROOT, file_anchor_path_in_repository=""),
        )
    return list(linked)
