"""A local HTTP server that stands in for Slack's Web API host (SHOPFLOW_SLACK_API_URL).

It behaves like Slack for everything the alert outbox relies on (docs.slack.dev/reference/methods):

- `chat.postMessage` (JSON or form body): `channel` by ID, `#name` or `name`; posts the message into
  the channel with a unique `ts`, keeps its `metadata` ({event_type, event_payload}), answers
  `{"ok": true, "channel": <ID>, "ts": ..., "message": {...}}`; an unknown channel is
  `{"ok": false, "error": "channel_not_found"}` with HTTP 200, as Slack does.
- `conversations.history`: the channel by ID only (a name is `channel_not_found`, as on Slack),
  newest first, `oldest`/`latest` exclusive unless `inclusive`, cursor pagination (`has_more`,
  `response_metadata.next_cursor`), and each message's `metadata` only with
  `include_all_metadata=true`. With the limits Slack sets for apps outside its Marketplace (2025):
  at most `history_page_max` (15) messages a page whatever `limit` asks, and one request per
  `history_interval` (60 s): an earlier one is answered HTTP 429 with the `Retry-After` left.
- `conversations.list` (channels with `id` and `name`, cursor pagination) and `api.test`.
- Slack's failure answers: HTTP 429 with `Retry-After` and `{"ok": false, "error": "ratelimited"}`
  (nothing posted), HTTP 5xx (nothing posted), refused connections (`refuse_connections()`: the
  port is closed until `accept_connections()`).

Time is `clock` (time.time; a test may give its own): the messages' `ts` and the history's rate
limit follow it. `add_message` puts someone else's message in the channel (a busy channel).

And it can hold the answer to the next post (`hold_next_post()`): the message is in the channel, as
when Slack has answered 200, but the poster never reads the answer until `release()`. That is the
crash window of the outbox (a daemon killed between Slack's 200 and its own record of it).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHANNEL_ID = "C0SHOPFLOW1"
CHANNEL_NAME = "shopflow-alerts"
BOT_ID = "B0STANDIN01"
APP_ID = "A0STANDIN01"


@dataclass
class Received:
    path: str
    authorization: str
    body: dict
    at: float = 0.0
    status: int = 200


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    metadata: dict | None
    at: float


@dataclass
class SlackStandIn:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    failures: list[list] = field(default_factory=list)  # [status, headers, method, requests to let by first]
    errors: list[tuple[str, str]] = field(default_factory=list)
    outage_status: int | None = None
    channels: dict[str, str] = field(default_factory=lambda: {CHANNEL_ID: CHANNEL_NAME})
    lock: threading.Lock = field(default_factory=threading.Lock)
    hold: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time
    history_page_max: int = 15
    history_interval: float | None = 60.0
    _last_history: float | None = None
    _last_ts: float = 0.0
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def delivered(self) -> list[str]:
        """Texts of the messages in the channel, in the order Slack took them."""
        with self.lock:
            return [p.text for p in self.posted]

    def post_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat.postMessage")]

    def history_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/conversations.history")]

    def add_message(self, text: str, metadata: dict | None = None, ts: float | None = None) -> str:
        """Someone else's message in the channel, at `ts` (now by `clock` if not given)."""
        with self.lock:
            stamp = f"{ts:.6f}" if ts is not None else self.next_ts()
            self.posted.append(Posted(CHANNEL_ID, stamp, text, metadata, time.time()))
            return stamp

    # failure modes ------------------------------------------------------------------------

    def fail_next(self, *answers: tuple[int, dict], method: str = "chat.postMessage", after: int = 0) -> None:
        """The next requests to `method` (after letting `after` of them by) get these (status,
        headers) answers instead, one each."""
        with self.lock:
            self.failures.extend([status, headers, method, after] for status, headers in answers)

    def error_next(self, method: str, error: str) -> None:
        """The next request to `method` is answered HTTP 200 {"ok": false, "error": error}."""
        with self.lock:
            self.errors.append((method, error))

    def outage(self, status: int | None = 503) -> None:
        """Every request is answered `status` (None: the outage is over)."""
        self.outage_status = status

    def refuse_connections(self) -> None:
        """Close the listening socket: connections are refused until `accept_connections()`."""
        self.server.shutdown()
        self.server.server_close()

    def accept_connections(self) -> None:
        port = self.port
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self.server.RequestHandlerClass)
        self.server.daemon_threads = True
        self._serve()

    def hold_next_post(self) -> None:
        """The next chat.postMessage is posted, but its answer waits until `release()`."""
        self.held.clear()
        self.hold = threading.Event()

    def release(self) -> None:
        if self.hold is not None:
            self.hold.set()
            self.hold = None

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _serve(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # Slack's methods ----------------------------------------------------------------------

    def channel_id(self, name_or_id: str) -> str | None:
        if name_or_id in self.channels:
            return name_or_id
        name = name_or_id.lstrip("#")
        return next((cid for cid, cname in self.channels.items() if cname == name), None)

    def next_ts(self) -> str:
        now = max(self.clock(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def history_wait(self) -> float:
        """Seconds before conversations.history may be asked again (0: now)."""
        if self.history_interval is None or self._last_history is None:
            return 0.0
        return max(0.0, self._last_history + self.history_interval - self.clock())

    def post_message(self, body: dict) -> dict:
        channel = self.channel_id(str(body.get("channel") or ""))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not body.get("text") and not body.get("blocks"):
            return {"ok": False, "error": "no_text"}
        metadata = body.get("metadata")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                return {"ok": False, "error": "invalid_metadata_format"}
        ts = self.next_ts()
        self.posted.append(Posted(channel, ts, body.get("text", ""), metadata, time.time()))
        message = {"type": "message", "text": body.get("text", ""), "ts": ts, "bot_id": BOT_ID, "app_id": APP_ID}
        if metadata:
            message["metadata"] = metadata
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def history(self, args: dict) -> dict:
        channel = str(args.get("channel") or "")
        if channel not in self.channels:  # Slack wants the ID here; a name is not found
            return {"ok": False, "error": "channel_not_found"}
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")
        oldest = float(args.get("oldest") or 0)
        latest = float(args.get("latest") or self.clock() + 1)
        limit = max(1, min(int(args.get("limit") or 100), 999, self.history_page_max))
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        messages = [
            p
            for p in sorted(self.posted, key=lambda p: float(p.ts), reverse=True)
            if p.channel == channel
            and (oldest <= float(p.ts) <= latest if inclusive else oldest < float(p.ts) < latest)
        ]
        start = int(base64.b64decode(args["cursor"]).decode()) if args.get("cursor") else 0
        page = messages[start : start + limit]
        has_more = start + limit < len(messages)
        out = []
        for p in page:
            message = {"type": "message", "text": p.text, "ts": p.ts, "bot_id": BOT_ID, "app_id": APP_ID}
            if with_metadata and p.metadata:
                message["metadata"] = p.metadata
            out.append(message)
        answer = {"ok": True, "messages": out, "has_more": has_more}
        answer["response_metadata"] = {
            "next_cursor": base64.b64encode(str(start + limit).encode()).decode() if has_more else ""
        }
        return answer

    def list_channels(self, args: dict) -> dict:
        items = [{"id": cid, "name": name, "is_channel": True, "is_member": True} for cid, name in self.channels.items()]
        start = int(base64.b64decode(args["cursor"]).decode()) if args.get("cursor") else 0
        limit = max(1, min(int(args.get("limit") or 100), 1000))
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {
            "ok": True,
            "channels": page,
            "response_metadata": {"next_cursor": base64.b64encode(str(start + limit).encode()).decode() if more else ""},
        }


def start_slack_standin() -> SlackStandIn:
    standin: SlackStandIn

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.answer(parse_form(urlsplit(self.path).query))

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            if "json" in (self.headers.get("Content-Type") or ""):
                body = json.loads(raw or "{}")
            else:
                body = parse_form(raw)
            body.update(parse_form(urlsplit(self.path).query))
            self.answer(body)

        def answer(self, body: dict) -> None:
            method = urlsplit(self.path).path.rsplit("/", 1)[-1]
            with standin.lock:
                record = Received(urlsplit(self.path).path, self.headers.get("Authorization", ""), body, time.time())
                standin.requests.append(record)
                failure = next((f for f in standin.failures if f[2] == method), None)
                if failure is not None and failure[3] > 0:  # let this one by (if it gets through)
                    if standin.outage_status is None:
                        for f in standin.failures:
                            if f[2] == method:
                                f[3] -= 1
                    failure = None
                wait = standin.history_wait() if method == "conversations.history" else 0.0
                if failure is not None:
                    standin.failures.remove(failure)
                    status, headers = failure[0], failure[1]
                elif standin.outage_status is not None:
                    status, headers = standin.outage_status, {}
                elif wait > 0:
                    status, headers = 429, {"Retry-After": str(math.ceil(wait))}
                else:
                    status, headers = 200, {}
                if method == "conversations.history" and status == 200:
                    standin._last_history = standin.clock()
                record.status = status
                hold = None
                error_answer = next((e for e in standin.errors if e[0] == method), None) if status == 200 else None
                if error_answer is not None:
                    standin.errors.remove(error_answer)
                    payload = {"ok": False, "error": error_answer[1]}
                elif status != 200:
                    error = "ratelimited" if status == 429 else "service_unavailable" if status == 503 else "internal_error"
                    payload = {"ok": False, "error": error}
                elif method == "chat.postMessage":
                    payload = standin.post_message(body)
                    body["_accepted"] = payload.get("ok", False)
                    hold = standin.hold if payload.get("ok") else None
                elif method == "conversations.history":
                    payload = standin.history(body)
                elif method == "conversations.list":
                    payload = standin.list_channels(body)
                elif method == "api.test":
                    payload = {"ok": True, "args": {}}
                else:
                    payload = {"ok": False, "error": "unknown_method"}
            if hold is not None:
                standin.held.set()
                hold.wait()  # the message is in the channel; its 200 waits
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the poster is gone (killed while we held its answer)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    standin = SlackStandIn(server)
    standin._serve()
    return standin


def parse_form(text: str) -> dict:
    return {k: v[0] for k, v in parse_qs(text).items()}
