"""The vendor's side of notifications, for the one-command start: an SMTP server and a
webhook receiver that write what they get to a file.

``python -m sim.receivers --smtp-port 8025 --webhook-port 8026 --secret-file FILE
--out FILE`` appends one JSON line per message: ``{"channel": "email", "to", "subject",
"body"}`` or ``{"channel": "webhook", "verified": true|false, "payload": {...}}`` --
``verified`` is the HMAC check (`telemetry.signing.verify`) with the shared secret, so
the demo shows a receiver refusing a forged or replayed call. Loopback only.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import sys
import threading
import time
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from types import FrameType
from typing import Any

from aiosmtpd.controller import Controller

from telemetry.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

HOST = "127.0.0.1"
#: A webhook body is an alarm, a few hundred bytes; refuse anything huge.
MAX_BODY = 64 * 1024


class Recorder:
    """Appends JSON lines to `path` (thread-safe: SMTP and HTTP run in their threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"at": time.time(), **entry}, sort_keys=True) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


class MailHandler:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message: Message = message_from_bytes(envelope.content)
        body = message.get_payload(decode=True)
        self.recorder.write(
            {
                "channel": "email",
                "to": list(envelope.rcpt_tos),
                "subject": message["Subject"],
                "body": body.decode(errors="replace") if isinstance(body, bytes) else "",
            }
        )
        return "250 OK"


def webhook_server(port: int, secret: bytes, recorder: Recorder) -> http.server.HTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            ok = verify(
                secret,
                self.headers.get(TIMESTAMP_HEADER, ""),
                self.headers.get(SIGNATURE_HEADER, ""),
                body,
                now=time.time(),
            )
            try:
                payload = json.loads(body) if ok else None
            except ValueError:
                payload = None
            recorder.write({"channel": "webhook", "verified": ok, "payload": payload})
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer((HOST, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.receivers",
        description="The demo's notification receivers: an SMTP server and a webhook "
        "endpoint on loopback, appending one JSON line per message to --out.",
    )
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--webhook-port", type=int, default=8026)
    parser.add_argument("--secret-file", required=True, help="the webhook's shared secret")
    parser.add_argument("--out", required=True, help="JSON lines of what arrived")
    args = parser.parse_args(argv)
    recorder = Recorder(Path(args.out))
    secret = Path(args.secret_file).read_text().strip().encode()
    smtp = Controller(MailHandler(recorder), hostname=HOST, port=args.smtp_port)
    hooks = webhook_server(args.webhook_port, secret, recorder)
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    smtp.start()
    thread = threading.Thread(target=hooks.serve_forever, daemon=True)
    thread.start()
    print(f"receivers: SMTP {HOST}:{args.smtp_port}, webhook http://{HOST}:{args.webhook_port}/")
    sys.stdout.flush()
    stopping.wait()
    hooks.shutdown()
    smtp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
