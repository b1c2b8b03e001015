"""The fleet queries: the one "online" rule, and the devices a person should look at because
they are not online (never connected, gone quiet, or held by a relay that died)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, true

from pki.fleet import create_device, ensure_site
from store.db import session_scope
from store.fleet import devices_with_places, hostnames, online, presence_of, unreachable_devices
from store.models import Device, Presence

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
STALE_BEFORE = NOW - timedelta(seconds=180)


def _fleet(engine: Engine) -> dict[str, str]:
    """Five devices, one per way of being (or not being) online; name -> device id."""
    with session_scope(engine) as session:
        site = ensure_site(session, "acme", "lab")
        other = ensure_site(session, "globex", "north")
        ids = {name: create_device(session, site).id for name in ("up", "quiet", "down", "never")}
        ids["revoked"] = create_device(session, site).id
        ids["elsewhere"] = create_device(session, other).id
        session.flush()
        rows = {
            "up": (True, NOW - timedelta(seconds=30)),
            "quiet": (True, NOW - timedelta(seconds=600)),  # its relay crashed
            "down": (False, NOW - timedelta(seconds=60)),
            "revoked": (True, NOW - timedelta(seconds=30)),
            "elsewhere": (False, NOW - timedelta(seconds=10)),
        }
        for name, (is_online, seen) in rows.items():
            session.add(Presence(device_id=ids[name], online=is_online, last_seen=seen))
        session.get(Device, ids["revoked"]).revoked_at = NOW  # type: ignore[union-attr]
    return ids


def test_online_needs_the_relays_word_a_fresh_last_seen_and_no_revocation(
    db_engine: Engine,
) -> None:
    ids = _fleet(db_engine)
    with session_scope(db_engine) as session:
        up = session.scalars(select(Device.id).join(Presence).where(online(STALE_BEFORE))).all()
    assert up == [ids["up"]]


def test_unreachable_devices_are_the_scoped_rest_most_recently_seen_first(
    db_engine: Engine,
) -> None:
    ids = _fleet(db_engine)
    with session_scope(db_engine) as session:
        acme = session.get(Device, ids["up"]).site_id  # type: ignore[union-attr]
        scoped = unreachable_devices(
            session, devices=Device.site_id == acme, stale_before=STALE_BEFORE, limit=10
        )
        everything = unreachable_devices(
            session, devices=true(), stale_before=STALE_BEFORE, limit=10
        )
        first = unreachable_devices(session, devices=true(), stale_before=STALE_BEFORE, limit=1)
    assert list(scoped) == [ids["down"], ids["quiet"], ids["never"]]  # never seen: last
    assert scoped[ids["never"]] is None
    assert list(everything) == [ids["elsewhere"], ids["down"], ids["quiet"], ids["never"]]
    assert list(first) == [ids["elsewhere"]]


def test_presence_devices_and_names_of_given_ids_within_scope_only(db_engine: Engine) -> None:
    ids = _fleet(db_engine)
    asked = [ids["up"], ids["never"], ids["elsewhere"], "not-a-device"]
    with session_scope(db_engine) as session:
        acme = session.get(Device, ids["up"]).site_id  # type: ignore[union-attr]
        in_acme = Device.site_id == acme
        presence = presence_of(session, asked, devices=in_acme, stale_before=STALE_BEFORE)
        places = devices_with_places(session, asked, devices=in_acme)
        names = hostnames(session, asked)
        assert presence_of(session, [], devices=true(), stale_before=STALE_BEFORE) == {}
        assert devices_with_places(session, [], devices=true()) == []
        assert hostnames(session, []) == {}
        place_rows = {(device.id, customer, site) for device, customer, site in places}
    assert presence == {
        ids["up"]: (True, NOW - timedelta(seconds=30)),
        ids["never"]: (False, None),
    }  # "elsewhere" is out of scope: left out, as an unknown id is
    assert place_rows == {(ids["up"], "acme", "lab"), (ids["never"], "acme", "lab")}
    assert set(names) == {ids["up"], ids["never"], ids["elsewhere"]}
