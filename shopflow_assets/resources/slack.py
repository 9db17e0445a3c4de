"""Slack, through dagster-slack: alerts are posted when SLACK_BOT_TOKEN is set, logged otherwise.

dagster-slack's SlackResource builds a WebClient for Slack's public host only; this one points it at
SHOPFLOW_SLACK_API_URL and gives it bounded retries (5xx, 429 with Retry-After, timeouts). A Slack
outage never fails or blocks the pipeline: `post` reports whether it delivered, and never raises.
"""

from __future__ import annotations

import logging
import socket
import time
from http.client import RemoteDisconnected
from urllib.error import URLError

from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from slack_sdk.http_retry import RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from shopflow_assets.settings import DEFAULT_SLACK_API_URL

# Slack truncates a message past 40,000 characters; alerts stay far below, readable on a phone.
MAX_MESSAGE_CHARS = 3000

logger = logging.getLogger("shopflow.alerts")


class _AnyServerErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk retries 500 and 503 only; 502 and 504 are as transient."""

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        return response is not None and response.status_code >= 500


class _BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """Honour Retry-After, but never wait longer than `max_wait` seconds (a sensor must not hang)."""

    def __init__(self, max_retry_count: int, max_wait: float):
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
        if response is None:
            raise error  # type: ignore[misc]
        retry_after = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), ["1"])
        try:
            wait = float(retry_after[0] if isinstance(retry_after, list) else retry_after)
        except ValueError:
            wait = 1.0
        time.sleep(min(max(wait, 0.0), self.max_wait))
        state.next_attempt_requested = True
        state.increment_current_attempt()


class ShopflowSlack(SlackResource):
    """Posts alerts to `channel` through the Slack Web API at `api_url`."""

    token: str = Field(default="", description="Slack bot token (SLACK_BOT_TOKEN); empty: log only.")
    channel: str = Field(default="#shopflow-alerts", description="Channel (SHOPFLOW_SLACK_CHANNEL).")
    api_url: str = Field(default=DEFAULT_SLACK_API_URL, description="SHOPFLOW_SLACK_API_URL.")
    timeout_seconds: float = Field(default=10.0, description="Timeout of one HTTP request.")
    max_retries: int = Field(default=3, description="Retries of one message on 5xx, 429 and timeouts.")
    max_retry_after_seconds: float = Field(default=10.0, description="Cap on a 429's Retry-After wait.")

    def get_client(self) -> WebClient:
        return WebClient(
            token=self.token,
            base_url=self.api_url if self.api_url.endswith("/") else self.api_url + "/",
            timeout=int(max(self.timeout_seconds, 1)),
            retry_handlers=self.retry_handlers(),
        )

    def retry_handlers(self) -> list[RetryHandler]:
        return [
            ConnectionErrorRetryHandler(
                max_retry_count=self.max_retries,
                error_types=[URLError, ConnectionError, RemoteDisconnected, socket.timeout, TimeoutError],
            ),
            _AnyServerErrorRetryHandler(max_retry_count=self.max_retries),
            _BoundedRateLimitRetryHandler(self.max_retries, self.max_retry_after_seconds),
        ]

    def post(self, text: str, log: logging.Logger | None = None) -> bool:
        """Post `text`; True if Slack took it. Never raises: an alert must not break the pipeline."""
        log = log or logger
        text = text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
        if not self.token:
            log.info(f"Slack alert for {self.channel} (SLACK_BOT_TOKEN unset, logged only):\n{text}")
            return False
        try:
            self.get_client().chat_postMessage(channel=self.channel, text=text, unfurl_links=False)
        except (SlackClientError, OSError, ValueError) as error:
            log.warning(
                f"Slack alert not delivered to {self.channel} ({type(error).__name__}: "
                f"{_without(str(error).splitlines()[0] if str(error) else '', self.token)[:200]}). "
                f"The alert was:\n{text}"
            )
            return False
        return True


def _without(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
