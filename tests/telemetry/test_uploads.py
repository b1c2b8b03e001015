"""Log files from the device (R12): on request and on a rule, scrubbed, compressed,
resumable after a dropped connection, hash-verified, size-limited; only configured
paths, and every refusal audited on the device."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import relay_server.telemetry.uploads as receiver_module
from agent.audit import read_entries
from protocol.aio.client import RpcError, ServiceClient
from store.portal import AuditEvent
from store.telemetry.alarms import TelemetryAlarm
from store.telemetry.rules import create_rule
from store.telemetry.uploads import (
    TelemetryLogUpload,
    downloadable_upload,
    refuse_log_upload,
    request_log_upload,
)
from tests.conftest import UNIT
from tests.telemetry.conftest import RunningAgent, World
from tunnel import ErrorCode

T = 10 * UNIT
SECRET_LINE = (
    "2025-11-27 10:00:0{n}.000 INFO [acq] I1001 patient=DOE^JOHN PID=4711{n} from 10.1.1.{n}\n"
)


@pytest.fixture
async def portal(world: World) -> AsyncIterator[ServiceClient]:
    """The portal's side: a service client on the relay's /service endpoint."""
    client = await ServiceClient.connect(
        world.url + "/service", world.pki.client_context(world.pki.portal), open_timeout=T
    )
    yield client
    await client.close()


def log_dir(tmp_path: Path, lines: int = 3) -> Path:
    directory = tmp_path / "equipment-logs"
    directory.mkdir()
    (directory / "app.log").write_text("".join(SECRET_LINE.format(n=n) for n in range(lines)))
    (directory / "app.log.1").write_text("2025-11-26 23:59:59.000 INFO old line\n")
    (tmp_path / "secret.txt").write_text("root password\n")
    os.symlink(tmp_path / "secret.txt", directory / "app.log.lnk")  # points outside
    return directory


def uploads_config(directory: Path, **extra: Any) -> dict[str, Any]:
    return {"uploads": [{"name": "app", "path": str(directory / "app.log*"), **extra}]}


async def instruct(portal: ServiceClient, agent: RunningAgent, instruction: dict[str, Any]) -> Any:
    return (await portal.rpc("instruct", device=agent.device_id, instruction=instruction))["result"]


def members(world: World, upload: TelemetryLogUpload) -> dict[str, bytes]:
    assert upload.stored_name is not None
    data = (Path(world.service.config.upload_dir) / upload.stored_name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == upload.sha256 and len(data) == upload.size
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


async def test_an_engineer_fetches_the_logs_scrubbed_and_verified(
    world: World, portal: ServiceClient, tmp_path: Path
) -> None:
    agent = await world.agent(telemetry=uploads_config(log_dir(tmp_path)))
    upload, instruction = world.db(
        lambda s: request_log_upload(s, device_id=agent.device_id, source="app", requested_by="eve")
    )
    result = await instruct(portal, agent, instruction)
    assert result["upload"] == upload.id and result["files"] == 2  # the symlink is not one
    done = await world.until(
        lambda s: downloadable_upload(s, upload.id, agent.device_id), "upload complete"
    )
    files = members(world, done)
    assert set(files) == {"app.log", "app.log.1"}
    text = files["app.log"].decode()
    assert text.startswith("2025-11-27 10:00:00.000 INFO [acq] I1001 patient=<name> PID=<id>")
    assert "DOE" not in text and "4711" not in text and "10.1.1." not in text
    assert b"root password" not in b"".join(files.values())
    assert world.db(lambda s: downloadable_upload(s, upload.id, "someone-else")) is None


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "{dir}/../secret.txt",
        "{dir}/app.log.lnk",
        "{dir}/missing.log",
        "relative/app.log",
    ],
)
async def test_paths_outside_the_configured_ones_are_refused_and_audited(
    world: World, portal: ServiceClient, tmp_path: Path, path: str
) -> None:
    directory = log_dir(tmp_path)
    agent = await world.agent(telemetry=uploads_config(directory))
    upload, instruction = world.db(
        lambda s: request_log_upload(s, device_id=agent.device_id, source="app", requested_by="eve")
    )
    instruction = {**instruction, "path": path.format(dir=directory)}
    del instruction["source"]
    with pytest.raises(RpcError) as info:
        await instruct(portal, agent, instruction)
    assert info.value.body.get("agent_error") == "forbidden_path"
    world.db(lambda s: refuse_log_upload(s, upload.id, "forbidden_path"))  # what the portal does
    audit = [e for _, e, _ in read_entries(agent.data_dir / "audit.log") if e]
    refusals = [e for e in audit if e["kind"] == "upload" and e["outcome"] == "refused"]
    assert refusals[-1]["detail"]["path"] == path.format(dir=directory)
    assert refusals[-1]["detail"]["error"] == "forbidden_path"
    instruction_entry = [e for e in audit if e["kind"] == "instruction"][-1]
    assert instruction_entry["outcome"] == "refused"
    assert instruction_entry["detail"]["action"] == "upload_logs"
    assert not list(Path(world.service.config.upload_dir).rglob("*.tar.gz"))


async def test_a_configured_path_may_be_named_directly(
    world: World, portal: ServiceClient, tmp_path: Path
) -> None:
    directory = log_dir(tmp_path)
    agent = await world.agent(telemetry=uploads_config(directory))
    upload, instruction = world.db(
        lambda s: request_log_upload(s, device_id=agent.device_id, source="app", requested_by="eve")
    )
    result = await instruct(
        portal, agent, {**instruction, "path": f"{directory}/x/../app.log.1", "source": None}
    )
    assert result["files"] == 1
    done = await world.until(
        lambda s: downloadable_upload(s, upload.id, agent.device_id), "upload complete"
    )
    assert set(members(world, done)) == {"app.log.1"}


async def test_an_upload_resumes_after_the_connection_drops(
    world: World, portal: ServiceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    rng = random.Random(7)
    with open(directory / "app.log", "w") as f:  # ~3 MiB that compresses to ~1.5 MiB
        for n in range(40_000):
            f.write(f"{n:08d} {rng.getrandbits(256):064x} status ok\n")
    agent = await world.agent(telemetry=uploads_config(directory, max_bytes=8_000_000))
    monkeypatch.setattr(receiver_module, "PROGRESS_STEP", 128 * 1024)
    receiver = world.service.uploads
    dropped: list[int] = []
    original = receiver._progress
    loop = asyncio.get_running_loop()

    def drop() -> None:
        link = world.relay.registry.agents[agent.device_id]
        world.relay.tasks.spawn(link.close(ErrorCode.GOING_AWAY, "test drop"), name="drop")

    def progress(upload_id: str, received: int) -> None:  # runs in a worker thread
        original(upload_id, received)
        if not dropped and received >= 256 * 1024:
            dropped.append(received)
            loop.call_soon_threadsafe(drop)

    monkeypatch.setattr(receiver, "_progress", progress)
    upload, instruction = world.db(
        lambda s: request_log_upload(s, device_id=agent.device_id, source="app", requested_by="eve")
    )
    result = await instruct(portal, agent, instruction)
    done = await world.until(
        lambda s: downloadable_upload(s, upload.id, agent.device_id), "upload complete", 3 * T
    )
    assert dropped and receiver.stats["resumed"] == 1 and receiver.stats["interrupted"] == 1
    assert done.size == result["size"] > 2 * dropped[0]
    files = members(world, done)
    assert files["app.log"] == (directory / "app.log").read_bytes()
    async with asyncio.timeout(T):
        while agent.telemetry.uploads.completed != [upload.id]:  # the verdict reaches it
            await asyncio.sleep(0.02 * UNIT)
    assert not list((agent.data_dir / "uploads").glob("*"))  # staging cleaned up


@pytest.mark.parametrize("telemetry_settings", [{"max_upload_bytes": 1000}])
async def test_uploads_over_the_size_limit_are_refused(
    world: World, portal: ServiceClient, tmp_path: Path
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "app.log").write_bytes(os.urandom(50_000).hex().encode())
    agent = await world.agent(telemetry=uploads_config(directory))
    upload, instruction = world.db(
        lambda s: request_log_upload(s, device_id=agent.device_id, source="app", requested_by="eve")
    )
    await instruct(portal, agent, instruction)

    def refused_on_device() -> bool:
        entries = [e for _, e, _ in read_entries(agent.data_dir / "audit.log") if e]
        return any(e["kind"] == "upload" and e["outcome"] == "refused" for e in entries)

    async with asyncio.timeout(T):
        while not refused_on_device():
            await asyncio.sleep(0.02 * UNIT)
    assert world.service.uploads.stats["bad_meta"] == 1
    row = world.db(lambda s: s.get(TelemetryLogUpload, upload.id))
    assert row is not None and row.state == "requested"  # nothing was received


async def test_a_rule_fetches_the_logs_when_its_alarm_opens(world: World, tmp_path: Path) -> None:
    world.db(
        lambda s: create_rule(
            s, name="motor", text="when code E4012 then alarm, fetch logs app", actor="t"
        )
    )
    await world.service.alarms.reload_rules()
    directory = log_dir(tmp_path)
    await world.agent(
        telemetry={
            **uploads_config(directory),
            "sources": [{"name": "app", "path": str(directory / "app.log"), "from_start": True}],
            "send_interval": 0.1,  # E4012 is no urgent code: it goes with the schedule
        }
    )
    with open(directory / "app.log", "a") as f:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"{stamp}.000 ERROR [table] E4012 Table motor overcurrent\n")
    upload = await world.until(
        lambda s: s.scalars(
            select(TelemetryLogUpload).where(TelemetryLogUpload.state == "complete")
        ).first(),
        "the rule's upload",
    )
    alarm = world.db(lambda s: s.scalars(select(TelemetryAlarm)).one())
    assert (upload.reason, upload.requested_by) == ("rule", f"rule:{alarm.rule_id}")
    assert "app.log" in members(world, upload)


async def test_a_refused_rule_fetch_is_audited_on_the_server(world: World, tmp_path: Path) -> None:
    world.db(
        lambda s: create_rule(
            s, name="motor", text="when code E4012 then alarm, fetch logs secrets", actor="t"
        )
    )
    await world.service.alarms.reload_rules()
    directory = log_dir(tmp_path)
    agent = await world.agent(
        telemetry={
            **uploads_config(directory),
            "sources": [{"name": "app", "path": str(directory / "app.log"), "from_start": True}],
            "send_interval": 0.1,
        }
    )
    with open(directory / "app.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}.000 ERROR [table] E4012 overcurrent\n")
    event = await world.until(
        lambda s: s.scalars(
            select(AuditEvent).where(AuditEvent.kind == "telemetry.logs_refused")
        ).first(),
        "the refusal in the audit trail",
    )
    assert event.device_id == agent.device_id and event.outcome == "failure"
    assert "unknown_source" in event.summary
    row = world.db(lambda s: s.scalars(select(TelemetryLogUpload)).one())
    assert (row.state, row.error) == ("refused", "unknown_source")


@pytest.mark.parametrize("reason", [[], {}, ["rule"], 1])
def test_upload_meta_of_the_wrong_type_is_refused_not_a_crash(reason: object) -> None:
    """Found by fuzz/fuzz_upload_meta.py: a list ``reason`` raised TypeError (unhashable)."""
    meta = {
        "upload": "00000000-0000-4000-8000-000000000000",
        "source": "app",
        "size": 10,
        "sha256": "a" * 64,
        "format": receiver_module.FORMAT,
        "reason": reason,
    }
    with pytest.raises(receiver_module.UploadMetaError):
        receiver_module.parse_upload_meta(meta, 1 << 20)
