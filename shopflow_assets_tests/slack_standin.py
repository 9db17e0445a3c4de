"""A local HTTP server that stands in for Slack's Web API host (SHOPFLOW_SLACK_API_URL).

It answers `chat.postMessage` like Slack does, records what it received, and can be told to fail
first: a list of (status, headers) answers is served before it answers 200 again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class Received:
    path: str
    authorization: str
    body: dict


@dataclass
class SlackStandIn:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    failures: list[tuple[int, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/api/"

    @property
    def delivered(self) -> list[str]:
        """Texts of the messages Slack accepted (answered 200 ok)."""
        return [r.body.get("text", "") for r in self.requests if r.body.get("_accepted")]

    def fail_next(self, *answers: tuple[int, dict]) -> None:
        with self.lock:
            self.failures.extend(answers)


def start_slack_standin() -> SlackStandIn:
    standin: SlackStandIn

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            if "json" in (self.headers.get("Content-Type") or ""):
                body = json.loads(raw or "{}")
            else:
                body = {k: v[0] for k, v in parse_qs(raw).items()}
            with standin.lock:
                answer = standin.failures.pop(0) if standin.failures else None
                record = Received(self.path, self.headers.get("Authorization", ""), body)
                standin.requests.append(record)
                if answer is None:
                    body["_accepted"] = True
            status, headers = answer or (200, {})
            payload = (
                {"ok": True, "channel": body.get("channel"), "ts": "1.0", "message": {"text": body.get("text")}}
                if status == 200
                else {"ok": False, "error": "ratelimited" if status == 429 else "internal_error"}
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin = SlackStandIn(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return standin
