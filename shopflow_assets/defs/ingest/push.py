"""What `shopflow-push-export YYYY-MM-DD` does (shopflow_assets/commands/push.py): start the day's
run (raw/orders, then fact_sales and daily_revenue) at once through the webserver's GraphQL API,
instead of waiting for the export sensor's next tick.

Idempotent: the run is tagged with the export it builds (`shopflow/export = <day>:<fingerprint>`,
the fingerprint the export sensor computes), and neither this command nor the sensor starts an export
that already has a run. A re-export (new files, a new `_SUCCESS`) is a new export and is built again.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from shopflow_assets.defs.ingest.landing_zone import LandingZone
from shopflow_assets.core.partitions import is_partition
from shopflow_assets.core.run_window import DAILY_JOB, EXPORT_TAG, PARTITION_TAG, export_tag_value

# A run of the export in one of these states has built it or will: do not start another.
FINISHED_WITHOUT_BUILDING = {"FAILURE", "CANCELED"}

RUNS_OF_EXPORT = """
query RunsOfExport($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status } }
    ... on PythonError { message }
  }
}
"""


class PushError(Exception):
    """Why the day could not be started, said so that the exporter's log tells what to fix."""


def graphql_client(ui_url: str) -> DagsterGraphQLClient:
    url = urlsplit(ui_url)
    return DagsterGraphQLClient(
        url.hostname or "127.0.0.1",
        port_number=url.port,
        use_https=url.scheme == "https",
        path_prefix=url.path.rstrip("/"),
        timeout=30,
    )


def runs_of_export(ui_url: str, export: str) -> list[dict[str, str]]:
    """The runs tagged with `export`, through the webserver's GraphQL API (the GraphQL client has
    no public call for a run query, so this one is posted as it is)."""
    body = json.dumps(
        {"query": RUNS_OF_EXPORT, "variables": {"filter": {"tags": [{"key": EXPORT_TAG, "value": export}]}}}
    ).encode()
    request = urllib.request.Request(
        f"{ui_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError) as error:
        raise PushError(f"The Dagster webserver at {ui_url} did not answer ({error}): start it "
                        "(`dagster dev` or `dagster-webserver`) or set SHOPFLOW_UI_URL to its address.") from None
    result = (answer.get("data") or {}).get("runsOrError") or {}
    if result.get("__typename") != "Runs":
        raise PushError(f"The webserver at {ui_url} could not list runs: {result.get('message') or answer}")
    return result["results"]


def push_export(day: dt.date, *, ui_url: str, landing: LandingZone, start_date: dt.date) -> tuple[str, bool]:
    """Start `day`'s run unless its export already has one: (run id, started now)."""
    if not is_partition(day.isoformat(), start_date, dt.datetime.now(dt.timezone.utc)):
        raise PushError(f"{day} is not a day the pipeline builds (from the start date to yesterday, UTC).")
    fingerprint = landing.export_fingerprint(day)
    if fingerprint is None:
        raise PushError(
            f"The export of {day} has not finished: {landing.marker(day)} is missing. "
            "Push after writing it."
        )
    export = export_tag_value(day.isoformat(), fingerprint)
    for run in runs_of_export(ui_url, export):
        if run["status"] not in FINISHED_WITHOUT_BUILDING:
            return run["runId"], False
    try:
        run_id = graphql_client(ui_url).submit_job_execution(
            DAILY_JOB, tags={PARTITION_TAG: day.isoformat(), EXPORT_TAG: export}
        )
    except DagsterGraphQLClientError as error:
        raise PushError(f"The webserver at {ui_url} did not start the run: {error}") from None
    return run_id, True
