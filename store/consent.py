"""Who may answer a consent request: the four-eyes rule, written once for every consented
function (remote desktop now; shell, files and updates call the same function).

Consent is the customer's say over what the vendor's staff do on their device (R31), so
an answer counts only from the customer's side and from a second person: a site contact
of the device's site (a scope row naming that site or its customer) who is neither the
requester nor anyone else acting under a staff role in that request, and whose own role
is no staff role. The answer endpoints call :func:`may_answer` before anything reaches
the device; it reads the database each time, like :func:`store.desktop.viewer_rights`,
so a contact who is demoted, disabled or moved loses the right on the next click.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from store.models import Device
from store.portal import Role, User, UserScope

SITE_CONTACT_ROLE: Final = "site_contact"
"""The one role that answers for the customer; every other role is staff (deny by default,
so a role added later cannot answer until this rule says so)."""


class Refusal(StrEnum):
    """Why an answer does not count (recorded in the audit trail as given)."""

    UNKNOWN_USER = "unknown-user"
    """No such user, or disabled."""
    IN_REQUEST = "acting-in-request"
    """The requester, or another person acting for the vendor in this request."""
    STAFF_ROLE = "staff-role"
    """A role other than site contact: staff never answer for the customer."""
    NO_DEVICE = "no-device"
    """The device is unknown or revoked."""
    OTHER_SITE = "other-site"
    """A site contact, but not of this device's site (global or device-only reach is no
    site's contact either)."""


@dataclass(frozen=True, slots=True)
class ConsentCheck:
    """The verdict, and the answerer's real role for the audit record (None: no user)."""

    role: str | None
    refusal: Refusal | None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def may_answer(
    session: Session, answerer_id: int, device_id: str, acting: Collection[int]
) -> ConsentCheck:
    """May user ``answerer_id`` answer a consent request on ``device_id``?

    ``acting`` are the ids of everyone acting for the vendor in that request (the
    requester; later also co-viewers or approvers); pass an empty collection to ask
    whether the user may answer requests on this device at all (the request list)."""
    user = session.execute(
        select(User.is_active, User.all_scope, Role.name)
        .join(Role, Role.id == User.role_id)
        .where(User.id == answerer_id)
    ).first()
    if user is None or not user.is_active:
        return ConsentCheck(None if user is None else user.name, Refusal.UNKNOWN_USER)
    role: str = user.name
    if answerer_id in acting:
        return ConsentCheck(role, Refusal.IN_REQUEST)
    if role != SITE_CONTACT_ROLE:
        return ConsentCheck(role, Refusal.STAFF_ROLE)
    device = session.execute(
        select(Device.customer_id, Device.site_id, Device.revoked_at).where(Device.id == device_id)
    ).first()
    if device is None or device.revoked_at is not None:
        return ConsentCheck(role, Refusal.NO_DEVICE)
    contact_of_site = exists().where(
        UserScope.user_id == answerer_id,
        or_(UserScope.site_id == device.site_id, UserScope.customer_id == device.customer_id),
    )
    if user.all_scope or not session.scalar(select(contact_of_site)):
        return ConsentCheck(role, Refusal.OTHER_SITE)
    return ConsentCheck(role, None)
