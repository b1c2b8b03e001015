"""The device simulator, the configuration files, and the retention CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.telemetry.config import load_telemetry_config
from pki.fleet import create_device, ensure_site
from relay_server.telemetry.config import load_telemetry_config as load_server_config
from store.db import session_scope
from store.telemetry.ingest import ingest
from telemetry.records import Metrics, Severity
from tests.conftest import UNIT
from tomlconfig import ConfigError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
T = 30 * UNIT


async def test_the_simulator_fails_on_command_and_recovers(tmp_path: Path) -> None:
    log, control = tmp_path / "app.log", tmp_path / "control"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim",
        "--log",
        str(log),
        "--control",
        str(control),
        "--props",
        str(tmp_path / "device.json"),
        "--interval",
        "0.02",
        cwd=REPO,
        env=ENV,
    )

    async def until(text: str) -> None:
        async with asyncio.timeout(T):
            while text not in (log.read_text() if log.exists() else ""):
                await asyncio.sleep(0.02)

    try:
        await until("I1001 Scan started")
        control.write_text("fail E9003\n")
        await until("E9003 High-voltage generator arc")
        control.write_text("ok\n")
        size = log.stat().st_size
        async with asyncio.timeout(T):
            while "I1001" not in log.read_text()[size:]:
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)
        await until("E9001 Tube overtemperature")
        control.write_text("stop\n")
        assert await asyncio.wait_for(proc.wait(), T) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    props = json.loads((tmp_path / "device.json").read_text())
    assert props["model"] == "CT-9000" and "serial" in props


def test_agent_telemetry_config(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.toml"
    path.write_text(
        'poll_interval = 30\nprocesses = ["sim"]\n[[sources]]\nname = "app"\npath = "logs/a.log"\n'
        '[severity]\ndefault = "routine"\ncodes = { "E9*" = "urgent" }\n'
        '[scrub]\nname_keys = ["radiographer"]\n'
        '[[uploads]]\nname = "app"\npath = "logs/a.log*"\n'
    )
    config = load_telemetry_config(path)
    assert config.poll_interval == 30.0 and config.processes == ("sim",)
    assert config.sources[0].path == str(tmp_path / "logs" / "a.log")
    assert config.severity.classify("E9001") is Severity.URGENT
    assert config.severity.classify("I1") is Severity.ROUTINE
    assert "radiographer" in config.scrub.name_keys and "patient" in config.scrub.name_keys
    for bad, message in (
        ("polling = 1\n", "unknown key"),
        ("poll_interval = 0\n", "poll_interval: must be > 0"),
        ('[[sources]]\nname = "App Log"\npath = "x"\n', "short lowercase name"),
        ('[[sources]]\nname = "a"\npath = "x"\npattern = "(?P<code>x)"\n', "'code' and 'message'"),
        ('[severity]\ncodes = { "E1" = "fatal" }\n', "unknown severity"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_telemetry_config(path)


def test_relay_telemetry_config(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.toml"
    path.write_text(
        '[smtp]\nhost = "smtp.example"\nport = 587\n[webhooks.ops]\n'
        'url = "https://hooks.example/x"\n'
    )
    env = {
        "OUTLINK_TELEMETRY_WEBHOOKS_OPS_SECRET": "s" * 20,
        "OUTLINK_TELEMETRY_SMTP_PASSWORD": "pw",
    }
    config = load_server_config(path, env)
    assert config.webhooks["ops"].secret == b"s" * 20 and config.smtp.password == "pw"
    for bad, message in (
        (
            '[webhooks.ops]\nurl = "http://hooks.example/x"\nsecret = "' + "s" * 20 + '"\n',
            "plain http only for a loopback",
        ),
        ('[webhooks.ops]\nurl = "https://h.example/"\nsecret = "short"\n', "at least 16"),
        ("[notify]\nrate_limit = 0\n", "rate_limit"),
        ('[smtp]\nport = "25"\n', "smtp.port: expected integer, got string '25'"),
        ("retention_days = 1\n", "unknown key"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_server_config(path, {})


def test_maintain_downsamples_then_prunes(db_url: str, db_engine: Engine, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with session_scope(db_engine) as session:
        device = create_device(session, ensure_site(session, "acme", "lab")).id
        ingest(
            session,
            [
                (
                    device,
                    [
                        Metrics(1, (now - timedelta(days=40)).timestamp(), {"cpu.percent": 9.0}),
                        Metrics(2, (now - timedelta(hours=3)).timestamp(), {"cpu.percent": 1.0}),
                        # The current hour stays pending: maintain must still finish.
                        Metrics(3, now.timestamp(), {"cpu.percent": 2.0}),
                    ],
                )
            ],
            received_at=now,
        )
    out = subprocess.run(
        [sys.executable, "-m", "relay_server.telemetry", "maintain", "--db", db_url],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=T,
        check=True,
    )
    report = json.loads(out.stdout.splitlines()[-1])
    # Two finished hours -- three if an hour ended while maintain ran.
    same_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) == now.replace(
        minute=0, second=0, microsecond=0
    )
    assert report["downsampled_hours"] == (2 if same_hour else 3) and report["records"] == 1


async def test_the_demo_receivers_record_mail_and_verify_webhooks(tmp_path: Path) -> None:
    import smtplib
    import time
    import urllib.error
    import urllib.request
    from email.message import EmailMessage

    from telemetry.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
    from tests.telemetry.conftest import free_port

    secret, out = tmp_path / "secret", tmp_path / "received.jsonl"
    secret.write_text("s" * 32 + "\n")
    smtp_port, hook_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim.receivers",
        "--smtp-port",
        str(smtp_port),
        "--webhook-port",
        str(hook_port),
        "--secret-file",
        str(secret),
        "--out",
        str(out),
        cwd=REPO,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert b"receivers:" in await asyncio.wait_for(proc.stdout.readline(), T)

        def deliver() -> list[int]:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "a@x", "b@y", "[Outlink] URGENT"
            message.set_content("alarm")
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=T) as client:
                client.send_message(message)
            codes = []
            for key in (b"s" * 32, b"forged-key-xxxxxxxxxx"):
                body, ts = b'{"event":"alarm"}', int(time.time())
                request = urllib.request.Request(
                    f"http://127.0.0.1:{hook_port}/",
                    data=body,
                    method="POST",
                    headers={TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(key, ts, body)},
                )
                try:
                    with urllib.request.urlopen(request, timeout=T) as response:
                        codes.append(response.status)
                except urllib.error.HTTPError as exc:
                    codes.append(exc.code)
            return codes

        assert await asyncio.to_thread(deliver) == [204, 401]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), T)
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(e["channel"], e.get("verified")) for e in entries] == [
        ("email", None),
        ("webhook", True),
        ("webhook", False),
    ]
    assert entries[0]["subject"] == "[Outlink] URGENT" and entries[1]["payload"]["event"] == "alarm"
