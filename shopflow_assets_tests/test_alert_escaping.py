"""Alerts cannot be hijacked: whatever comes from outside (file names, header
cells, values, error text, partition keys, Slack's own error words) reaches Slack escaped for mrkdwn
and quoted: it never mentions, links or formats, and the visible text still names it. The real
ingest, the real alerts sensor and outbox, the Slack stand-in."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import time
import unicodedata

import pytest
from dagster import AssetMaterialization, DagsterInstance, MetadataValue, job, op
from hypothesis import given, settings
from hypothesis import strategies as st

from shopflow_assets.defs.alerts.messages import MAX_LITERAL_CHARS, StepFailure, broke_message, clip, literal, one_line
from shopflow_assets.defs.alerts.lateness import LatenessState, evaluate_lateness
from shopflow_assets.engines.duckdb.loader import REQUIRED_COLUMNS
from shopflow_assets.defs.alerts.outbox import Alert, InstanceMarkers, OutboxState, deliver
from shopflow_assets.defs.ingest.landing_zone import LandingZone

from .conftest import FACT_SALES, SLACK_TOKEN, TEST_SETTINGS, csv_text, line
from .test_failures_and_alerts import alert_ticks

DAY = "2024-03-01"
UI = TEST_SETTINGS.ui_url
log = logging.getLogger("test_alert_escaping")

HOSTILE = [
    "<!channel>",
    "<!here|everyone>",
    "<!subteam^S0123|admins>",
    "<@U0123ABC>",
    "<#C0123ABC|general>",
    "<mailto:boss@evil.example|Open the report>",
    "<https://evil.example/login|Dagster UI>",
    "*bold* _italic_ ~struck~ `code` ```block```",
    ":rotating_light: @channel @here #general",
    "a & b &amp; &lt;!channel&gt;",
    "evil.example https://evil.example/x www.evil.example",
    "> quoted\nsecond line",
    "bidi \u202etxt.exe zero\u200bwidth",
]


def code_spans(text: str) -> list[str]:
    """The inline code spans of a mrkdwn text, as Slack shows them (entities decoded)."""
    return [html.unescape(span) for span in re.findall(r"`([^`\n]*)`", text)]


def assert_inert(text: str) -> None:
    """Nothing in `text` is a Slack control sequence, and every code span is closed."""
    assert "<" not in text and ">" not in text, text  # no <!..>, <@..>, <#..>, <http..>: we send none
    assert not re.search(r"&(?!amp;|lt;|gt;)", text), text  # every & is one of Slack's three entities
    for row in text.splitlines():
        assert row.count("`") % 2 == 0, row


def visible(value: str) -> str:
    """What Slack shows of outside text we quote: one line, backticks as ˋ, control and invisible
    format characters (bidi overrides, zero-width) as escapes."""
    out = []
    for char in value.replace("`", "ˋ"):
        if char in "\t\r\n":
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


# literal() -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_outside_text_is_escaped_and_quoted_and_still_readable(value):
    text = literal(value)
    assert_inert(text)
    assert text.startswith("`") and text.endswith("`")  # quoted: no formatting, no emoji
    assert code_spans(text) == [visible(value)]  # shown as it is
    assert literal(text) == text  # already built: never escaped twice


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_outside_text_is_inert_and_shown_as_it_is(value):
    text = literal(value)
    assert_inert(text)
    if text.startswith("`"):
        assert code_spans(text) == [visible(value)]
    elif not text.strip():  # blank (spaces of any kind): shown as it is
        assert text == visible(value)
    else:  # plain: only words, numbers and punctuation Slack does nothing with
        assert text == visible(value) and re.fullmatch(r"[\w ,;()'\"=+\-./\[\]%]*", text)
        assert not re.search(r"(?<!\w)_|_(?!\w)|\.(?=[^\W\d])", text)


def test_plain_words_names_and_numbers_stay_plain():
    assert literal("raw/orders") == "raw/orders"
    assert literal("daily_revenue, fact_sales") == "daily_revenue, fact_sales"
    assert literal("19.00") == "19.00"
    assert literal("Run execution process for 1f2e-9a was terminated by signal 9 (SIGKILL).").startswith("Run")
    assert literal("part-7.csv") == "`part-7.csv`"  # a file name could be a domain: quoted
    assert literal("_x_") == "`_x_`" and literal("a_b") == "a_b"


def test_clipping_never_cuts_an_entity_or_leaves_a_code_span_open():
    text = literal("x" * 20 + "&" * 200)
    for limit in range(5, 60):
        cut = clip(text, limit)
        assert len(cut) <= limit
        assert_inert(cut)
    assert len(literal("y&" * 1000)) <= 6 * MAX_LITERAL_CHARS  # (escaped: at most 5 chars a char)


# BROKE: the real ingest refuses a hostile file ------------------------------------------------


@pytest.mark.parametrize(
    "file_name",
    ["<!channel>.csv", "<!here|all>.csv", "<mailto:boss@evil.example|Open the report>.csv", "*b* _i_ ~s~ `c` & :x:.csv"],
)
def test_a_hostile_export_file_reaches_slack_escaped_and_still_named(file_name, run, landing, instance, slack, slack_server):
    header = ["<@U0123ABC>", "<https://evil.example/login|Dagster UI>", "*bold* _x_ ~y~ `z`"]
    header += [c for c in REQUIRED_COLUMNS if c != "discount"]
    landing.export(DAY, {file_name: csv_text([line("A")], header)})
    result = run(DAY, selection="raw/orders")
    assert not result.success

    alert_ticks(instance, slack, landing)

    (message,) = slack_server.delivered
    assert_inert(message)
    assert message.startswith(":red_circle: BROKE: raw/orders for 2024-03-01 failed")
    (error,) = [row for row in message.splitlines() if row.startswith("• Error: ")]
    (shown,) = code_spans(error)  # the whole error, quoted
    assert f"dt={DAY}/{visible(file_name)} line 1 (header): missing required column 'discount'" in shown
    for cell in header[:3]:
        assert visible(cell) in shown  # the header as it is
    assert f"• Run: {UI}/runs/{result.run_id}" in message  # our own link: bare, so Slack links it
    assert SLACK_TOKEN not in message


def test_slack_is_asked_never_to_link_names_or_unfurl(run, landing, instance, slack, slack_server):
    landing.export(DAY, {"<!channel>.csv": csv_text([line("A")], ["order_id"])})
    assert not run(DAY, selection="raw/orders").success
    alert_ticks(instance, slack, landing)
    (post,) = slack_server.post_requests()
    assert str(post.body.get("link_names")).lower() in ("false", "0")
    assert str(post.body.get("unfurl_links")).lower() in ("false", "0")
    assert str(post.body.get("unfurl_media")).lower() in ("false", "0")


# READY, BROKE: partition keys and metadata from outside ---------------------------------------


def test_a_partition_key_that_is_no_day_is_shown_as_it_is_and_stalls_nothing(landing, instance, slack, slack_server):
    """A fact_sales materialization reported by hand (or by another code location) with a key that
    is no day, and metadata of the wrong shape: a READY naming the key, escaped, and the next
    event still gets its alert."""
    hostile = "<!channel> <https://evil.example|x>"
    instance.report_runless_asset_event(
        AssetMaterialization(
            FACT_SALES, partition=hostile, metadata={"dagster/row_count": MetadataValue.text("<!here>"), "net_revenue": MetadataValue.text("<@U1>")}
        )
    )
    instance.report_runless_asset_event(AssetMaterialization(FACT_SALES, partition=DAY))

    alert_ticks(instance, slack, landing)

    first, second = slack_server.delivered
    for message in (first, second):
        assert_inert(message)
    assert code_spans(first.splitlines()[0]) == [hostile]
    assert "partition=%3C%21channel%3E" in first  # (our link carries the key, percent-encoded)
    assert "<!here>" not in first and "<@U1>" not in first  # the wrong-shape values shown inert
    assert second.startswith(f":white_check_mark: READY: fact_sales for {DAY} landed")


@op
def _other_step():
    pass


@job
def _other_code_locations_job():
    _other_step()


def test_a_failed_run_of_a_partition_that_is_no_day_names_it_escaped(landing, instance, slack, slack_server):
    """A run of another code location in the same instance: its partition key is its own."""
    run = instance.create_run_for_job(_other_code_locations_job, tags={"dagster/partition": "<!subteam^S0123|admins>"})
    instance.report_run_failed(run, "<!channel> it broke")

    alert_ticks(instance, slack, landing)

    (message,) = slack_server.delivered
    assert_inert(message)
    assert "• Day: `&lt;!subteam^S0123|admins&gt;`" in message
    assert "• Error: `&lt;!channel&gt; it broke`" in message
    assert "Re-run" not in message  # no day to re-run


# LATE: the landing zone's path ------------------------------------------------------------------


def test_late_shows_the_landing_path_quoted(tmp_path, instance):
    root = tmp_path / "<!channel> & *landing*"
    root.mkdir()
    now = dt.datetime(2024, 3, 2, 8, 1, tzinfo=dt.timezone.utc)
    (late,), _ = evaluate_lateness(
        instance, LandingZone(root=str(root)), now, LatenessState(), timezone="UTC", ui_url=UI,
        start_date=dt.date(2024, 1, 1),
    )
    assert_inert(late.text)
    (why,) = [row for row in late.text.splitlines() if row.startswith("• Why: ")]
    assert code_spans(why) == [f"{root}/orders/dt=2024-03-01/_SUCCESS"]
    assert f"• Asset: {UI}/assets/fact_sales?view=partitions&amp;partition=2024-03-01" in late.text


# DELAYED: built lines reused, nothing escaped twice --------------------------------------------


def test_the_delayed_summary_reuses_built_lines_and_escapes_nothing_twice(slack, slack_server):
    clock = [time.time()]
    now = lambda: clock[0]  # noqa: E731
    error = "dt=2024-03-01/a&b <!channel>.csv line 1 (header): missing required column 'x'"
    text = broke_message(
        run_id="r1", job_name="__ASSET_JOB", assets=["raw/orders"], days=[dt.date(2024, 3, 1)],
        failures=[StepFailure("raw__orders", error)], ui_url=UI,
    )
    assert_inert(text)
    state = OutboxState()
    state.enqueue([Alert("broke:r1", "BROKE", text, now())])
    with DagsterInstance.ephemeral() as instance:
        markers = InstanceMarkers(instance)
        slack_server.refuse_connections()  # Slack's error words: "URLError: <urlopen error ...>"
        deliver(state, slack, markers, now=now, summary_after=1800, log=log)
        assert "<urlopen" in state.last_error
        clock[0] += 1900
        deliver(state, slack, markers, now=now, summary_after=1800, log=log)
        slack_server.accept_connections()
        clock[0] = state.not_before + 1
        report = deliver(state, slack, markers, now=now, summary_after=1800, log=log)
    assert report.sent == ["delayed:broke:r1"]
    (summary,) = slack_server.delivered
    assert_inert(summary)
    assert "&amp;amp;" not in summary and "&amp;lt;" not in summary and "&amp;gt;" not in summary
    assert summary.splitlines()[0].startswith(":warning: DELAYED: 1 alert(s)")
    assert "`URLError: &lt;urlopen error" in summary.splitlines()[0]  # Slack's words, quoted
    (item,) = [row for row in summary.splitlines() if row.startswith("1. ")]
    assert f"Error: {literal(one_line(error))}" in item  # the line as the BROKE built it
    assert code_spans(item)[0] == error.replace("`", "ˋ")
    assert f"| {UI}/runs/r1" in item
