"""Where the demo's alarm notifications go: a local SMTP sink and a webhook receiver.

Rules send e-mail through SMTP and call signed webhooks (R8). On one machine both land
in ``sim.receivers``, which verifies the webhook's signature and writes what arrived to
``var/notifications.jsonl``, so a user can watch a failing device notify someone.
"""

from __future__ import annotations

import os
import secrets
import sys

from stack import processes
from stack.layout import Layout

DEMO_RULE = "Urgent codes"
DEMO_RULE_TEXT = "when severity >= urgent then alarm urgent, email service@localhost, webhook demo"


def write_relay_telemetry_config(lay: Layout) -> None:
    """The relay's telemetry file: uploads, notification targets, the webhook's secret."""
    secret_file = lay.root / "webhook-secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    if lay.relay_telemetry_config.exists():
        return
    fd = os.open(lay.relay_telemetry_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f'upload_dir = "{lay.upload_dir}"\n'
            f'portal_url = "{lay.portal_url}"\n\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {lay.smtp_port}\n\n'
            f'[webhooks.demo]\nurl = "http://127.0.0.1:{lay.webhook_port}/"\n'
            f'secret = "{secret_file.read_text().strip()}"\n'
        )


def start_receivers(lay: Layout) -> None:
    argv = [
        sys.executable, "-m", "sim.receivers",
        "--smtp-port", str(lay.smtp_port), "--webhook-port", str(lay.webhook_port),
        "--secret-file", str(lay.root / "webhook-secret"),
        "--out", str(lay.root / "notifications.jsonl"),
    ]  # fmt: skip
    processes.start(lay.run, lay.logs, "receivers", argv)


def ensure_demo_rule(lay: Layout) -> None:
    """One rule so that a failing demo device mails and calls the webhook (once)."""
    from store.db import make_engine, session_scope
    from store.telemetry.rules import create_rule, list_rules

    engine = make_engine(lay.db_url)
    try:
        with session_scope(engine) as session:
            if not any(rule.name == DEMO_RULE for rule in list_rules(session)):
                create_rule(
                    session, name=DEMO_RULE, text=DEMO_RULE_TEXT, actor="outlink up",
                    webhooks=["demo"],
                )  # fmt: skip
    finally:
        engine.dispose()
