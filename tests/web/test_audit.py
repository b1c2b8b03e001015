"""The audit trail: hash chain, tamper detection, append-only triggers, retention anchor,
concurrent appends, what gets recorded, and search/filter/export in the portal."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from store.db import make_engine, make_sessionmaker, session_scope
from store.portal import AuditEvent, append_audit, prune_chain, verify_chain
from tests.web.conftest import Fleet
from web.cli import outlink
from web.db import db


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = make_engine(db_url)
    yield engine  # type: ignore[misc]
    engine.dispose()


def _append(engine: Engine, n: int, kind: str = "test.event") -> None:
    with session_scope(engine) as session:
        for i in range(n):
            append_audit(
                session,
                kind,
                actor="tester",
                summary=f"event {i}",
                details={"i": i, "text": "<b>é</b>"},
            )


def _verify(engine: Engine):  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as session:
        return verify_chain(session)


def _drop_guards(engine: Engine) -> None:
    """What an attacker with DDL rights would do first."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_guard ON audit_events"))


def test_chain_verifies_and_triggers_refuse_update_and_delete(engine: Engine) -> None:
    _append(engine, 20)
    report = _verify(engine)
    assert report.ok and report.checked == 20
    for statement in (
        "UPDATE audit_events SET summary = 'x' WHERE id = 3",
        "DELETE FROM audit_events WHERE id = 3",
    ):
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text(statement))
    assert _verify(engine).ok


@pytest.mark.parametrize(
    "tamper, bad_id",
    [
        ("UPDATE audit_events SET summary = 'nothing happened' WHERE id = 7", 7),
        (
            "UPDATE audit_events SET ts = ts WHERE id = 9; UPDATE audit_events SET actor = 'x' "
            "WHERE id = 9",
            9,
        ),
        ("DELETE FROM audit_events WHERE id = 5", 6),
        ("DELETE FROM audit_events WHERE id >= 19", 19),
    ],
)
def test_tampering_is_reported_at_the_first_broken_row(
    engine: Engine, tamper: str, bad_id: int
) -> None:
    _append(engine, 20)
    _drop_guards(engine)
    with engine.begin() as conn:
        for statement in tamper.split(";"):
            conn.execute(text(statement))
    report = _verify(engine)
    assert not report.ok
    assert report.first_bad_id == bad_id, report


def test_rehashing_an_edited_row_still_breaks_the_next_link(engine: Engine) -> None:
    from store.portal import HASHED_FIELDS, event_hash

    _append(engine, 10)
    _drop_guards(engine)
    with make_sessionmaker(engine)() as session, session.begin():
        row = session.get(AuditEvent, 4)
        assert row is not None
        row.summary = "forged"
        row.hash = event_hash({f: getattr(row, f) for f in HASHED_FIELDS})
    report = _verify(engine)
    assert not report.ok and report.first_bad_id == 5


def test_retention_prune_keeps_the_chain_verifiable(engine: Engine) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    with session_scope(engine) as session:
        for i in range(5):
            append_audit(session, "old.event", summary=f"old {i}", now=old + timedelta(minutes=i))
    _append(engine, 5)
    with session_scope(engine) as session:
        assert prune_chain(session, datetime.now(UTC) - timedelta(days=365)) == 5
    report = _verify(engine)
    assert report.ok and report.checked == 6  # 5 recent + the audit.pruned anchor event
    with make_sessionmaker(engine)() as session:
        assert session.scalar(select(func.min(AuditEvent.id))) == 6
    with pytest.raises(DBAPIError), engine.begin() as conn:  # the anchor allows no more
        conn.execute(text("DELETE FROM audit_events WHERE id = 6"))
    with engine.begin() as conn:  # forging the anchor is caught
        conn.execute(text("UPDATE audit_chain_head SET pruned_through = 4"))
    assert not _verify(engine).ok


def test_concurrent_appends_never_fork_the_chain(engine: Engine) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                with session_scope(engine) as session:
                    append_audit(session, "concurrent", summary=f"w{n} e{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = _verify(engine)
    assert report.ok and report.checked == 60


def test_verify_command_reports_the_first_broken_row(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    _append(engine, 5)
    config = tmp_path / "portal.toml"
    config.write_text(f'[portal]\ndatabase_url = "{db_url}"\ndata_dir = "{tmp_path}/d"\n')
    runner = CliRunner()
    result = runner.invoke(outlink, ["audit", "verify", "--config", str(config)])
    assert result.exit_code == 0 and "audit chain OK: 5 events" in result.output
    _drop_guards(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET outcome = 'failure' WHERE id = 2"))
    engine.dispose()
    result = runner.invoke(outlink, ["audit", "verify", "--config", str(config)])
    assert result.exit_code == 1
    assert "BROKEN at event 2" in result.output


def test_sign_ins_views_and_admin_changes_are_recorded(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    root = client_for("root")
    root.get(f"/devices/{fleet.device_a1}")
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        kinds = [(e.kind, e.actor) for e in events]
        assert ("auth.login", "root") in kinds
        view = [e for e in events if e.kind == "device.view"][-1]
        assert view.device_id == fleet.device_a1 and view.customer_id == fleet.customer_a
        assert view.source == "127.0.0.1"
        assert verify_chain(db.session).ok


def _seed_events(app: Flask, fleet: Fleet, n: int) -> None:
    with app.app_context():
        for i in range(n):
            append_audit(
                db.session,
                "relay.handshake_refused" if i % 2 else "device.view",
                actor="eng" if i % 3 else "relay:r1",
                device_id=fleet.device_a1,
                summary=f"seeded {i}",
                outcome="failure" if i % 2 else "success",
            )
        append_audit(
            db.session,
            "relay.cert_refused",
            actor="relay:r1",
            summary='=HYPERLINK("http://evil")',
            device_id=fleet.device_a2,
        )
        db.session.commit()


def test_audit_search_filters_and_pages(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    app.config["OUTLINK"].page_size = 10
    _seed_events(app, fleet, 30)
    root = client_for("root")
    page = root.get("/audit?kind=relay.*").get_data(as_text=True)
    assert "relay.handshake_refused" in page and "auth.login" not in page.split("<tbody>")[1]
    assert "Older" in page
    page = root.get("/audit?user=eng&outcome=failure").get_data(as_text=True)
    rows = page.split("<tbody>")[1].count("<tr>")
    assert 0 < rows <= 10
    before = 15
    page = root.get(f"/audit?before={before}").get_data(as_text=True)
    assert "seeded 13" in page and "seeded 14" not in page  # ids are 1-based after login
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page = root.get(f"/audit?since={future}").get_data(as_text=True)
    assert "No events match." in page
    page = root.get(f"/audit?device={fleet.device_a2}").get_data(as_text=True)
    assert "relay.cert_refused" in page


def test_exports_are_complete_defused_and_audited(
    app: Flask, fleet: Fleet, client_for: Callable[[str], FlaskClient]
) -> None:
    _seed_events(app, fleet, 30)
    root = client_for("root")
    rows = list(
        csv.DictReader(
            io.StringIO(root.get("/audit/export.csv?kind=relay.*").get_data(as_text=True))
        )
    )
    assert len(rows) == 16
    formula = next(r for r in rows if r["kind"] == "relay.cert_refused")
    assert formula["summary"].startswith("'=HYPERLINK")
    data = json.loads(
        root.get(f"/audit/export.json?device={fleet.device_a2}").get_data(as_text=True)
    )
    assert [e["kind"] for e in data] == ["relay.cert_refused"]
    with app.app_context():
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.kind == "audit.export")
            )
            == 2
        )
