"""The alert outbox: every BROKE, LATE, RECOVERED and READY message is written to Dagster's instance
storage before it is sent, then delivered in order, once, whatever Slack and the daemon do.

Where it lives. The outbox is part of the cursor of the `shopflow_alerts` sensor, which Dagster keeps
in its instance storage (Postgres in production) and writes once per tick, atomically, together with
the sensor's positions in the event log. A tick first delivers what earlier ticks wrote, then adds
the messages of the events it reads, then Dagster stores the new cursor: a message is always stored
before its first attempt, and an event is never both skipped and unsent.

Delivery. In order, head first; a tick stops at the first message Slack does not take and tries
again on a later tick, never waiting on Slack within a tick (one request, a few seconds at most):
- Slack unavailable (5xx, refused connection, timeout): back off 10 s, 20 s, ... up to 5 min. While
  backing off, each tick asks `api.test` (no side effect, no marker) whether Slack answers again;
  once it does, delivery resumes in that tick, so a recovered Slack gets the backlog within a sensor
  interval or two, not at the end of a 5-minute back-off. (If Slack answered the attempt with an
  error while api.test works, the outage is partial: the back-off then runs its course.)
- HTTP 429: nothing is sent before its Retry-After has passed, across ticks (it is in the cursor).
- A configuration error (channel_not_found, not_in_channel, invalid_auth, ...): back off up to
  5 min and log an error that names the fix, every attempt.
- A message older than `summary_after` seconds (30 min by default) is no longer sent on its own:
  it joins one DELAYED message that lists every such alert in order (what, which day, the error or
  why, the link), sent first when Slack takes messages again. Its full text is logged when it joins.
  The queue also holds at most MAX_QUEUE messages; older ones join the summary early.

Exactly once, from the channel's point of view. Before each attempt the outbox writes a delivery
marker (the alert's id and the attempt's time) to the instance storage, outside the cursor: a dynamic-partition key of
MARKERS, through DagsterInstance.add_dynamic_partitions (public, and written at once, not at the end
of the tick). Each message also carries Slack message metadata with its id. A message that is still
queued but has a marker may be in the channel already: the daemon was killed (or the cursor write
failed) between Slack's 200 and the outbox's update, or the attempt timed out. Before sending it
again, the outbox looks for it in the channel's history (conversations.history with
include_all_metadata) and takes it as delivered if it is there. Slack's chat.postMessage has no
idempotency key (client_msg_id is not one of its documented arguments), so the channel itself is
the only record that can say. Markers go once the cursor that records the outcome is stored. If
the history cannot be read at all (the bot lacks channels:history), the outbox sends again and logs
that it could not check: at least once, not exactly once, for that message only.

The check never stalls the outbox:
- It waits IN_FLIGHT_SECONDS after the doubtful attempt began (the code server of a daemon killed
  a moment ago may still be finishing that very request), then reads only that attempt's window:
  from its start minus CLOCK_SLACK (Slack's clock and ours may differ) to its start plus
  IN_FLIGHT_SECONDS plus CLOCK_SLACK (`oldest`/`latest`), never "everything since".
- Slack allows apps outside its Marketplace about one conversations.history request a minute, 15
  messages a page: the outbox reads at most one page every HISTORY_INTERVAL seconds (the time of
  the last read is in the cursor) and goes on with the next page on a later tick.
- A Retry-After (of a post or of a history read) is honoured up to RETRY_AFTER_MAX: a buggy or
  hostile `Retry-After: 99999999` holds nothing for more than 5 minutes.
- DOUBT_BOUND (10 min) after its check began, a doubtful alert is resolved whatever the history
  says or fails to say (Slack keeps answering 429, the window has many pages, Slack is down): the
  outbox reads one last page if it may, then, if the alert was not found, sends it again and logs
  that it may show twice (at least once). So an alert in doubt holds the ones behind it for at
  most IN_FLIGHT_SECONDS + DOUBT_BOUND plus a sensor interval.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from shopflow_assets.defs.alerts.messages import Mrkdwn, clip, literal
from shopflow_assets.defs.alerts.slack import MAX_MESSAGE_CHARS, Lookup, Outcome, SendResult

MARKERS = "shopflow_alert_outbox_attempts"  # dynamic-partitions name of the delivery markers
MAX_QUEUE = 100
MAX_SUMMARY_ITEMS = 60
RECENT = 500  # ids of delivered alerts remembered, so that an event read twice is not sent twice
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0
# A Retry-After longer than this is Slack's bug or someone else's answer: wait no longer
RETRY_AFTER_MAX = BACKOFF_MAX
TICK_BUDGET_SECONDS = 20.0
# A message posted by an attempt shows in the history with a `ts` a little after the attempt's
# start; the window looks this far on either side, in case the clocks of Slack and of this host differ.
CLOCK_SLACK = 120.0
# An attempt this recent may still be under way in another process (the code server of a daemon
# killed a moment ago finishing its tick): wait for it to end before looking in the channel. It is
# also how long after its start an attempt can still have reached Slack.
IN_FLIGHT_SECONDS = 20.0
# conversations.history: Slack allows apps outside its Marketplace about one request a minute
HISTORY_INTERVAL = 60.0
# The longest an alert in doubt waits for the channel's word (from the check's start) before it is
# sent again: the alerts behind it wait no longer than that
DOUBT_BOUND = 600.0


class Slack(Protocol):
    @property
    def enabled(self) -> bool: ...
    def send(self, text: str, alert_id: str) -> SendResult: ...
    def probe(self) -> bool: ...
    def find_posted(
        self, alert_id: str, oldest: float, latest: float, channel_id: str | None = None, cursor: str = ""
    ) -> Lookup: ...


class Markers(Protocol):
    """Delivery markers, durable as soon as `add` returns: alert id -> when its attempt began."""

    def all(self) -> dict[str, float]: ...
    def add(self, alert_id: str, at: float) -> None: ...
    def remove(self, alert_id: str) -> None: ...


class InstanceMarkers:
    """Markers kept in Dagster's instance storage, as dynamic-partition keys of MARKERS, each
    "<alert id> @ <epoch seconds of the attempt>"."""

    def __init__(self, instance):
        self.instance = instance

    def _keys(self) -> dict[str, list[str]]:
        keys: dict[str, list[str]] = {}
        for key in self.instance.get_dynamic_partitions(MARKERS):
            keys.setdefault(key.rsplit(" @ ", 1)[0], []).append(key)
        return keys

    def all(self) -> dict[str, float]:
        return {
            alert_id: max(float(k.rsplit(" @ ", 1)[1]) if " @ " in k else 0.0 for k in keys)
            for alert_id, keys in self._keys().items()
        }

    def add(self, alert_id: str, at: float) -> None:
        self.instance.add_dynamic_partitions(MARKERS, [f"{alert_id} @ {at:.3f}"])

    def remove(self, alert_id: str) -> None:
        for key in self._keys().get(alert_id, []):
            self.instance.delete_dynamic_partition(MARKERS, key)


@dataclass
class Alert:
    id: str  # stable: broke:<run id>, ready:<event storage id>, late:<day>, recovered:<day>, delayed:<id>
    kind: str  # BROKE, LATE, RECOVERED, READY, DELAYED
    text: str
    created: float
    attempts: int = 0
    last_attempt: float | None = None
    uncertain: bool = False  # an attempt whose outcome is unknown (timeout, 5xx) awaits a check
    items: list[dict] = field(default_factory=list)  # DELAYED only: the alerts it stands for
    more: int = 0  # DELAYED only: alerts it stands for beyond MAX_SUMMARY_ITEMS (counted, logged)


@dataclass
class OutboxState:
    queue: list[Alert] = field(default_factory=list)
    not_before: float = 0.0  # no attempt before this time (back-off, Retry-After)
    failures: int = 0  # consecutive failed attempts
    waiting_for: str = ""  # "": nothing; "slack": unavailable; "rate_limit": 429; "configuration"
    # api.test answering ends a back-off if Slack was seen down since the last attempt (a probe
    # failed, or the attempt got no HTTP answer at all); if Slack answered the attempt with an
    # error while api.test works (a partial outage), the back-off runs its course.
    probe_failed: bool = False
    unreachable: bool = False
    last_error: str = ""
    channel_id: str | None = None
    delivered: int = 0  # totals, for the log and the tests
    summarised: int = 0
    unverified_warned: bool = False
    recent: list[str] = field(default_factory=list)  # ids delivered lately (at most RECENT)
    history_read_at: float = 0.0  # the last conversations.history request (at most one a HISTORY_INTERVAL)
    seen_posted: list[str] = field(default_factory=list)  # ids read in the channel's history lately (at most RECENT)
    # the check of the alert in doubt at the head: {"id", "since" (its first tick), "oldest",
    # "latest" (the attempt's window), "cursor" (the next page), "pages" (read so far)}
    check: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "OutboxState":
        if not data:
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in fields and k != "queue"})
        state.queue = [Alert(**a) for a in data.get("queue", [])]
        return state

    def enqueue(self, alerts: Iterable[Alert]) -> list[Alert]:
        known = {a.id for a in self.queue} | {i["id"] for a in self.queue for i in a.items} | set(self.recent)
        added = [a for a in alerts if a.id not in known]
        self.queue.extend(added)
        return added


@dataclass
class DeliveryReport:
    sent: list[str] = field(default_factory=list)  # ids posted in this tick
    found: list[str] = field(default_factory=list)  # ids found already in the channel
    summarised: list[str] = field(default_factory=list)
    error: str = ""
    waiting: str = ""


def deliver(
    state: OutboxState,
    slack: Slack,
    markers: Markers,
    *,
    now=time.time,
    summary_after: float,
    log: logging.Logger,
    budget: float = TICK_BUDGET_SECONDS,
) -> DeliveryReport:
    """One tick of delivery, on `state` in place (the caller stores it). Never raises for Slack."""
    report = DeliveryReport()
    started = now()
    if not slack.enabled:
        for alert in state.queue:
            log.info(f"Slack alert (SLACK_BOT_TOKEN unset, logged only):\n{alert.text}")
            state.delivered += 1
        state.queue.clear()
        return report

    # markers whose message has left the queue in a stored cursor are done with
    held = markers.all()
    queued = {a.id for a in state.queue}
    for alert_id in set(held) - queued:
        markers.remove(alert_id)
    held = {alert_id: at for alert_id, at in held.items() if alert_id in queued}

    _fold_overdue(state, held, started, summary_after, log, report)

    # no wait is longer than the longest back-off, even one stored before a clock step back (or
    # by a version that did not cap Retry-After)
    state.not_before = min(state.not_before, started + BACKOFF_MAX * 1.2)
    if started < state.not_before:
        if state.waiting_for != "slack":
            report.waiting = f"{state.waiting_for} ({state.last_error}) until {_clock(state.not_before)}"
            return report
        if not slack.probe():  # still down: keep waiting
            state.probe_failed = True
            report.waiting = f"Slack unavailable ({state.last_error}); next attempt by {_clock(state.not_before)}"
            return report
        if not (state.probe_failed or state.unreachable):
            report.waiting = f"back-off after {state.last_error} until {_clock(state.not_before)}"
            return report
        log.info("Slack answers again: delivering the alerts held back")

    while state.queue and now() - started < budget:
        alert = state.queue[0]
        if alert.id in held and 0 <= started - held[alert.id] < IN_FLIGHT_SECONDS:
            report.waiting = f"an attempt to send {alert.id} began {started - held[alert.id]:.0f} s ago elsewhere"
            return report
        if alert.id in state.seen_posted:  # on a page read for an earlier check
            log.info(f"Alert {alert.id} is already in the channel (an earlier attempt got through)")
            _delivered(state, report.found, alert)
            continue
        if alert.uncertain or alert.id in held:
            verdict = _check(state, slack, alert, held, started, now, log, report)
            if verdict == "found":
                _delivered(state, report.found, alert)
                continue
            if verdict == "wait":
                return report
            alert.uncertain = False  # "send": not in the channel, or no longer worth waiting for
        state.check = {}
        try:
            markers.add(alert.id, now())  # written before the attempt; see the module's doc
        except Exception as error:  # noqa: BLE001 (storage down: no attempt without a marker)
            report.error = f"cannot write the delivery marker: {type(error).__name__}: {str(error)[:200]}"
            log.warning(f"Alert {alert.id} not sent this tick: {report.error}")
            return report
        held[alert.id] = now()
        alert.attempts += 1
        alert.last_attempt = now()
        result = slack.send(alert.text, alert.id)
        if result.outcome is Outcome.DELIVERED:
            state.channel_id = result.channel_id or state.channel_id
            _delivered(state, report.sent, alert)
            continue
        if result.outcome is Outcome.UNKNOWN:
            alert.uncertain = True
        else:
            _forget(markers, alert.id, log)
            held.pop(alert.id, None)
        _wait(state, now(), result.detail, retry_after=result.retry_after, configuration=result.configuration)
        state.unreachable = result.unreachable
        report.error = state.last_error
        if result.configuration:
            log.error(
                f"Slack refused alert {alert.id} ({result.detail}): fix SLACK_BOT_TOKEN or "
                f"SHOPFLOW_SLACK_CHANNEL, or invite the bot to the channel (scope chat:write). Next attempt "
                f"by {_clock(state.not_before)}; {len(state.queue)} alert(s) waiting."
            )
        else:
            log.warning(
                f"Slack did not take alert {alert.id} ({result.detail}); next attempt by "
                f"{_clock(state.not_before)}; {len(state.queue)} alert(s) waiting, oldest from "
                f"{_clock(state.queue[0].created)}."
            )
        return report
    return report


def _check(state: OutboxState, slack: Slack, alert: Alert, held: dict[str, float], started: float, now,
           log: logging.Logger, report: DeliveryReport) -> str:
    """Is the alert at the head, whose last attempt's outcome is unknown, in the channel? "found",
    "send" (not there, or DOUBT_BOUND has passed: send it again), or "wait" (read the next page of
    its window, or again after a failed read, on a later tick). See the module's doc."""
    check = state.check
    if check.get("id") != alert.id:
        attempts = [t for t in (held.get(alert.id), alert.last_attempt) if t is not None] or [alert.created]
        check = state.check = {
            "id": alert.id,
            "since": started,
            "oldest": min(attempts) - CLOCK_SLACK,
            "latest": max(attempts) + IN_FLIGHT_SECONDS + CLOCK_SLACK,
            "cursor": "",
            "pages": 0,
        }
    check["since"] = min(check["since"], started)  # (a clock stepped back: counted again from now, not from the future)
    overdue = started - check["since"] >= DOUBT_BOUND
    if 0 <= started - state.history_read_at < HISTORY_INTERVAL:
        if overdue:
            return _give_up(alert, "Slack allows one history read a minute", log)
        report.waiting = (
            f"checking whether {alert.id} got through: {check['pages']} page(s) of the channel read, "
            f"the next by {_clock(state.history_read_at + HISTORY_INTERVAL)}"
        )
        return "wait"
    state.history_read_at = now()
    lookup = slack.find_posted(alert.id, check["oldest"], check["latest"], state.channel_id, check["cursor"])
    if lookup.channel_id:
        state.channel_id = lookup.channel_id
    queued = {a.id for a in state.queue}
    state.seen_posted = (state.seen_posted + sorted((lookup.seen & queued) - {alert.id}))[-RECENT:]
    if lookup.found:
        log.info(f"Alert {alert.id} is already in the channel (an earlier attempt got through)")
        return "found"
    if lookup.unsupported:
        if not state.unverified_warned:
            log.warning(
                f"Cannot read the alert channel's history ({lookup.unsupported}); give the Slack bot "
                "the channels:history scope (groups:history for a private channel). Until then an "
                "alert whose delivery is in doubt (daemon killed mid-send, Slack timeout) is sent "
                "again and may show twice."
            )
            state.unverified_warned = True
        return "send"
    if lookup.unavailable:
        if overdue:
            return _give_up(alert, f"reading the channel's history: {lookup.unavailable}", log)
        _wait(state, now(), f"reading the channel's history: {lookup.unavailable}", retry_after=lookup.retry_after)
        state.not_before = min(state.not_before, check["since"] + DOUBT_BOUND)  # the bound holds
        report.error = state.last_error
        return "wait"
    check["pages"] += 1
    if not lookup.next_cursor:
        return "send"  # the whole window read: not there
    check["cursor"] = lookup.next_cursor
    if overdue:
        return _give_up(alert, f"{check['pages']} page(s) of the channel read, more to read", log)
    report.waiting = (
        f"checking whether {alert.id} got through: {check['pages']} page(s) of the channel read, "
        f"the next by {_clock(state.history_read_at + HISTORY_INTERVAL)}"
    )
    return "wait"


def _give_up(alert: Alert, why: str, log: logging.Logger) -> str:
    log.warning(
        f"Alert {alert.id}: could not tell within {DOUBT_BOUND / 60:.0f} min whether its last attempt "
        f"reached the channel ({why}); sending it again, so that the alerts behind it are not held "
        "up. It may show twice."
    )
    return "send"


def _delivered(state: OutboxState, ids: list[str], alert: Alert) -> None:
    state.queue.pop(0)
    state.delivered += 1
    state.recent = (state.recent + [alert.id] + [i["id"] for i in alert.items])[-RECENT:]
    ids.append(alert.id)
    state.failures, state.not_before, state.waiting_for, state.last_error = 0, 0.0, "", ""
    state.probe_failed = state.unreachable = False
    state.check = {}


def _forget(markers: Markers, alert_id: str, log: logging.Logger) -> None:
    try:
        markers.remove(alert_id)
    except Exception as error:  # noqa: BLE001 (a stale marker costs one history read later)
        log.info(f"Delivery marker of {alert_id} not removed ({type(error).__name__}); checked next time")


def _wait(state: OutboxState, at: float, error: str, *, retry_after=None, configuration=False) -> None:
    state.failures += 1
    state.last_error = error
    state.probe_failed = state.unreachable = False
    if retry_after is not None:
        state.waiting_for, delay = "rate_limit", min(retry_after, RETRY_AFTER_MAX)
    else:
        state.waiting_for = "configuration" if configuration else "slack"
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (state.failures - 1)) * random.uniform(0.8, 1.2)
    state.not_before = at + delay


def _fold_overdue(state, held, now, summary_after, log, report) -> None:
    """Alerts undelivered for longer than `summary_after` (or beyond MAX_QUEUE) join one DELAYED
    message, in order. An alert whose delivery is in doubt stays until the channel says; a DELAYED
    message already attempted is never changed (it may be in the channel): a new one follows it."""
    overflow = len(state.queue) - MAX_QUEUE
    keep: list[Alert] = []
    summary: Alert | None = None
    for index, alert in enumerate(state.queue):
        doubtful = alert.uncertain or alert.id in held
        overdue = now - alert.created > summary_after or index < overflow
        if alert.kind == "DELAYED":
            if not doubtful and summary is None:  # not in the channel: it may still grow
                summary = alert
            keep.append(alert)
            continue
        if not overdue or doubtful:
            keep.append(alert)
            continue
        if summary is None:
            summary = Alert(id=f"delayed:{alert.id}", kind="DELAYED", text="", created=alert.created)
            keep.append(summary)
        log.warning(
            f"Alert {alert.id} undelivered since {_clock(alert.created)} (Slack: {state.last_error or 'no answer'}): "
            f"it goes into the DELAYED summary. Its text:\n{alert.text}"
        )
        if len(summary.items) < MAX_SUMMARY_ITEMS:
            summary.items.append(summary_item(alert))
        else:
            summary.more += 1
        state.summarised += 1
        report.summarised.append(alert.id)
    if summary is not None:
        summary.text = delayed_message(summary.items, summary.more, summary_after, state.last_error)
    state.queue = keep


def summary_item(alert: Alert) -> dict:
    lines = alert.text.splitlines()
    key = next((l for l in lines if l.startswith(("• Error:", "• Why:", "• Rows:"))), "")
    link = next((l.split(": ", 1)[1] for l in lines if l.startswith(("• Run:", "• Asset:"))), "")
    return {"id": alert.id, "kind": alert.kind, "created": alert.created, "headline": lines[0] if lines else "",
            "key": key.lstrip("• "), "link": link}


def delayed_message(items: list[dict], more: int, summary_after: float, last_error: str) -> str:
    minutes = max(1, round(summary_after / 60))
    head = (
        f":warning: DELAYED: {len(items) + more} alert(s) could not be delivered for more than {minutes} min"
        + (f" (Slack: {literal(last_error, 200)})" if last_error else "")
        + ". Here they are, oldest first:"
    )
    tail = "Full texts: the daemon's log (sensor shopflow_alerts). Nothing was dropped."
    lines, used = [head], len(head) + len(tail) + 2
    for n, item in enumerate(items[:MAX_SUMMARY_ITEMS], start=1):
        line = f"{n}. {_clock(item['created'])} {item['headline']}"
        if item.get("key"):
            line += f" | {item['key']}"
        if item.get("link"):
            line += f" | {item['link']}"
        line = clip(line, 400)  # (built of alert lines: escaped once already)
        if used + len(line) + 80 > MAX_MESSAGE_CHARS:
            lines.append(f"…and {len(items) - n + 1 + more} more (their full texts are in the daemon's log)")
            break
        lines.append(line)
        used += len(line) + 1
    else:
        if more:
            lines.append(f"…and {more} more (their full texts are in the daemon's log)")
    lines.append(tail)
    return Mrkdwn("\n".join(lines))


def _clock(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
