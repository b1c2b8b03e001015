"""Log-file uploads from devices (``telemetry_log_uploads``): requested by the portal or a
rule, refused or received by the relay, downloadable once complete."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base

#: Upload rows (and the caller's stored files) are kept this long.
UPLOAD_RETENTION = timedelta(days=90)

UPLOAD_REQUESTED = "requested"
UPLOAD_RECEIVING = "receiving"
UPLOAD_COMPLETE = "complete"
UPLOAD_FAILED = "failed"
UPLOAD_REFUSED = "refused"


class TelemetryLogUpload(Base):
    """A log-file upload from a device: requested, receiving, complete (hash verified)."""

    __tablename__ = "telemetry_log_uploads"
    __table_args__ = (
        CheckConstraint(
            "state IN ('requested', 'receiving', 'complete', 'failed', 'refused')", name="state"
        ),
        Index("ix_telemetry_log_uploads_device_created", "device_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=UPLOAD_REQUESTED)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(String(64))
    #: Path of the stored file relative to the relay's upload directory.
    stored_name: Mapped[str | None] = mapped_column(String(200))


#: The instruction action the agent serves (`agent.telemetry.uploads`).
UPLOAD_ACTION = "upload_logs"


def request_log_upload(
    session: Session,
    *,
    device_id: str,
    source: str,
    requested_by: str | None,
    reason: str = "request",
    now: datetime | None = None,
) -> tuple[TelemetryLogUpload, dict[str, Any]]:
    """Create an upload row and return it with the instruction to send to the agent
    (``relay rpc instruct``). The agent answers at once and uploads in the background."""
    now = now or datetime.now(UTC)
    upload = TelemetryLogUpload(
        id=str(uuid.uuid4()),
        device_id=device_id,
        source=source[:32],
        reason=reason,
        requested_by=requested_by,
        state=UPLOAD_REQUESTED,
        received=0,
        created_at=now,
        updated_at=now,
    )
    session.add(upload)
    session.flush()
    return upload, {"action": UPLOAD_ACTION, "upload_id": upload.id, "source": source}


def refuse_log_upload(
    session: Session, upload_id: str, error: str, *, now: datetime | None = None
) -> None:
    """The agent refused the request (e.g. ``forbidden_path``); the caller audits it."""
    session.execute(
        update(TelemetryLogUpload)
        .where(TelemetryLogUpload.id == upload_id)
        .values(state=UPLOAD_REFUSED, error=error[:64], updated_at=now or datetime.now(UTC))
    )


def list_log_uploads(
    session: Session, device_id: str, *, limit: int = 50
) -> list[TelemetryLogUpload]:
    return list(
        session.scalars(
            select(TelemetryLogUpload)
            .where(TelemetryLogUpload.device_id == device_id)
            .order_by(TelemetryLogUpload.created_at.desc())
            .limit(limit)
        )
    )


def downloadable_upload(
    session: Session, upload_id: str, device_id: str
) -> TelemetryLogUpload | None:
    """The complete upload `upload_id` of `device_id` (None otherwise): what a download
    route serves, from ``<upload_dir>/<stored_name>``, after its scope check."""
    return session.scalars(
        select(TelemetryLogUpload).where(
            TelemetryLogUpload.id == upload_id,
            TelemetryLogUpload.device_id == device_id,
            TelemetryLogUpload.state == UPLOAD_COMPLETE,
        )
    ).first()
