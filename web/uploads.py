"""Log files on demand (R12): ask a device for its logs, follow the upload, download it.

The flow (the agent's side is :mod:`agent.telemetry.uploads`, the relay's
:mod:`relay_server.telemetry.uploads`):

1. ``POST /devices/<id>/logs`` stores a ``requested`` upload row and commits it (the
   relay receiving the file looks the row up), then sends the agent
   ``upload_logs`` through its relay (``instruct``). The agent checks the request
   against its configured ``[[uploads]]`` and answers once the files are staged;
   the upload itself follows in the background, resumable.
2. The agent refusing (``forbidden_path``, ``unknown_source``...) marks the row
   ``refused``; a device that cannot be asked (offline, relay unreachable) marks it
   ``failed``. Both are audited and shown as a message.
3. A ``complete`` upload (SHA-256 verified by the relay on arrival) is downloaded as
   an attachment from ``<upload_dir>/<stored_name>``, found only through
   :func:`store.telemetry.uploads.downloadable_upload` for the device in scope, confined to
   ``upload_dir``, and hashed again before it is served (a file changed at rest is not
   served). Every download is audited.

Who: ``files.view`` for all three (log files are the device's files); scope as
everywhere (another customer's device or upload answers 404).
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from store.models import Device
from store.telemetry.uploads import (
    UPLOAD_COMPLETE,
    UPLOAD_FAILED,
    UPLOAD_RECEIVING,
    UPLOAD_REFUSED,
    UPLOAD_REQUESTED,
    TelemetryLogUpload,
    downloadable_upload,
    list_log_uploads,
    refuse_log_upload,
    request_log_upload,
)
from web.authz import Perm, current_user, requires
from web.db import db
from web.fleet import load_device
from web.forms import LogUploadForm
from web.recorder import record
from web.relay import relay_link

log = logging.getLogger(__name__)

bp = Blueprint("uploads", __name__)

#: Uploads listed on a device's logs page.
HISTORY = 50
#: Upload ids are uuids; anything longer is refused before it reaches the database.
UPLOAD_ID_MAX = 36
#: Reading the file to hash it again before it is served.
HASH_CHUNK = 1024 * 1024
#: Failures of *delivering* the instruction (the device was never asked): ``failed``.
#: Any other code is the agent's own refusal: ``refused``.
DELIVERY_FAILURES = frozenset({"no-relay", "unreachable", "bad-answer", "offline", "timeout"})

REASONS = {
    "forbidden_path": "that file is not one of the device's configured log files",
    "unknown_source": "the device has no log set of that name",
    "no_default_source": "the device has several log sets (or none): name one",
    "bad_request": "the device did not understand the request",
    "busy": "the device is busy with another upload",
    "nothing_to_upload": "no log file matched on the device",
    "offline": "the device is offline",
    "no-relay": "the device is offline (no relay is known)",
    "unreachable": "its relay cannot be reached",
    "timeout": "the device did not answer in time",
    "bad-answer": "the device's answer was not understood",
    "hash_mismatch": "the file arrived damaged (its SHA-256 did not match)",
    "size_mismatch": "the file arrived incomplete",
}


def reason_text(code: str | None) -> str:
    return REASONS.get(code or "", code or "unknown error")


def refusal_text(code: str | None, source: str) -> str:
    """Why the agent said no; an unnamed request is refused when it has several sets."""
    if code == "unknown_source" and not source:
        code = "no_default_source"
    return reason_text(code)


def describe(upload: TelemetryLogUpload) -> str:
    """The upload's state in words, next to its state badge."""
    if upload.state == UPLOAD_REQUESTED:
        return "the device is preparing the files"
    if upload.state == UPLOAD_RECEIVING:
        if upload.size:
            return f"{upload.received * 100 // upload.size} % of {_size(upload.size)}"
        return "the upload has started"
    if upload.state == UPLOAD_COMPLETE:
        return f"{_size(upload.size or 0)}, SHA-256 verified"
    if upload.state == UPLOAD_REFUSED:
        return f"by the device: {refusal_text(upload.error, upload.source)}"
    return reason_text(upload.error)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


@bp.route("/devices/<device_id>/logs")
@requires(Perm.FILES_VIEW)
def logs(device_id: str) -> str:
    device = load_device(device_id)
    return render_template(
        "uploads/device.html",
        device=device,
        form=LogUploadForm(),
        uploads=list_log_uploads(db.session, device.id, limit=HISTORY),
        can_download=current_app.config["OUTLINK"].upload_dir is not None,
    )


def _audit(
    kind: str,
    device: Device,
    upload: TelemetryLogUpload,
    summary: str,
    *,
    outcome: str = "success",
    **details: Any,
) -> None:
    record(
        kind,
        outcome=outcome,
        device_id=device.id,
        customer_id=device.customer_id,
        site_id=device.site_id,
        summary=summary,
        details={"upload_id": upload.id, "source": upload.source, **details},
    )


@bp.route("/devices/<device_id>/logs", methods=["POST"])
@requires(Perm.FILES_VIEW)
def request_upload(device_id: str) -> ResponseReturnValue:
    device = load_device(device_id)
    form = LogUploadForm()
    back = redirect(url_for("uploads.logs", device_id=device.id))
    if not form.validate_on_submit():
        for errors in form.errors.values():
            flash(f"Logs not requested: {errors[0]}.", "error")
        return back
    source, path = (form.source.data or "").strip(), (form.path.data or "").strip()
    if source and path:
        flash("Logs not requested: name a log set or a file, not both.", "error")
        return back
    if device.revoked_at is not None:
        flash("Logs not requested: the device is revoked.", "error")
        return back
    label = Path(path).name[:32] if path else source
    upload, instruction = request_log_upload(
        db.session, device_id=device.id, source=label, requested_by=current_user().username
    )
    if path:
        instruction = {**instruction, "path": path}
    if path or not source:  # no name: the agent's only configured log set
        del instruction["source"]
    details: dict[str, Any] = {"path": path} if path else {}
    _audit("telemetry.logs_request", device, upload, "log files requested", **details)
    db.session.commit()  # the relay looks the row up when the file arrives
    answer, failure = relay_link().instruct(device.id, instruction)
    if failure:
        _failed(device, upload, failure, details)
    else:
        files = answer.get("files") if answer else None
        flash(
            f"The device is sending {files if isinstance(files, int) else 'its'} log "
            f"file(s); the upload appears below when it is complete.",
            "success",
        )
    db.session.commit()
    return back


def _failed(device: Device, upload: TelemetryLogUpload, code: str, details: dict[str, Any]) -> None:
    """Mark and audit an upload the device could not be asked for, or refused."""
    if code in DELIVERY_FAILURES:
        upload.state, upload.error = UPLOAD_FAILED, code[:64]
        upload.updated_at = datetime.now(UTC)
        _audit(
            "telemetry.logs_failed",
            device,
            upload,
            "log request not delivered",
            outcome="failure",
            error=code,
            **details,
        )
        flash(f"Logs not requested: {reason_text(code)}.", "error")
    else:
        refuse_log_upload(db.session, upload.id, code)
        _audit(
            "telemetry.logs_refused",
            device,
            upload,
            "log request refused by the device",
            outcome="failure",
            error=code,
            **details,
        )
        flash(f"The device refused: {refusal_text(code, upload.source)}.", "error")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "device"


def download_name(device: Device, upload: TelemetryLogUpload) -> str:
    """``<host>-<source>-<time>.tar.gz`` from safe characters only (hostnames are hostile)."""
    when = (upload.completed_at or upload.created_at).strftime("%Y%m%d-%H%M%S")
    parts = [_safe_name(device.hostname or device.id), _safe_name(upload.source or "logs"), when]
    return "-".join(parts) + ".tar.gz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_file(upload: TelemetryLogUpload) -> Path | None:
    """The upload's file inside ``upload_dir``, or None (not configured, gone, outside)."""
    directory = current_app.config["OUTLINK"].upload_dir
    if directory is None or not upload.stored_name:
        return None
    base = Path(directory).resolve()
    target = (base / upload.stored_name).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        log.warning(
            "! upload %s: stored file %r missing or outside the upload directory",
            upload.id,
            upload.stored_name,
        )
        return None
    return target


@bp.route("/devices/<device_id>/logs/<upload_id>")
@requires(Perm.FILES_VIEW)
def download(device_id: str, upload_id: str) -> Response:
    device = load_device(device_id)
    upload = (
        downloadable_upload(db.session, upload_id, device.id)
        if len(upload_id) <= UPLOAD_ID_MAX
        else None
    )
    if upload is None:
        abort(404)
    path = _stored_file(upload)
    if path is None:
        flash("That upload's file is not available on this portal.", "error")
        return redirect(url_for("uploads.logs", device_id=device.id))
    if (upload.size is not None and path.stat().st_size != upload.size) or _sha256(
        path
    ) != upload.sha256:
        _audit(
            "telemetry.logs_download",
            device,
            upload,
            "log download refused: file changed",
            outcome="failure",
            error="hash_mismatch",
        )
        db.session.commit()
        flash("That upload's file no longer matches its SHA-256: it is not served.", "error")
        return redirect(url_for("uploads.logs", device_id=device.id))
    _audit(
        "telemetry.logs_download",
        device,
        upload,
        "log files downloaded",
        sha256=upload.sha256,
        size=upload.size,
    )
    db.session.commit()
    return send_file(
        path,
        mimetype="application/gzip",
        as_attachment=True,
        download_name=download_name(device, upload),
        max_age=0,
    )
