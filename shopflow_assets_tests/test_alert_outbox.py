"""The alert outbox (shopflow_assets/defs/alerts/outbox.py) tick by tick, in process: the real Slack client
against the Slack stand-in, delivery markers in a real (ephemeral) Dagster instance, and a clock the
test moves, so that back-off, Retry-After and the summary bound take no real time. The daemon runs
the same code in test_alert_outages.py."""

from __future__ import annotations

import copy
import logging
import time

import pytest
from dagster import DagsterInstance

from shopflow_assets.defs.alerts.outbox import (
    BACKOFF_MAX,
    CLOCK_SLACK,
    DOUBT_BOUND,
    HISTORY_INTERVAL,
    IN_FLIGHT_SECONDS,
    MARKERS,
    Alert,
    InstanceMarkers,
    OutboxState,
    deliver,
)
from shopflow_assets.defs.alerts.slack import ShopflowSlack

from .conftest import SLACK_TOKEN
from .slack_standin import CHANNEL_ID

SUMMARY_AFTER = 1800.0
log = logging.getLogger("test_alert_outbox")


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def markers():
    with DagsterInstance.ephemeral() as instance:
        yield InstanceMarkers(instance)


def alert(n: int, clock: Clock, kind: str = "BROKE") -> Alert:
    text = f":red_circle: {kind}: alert {n}\n• Error: the error of {n}\n• Run: http://ui/runs/{n}"
    return Alert(f"test:{n}", kind, text, clock())


def tick(state, slack, markers, clock, summary_after=SUMMARY_AFTER):
    return deliver(state, slack, markers, now=clock, summary_after=summary_after, log=log)


def test_delivered_in_order_once_across_a_503_outage_and_refused_connections(slack, slack_server, markers, clock):
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock)])
    slack_server.outage(503)
    report = tick(state, slack, markers, clock)
    assert report.sent == [] and "HTTP 503" in report.error and len(state.queue) == 2
    assert markers.all() == {}  # a 503 is a refusal: nothing posted, no marker left
    first_wait = state.not_before - clock()
    assert 8 <= first_wait <= 12  # back-off starts at 10 s (+-20%)

    # while backing off, each tick only asks api.test (no post, no marker)
    slack_server.outage(None)
    slack_server.refuse_connections()
    for _ in range(3):  # 3 x 2 s + 1 s below stays inside the shortest back-off (8 s)
        clock.advance(2)
        assert tick(state, slack, markers, clock).sent == []
    assert [r.path for r in slack_server.requests] == ["/api/chat.postMessage"]  # the probes were refused

    # Slack answers again: the next tick delivers everything, in order, before the back-off ends
    slack_server.accept_connections()
    clock.advance(1)
    assert clock() < state.not_before
    report = tick(state, slack, markers, clock)
    assert report.sent == ["test:1", "test:2"] and state.queue == []
    assert slack_server.delivered == [alert(1, clock).text, alert(2, clock).text]
    # the markers stay until the state that says "delivered" is stored, then go
    assert set(markers.all()) == {"test:1", "test:2"}
    tick(state, slack, markers, clock)
    assert markers.all() == {}
    assert len(slack_server.delivered) == 2


def test_slack_back_right_after_a_refused_attempt_gets_the_alerts_at_once(slack, slack_server, markers, clock):
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack_server.refuse_connections()
    tick(state, slack, markers, clock)  # no HTTP answer at all: Slack was down
    slack_server.accept_connections()
    clock.advance(3)
    assert tick(state, slack, markers, clock).sent == ["test:1"]


def test_a_partial_outage_keeps_the_back_off(slack, slack_server, markers, clock):
    """Slack answers api.test but fails posts: the probe does not cut the back-off short."""
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack_server.fail_next((503, {}), (503, {}))
    tick(state, slack, markers, clock)
    for _ in range(2):
        clock.advance(3)
        assert tick(state, slack, markers, clock).sent == []
    assert [r.path.rsplit("/", 1)[1] for r in slack_server.requests] == ["chat.postMessage", "api.test", "api.test"]
    clock.advance(state.not_before - clock() + 0.1)
    tick(state, slack, markers, clock)  # 503 again: the back-off doubles
    assert 16 <= state.not_before - clock() <= 24
    clock.advance(state.not_before - clock() + 0.1)
    assert tick(state, slack, markers, clock).sent == ["test:1"]


def test_a_429_holds_delivery_for_its_retry_after_without_blocking_the_tick(slack, slack_server, markers, clock):
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock)])
    slack_server.fail_next((429, {"Retry-After": "30"}))
    started = time.monotonic()
    report = tick(state, slack, markers, clock)
    assert time.monotonic() - started < 2  # the tick did not sleep through the Retry-After
    assert report.sent == [] and "Retry-After 30" in report.error
    for _ in range(9):  # ticks during the 30 s: no request at all, not even a probe
        clock.advance(3)
        tick(state, slack, markers, clock)
    assert len(slack_server.requests) == 1
    clock.advance(3.5)  # 30.5 s after the 429
    assert tick(state, slack, markers, clock).sent == ["test:1", "test:2"]
    assert len(slack_server.delivered) == 2


def test_the_crash_window_between_slacks_200_and_the_stored_state_sends_nothing_twice(slack, slack_server, markers, clock):
    """The daemon dies after Slack took the message and before the sensor's cursor is stored: the
    next tick starts again from the stored state, which still has the message queued."""
    stored = OutboxState()
    stored.enqueue([alert(1, clock), alert(2, clock)])
    lost = copy.deepcopy(stored)
    assert tick(lost, slack, markers, clock).sent == ["test:1", "test:2"]  # ... and this state is lost

    clock.advance(5)  # a restarted daemon: first it lets an attempt that may still be under way end
    assert tick(stored, slack, markers, clock).waiting.startswith("an attempt to send test:1 began 5 s ago")
    clock.advance(30)
    report = tick(stored, slack, markers, clock)  # then it looks in the channel
    assert report.found == ["test:1", "test:2"] and report.sent == []
    assert slack_server.delivered == [alert(1, clock).text, alert(2, clock).text]  # once each
    history = [r for r in slack_server.requests if r.path.endswith("conversations.history")]
    assert history and history[0].body["channel"] == CHANNEL_ID  # learnt from conversations.list
    assert history[0].body["include_all_metadata"] in ("1", "true", "True")


def test_a_timeout_after_slack_took_the_message_is_checked_not_resent(slack_server, markers, clock):
    slack = ShopflowSlack(token=SLACK_TOKEN, channel="#shopflow-alerts", api_url=slack_server.api_url, timeout_seconds=1)
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack_server.hold_next_post()  # posted, but the answer never comes in time
    report = tick(state, slack, markers, clock)
    slack_server.release()
    assert report.sent == [] and state.queue[0].uncertain
    clock.advance(31)
    report = tick(state, slack, markers, clock)
    assert report.found == ["test:1"] and len(slack_server.delivered) == 1


def test_an_unknown_outcome_that_did_not_post_is_sent_after_the_check(slack, slack_server, markers, clock):
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack_server.fail_next((502, {}))  # Slack: "some aspect of the operation may have succeeded"
    tick(state, slack, markers, clock)
    assert state.queue[0].uncertain and set(markers.all()) == {"test:1"}
    clock.advance(31)
    report = tick(state, slack, markers, clock)
    assert report.found == [] and report.sent == ["test:1"] and len(slack_server.delivered) == 1


def test_without_channels_history_a_doubtful_alert_is_sent_again_and_says_so(slack, slack_server, markers, clock, caplog):
    stored = OutboxState()
    stored.enqueue([alert(1, clock)])
    tick(copy.deepcopy(stored), slack, markers, clock)  # delivered, state lost
    clock.advance(31)
    slack_server.error_next("conversations.list", "missing_scope")
    with caplog.at_level(logging.WARNING, logger=log.name):
        report = tick(stored, slack, markers, clock)
    assert report.sent == ["test:1"] and len(slack_server.delivered) == 2  # at least once
    assert "channels:history" in caplog.text


def test_alerts_undelivered_past_the_bound_arrive_as_one_summary_in_order(slack, slack_server, markers, clock, caplog):
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock, "READY")])
    slack_server.outage(503)
    tick(state, slack, markers, clock)
    clock.advance(600)
    state.enqueue([alert(3, clock, "LATE")])
    clock.advance(SUMMARY_AFTER - 300)  # 1 and 2 are past the bound, 3 is not
    with caplog.at_level(logging.WARNING, logger=log.name):
        report = tick(state, slack, markers, clock)
    assert report.summarised == ["test:1", "test:2"]
    assert [a.kind for a in state.queue] == ["DELAYED", "LATE"]
    assert "the error of 1" in caplog.text  # each full text is logged as it joins the summary

    clock.advance(600)  # 3 is overdue too, and joins the summary (not yet sent)
    tick(state, slack, markers, clock)
    assert [a.kind for a in state.queue] == ["DELAYED"]
    slack_server.outage(None)
    clock.advance(state.not_before - clock() + 1)
    assert tick(state, slack, markers, clock).sent == ["delayed:test:1"]
    (summary,) = slack_server.delivered
    lines = summary.splitlines()
    assert lines[0].startswith(":warning: DELAYED: 3 alert(s) could not be delivered for more than 30 min (Slack: HTTP 503")
    assert lines[1].startswith("1. ") and ":red_circle: BROKE: alert 1 | Error: the error of 1 | http://ui/runs/1" in lines[1]
    assert "READY: alert 2" in lines[2] and "LATE: alert 3" in lines[3]
    # later alerts are sent one by one again, and an event read twice is not sent twice
    state.enqueue([alert(4, clock), alert(1, clock)])
    assert tick(state, slack, markers, clock).sent == ["test:4"]
    assert len(slack_server.delivered) == 2


def test_a_configuration_error_backs_off_and_names_the_fix(slack, slack_server, markers, clock, caplog):
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack_server.error_next("chat.postMessage", "not_in_channel")
    with caplog.at_level(logging.ERROR, logger=log.name):
        tick(state, slack, markers, clock)
    assert "invite the bot to the channel" in caplog.text and state.waiting_for == "configuration"
    clock.advance(5)
    tick(state, slack, markers, clock)
    assert len(slack_server.requests) == 1  # no probe: Slack is up, the channel is the problem
    clock.advance(state.not_before - clock() + 1)
    assert tick(state, slack, markers, clock).sent == ["test:1"]


def test_no_token_means_logged_not_sent(slack_server, markers, clock, caplog):
    unsent = ShopflowSlack(token="", api_url=slack_server.api_url)
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    with caplog.at_level(logging.INFO, logger=log.name):
        tick(state, unsent, markers, clock)
    assert slack_server.requests == [] and state.queue == []
    assert "the error of 1" in caplog.text and "SLACK_BOT_TOKEN unset" in caplog.text


def test_the_token_is_in_no_log_line(slack_server, markers, clock, caplog):
    state = OutboxState()
    state.enqueue([alert(1, clock)])
    slack = ShopflowSlack(token=SLACK_TOKEN, api_url="http://127.0.0.1:9/api/", timeout_seconds=1)  # refused
    with caplog.at_level(logging.DEBUG):
        tick(state, slack, markers, clock)
    assert state.last_error and SLACK_TOKEN not in caplog.text and SLACK_TOKEN not in str(state.to_json())
    assert MARKERS  # (the markers' name is part of the instance's dynamic partitions, not of the cursor)


# The outbox never stalls: Retry-After capped, history read for the attempt's
# window only, one page a minute, and an alert in doubt resolved within DOUBT_BOUND.


def ticks_until(predicate, state, slack, markers, clock, every: float = 5.0, limit: float = 3600.0) -> float:
    """Ticks every `every` (fake) seconds until `predicate()`; how long that took."""
    began = clock()
    while not predicate():
        assert clock() - began < limit, "the outbox never got there"
        clock.advance(every)
        tick(state, slack, markers, clock)
    return clock() - began


@pytest.mark.parametrize("retry_after", ["100000000", "inf", "nan", "-5", "soon", "1e308"])
def test_a_hostile_retry_after_holds_the_outbox_at_most_five_minutes(retry_after, slack, slack_server, markers, clock):
    slack_server.clock = clock
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock)])
    slack_server.fail_next((429, {"Retry-After": retry_after}))
    report = tick(state, slack, markers, clock)
    assert report.sent == [] and state.waiting_for == "rate_limit"
    assert 0 <= state.not_before - clock() <= BACKOFF_MAX  # capped
    waited = ticks_until(lambda: len(slack_server.delivered) == 2, state, slack, markers, clock)
    assert waited <= BACKOFF_MAX + 5
    assert [r.status for r in slack_server.post_requests()] == [429, 200, 200]


def test_a_retry_after_stored_before_the_cap_does_not_hold_the_outbox(slack, slack_server, markers, clock):
    """A cursor written by a version without the cap (or before the clock stepped back)."""
    state = OutboxState.from_json({"queue": [vars(alert(1, clock))], "not_before": clock() + 1e8,
                                   "waiting_for": "rate_limit", "last_error": "HTTP 429 ratelimited"})
    waited = ticks_until(lambda: len(slack_server.delivered) == 1, state, slack, markers, clock)
    assert waited <= BACKOFF_MAX * 1.2 + 5


def crash_after_posting(stored: OutboxState, slack, markers, clock) -> float:
    """The daemon dies after Slack took every queued alert and before the cursor is stored: the
    restarted daemon starts again from `stored`. Returns the time of the attempts."""
    at = clock()
    assert tick(copy.deepcopy(stored), slack, markers, clock).sent  # ... and this state is lost
    return at


def test_history_is_read_for_the_attempts_window_only(slack, slack_server, markers, clock):
    slack_server.clock = clock
    old = slack_server.add_message("an older message", ts=clock() - 3600)
    stored = OutboxState()
    stored.enqueue([alert(1, clock)])
    at = crash_after_posting(stored, slack, markers, clock)
    clock.advance(31)
    assert tick(stored, slack, markers, clock).found == ["test:1"]
    (history,) = slack_server.history_requests()
    assert float(history.body["oldest"]) == pytest.approx(at - CLOCK_SLACK, abs=0.01)
    assert float(history.body["latest"]) == pytest.approx(at + IN_FLIGHT_SECONDS + CLOCK_SLACK, abs=0.01)
    assert float(history.body["latest"]) - float(history.body["oldest"]) < 300  # not "everything since"
    assert int(history.body["limit"]) <= 15 and float(old) < float(history.body["oldest"])


def test_a_busy_channel_is_read_one_page_a_minute_and_the_alert_found_on_a_later_page(slack, slack_server, markers, clock):
    slack_server.clock = clock
    stored = OutboxState()
    stored.enqueue([alert(1, clock)])
    at = crash_after_posting(stored, slack, markers, clock)
    # 40 newer messages in the attempt's window, some with metadata that is not ours or is garbage
    for n in range(40):
        metadata = [None, {"event_type": "shopflow_alert", "event_payload": "garbage"},
                    {"event_type": "shopflow_alert", "event_payload": {"alert_id": ["test:1"]}},
                    {"event_type": "other_app", "event_payload": {"alert_id": "test:1"}}][n % 4]
        slack_server.add_message(f"someone else {n}", metadata, ts=at + 1 + n * 2)
    stored.enqueue([alert(2, clock)])  # written after the restart: not in doubt

    clock.advance(IN_FLIGHT_SECONDS + 1)
    waited = ticks_until(lambda: not stored.queue, stored, slack, markers, clock)

    history = slack_server.history_requests()
    assert len(history) == 3  # 15 + 15 newer messages, then the page with test:1
    assert [r.status for r in history] == [200, 200, 200]  # never faster than Slack allows
    assert [bool(r.body.get("cursor")) for r in history] == [False, True, True]
    assert 2 * HISTORY_INTERVAL <= waited <= 2 * HISTORY_INTERVAL + 5
    ids = [p.metadata["event_payload"]["alert_id"] for p in slack_server.posted if p.metadata and p.metadata.get("event_type") == "shopflow_alert" and isinstance(p.metadata["event_payload"], dict) and isinstance(p.metadata["event_payload"]["alert_id"], str)]
    assert ids == ["test:1", "test:2"]  # test:1 once, and test:2 after it


def test_history_that_slack_keeps_rate_limiting_holds_the_queue_no_longer_than_the_bound(slack, slack_server, markers, clock, caplog):
    slack_server.clock = clock
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock), alert(3, clock)])
    slack_server.fail_next((502, {}))  # test:1's outcome unknown (not posted)
    tick(state, slack, markers, clock)
    assert state.queue[0].uncertain
    slack_server.fail_next(*[(429, {"Retry-After": "99999999"})] * 100, method="conversations.history")

    clock.advance(IN_FLIGHT_SECONDS + 1)
    with caplog.at_level(logging.WARNING, logger=log.name):
        waited = ticks_until(lambda: len(slack_server.delivered) == 3, state, slack, markers, clock)

    assert waited <= DOUBT_BOUND + 5
    assert slack_server.delivered == [alert(n, clock).text for n in (1, 2, 3)]  # in order, each once
    assert "may show twice" in caplog.text and "test:1" in caplog.text
    assert len(slack_server.history_requests()) <= DOUBT_BOUND / HISTORY_INTERVAL + 1


def test_a_window_with_more_pages_than_the_bound_allows_is_resolved_by_sending_again(slack, slack_server, markers, clock, caplog):
    slack_server.clock = clock
    state = OutboxState()
    state.enqueue([alert(1, clock), alert(2, clock)])
    at = clock()
    slack_server.fail_next((502, {}))
    tick(state, slack, markers, clock)
    for n in range(300):  # 20 pages of other messages in test:1's window
        slack_server.add_message(f"someone else {n}", ts=at - CLOCK_SLACK + 1 + n * 0.8)

    clock.advance(IN_FLIGHT_SECONDS + 1)
    with caplog.at_level(logging.WARNING, logger=log.name):
        waited = ticks_until(lambda: not state.queue, state, slack, markers, clock)

    assert waited <= DOUBT_BOUND + 5
    history = slack_server.history_requests()
    assert all(r.status == 200 for r in history) and len(history) <= DOUBT_BOUND / HISTORY_INTERVAL + 1
    assert len({(r.body["oldest"], r.body["latest"]) for r in history}) == 1  # one window, paged
    assert "could not tell within 10 min" in caplog.text
    assert [t.splitlines()[0] for t in slack_server.delivered if t.startswith(":red")] == [
        ":red_circle: BROKE: alert 1", ":red_circle: BROKE: alert 2"]
