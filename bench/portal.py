"""Portal benchmark: server time of the fleet list, a device page and an audit search.

Seeds 10,000 devices across 200 customers (2 sites each, half online) and
1,000,000 hash-chained audit events (``--quick``: 1,000 / 20 / 50,000), on SQLite
and on PostgreSQL (``--postgres URL`` or ``$OUTLINK_TEST_POSTGRES_URL``), then
times requests of one signed-in administrator (single client, sequential) through
the real Flask app with its test client: the full WSGI stack, guard, session,
scoped queries, templates and the audit append of each device view -- but no TLS
or network. Prints a human summary and, last, one JSON line whose keys end in
``p50_ms`` / ``p95_ms``. Target: p95 <= 100 ms on both databases.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, insert, text
from sqlalchemy.engine import make_url

from store.db import make_engine, upgrade
from store.models import Customer, Device, Presence, Site
from store.portal import (
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditChainHead,
    AuditEvent,
    Role,
    User,
    canonical_json,
)
from web import create_app
from web.passwords import hash_password

PASSWORD = "benchmark passphrase"
KINDS = (
    "device.view",
    "auth.login",
    "relay.handshake_refused",
    "admin.user_changed",
    "session.requested",
    "relay.revoke_pushed",
)
BATCH = 20_000


def _hash(doc: dict[str, Any]) -> str:
    doc = dict(doc)
    doc["ts"] = doc["ts"].astimezone(UTC).isoformat(timespec="microseconds")
    return hashlib.sha256(canonical_json({k: doc[k] for k in HASHED_FIELDS}).encode()).hexdigest()


def seed(engine: Engine, customers: int, devices: int, events: int) -> list[str]:
    """Bulk-load the fleet and a valid audit chain; return the device ids."""
    now = datetime.now(UTC)
    rng = random.Random(7)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {"id": c + 1, "slug": f"customer-{c:03d}", "name": f"Customer {c:03d} Hospital"}
                for c in range(customers)
            ],
        )
        conn.execute(
            insert(Site),
            [
                {
                    "id": c * 2 + s + 1,
                    "customer_id": c + 1,
                    "slug": f"site-{s}",
                    "name": f"Site {s}",
                }
                for c in range(customers)
                for s in range(2)
            ],
        )
        device_rows, presence_rows = [], []
        for d in range(devices):
            c = d % customers
            s = c * 2 + (d // customers) % 2 + 1
            device_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            device_rows.append(
                {
                    "id": device_id,
                    "customer_id": c + 1,
                    "site_id": s,
                    "enrolled_at": now - timedelta(days=d % 300),
                    "hostname": f"dev-{d:05d}",
                    "model": "CT Scanner 9000",
                }
            )
            presence_rows.append(
                {
                    "device_id": device_id,
                    "relay_id": "relay-1",
                    "online": d % 2 == 0,
                    "connected_at": now,
                    "last_seen": now - timedelta(seconds=d % 90),
                }
            )
        conn.execute(insert(Device), device_rows)
        conn.execute(insert(Presence), presence_rows)
    ids = [r["id"] for r in device_rows]
    customer_of = {r["id"]: r["customer_id"] for r in device_rows}
    site_of = {r["id"]: r["site_id"] for r in device_rows}
    start = now - timedelta(days=90)
    step = timedelta(days=90) / max(events, 1)
    prev = GENESIS_HASH
    batch: list[dict[str, Any]] = []
    copy = engine.dialect.name == "postgresql"
    for i in range(1, events + 1):
        device = ids[rng.randrange(len(ids))]
        row = {
            "id": i,
            "ts": start + step * i,
            "kind": KINDS[i % len(KINDS)],
            "outcome": "success" if i % 7 else "failure",
            "actor": f"user{i % 50}",
            "user_id": i % 50,
            "source": "10.0.0.1",
            "customer_id": customer_of[device],
            "site_id": site_of[device],
            "device_id": device,
            "summary": f"event {i}",
            "details": canonical_json({"n": i}),
            "prev_hash": prev,
        }
        row["hash"] = prev = _hash(row)
        batch.append(row)
        if len(batch) == BATCH or i == events:
            _write_events(engine, batch, copy)
            batch = []
    with engine.begin() as conn:
        conn.execute(AuditChainHead.__table__.update().values(last_id=events, last_hash=prev))
        if copy:
            conn.execute(text("ANALYZE"))
    return ids


def _write_events(engine: Engine, rows: list[dict[str, Any]], copy: bool) -> None:
    if not copy:
        with engine.begin() as conn:
            conn.execute(insert(AuditEvent), rows)
        return
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = [
            "id",
            "ts",
            "kind",
            "outcome",
            "actor",
            "user_id",
            "source",
            "customer_id",
            "site_id",
            "device_id",
            "summary",
            "details",
            "prev_hash",
            "hash",
        ]
        with cursor.copy(f"COPY audit_events ({', '.join(columns)}) FROM STDIN") as out:  # type: ignore[attr-defined]
            for row in rows:
                out.write_row([row[c] for c in columns])
        raw.commit()
    finally:
        raw.close()


def _fresh_database(kind: str, pg_url: str | None, tmp: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}", None
    assert pg_url
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered), p95


def run(
    kind: str, pg_url: str | None, customers: int, devices: int, events: int, requests: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url, drop = _fresh_database(kind, pg_url, tmp)
        try:
            upgrade(url)
            engine = make_engine(url)
            t0 = time.perf_counter()
            ids = seed(engine, customers, devices, events)
            with engine.begin() as conn:
                role = conn.execute(
                    Role.__table__.select().where(Role.name == "administrator")
                ).first()
                assert role is not None
                now = datetime.now(UTC)
                conn.execute(
                    insert(User),
                    [
                        {
                            "username": "bench",
                            "display_name": "Bench",
                            "role_id": role.id,
                            "password_hash": hash_password(PASSWORD),
                            "all_scope": True,
                            "is_active": True,
                            "must_change_password": False,
                            "created_at": now,
                            "password_changed_at": now,
                        }
                    ],
                )
            engine.dispose()
            seed_s = time.perf_counter() - t0
            print(
                f"[{kind}] seeded {devices} devices / {customers} customers / {events} "
                f"audit events in {seed_s:.1f} s",
                file=sys.stderr,
            )
            return _measure(kind, url, tmp, ids, customers, requests) | {
                f"{kind}_seed_s": round(seed_s, 1)
            }
        finally:
            if drop is not None:
                drop()


def _measure(
    kind: str, url: str, tmp: Path, ids: list[str], customers: int, requests: int
) -> dict[str, float]:
    app = create_app({"database_url": url, "data_dir": tmp / "portal"})
    client = app.test_client()
    client.environ_base["HTTP_REFERER"] = "https://localhost/"
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    response = client.post(
        "/login", data={"csrf_token": token.group(1), "username": "bench", "password": PASSWORD}
    )
    assert response.status_code == 302, response.status_code
    rng = random.Random(11)
    pages = max(1, len(ids) // 50)
    scenarios = {
        "fleet_list": lambda: (
            f"/devices?page={rng.randint(1, min(pages, 200))}"
            + rng.choice(
                ["", "&status=online", f"&customer={rng.randint(1, customers)}", "&q=dev-01"]
            )
        ),
        "device_page": lambda: f"/devices/{rng.choice(ids)}",
        "audit_search": lambda: (
            "/audit?"
            + rng.choice(
                [
                    "",
                    "kind=device.view",
                    f"customer={rng.randint(1, customers)}",
                    f"device={rng.choice(ids)}",
                    "user=user7",
                    "kind=relay.*&outcome=failure",
                ]
            )
        ),
    }
    results: dict[str, float] = {}
    for name, make_path in scenarios.items():
        for _ in range(max(3, requests // 10)):  # warm caches and the connection pool
            client.get(make_path()).close()
        samples = []
        for _ in range(requests):
            path = make_path()
            start = time.perf_counter()
            response = client.get(path)
            response.get_data()
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
            response.close()
        p50, p95 = _percentiles(samples)
        results[f"{kind}_{name}_p50_ms"] = round(p50, 2)
        results[f"{kind}_{name}_p95_ms"] = round(p95, 2)
        print(f"[{kind}] {name:13s} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms", file=sys.stderr)
    with app.app_context():
        from web.db import db

        db.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small fleet, under a minute")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("OUTLINK_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (a scratch schema is created and dropped)",
    )
    parser.add_argument("--requests", type=int, default=None)
    args = parser.parse_args()
    customers, devices, events = (20, 1000, 50_000) if args.quick else (200, 10_000, 1_000_000)
    requests = args.requests or (60 if args.quick else 300)
    results: dict[str, Any] = {
        "devices": devices,
        "customers": customers,
        "audit_events": events,
        "requests_per_page": requests,
        "client": "flask-test-client (in-process WSGI, no TLS)",
    }
    kinds = ["sqlite"] + (["postgresql"] if args.postgres else [])
    if not args.postgres:
        print(
            "PostgreSQL skipped: pass --postgres URL or set OUTLINK_TEST_POSTGRES_URL",
            file=sys.stderr,
        )
    for kind in kinds:
        results |= run(kind, args.postgres, customers, devices, events, requests)
    out = io.StringIO()
    json.dump(results, out)
    print(out.getvalue())


if __name__ == "__main__":
    main()
