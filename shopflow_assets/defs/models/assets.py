"""The dbt models as Dagster assets: fact_sales and daily_revenue, partitioned like raw/orders."""


import contextlib
import datetime as dt
import os
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Mapping

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Failure,
    FreshnessPolicy,
    MetadataValue,
    Output,
    RetryPolicy,
)
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    dbt_assets,
)
from dagster_dbt.errors import DagsterDbtCliRuntimeError

from shopflow_assets.contract.asset_keys import FACT_SALES
from shopflow_assets.contract.spark_layout import METASTORE_UNREACHABLE
from shopflow_assets.core.retries import not_retried_when_cancelled
from shopflow_assets.defs.alerts.on_time import ON_TIME_CHECK, on_time_evaluation
from shopflow_assets.defs.ingest.checks import held_back_days
from shopflow_assets.core.run_window import WAREHOUSE_POOL, days_of, rerun_command
from shopflow_assets.defs.models.automation import ANY_DAY_EAGER
from shopflow_assets.defs.models.project import shopflow_dbt_project
from shopflow_assets.engines import Warehouse

# The executive dashboard's tables: yesterday's partition by 08:00 (see defs/alerts/lateness.py).
FRESH_BY_0800 = {"fact_sales", "daily_revenue"}

# A dbt failure is transient only when DuckDB could not get the file or the Spark cluster was out of
# reach; anything else (a compilation error, a failed test) fails the same way on every attempt.
TRANSIENT_DBT_ERRORS = (
    "Could not set lock",
    "Conflicting lock",
    "IO Error",
    "All masters are unresponsive",
    "Connection refused",
    "Master removed our application",
    *METASTORE_UNREACHABLE,  # the Thrift server's catalog database does not answer
)

# Each dbt invocation writes its artifacts to target/runs/<run>; only the newest are kept, and
# none younger than an hour: another run's dbt may still be writing there.
KEEP_INVOCATION_TARGETS = 10
KEEP_INVOCATION_TARGETS_SECONDS = 3600

# dbt's saved parse, in a target folder (https://docs.getdbt.com/reference/parsing#partial-parsing)
PARTIAL_PARSE_FILE = "partial_parse.msgpack"


class ShopflowDbtTranslator(DagsterDbtTranslator):
    """dbt nodes -> assets: model names are the asset keys (fact_sales, daily_revenue); the
    source raw.orders maps to raw/orders through its `meta.dagster.asset_key`. The dashboard's
    tables carry the 08:00 freshness policy."""

    def __init__(
        self, freshness_policy: FreshnessPolicy, engine: str, settings: DagsterDbtTranslatorSettings | None = None
    ):
        super().__init__(settings)
        self.freshness_policy = freshness_policy
        self.engine = engine

    def get_asset_spec(self, manifest, unique_id, project):
        spec = super().get_asset_spec(manifest, unique_id, project)
        if spec.key.path[-1] in FRESH_BY_0800:
            spec = spec.replace_attributes(freshness_policy=self.freshness_policy)
        # The engine the code location is bound to, not the adapter the manifest was parsed with.
        if "dbt" in spec.kinds:
            spec = spec.replace_attributes(kinds={"dbt", self.engine}).merge_attributes(
                metadata={"dagster/storage_kind": self.engine}
            )
        return spec

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]):
        # every dbt model builds when its upstream day updates (see defs/models/automation.py)
        return ANY_DAY_EAGER

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "revenue"


def dbt_environment(days: list[dt.date], warehouse: Warehouse) -> dict[str, str]:
    """What dbt needs from the run, as environment variables: the half-open window
    [SHOPFLOW_DBT_MIN_DATE, SHOPFLOW_DBT_MAX_DATE) (macros/partition_window.sql) and where the
    engine's warehouse is (profiles.yml). Not --vars: dbt discards its saved parse whenever --vars
    change, and re-parsing the project cost more than running the day's SQL."""
    return {
        "SHOPFLOW_DBT_MIN_DATE": days[0].isoformat(),
        "SHOPFLOW_DBT_MAX_DATE": (days[-1] + dt.timedelta(days=1)).isoformat(),
        **warehouse.dbt_env(),
    }


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` set, then as it was. DbtCliResource.cli() hands dbt a copy of
    os.environ and takes no environment of its own; the run's steps run one at a time in its
    process (in_process_executor), so nothing else sees the change."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def keep_partial_parse(invocation_target: Path, project_target: Path) -> None:
    """Make dbt's newest saved parse the one the next invocation starts from.

    dagster-dbt copies <project>/target/partial_parse.msgpack into each invocation's own target
    folder, and dbt writes its parse back there only. dbt discards a saved parse made with another
    profile (its hash covers the connection's values: warehouse path, memory limit, Spark master),
    so with the one written at setup every run whose settings differ from the setup's would parse
    the project from scratch. Copied back (atomically: a run that starts meanwhile reads the old or
    the new file, never half of one), only the first run after a settings change parses in full."""
    fresh = invocation_target / PARTIAL_PARSE_FILE
    shared = project_target / PARTIAL_PARSE_FILE
    try:
        content = fresh.read_bytes()
        if shared.exists() and shared.read_bytes() == content:
            return
        with tempfile.NamedTemporaryFile(dir=project_target, prefix=".partial_parse.", delete=False) as tmp:
            tmp.write(content)
        os.replace(tmp.name, shared)
    except OSError:  # no parse saved (dbt failed before), or the folder is read-only: parse next time
        pass


def build_dbt_models(
    *,
    partitions_def: DailyPartitionsDefinition,
    retry_policy: RetryPolicy,
    freshness_policy: FreshnessPolicy,
    sla_timezone: str,
    engine: str,
) -> AssetsDefinition:
    """The dbt models as assets, with the code location's partitions, retries and 08:00 policy."""

    @dbt_assets(
        manifest=shopflow_dbt_project.manifest_path,
        project=shopflow_dbt_project,
        name="shopflow_dbt_models",
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        dagster_dbt_translator=ShopflowDbtTranslator(
            freshness_policy,
            engine,
            # "View code" opens the model's SQL
            settings=DagsterDbtTranslatorSettings(enable_asset_checks=True, enable_code_references=True),
        ),
        pool=WAREHOUSE_POOL,
        retry_policy=retry_policy,
    )
    def shopflow_dbt_models(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse) -> Iterator[Any]:
        yield from dbt_build(context, dbt, warehouse, sla_timezone)

    return shopflow_dbt_models


def dbt_build(
    context: AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse, sla_timezone: str
) -> Iterator[Any]:
    """dbt build for the run's window, then each day's own numbers on its materializations, and
    whether each day of fact_sales was on time."""
    # A backfill of a range is one run, where context.partition_key raises: use the time window.
    days = days_of(context.partition_time_window)
    held = held_back_days(context.instance, [d.isoformat() for d in days], warehouse.max_rejected_share)
    if held:
        why = (
            f"raw/orders' rejected_share check failed for {', '.join(held[:10])}: more than "
            f"SHOPFLOW_MAX_REJECTED_SHARE={warehouse.max_rejected_share:g} of the day's lines were rejected"
        )
        if len(days) == 1:
            context.log.warning(
                f"{why}. fact_sales and daily_revenue are not built for it: re-export the day, or raise "
                "SHOPFLOW_MAX_REJECTED_SHARE and re-run raw/orders."
            )
            return
        context.log.warning(f"{why}. A range is built whole: built all the same.")
    warehouse.check_dbt_target()
    env = dbt_environment(days, warehouse)
    context.log.info(f"dbt build for [{env['SHOPFLOW_DBT_MIN_DATE']}, {env['SHOPFLOW_DBT_MAX_DATE']})")
    # dagster-dbt runs dbt in the assets' project (not the resource's project_dir, if they differ)
    project_target = Path(shopflow_dbt_project.project_dir) / "target"
    runs_dir = project_target / "runs"
    events = []
    # the environment stays set while the events stream: dagster-dbt's in-process adapter (for
    # the column metadata) reads profiles.yml, which reads it
    with environment(env):
        invocation = dbt.cli(
            ["build", "--target", warehouse.dbt_target],
            context=context,
            target_path=runs_dir / context.run_id,
        )
        try:
            # Held back until dbt has exited: then the warehouse is free to count what it built.
            with not_retried_when_cancelled(f"dbt build for {days[0]}..{days[-1]}"):
                events.extend(with_column_metadata(invocation, warehouse))
        except DagsterDbtCliRuntimeError as error:
            # what did build is recorded all the same, with its days' numbers
            failure = classify_dbt_failure(error, invocation, days)
        else:
            failure = None
        finally:
            keep_partial_parse(runs_dir / context.run_id, project_target)
            prune_invocation_targets(runs_dir)
    outputs = [e for e in events if isinstance(e, Output)]
    if outputs:
        built = [e.output_name for e in outputs]
        try:  # housekeeping: what is not removed now is removed after a later build
            warehouse.after_dbt_build([m for m in built if m in FAILED_TEST_MODELS], days)
        except Exception as error:  # noqa: BLE001
            context.log.warning(f"Retired versions of the built days were not removed: {error}")
        try:
            stats = built_stats(warehouse, built, days, failed_tests_by_day(context, dbt, invocation, warehouse, days))
        except Exception as error:  # noqa: BLE001 - a failed build may have left a table missing
            if failure is None:
                raise
            context.log.warning(f"The built days' numbers could not be read: {error}")
            stats = {}
        # Each day's own numbers on its own materialization (a range is one run: see the README).
        for event in outputs:
            for day, metadata in stats.get(event.output_name, {}).items():
                key = context.asset_key_for_output(event.output_name)
                context.add_asset_metadata(metadata, asset_key=key, partition_key=day)
    # the materializations first, then the dbt tests' check results: the tables are built and the
    # dashboard's READY can go out without waiting for some thirty check events to be written
    yield from outputs
    # the on-time check's own step reports the days when the run includes it; else it is done here
    built_fact_sales = any(context.asset_key_for_output(e.output_name) == FACT_SALES for e in outputs)
    # (a failed build skips the check's step: then here too)
    if built_fact_sales and (failure is not None or not runs_in_this_run(context, ON_TIME_CHECK)):
        now = dt.datetime.now(dt.timezone.utc)
        for day in days:
            yield on_time_evaluation(context.instance, day, timezone=sla_timezone, now=now, building_now=True)
    yield from (e for e in events if not isinstance(e, Output))
    if failure is not None:
        raise failure


def runs_in_this_run(context: AssetExecutionContext, check: AssetCheckKey) -> bool:
    """Whether the run executes `check` in a step of its own (its job has it, and the run's
    selection, if any, includes it)."""
    selected = context.run.asset_check_selection
    in_job = check in context.op_execution_context.job_def.asset_layer.asset_graph.asset_check_keys
    return in_job and (selected is None or check in selected)


def failed_tests_by_day(
    context: AssetExecutionContext, dbt: DbtCliResource, invocation, warehouse: Warehouse, days: list[dt.date]
) -> dict[str, dict[str, int]]:
    """model -> day -> how many of the model's dbt tests failed (or errored) on that day.

    The build's tests read its whole window: in a run of one day, or when none failed, that is
    each day's count. Otherwise only the failed tests run again, one day at a time."""
    nodes = invocation.manifest["nodes"]
    failed = failed_tests(invocation, nodes)
    counts = {model: {str(day): 0 for day in days} for model in FAILED_TEST_MODELS}
    if len(days) == 1 or not failed:
        for model, names in failed.items():
            counts.setdefault(model, {})[str(days[0])] = len(names) if len(days) == 1 else 0
        return counts
    names = sorted({name for names in failed.values() for name in names})
    runs_dir = Path(shopflow_dbt_project.project_dir) / "target" / "runs"
    for day in days:
        with environment(dbt_environment([day], warehouse)):
            retest = dbt.cli(
                # one --select value, names separated by spaces (dagster-dbt keeps one --select)
                ["test", "--select", " ".join(names), "--target", warehouse.dbt_target],
                target_path=runs_dir / f"{context.run_id}-tests-{day}",
                raise_on_error=False,
            ).wait()
        for model, names_failed in failed_tests(retest, nodes).items():
            counts.setdefault(model, {})[str(day)] = len(names_failed)
    return counts


# the models whose materializations carry a count of failed dbt tests
FAILED_TEST_MODELS = ("fact_sales", "daily_revenue")


def failed_tests(invocation, nodes: Mapping[str, Any]) -> dict[str, list[str]]:
    """model name -> its dbt tests that failed or errored in `invocation` (run_results.json);
    `nodes`: the manifest's."""
    try:
        results = invocation.get_artifact("run_results.json")["results"]
    except Exception:  # no run_results: dbt failed before running anything
        return {}
    failed: dict[str, list[str]] = {}
    for result in results:
        node = nodes.get(result["unique_id"], {})
        if node.get("resource_type") != "test" or result.get("status") not in ("fail", "error"):
            continue
        failed.setdefault(tested_model(node, nodes), []).append(node["name"])
    return failed


def tested_model(test: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
    """The model a dbt test is a check of in Dagster: its `meta.dagster.ref` (a singular test that
    reads several models), else the model it is attached to, else the first it reads."""
    ref = ((test.get("config") or {}).get("meta") or {}).get("dagster", {}).get("ref") or {}
    if ref.get("name"):
        return ref["name"]
    model = test.get("attached_node") or next(iter(test.get("depends_on", {}).get("nodes", [])), "")
    return nodes.get(model, {}).get("name", model)


def with_column_metadata(invocation, warehouse: Warehouse) -> Iterator[Any]:
    """The invocation's events; on DuckDB with each model's column types and column lineage.

    dagster-dbt reads them through an in-process dbt adapter once dbt has exited (DuckDB admits
    one writer). Its connection is closed at the end: the warehouse file must be free for the
    next process that writes it. On Spark the adapter would start a Spark driver in the
    orchestrator, so there the columns come from the dbt YAML (no lineage)."""
    if warehouse.engine != "duckdb":
        yield from invocation.stream()
        return
    try:
        for event in invocation.stream().fetch_column_metadata(with_column_lineage=True):
            yield with_lineage_table(event)
    finally:
        adapter = invocation.adapter
        if adapter is not None:
            adapter.cleanup_connections()
            # dbt-duckdb keeps one database handle per process: let it go
            close_all = getattr(adapter.connections, "close_all_connections", None)
            if close_all is not None:
                close_all()


def with_lineage_table(event: Any) -> Any:
    """The event, its column lineage also as a table the open-source UI shows (it draws
    dagster/column_lineage only in Dagster+)."""
    lineage = event.metadata.get("dagster/column_lineage") if isinstance(event, Output) else None
    if lineage is None:
        return event
    rows = [
        f"| `{column}` | {', '.join(f'`{d.asset_key.to_user_string()}.{d.column_name}`' for d in deps) or '(no upstream column)'} |"
        for column, deps in lineage.value.deps_by_column.items()
    ]
    table = "\n".join(["| column | comes from |", "| --- | --- |", *rows])
    return event.with_metadata({**event.metadata, "column_lineage": MetadataValue.md(table)})


def built_stats(
    warehouse: Warehouse, models: list[str], days: list, failed_tests: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model built and day of the window, its rows, net revenue and failed dbt tests, as
    metadata."""
    empty = {str(d): (0, Decimal("0")) for d in days}
    stats = {}
    with warehouse.read(days) as con:
        for model in (m for m in models if m in FAILED_TEST_MODELS):  # the marts: names of ours
            rows = con.execute(
                f"SELECT dt, count(*), coalesce(sum(net_revenue), 0) FROM analytics.{model} "
                "WHERE dt BETWEEN ? AND ? GROUP BY dt",
                [days[0], days[-1]],
            ).fetchall()
            found = empty | {str(d): (n, net) for d, n, net in rows}
            stats[model] = {
                day: {
                    "dagster/row_count": n,
                    "net_revenue": MetadataValue.float(float(net)),
                    "dbt_tests_failed": failed_tests.get(model, {}).get(day, 0),
                }
                for day, (n, net) in found.items()
            }
    return stats


def classify_dbt_failure(error: Exception, invocation, days: list) -> Exception:
    """The error to raise for a failed dbt invocation: itself when transient (retried with
    backoff), else a Failure that is not retried and names the failing nodes."""
    problems = failed_nodes(invocation) or _error_lines(error)
    if any(marker in str(error) + " ".join(problems) for marker in TRANSIENT_DBT_ERRORS):
        return error
    return Failure(
        description=(
            f"dbt build failed for {days[0]}..{days[-1]}: {'; '.join(problems)}. "
            f"Fix the model or the data, then re-run: {rerun_command('fact_sales,daily_revenue', days)}"
        ),
        allow_retries=False,
    )


def failed_nodes(invocation) -> list[str]:
    """`node status: message` for each dbt model or test that errored or failed (run_results.json)."""
    try:
        results = invocation.get_artifact("run_results.json")["results"]
    except Exception:  # no run_results: dbt failed before running anything
        return []
    return [
        # unique_id: <resource type>.<package>.<name>[.<hash>]
        f"{r['unique_id'].split('.')[2]} {r['status']}: {' '.join(str(r.get('message') or '').split())}"
        for r in results
        if r.get("status") in ("error", "fail")
    ]


def _error_lines(error: Exception) -> list[str]:
    """What dbt itself reported, without dagster-dbt's boilerplate, as one line."""
    text = str(error)
    reported = text.split("Errors parsed from dbt logs:", 1)[-1]
    lines = [l.strip() for l in reported.splitlines() if l.strip() and l.strip() != "Encountered an error:"]
    return [" ".join(lines)[:500]] if lines else [text.strip().splitlines()[0]]


def prune_invocation_targets(
    runs_dir: Path, keep: int = KEEP_INVOCATION_TARGETS, keep_seconds: float = KEEP_INVOCATION_TARGETS_SECONDS
) -> None:
    if not runs_dir.is_dir():
        return
    modified = {}
    for target in runs_dir.iterdir():
        with contextlib.suppress(OSError):  # pruned meanwhile by another run
            if target.is_dir():
                modified[target] = target.stat().st_mtime
    newest_first = sorted(modified, key=modified.get, reverse=True)
    cutoff = time.time() - keep_seconds
    for stale in newest_first[keep:]:
        if modified[stale] < cutoff:
            shutil.rmtree(stale, ignore_errors=True)
