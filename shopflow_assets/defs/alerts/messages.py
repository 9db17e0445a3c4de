"""The words of every alert. Three kinds, never confused: BROKE (a run failed after its retries, or
a blocking dbt test failed), LATE (yesterday's fact_sales missed 08:00) and READY (D's fact_sales
landed); LATE has a follow-up, RECOVERED. Each says what, which day, why, where to look and what
to run.

Every message is Slack mrkdwn, and everything in it that comes from outside (file names, header
cells and values in error texts, partition keys, names of other code locations' assets and steps,
Slack's own error words) goes through `literal` where the message is built, once:
- `&`, `<` and `>` become `&amp;`, `&lt;` and `&gt;` (Slack's rule), so no `<!channel>`,
  `<@U123>` or `<https://x|label>` of outside text is a mention or a link;
- text with any character mrkdwn or Slack's URL detection could act on (`*_~` and backticks, `:`,
  `@`, `#`, `|`, `.` before a letter, ...) goes into an inline code span, backticks replaced by
  `ˋ`, so it is shown as it is, unformatted; plain words and numbers stay plain;
- control and invisible format characters (newlines, bidi overrides) are shown as `\\uXXXX`.
The pieces already built are `Mrkdwn` strings, which `literal` and `plain` leave as they are: the
DELAYED summary reuses built lines and escapes nothing twice. Our own links (SHOPFLOW_UI_URL)
stay bare, so Slack links them; commands to copy are code spans.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote

from shopflow_assets.core.run_window import rerun_command

# "some.module.SomeError: text" or "Failure: text" -> "text" (the class name is noise in an alert)
_EXCEPTION_PREFIX = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Failure|Interrupt)\w*:\s*")
MAX_ERROR_CHARS = 400
MAX_LITERAL_CHARS = 400

# Outside text made only of these, with `_` inside words and no `.` before a letter (a domain),
# is nothing Slack acts on, and is shown plain. \w here is Unicode letters, digits and `_`.
_INERT = re.compile(r"[\w ,;()'\"=+\-./\[\]%]*")
_MARKUP_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")
_DOMAIN_DOT = re.compile(r"\.(?=[^\W\d])")


class Mrkdwn(str):
    """Slack text already built: escaped where it holds outside text, safe to send as it is."""


def slack_escape(text: str) -> str:
    """Slack's three control characters as the entities Slack shows as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(value) -> Mrkdwn:
    """Our own words, numbers, days, paths and links: escaped, never put in code."""
    return value if isinstance(value, Mrkdwn) else Mrkdwn(slack_escape(str(value)))


def _visible(text: str) -> str:
    """One line, with control and invisible format characters (bidi overrides, zero-width
    joiners) shown as escapes: outside text can neither break the message's lines nor reorder
    or hide what it shows."""
    out = []
    for char in text:
        if char in "\t\r\n":
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def literal(value, limit: int = MAX_LITERAL_CHARS) -> Mrkdwn:
    """Text from outside, shown as it is: never a mention, a link or formatting (see the module's
    doc). Longer than `limit` characters: cut, with an ellipsis."""
    if isinstance(value, Mrkdwn):
        return value
    text = _visible(str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if _INERT.fullmatch(text) and not _MARKUP_UNDERSCORE.search(text) and not _DOMAIN_DOT.search(text):
        return Mrkdwn(text)  # nothing to escape either
    return code(text)


def code(text: str) -> Mrkdwn:
    """An inline code span: shown as it is, unformatted (commands to copy, outside text)."""
    if isinstance(text, Mrkdwn):
        return text
    body = slack_escape(_visible(str(text))).replace("`", "ˋ")
    return Mrkdwn(f"`{body}`") if body.strip() else Mrkdwn(body)


def clip(text: str, limit: int) -> str:
    """`text` (mrkdwn) cut to at most `limit` characters with an ellipsis, never inside an entity
    (`&amp;`) and never leaving a code span open."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 2]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    last_line = cut[cut.rfind("\n") + 1 :]
    return cut + "…" + ("`" if last_line.count("`") % 2 else "")


def one_line(error: str) -> str:
    """The first meaningful line of an error, without the exception class, at most 400 chars."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    first = _EXCEPTION_PREFIX.sub("", lines[0]) if lines else "no error message"
    return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 1] + "…"


def days_label(days: Sequence[dt.date], partition: str | None = None) -> Mrkdwn:
    """The days of a run; `partition`: its partition key when that is not a day (shown as it is)."""
    if not days:
        return literal(partition) if partition else Mrkdwn("(not partitioned)")
    return Mrkdwn(str(days[0]) if len(days) == 1 else f"{days[0]}..{days[-1]}")


def run_url(ui_url: str, run_id: str) -> Mrkdwn:
    return plain(f"{ui_url}/runs/{quote(str(run_id), safe='')}")


def asset_url(ui_url: str, asset: str, day: dt.date | str | None = None) -> Mrkdwn:
    url = f"{ui_url}/assets/{quote(asset)}"
    return plain(f"{url}?view=partitions&partition={quote(str(day), safe='')}" if day else url)


def _names(names: Sequence[str]) -> str:
    return ", ".join(literal(name) for name in names)


@dataclass(frozen=True)
class StepFailure:
    step: str
    error: str


def broke_message(
    *,
    run_id: str,
    job_name: str,
    assets: Sequence[str],
    days: Sequence[dt.date],
    failures: Sequence[StepFailure],
    failed_checks: Sequence[str] = (),
    not_built: Sequence[str] = (),
    ui_url: str,
    partition: str | None = None,
) -> Mrkdwn:
    """`assets`: what failed; `not_built`: what the run would have built after it; `partition`:
    the run's partition key when it is not a day. All of it is shown as it is (`literal`)."""
    what = _names(assets) or literal(job_name)
    day = days_label(days, partition)
    lines = [
        f":red_circle: BROKE: {what} for {day} failed",
        f"• What: {what} (job {literal(job_name)})",
        f"• Day: {day}",
    ]
    if not_built:
        lines.append(f"• Not built: {_names(not_built)} (downstream, in the same run)")
    for failure in failures[:3]:
        lines.append(f"• Step: {literal(failure.step)}")
        lines.append(f"• Error: {literal(one_line(failure.error))}")
    if len(failures) > 3:
        lines.append(f"• …and {len(failures) - 3} more failed steps")
    if failed_checks:
        lines.append(f"• Failed dbt tests: {_names(failed_checks[:10])}")
    lines.append(f"• Run: {run_url(ui_url, run_id)}")
    if days:
        lines.append(f"• Re-run: {code(rerun_command(','.join(sorted([*assets, *not_built])) or '*', list(days)))}")
    return Mrkdwn("\n".join(lines))


def late_message(*, day: dt.date, deadline: dt.datetime, reason: str, ui_url: str) -> Mrkdwn:
    """`reason`: why_missing's words (Mrkdwn, or plain text of ours)."""
    return Mrkdwn(
        "\n".join(
            [
                f":alarm_clock: LATE: fact_sales for {day} is not ready (due {deadline:%Y-%m-%d %H:%M %Z})",
                "• What: fact_sales (and daily_revenue) for the executive dashboard",
                f"• Day: {day}",
                f"• Due since: {deadline.isoformat(timespec='minutes')}",
                f"• Why: {plain(reason)}",
                f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
                f"• Run it: {code(rerun_command('raw/orders*', [day]))}",
            ]
        )
    )


def recovered_message(*, day: dt.date, materialized_at: dt.datetime, ui_url: str) -> Mrkdwn:
    return Mrkdwn(
        "\n".join(
            [
                f":large_green_circle: RECOVERED: fact_sales for {day} is ready after all",
                f"• Day: {day}",
                f"• Materialized: {materialized_at.isoformat(timespec='minutes')}",
                f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
            ]
        )
    )


def ready_message(*, day: dt.date | str, rows, net_revenue, run_id: str, ui_url: str) -> Mrkdwn:
    """`day`: the materialization's partition (its key as it is, if it is not a day); `rows`,
    `net_revenue`: from its metadata, shown as they are."""
    label = day if isinstance(day, dt.date) else literal(day, limit=100)
    return Mrkdwn(
        "\n".join(
            [
                f":white_check_mark: READY: fact_sales for {label} landed",
                f"• Day: {label}",
                f"• Rows: {literal(rows, limit=40) if rows is not None else 'unknown'}",
                f"• Net revenue: {literal(net_revenue, limit=40) if net_revenue is not None else 'unknown'}",
                f"• Asset: {asset_url(ui_url, 'fact_sales', day)}",
                f"• Run: {run_url(ui_url, run_id)}" if run_id else "• Run: none (reported without a run)",
            ]
        )
    )
