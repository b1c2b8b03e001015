"""The ``logs`` channel, relay side: receive a staged log upload, resumably, and verify it.

OPEN meta (from `agent.telemetry.uploads`): ``{"upload": uuid, "source", "reason",
"size", "sha256", "format": "tar.gz"}``. The relay refuses (BAD_REQUEST) malformed
meta and uploads over ``max_upload_bytes``; refuses (FORBIDDEN) an upload id that
belongs to another device; and (REFUSED, try later) a second upload of the same
device while one runs, or more than MAX_AGENT_UPLOADS_PER_DAY the agent started itself.

It accepts with ``{"offset": N}``: the bytes of ``<upload_dir>/<device>/<id>.part``
it already has from an earlier, interrupted attempt (0 for a new upload). Chunks are
appended; on EOF the whole file's SHA-256 must equal the announced one: then it
becomes ``<id>.tar.gz``, the row is ``complete`` and the agent gets ``{"ok": true}``.
A mismatch deletes the part and answers ``{"ok": false, "error": "hash_mismatch"}``.
Bytes beyond the announced size reset the channel. The row's ``received`` follows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select

from relay_server.telemetry.config import TelemetryServerConfig
from store.db import make_sessionmaker, session_scope
from store.telemetry.uploads import (
    UPLOAD_COMPLETE,
    UPLOAD_FAILED,
    UPLOAD_RECEIVING,
    UPLOAD_REFUSED,
    UPLOAD_REQUESTED,
    TelemetryLogUpload,
)
from telemetry.records import SOURCE
from tunnel import ErrorCode, Priority
from tunnel.aio import ChannelError, IncomingChannel

if TYPE_CHECKING:
    from relay_server.agent_link import AgentLink
    from relay_server.audit import AuditLog

log = logging.getLogger(__name__)

FORMAT = "tar.gz"
REASONS = frozenset({"request", "rule", "schedule"})
#: Uploads an agent may start on its own (schedule) per day; requested ones do not count.
MAX_AGENT_UPLOADS_PER_DAY = 24
#: The row's ``received`` is updated every this many bytes (not per chunk).
PROGRESS_STEP = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class UploadMetaError(ValueError):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class UploadReceiver:
    """Serves every agent's ``logs`` channels (one instance per relay)."""

    def __init__(self, engine: Engine, config: TelemetryServerConfig, *, audit: AuditLog) -> None:
        self._sessions = make_sessionmaker(engine)
        self._dir = Path(config.upload_dir)
        self._max = config.max_upload_bytes
        self._audit = audit
        self._active: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.finished = asyncio.Event()  # set after each upload ends (tests wait on it)

    async def serve(self, link: AgentLink, request: IncomingChannel) -> None:
        """`ControlContext.channels["logs"]`."""
        device_id = link.device_id
        try:
            meta = parse_upload_meta(request.meta, self._max)
        except UploadMetaError as exc:
            self.stats["bad_meta"] += 1
            request.refuse(exc.code, exc.reason)
            return
        if device_id in self._active:
            request.refuse(ErrorCode.REFUSED, "one upload at a time")
            return
        self._active.add(device_id)
        try:
            verdict = await asyncio.to_thread(self._claim, link, meta)
            if verdict is not None:
                self.stats[f"refused_{verdict.code.name.lower()}"] += 1
                if verdict.code is ErrorCode.FORBIDDEN:
                    self._audit.record(
                        "telemetry.upload_forbidden",
                        "log upload with another device's upload id refused",
                        outcome="failure",
                        device_id=device_id,
                        source=link.peer,
                        upload=meta["upload"],
                    )
                request.refuse(verdict.code, verdict.reason)
                return
            await self._receive(link, request, meta)
        finally:
            self._active.discard(device_id)
            self.finished.set()

    def _paths(self, device_id: str, upload_id: str) -> tuple[Path, Path]:
        directory = self._dir / device_id
        return directory / f"{upload_id}.part", directory / f"{upload_id}.{FORMAT}"

    def _claim(self, link: AgentLink, meta: dict[str, Any]) -> UploadMetaError | None:
        """Worker thread: find or create the row; None if the upload may proceed."""
        now = datetime.now(UTC)
        with session_scope(self._sessions) as session:
            row = session.get(TelemetryLogUpload, meta["upload"])
            if row is None:
                started_by_agent = session.scalar(
                    select(func.count(TelemetryLogUpload.id)).where(
                        TelemetryLogUpload.device_id == link.device_id,
                        TelemetryLogUpload.reason == "schedule",
                        TelemetryLogUpload.created_at >= now - timedelta(days=1),
                    )
                )
                if (started_by_agent or 0) >= MAX_AGENT_UPLOADS_PER_DAY:
                    return UploadMetaError(ErrorCode.REFUSED, "too many uploads today")
                row = TelemetryLogUpload(
                    id=meta["upload"],
                    device_id=link.device_id,
                    source=meta["source"],
                    reason="schedule",  # nobody asked: the agent's own schedule
                    requested_by=None,
                    state=UPLOAD_REQUESTED,
                    received=0,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
            elif row.device_id != link.device_id:
                return UploadMetaError(ErrorCode.FORBIDDEN, "not this device's upload")
            elif row.state in (UPLOAD_REFUSED, UPLOAD_FAILED) and row.reason != "schedule":
                row.state = UPLOAD_REQUESTED  # the agent retries what we asked for
            if row.state != UPLOAD_COMPLETE:
                if (row.size, row.sha256) != (meta["size"], meta["sha256"]):
                    # Staged anew (or first contact): an older part is not a prefix of it.
                    part, _ = self._paths(link.device_id, row.id)
                    part.unlink(missing_ok=True)
                row.size, row.sha256 = meta["size"], meta["sha256"]
                row.state, row.updated_at = UPLOAD_RECEIVING, now
        return None

    async def _receive(
        self, link: AgentLink, request: IncomingChannel, meta: dict[str, Any]
    ) -> None:
        upload_id, size = meta["upload"], meta["size"]
        part, final = self._paths(link.device_id, upload_id)
        if final.exists():
            offset = size  # complete already: the agent only needs the verdict
        else:
            await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
            offset = min(await asyncio.to_thread(_size, part), size)
        channel = request.accept({"offset": offset}, priority=Priority.BULK)
        log.info("< upload %s from offset %d of %d", upload_id, offset, size)
        if 0 < offset < size:
            self.stats["resumed"] += 1
        if final.exists():
            await self._answer(channel, {"ok": True})
            return
        f = _open_at(part, offset)  # a local open; no await may come between it and `try`
        reported = offset
        received_all = False
        try:
            async for chunk in channel:
                if offset + len(chunk) > size:
                    self.stats["oversize"] += 1
                    channel.reset(ErrorCode.BAD_REQUEST, "more bytes than announced")
                    return
                await asyncio.to_thread(f.write, chunk)
                offset += len(chunk)
                if offset - reported >= PROGRESS_STEP:
                    reported = offset
                    await asyncio.to_thread(self._progress, upload_id, offset)
            received_all = True
        except ChannelError as exc:
            log.info("= upload %s interrupted at %d: %s", upload_id, offset, exc)
            return
        finally:
            if not received_all:  # the link went (error or cancelled): the part stays
                self.stats["interrupted"] += 1
            # Shielded: a cancelled handler must still close (and fsync) its file.
            await asyncio.shield(asyncio.to_thread(self._closed, f, upload_id, offset))
        if offset != size:
            self.stats["short"] += 1
            await self._answer(channel, {"ok": False, "error": "size_mismatch"})
            return
        ok = await asyncio.to_thread(_sha256, part) == meta["sha256"]
        await asyncio.to_thread(self._finish, link.device_id, upload_id, ok)
        self.stats["complete" if ok else "hash_mismatch"] += 1
        await self._answer(channel, {"ok": True} if ok else {"ok": False, "error": "hash_mismatch"})

    async def _answer(self, channel: Any, answer: dict[str, Any]) -> None:
        try:
            await channel.send(json.dumps(answer).encode())
            await channel.close()
        except ChannelError:
            pass  # the agent will ask again and get the same verdict

    def _closed(self, f: IO[bytes], upload_id: str, received: int) -> None:
        _close(f)
        self._progress(upload_id, received)

    def _progress(self, upload_id: str, received: int) -> None:
        with session_scope(self._sessions) as session:
            row = session.get(TelemetryLogUpload, upload_id)
            if row is not None and row.state == UPLOAD_RECEIVING:
                row.received, row.updated_at = received, datetime.now(UTC)

    def _finish(self, device_id: str, upload_id: str, ok: bool) -> None:
        part, final = self._paths(device_id, upload_id)
        now = datetime.now(UTC)
        with session_scope(self._sessions) as session:
            row = session.get(TelemetryLogUpload, upload_id)
            if row is None:
                return
            if ok:
                os.replace(part, final)
                row.state, row.completed_at = UPLOAD_COMPLETE, now
                row.stored_name = f"{device_id}/{final.name}"
                row.error = None
            else:
                part.unlink(missing_ok=True)
                row.state, row.error, row.received = UPLOAD_FAILED, "hash_mismatch", 0
            row.updated_at = now
        log.info("= upload %s %s", upload_id, "complete" if ok else "failed: hash mismatch")


def parse_upload_meta(meta: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The checked metadata of an agent's upload OPEN; raises UploadMetaError, nothing else."""
    upload = meta.get("upload")
    try:
        if not isinstance(upload, str) or str(uuid.UUID(upload)) != upload:
            raise ValueError
    except ValueError:
        raise UploadMetaError(ErrorCode.BAD_REQUEST, '"upload" must be a uuid') from None
    source = meta.get("source")
    if not isinstance(source, str) or not SOURCE.fullmatch(source):
        raise UploadMetaError(ErrorCode.BAD_REQUEST, '"source" must be a source name')
    size = meta.get("size")
    if type(size) is not int or size <= 0:
        raise UploadMetaError(ErrorCode.BAD_REQUEST, '"size" must be a positive integer')
    if size > max_bytes:
        raise UploadMetaError(ErrorCode.BAD_REQUEST, f"uploads are limited to {max_bytes} bytes")
    sha = meta.get("sha256")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise UploadMetaError(ErrorCode.BAD_REQUEST, '"sha256" must be 64 lowercase hex digits')
    if meta.get("format") != FORMAT:
        raise UploadMetaError(ErrorCode.BAD_REQUEST, f'"format" must be "{FORMAT}"')
    reason = meta.get("reason", "schedule")
    if not isinstance(reason, str) or reason not in REASONS:  # a list is not hashable
        raise UploadMetaError(ErrorCode.BAD_REQUEST, '"reason" must be request, rule or schedule')
    return {"upload": upload, "source": source, "size": size, "sha256": sha, "reason": reason}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_at(path: Path, offset: int) -> IO[bytes]:
    f = open(path, "r+b" if path.exists() else "wb")  # noqa: SIM115 - closed by the caller
    f.truncate(offset)  # a part longer than announced (never valid) is cut back
    f.seek(offset)
    return f


def _close(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
