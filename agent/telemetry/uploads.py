"""Log files to the relay (R12): on request, on a rule, or on a schedule.

The relay (for an engineer or a rule) sends the instruction
``{"action": "upload_logs", "upload_id": "<uuid>", "source": "app"}`` -- or with
``"path": "/var/log/..."`` instead of ``source``. Only the configured ``[[uploads]]``
are served: a source must be one of their names; a path must resolve (symlinks and
``..`` followed) to a file one of their globs matches *inside that glob's directory*.
Anything else is refused with ``forbidden_path`` / ``unknown_source`` and written to the
local audit log (the requester audits the refusal on its side).

Accepted uploads are **staged** first: the matching files (newest first, at most the
source's ``max_bytes`` of their most recent content), scrubbed line by line (R28:
log lines leave the device only scrubbed), into ``<staging>/<id>.tar.gz`` with its
size and SHA-256 in ``<id>.json``. The instruction is answered then; the upload runs in
the background and survives reconnects and agent restarts:

``logs`` channel (BULK priority), OPEN meta ``{"upload", "source", "reason", "size",
"sha256", "format": "tar.gz"}`` -> ACCEPT meta ``{"offset": N}`` (what the relay already
has) -> raw chunks from N to the end -> half-close -> the relay answers
``{"ok": true}`` once the SHA-256 matched, or ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import logging
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.audit import AuditLog
from agent.control import InstructionError
from agent.telemetry.config import UploadConfig
from telemetry.scrub import Scrubber
from tunnel import ErrorCode, Priority
from tunnel.aio import ChannelRefusedError, Tunnel
from tunnel.errors import TunnelError

log = logging.getLogger(__name__)

ACTION = "upload_logs"
FORMAT = "tar.gz"
#: One DATA message; the tunnel frames it in 16 KiB chunks behind any control traffic.
CHUNK = 64 * 1024
#: All staged uploads together (the device's disk is the equipment's first).
MAX_STAGED_BYTES = 256 * 1024 * 1024
#: A staged upload the relay never took is dropped after this long.
STAGE_EXPIRY = 7 * 86_400.0
#: Waiting for the relay's verdict after the last byte (it hashes the whole file).
RESULT_TIMEOUT = 120.0
#: Between attempts of an upload whose channel failed.
RETRY_DELAY = 30.0

ERR_FORBIDDEN_PATH = "forbidden_path"
ERR_UNKNOWN_SOURCE = "unknown_source"
ERR_BAD_REQUEST = "bad_request"
ERR_BUSY = "busy"
ERR_NOTHING = "nothing_to_upload"


@dataclass(frozen=True)
class Manifest:
    upload: str
    source: str
    reason: str
    size: int
    sha256: str
    files: int
    created: float


class Uploads:
    """The ``upload_logs`` action and the background uploader."""

    def __init__(
        self,
        configs: tuple[UploadConfig, ...],
        staging: Path,
        scrubber: Scrubber,
        *,
        tunnel: Callable[[], Tunnel | None],
        connected: asyncio.Event,
        audit: AuditLog | None = None,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self._configs = {c.name: c for c in configs}
        self._staging = staging
        self._scrubber = scrubber
        self._tunnel = tunnel
        self._connected = connected
        self._audit = audit
        self._retry_delay = retry_delay
        self._kick = asyncio.Event()
        self.completed: list[str] = []

    # -- the instruction ----------------------------------------------------------------

    async def handle(self, instruction: dict[str, Any]) -> dict[str, Any]:
        """``upload_logs``: check, stage, answer; the upload itself follows."""
        upload_id = instruction.get("upload_id")
        if not isinstance(upload_id, str) or not _is_uuid(upload_id):
            raise InstructionError(ERR_BAD_REQUEST, '"upload_id" must be a uuid')
        config, files = await asyncio.to_thread(
            self._authorise, instruction.get("source"), instruction.get("path")
        )
        manifest = await asyncio.to_thread(self._stage, upload_id, config, files, "request")
        self._kick.set()
        return {k: v for k, v in asdict(manifest).items() if k != "created"}

    def _authorise(self, source: Any, path: Any) -> tuple[UploadConfig, list[Path]]:
        if path is not None:
            if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path:
                self._refuse(ERR_BAD_REQUEST, '"path" must be a file path', path=str(path)[:200])
            real = Path(os.path.realpath(path))
            for config in self._configs.values():
                if real in _matches(config):
                    return config, [real]
            self._refuse(ERR_FORBIDDEN_PATH, "that path is not a configured log file", path=path)
        if source is None and len(self._configs) == 1:
            source = next(iter(self._configs))  # "fetch logs" without a name: the only one
        if not isinstance(source, str) or source not in self._configs:
            self._refuse(
                ERR_UNKNOWN_SOURCE,
                "no configured log file has that name",
                source=str(source)[:64],
            )
        config = self._configs[source]
        return config, _matches(config)

    def _refuse(self, code: str, message: str, **detail: Any) -> Any:
        log.warning("! upload refused (%s): %s", code, detail)
        if self._audit is not None:
            self._audit.append("upload", "refused", error=code, **detail)
        raise InstructionError(code, message)

    def _stage(
        self, upload_id: str, config: UploadConfig, files: list[Path], reason: str
    ) -> Manifest:
        existing = self._manifest(upload_id)
        if existing is not None:
            return existing  # the relay repeated its request: same upload
        if not files:
            raise InstructionError(ERR_NOTHING, "the configured log file does not exist (yet)")
        if _staged_bytes(self._staging) + config.max_bytes > MAX_STAGED_BYTES:
            raise InstructionError(ERR_BUSY, "too many uploads waiting; try later")
        self._staging.mkdir(parents=True, exist_ok=True)
        target = self._staging / f"{upload_id}.tar.gz"
        budget = config.max_bytes
        part = target.with_suffix(".part")
        with tarfile.open(part, "w:gz") as tar:
            for path in sorted(files, key=_mtime, reverse=True):
                if budget <= 0:
                    break
                budget -= self._add_scrubbed(tar, path, budget)
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        os.replace(part, target)
        manifest = Manifest(
            upload_id,
            config.name,
            reason,
            target.stat().st_size,
            digest.hexdigest(),
            len(files),
            time.time(),
        )
        (self._staging / f"{upload_id}.json").write_text(json.dumps(asdict(manifest)))
        log.info("= staged upload %s (%s, %d bytes)", upload_id, config.name, manifest.size)
        return manifest

    def _add_scrubbed(self, tar: tarfile.TarFile, path: Path, budget: int) -> int:
        """Add the last `budget` bytes of `path`, scrubbed, as ``<name>``; bytes read."""
        try:
            with open(path, "rb") as src:
                size = src.seek(0, os.SEEK_END)
                start = max(0, size - budget)
                src.seek(start)
                if start:
                    src.readline()  # begin at a whole line
                with tempfile.TemporaryFile(dir=self._staging) as scrubbed:
                    for raw in src:
                        line = raw.decode("utf-8", "replace")
                        scrubbed.write(self._scrubber.scrub_line(line).encode())
                    info = tarfile.TarInfo(path.name)
                    info.size = scrubbed.tell()
                    info.mtime = int(_mtime(path))
                    scrubbed.seek(0)
                    tar.addfile(info, scrubbed)
                return size - start
        except OSError as exc:
            log.warning("! cannot read %s for upload: %s", path, exc.strerror)
            return 0

    def _manifest(self, upload_id: str) -> Manifest | None:
        try:
            raw = json.loads((self._staging / f"{upload_id}.json").read_text())
            return Manifest(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def _pending(self) -> list[Manifest]:
        manifests = []
        for meta in sorted(self._staging.glob("*.json")):
            manifest = self._manifest(meta.stem)
            if manifest is None or time.time() - manifest.created > STAGE_EXPIRY:
                self._discard(meta.stem)
                continue
            manifests.append(manifest)
        return sorted(manifests, key=lambda m: m.created)

    def _discard(self, upload_id: str) -> None:
        for suffix in (".json", ".tar.gz", ".part"):
            (self._staging / f"{upload_id}{suffix}").unlink(missing_ok=True)

    # -- scheduled uploads ----------------------------------------------------------------

    async def stage_all(self, reason: str = "schedule") -> list[Manifest]:
        """Stage every configured source under a new id (the schedule)."""
        staged = []
        for config in self._configs.values():
            files = await asyncio.to_thread(_matches, config)
            try:
                staged.append(
                    await asyncio.to_thread(self._stage, str(uuid.uuid4()), config, files, reason)
                )
            except InstructionError as exc:
                log.info("= scheduled upload of %s skipped: %s", config.name, exc.message)
        self._kick.set()
        return staged

    # -- the uploader -------------------------------------------------------------------

    def kick(self) -> None:
        """Try pending uploads now (a new link is up, or something was staged)."""
        self._kick.set()

    async def run(self) -> None:
        """Upload what is staged whenever the link is up; retry what failed."""
        while True:
            await self._connected.wait()
            self._kick.clear()
            pending = await asyncio.to_thread(self._pending) if self._staging.exists() else []
            failed = False
            for manifest in pending:
                if not await self._send(manifest):
                    failed = True
                    break
            try:
                async with asyncio.timeout(self._retry_delay if failed else None):
                    await self._kick.wait()
            except TimeoutError:
                pass

    async def _send(self, manifest: Manifest) -> bool:
        """Send one staged upload; False if it must be retried later."""
        tunnel = self._tunnel()
        if tunnel is None:
            return False
        meta = {
            "upload": manifest.upload,
            "source": manifest.source,
            "reason": manifest.reason,
            "size": manifest.size,
            "sha256": manifest.sha256,
            "format": FORMAT,
        }
        try:
            channel = await tunnel.open_channel("logs", meta=meta, priority=Priority.BULK)
        except ChannelRefusedError as exc:
            if exc.code in (ErrorCode.FORBIDDEN, ErrorCode.BAD_REQUEST):
                await self._finished(manifest, "refused", exc.reason)
                return True
            log.info("= upload %s not accepted now: %s", manifest.upload, exc)
            return False
        except TunnelError:
            return False
        try:
            offset = channel.accept_meta.get("offset", 0)
            if type(offset) is not int or not 0 <= offset <= manifest.size:
                offset = 0
            path = self._staging / f"{manifest.upload}.tar.gz"
            f = await asyncio.to_thread(open, path, "rb")
            try:
                f.seek(offset)
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    await channel.send(chunk)
            finally:
                f.close()
            await channel.close()
            async with asyncio.timeout(RESULT_TIMEOUT):
                answer = json.loads(await channel.recv())
        except (TunnelError, EOFError, TimeoutError, ValueError, OSError) as exc:
            log.info("= upload %s interrupted (%s); will resume", manifest.upload, exc)
            channel.reset(ErrorCode.CANCELLED)
            return False
        if isinstance(answer, dict) and answer.get("ok") is True:
            await self._finished(manifest, "ok", None)
        else:
            error = answer.get("error") if isinstance(answer, dict) else "bad answer"
            await self._finished(manifest, "failed", str(error))
        return True

    async def _finished(self, manifest: Manifest, outcome: str, error: str | None) -> None:
        log.info("= upload %s %s%s", manifest.upload, outcome, f": {error}" if error else "")
        if self._audit is not None:
            await asyncio.to_thread(
                self._audit.append,
                "upload",
                outcome,
                upload=manifest.upload,
                source=manifest.source,
                size=manifest.size,
                sha256=manifest.sha256,
                error=error,
            )
        await asyncio.to_thread(self._discard, manifest.upload)
        if outcome == "ok":
            self.completed.append(manifest.upload)


def _matches(config: UploadConfig) -> list[Path]:
    """Regular files the upload's glob matches, resolved, inside the glob's directory."""
    directory = Path(os.path.realpath(os.path.dirname(config.path)))
    found = []
    for name in glob.glob(config.path):
        real = Path(os.path.realpath(name))
        if real.parent == directory and real.is_file():
            found.append(real)
    return sorted(set(found))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _staged_bytes(staging: Path) -> int:
    if not staging.exists():
        return 0
    return sum(p.stat().st_size for p in staging.iterdir() if p.is_file())


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
