"""The four-eyes rule for consent answers (:mod:`store.consent`): one function, every
role and reach, and every consent route calling it."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from flask import Flask
from sqlalchemy import update

from store.consent import Refusal, may_answer
from store.models import Device
from store.portal import User
from tests.web.conftest import Fleet, make_user
from web.authz import ACCESS_ATTR, ROLE_NAMES, Perm
from web.db import db

#: Reach of an answerer relative to device A1 (site A1 of customer A).
REACHES = ("site", "customer", "device", "other_site", "other_customer", "all")


def _expected(role: str, reach: str, is_requester: bool) -> Refusal | None:
    """The rule as the issue states it, independently of the code under test."""
    if is_requester:
        return Refusal.IN_REQUEST
    if role != "site_contact":
        return Refusal.STAFF_ROLE
    if reach not in ("site", "customer"):
        return Refusal.OTHER_SITE
    return None


def test_only_a_site_contact_of_the_devices_site_who_did_not_ask_may_answer(
    app: Flask, fleet: Fleet
) -> None:
    scopes = {
        "site": {"sites": (fleet.site_a1,)},
        "customer": {"customers": (fleet.customer_a,)},
        "device": {"devices": (fleet.device_a1,)},
        "other_site": {"sites": (fleet.site_a2,)},
        "other_customer": {"customers": (fleet.customer_b,)},
        "all": {"all_scope": True},
    }
    with app.app_context():
        checked = 0
        for role, reach in itertools.product(ROLE_NAMES, REACHES):
            user_id = make_user(f"{role}-{reach}", role, **scopes[reach])  # type: ignore[arg-type]
            for is_requester in (False, True):
                acting = (user_id,) if is_requester else (42_000,)
                check = may_answer(db.session, user_id, fleet.device_a1, acting)
                where = f"{role} reaching {reach}, requester={is_requester}"
                assert check.refusal == _expected(role, reach, is_requester), where
                assert check.allowed is (check.refusal is None), where
                assert check.role == role, where  # the real role, for the audit record
                checked += 1
        assert checked == len(ROLE_NAMES) * len(REACHES) * 2


def test_a_disabled_contact_an_unknown_user_and_a_revoked_device_are_refused(
    app: Flask, fleet: Fleet
) -> None:
    with app.app_context():
        contact = make_user("door", "site_contact", sites=(fleet.site_a1,))
        assert may_answer(db.session, contact, fleet.device_a1, ()).allowed
        db.session.execute(update(User).where(User.id == contact).values(is_active=False))
        check = may_answer(db.session, contact, fleet.device_a1, ())
        assert (check.role, check.refusal) == ("site_contact", Refusal.UNKNOWN_USER)
        check = may_answer(db.session, 999_999, fleet.device_a1, ())
        assert (check.role, check.refusal) == (None, Refusal.UNKNOWN_USER)
        db.session.execute(update(User).where(User.id == contact).values(is_active=True))
        db.session.execute(
            update(Device)
            .where(Device.id == fleet.device_a1)
            .values(revoked_at=datetime.now(UTC), revoked_reason="stolen")
        )
        assert may_answer(db.session, contact, fleet.device_a1, ()).refusal == Refusal.NO_DEVICE


def test_every_consent_route_applies_the_rule(app: Flask) -> None:
    """A route that lets anyone answer (``desktop.consent``) must call the one rule, so a
    consented function added later (shell, files, updates) cannot skip it."""
    consent_views = [
        view
        for view in app.view_functions.values()
        if getattr(getattr(view, ACCESS_ATTR, None), "perm", None) is Perm.DESKTOP_CONSENT
    ]
    assert len(consent_views) >= 2
    for view in consent_views:
        assert "may_answer" in view.__code__.co_names, view.__name__
