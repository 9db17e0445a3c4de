"""Slack, through dagster-slack: one HTTP request per call, and an answer that says what happened.

dagster-slack's SlackResource builds a WebClient for Slack's public host only; this one points it at
SHOPFLOW_SLACK_API_URL. It makes no retries of its own: the alert outbox (shopflow_assets/defs/alerts/outbox.py)
retries across sensor ticks, so a tick never waits on Slack for long, and it needs to know, for each
attempt, whether the message can be in the channel:

- DELIVERED: Slack answered ok (the message is in the channel).
- NOT_POSTED: Slack refused it, or never got all of it: HTTP 429 (with Retry-After), HTTP 503, an
  `ok: false` answer (channel_not_found, invalid_auth, ...), a refused connection, an error while
  sending the request.
- UNKNOWN: the request was sent, but no answer came (timeout, connection reset) or Slack answered
  500/502/504 (Slack: "it's possible some aspect of the operation succeeded before the error").

Every message carries Slack message metadata, {"event_type": "shopflow_alert", "event_payload":
{"alert_id": ...}}, so that `find_posted` can tell from the channel's history
(conversations.history with include_all_metadata) whether an attempt of UNKNOWN outcome was posted.
It reads one page of at most HISTORY_PAGE messages per call, between `oldest` and `latest`: Slack
allows apps outside its Marketplace about one conversations.history request a minute and 15
messages a page, so the outbox pages through a window across ticks.
Messages are posted with link_names off and no unfurling: a name or address in an alert's outside
text (escaped and quoted by shopflow_assets/defs/alerts/messages.py) mentions nobody and unfolds no preview.
The token never appears in what this module logs or returns.
"""

from __future__ import annotations

import enum
import http.client
import logging
import math
import re
import socket
from dataclasses import dataclass
from urllib.error import URLError

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from shopflow_assets.defs.alerts.messages import clip
from shopflow_assets.settings import DEFAULT_SLACK_API_URL

# Slack truncates a message past 40,000 characters; alerts stay far below, readable on a phone.
MAX_MESSAGE_CHARS = 3000
METADATA_EVENT_TYPE = "shopflow_alert"
# conversations.history: at most 15 messages a page for apps outside the Slack Marketplace (2025)
HISTORY_PAGE = 15
# A 429 without a usable Retry-After (missing, not a number): wait this long
DEFAULT_RETRY_AFTER = 60.0

# Answers that retrying soon will not change: the fix is in Slack's or our configuration.
CONFIGURATION_ERRORS = {
    "not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired",
    "no_permission", "missing_scope", "channel_not_found", "not_in_channel", "is_archived",
    "restricted_action", "ekm_access_denied", "team_access_not_granted", "not_allowed_token_type",
}

logger = logging.getLogger("shopflow.alerts")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    NOT_POSTED = "not_posted"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    detail: str = ""  # what went wrong, in one line, for the log and the outbox's state
    retry_after: float | None = None  # HTTP 429's Retry-After, in seconds
    configuration: bool = False  # an ok:false answer that a retry will not fix (channel, token, scope)
    channel_id: str | None = None  # the channel's ID (Slack answers it to a post)
    unreachable: bool = False  # no HTTP answer at all (refused, reset, timeout): Slack's door was shut


@dataclass(frozen=True)
class Lookup:
    """What one page of the channel's history says about an alert, or why it cannot tell.

    `found`: the alert is on this page; `next_cursor`: the window has more pages (read them on
    later calls); `unavailable`: Slack did not answer (try again later); `unsupported`: it answered
    that it will not (no channels:history scope, say): the outbox then can no longer tell, and says
    so in its log."""

    found: bool = False
    seen: frozenset[str] = frozenset()  # every alert id on the page (the asked one or others)
    channel_id: str | None = None
    next_cursor: str = ""
    unavailable: str = ""
    unsupported: str = ""
    retry_after: float | None = None


class ShopflowSlack(SlackResource):
    """Posts alerts to `channel` through the Slack Web API at `api_url`; see the module's doc."""

    token: str = Field(default="", description="Slack bot token (SLACK_BOT_TOKEN); empty: log only.")
    channel: str = Field(default="#shopflow-alerts", description="Channel (SHOPFLOW_SLACK_CHANNEL).")
    api_url: str = Field(default=DEFAULT_SLACK_API_URL, description="SHOPFLOW_SLACK_API_URL.")
    timeout_seconds: float = Field(default=5.0, description="Timeout of one HTTP request.")

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def get_client(self) -> WebClient:
        return WebClient(
            token=self.token,
            base_url=self.api_url if self.api_url.endswith("/") else self.api_url + "/",
            timeout=int(max(self.timeout_seconds, 1)),
            retry_handlers=[],  # one request per call: the outbox retries across ticks
        )

    # posting ---------------------------------------------------------------------------------

    def send(self, text: str, alert_id: str) -> SendResult:
        """Post `text` once, tagged with `alert_id`. Never raises."""
        text = clip(text, MAX_MESSAGE_CHARS)
        try:
            answer = self.get_client().chat_postMessage(
                channel=self.channel,
                text=text,
                link_names=False,
                unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": METADATA_EVENT_TYPE, "event_payload": {"alert_id": alert_id}},
            )
        except SlackApiError as error:
            return self._api_error(error)
        except BaseException as error:  # noqa: BLE001 (whatever happened, the sensor goes on)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            return SendResult(_transport_outcome(error), self._describe(error), unreachable=True)
        return SendResult(Outcome.DELIVERED, channel_id=answer.get("channel"))

    def probe(self) -> bool:
        """Does Slack's Web API answer at all? (api.test: no token, no side effect.)"""
        try:
            WebClient(
                base_url=self.get_client().base_url, timeout=int(max(self.timeout_seconds, 1)), retry_handlers=[]
            ).api_test()
        except Exception:  # noqa: BLE001
            return False
        return True

    # reading the channel ----------------------------------------------------------------------

    def find_posted(
        self, alert_id: str, oldest: float, latest: float, channel_id: str | None = None, cursor: str = ""
    ) -> Lookup:
        """Is `alert_id` among the channel's messages between `oldest` and `latest` (epoch s)? One
        page of the answer: the first, or the one `cursor` (a Lookup's next_cursor) points at.

        Reads conversations.history (scope channels:history, or groups:history for a private
        channel), which wants the channel's ID: `channel_id` if known, else SHOPFLOW_SLACK_CHANNEL if
        it is one, else looked up by name with conversations.list (scope channels:read)."""
        client = self.get_client()
        try:
            channel_id = channel_id or self._channel_id(client)
            if channel_id is None:
                return Lookup(unsupported=f"channel {self.channel} not found by conversations.list")
            page = client.conversations_history(
                channel=channel_id,
                oldest=f"{oldest:.6f}",
                latest=f"{latest:.6f}",
                inclusive=True,
                limit=HISTORY_PAGE,
                include_all_metadata=True,
                **({"cursor": cursor} if cursor else {}),
            )
            seen = set()
            for message in page.get("messages") or []:
                metadata = message.get("metadata") if isinstance(message, dict) else None
                if isinstance(metadata, dict) and metadata.get("event_type") == METADATA_EVENT_TYPE:
                    payload = metadata.get("event_payload")
                    if isinstance(payload, dict) and isinstance(payload.get("alert_id"), str):
                        seen.add(payload["alert_id"])
            found = alert_id in seen
            more = (page.get("response_metadata") or {}).get("next_cursor") if page.get("has_more") else ""
            return Lookup(found, frozenset(seen), channel_id, next_cursor=str(more or "") if not found else "")
        except SlackApiError as error:
            result = self._api_error(error)
            if result.configuration:
                return Lookup(unsupported=result.detail)
            return Lookup(unavailable=result.detail, retry_after=result.retry_after)
        except Exception as error:  # noqa: BLE001
            return Lookup(unavailable=self._describe(error))

    def _channel_id(self, client: WebClient) -> str | None:
        if re.fullmatch(r"[CGD][A-Z0-9]{6,}", self.channel):
            return self.channel
        name, cursor = self.channel.lstrip("#"), None
        while True:
            page = client.conversations_list(
                types="public_channel,private_channel", exclude_archived=True, limit=1000,
                **({"cursor": cursor} if cursor else {}),
            )
            for channel in page.get("channels") or []:
                if channel.get("name") == name:
                    return channel.get("id")
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None

    # errors ----------------------------------------------------------------------------------

    def _api_error(self, error: SlackApiError) -> SendResult:
        response = error.response
        status = response.status_code
        data = response.data if isinstance(response.data, dict) else {}
        code = str(data.get("error") or "")[:80]  # (Slack's words, cut: outside text)
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 429 or code == "ratelimited":
            headers = {k.lower(): v for k, v in (response.headers or {}).items()}
            value = headers.get("retry-after")
            value = value[0] if isinstance(value, list) else value
            try:
                retry_after = max(float(value), 0.0)
            except (TypeError, ValueError):
                retry_after = DEFAULT_RETRY_AFTER
            if not math.isfinite(retry_after):
                retry_after = DEFAULT_RETRY_AFTER
            # Slack's value as it came (the outbox caps the wait); cut, as it is outside text
            return SendResult(Outcome.NOT_POSTED, f"{detail} (Retry-After {str(value)[:20]})", retry_after=retry_after)
        if status in (500, 502, 504):
            return SendResult(Outcome.UNKNOWN, detail)
        return SendResult(Outcome.NOT_POSTED, detail, configuration=status == 200 and code in CONFIGURATION_ERRORS)

    def _describe(self, error: BaseException) -> str:
        text = str(error).splitlines()[0] if str(error) else ""
        text = text.replace(self.token, "***") if self.token else text
        return f"{type(error).__name__}: {text}"[:200]


def _transport_outcome(error: BaseException) -> Outcome:
    """urllib wraps in URLError whatever fails before the whole request is sent (connect, DNS,
    refused, a reset while sending): Slack cannot have acted on it. An error after that (no answer
    in time, the connection dropped while waiting) leaves it unknown."""
    if isinstance(error, (URLError, ConnectionRefusedError, socket.gaierror, SlackClientError)):
        return Outcome.NOT_POSTED
    if isinstance(error, (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError)):
        return Outcome.UNKNOWN
    return Outcome.UNKNOWN
