"""The consent routes' second matrix: who may answer a request on a device (four eyes).

``MATRIX`` says which roles reach the consent routes at all (``desktop.consent``); an
answer counts only under the four-eyes rule, :func:`store.consent.may_answer`. The walk
in ``test_permission_matrix`` calls both routes as each answerer below about a request
that the administrator ``root`` made on device A1 (site A1 of customer A).
"""

from __future__ import annotations

from typing import NamedTuple

from store.consent import Refusal


class Answerer(NamedTuple):
    """A user (created for the walk unless it is a fixture user), their reach, and the
    statuses of the request list (GET) and of an answer (POST)."""

    role: str
    scope: str  # "all", or a Fleet attribute naming a customer, site or device
    page: int
    answer: int
    refusal: Refusal | None  # the reason audited with an answer the rule refuses


#: The routes where a permission is not enough: the rule decides who is heard.
CONSENT_ROUTES = ("desktop.consent", "desktop.answer")

#: The one requester of the walk.
REQUESTER = "root"

CONSENT_ANSWERERS: dict[str, Answerer] = {
    # refused
    "root": Answerer("administrator", "all", 403, 403, Refusal.IN_REQUEST),  # the requester
    "root2": Answerer("administrator", "all", 403, 403, Refusal.STAFF_ROLE),
    "eng": Answerer("service_engineer", "customer_a", 403, 403, None),  # no desktop.consent
    "contact_b": Answerer("site_contact", "site_b1", 404, 404, None),  # device out of reach
    "contact_a2": Answerer("site_contact", "site_a2", 404, 404, None),  # same customer
    "contact_dev": Answerer("site_contact", "device_a1", 403, 403, Refusal.OTHER_SITE),
    # accepted: a contact of the device's site, or of its customer, who did not ask
    "contact": Answerer("site_contact", "site_a1", 200, 302, None),
    "contact_cust": Answerer("site_contact", "customer_a", 200, 302, None),
}
