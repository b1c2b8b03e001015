"""The one place that limits queries to what a user may reach.

Every query that loads customers, sites, devices (and what hangs off them:
enrolment tokens, audit events) is built from :func:`scoped` or fetched with
:func:`get_or_404`, whichever way the id arrived (path, query string, search
box, export). Out of scope and non-existent look the same: 404, so ids cannot
be probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import abort, g
from sqlalchemy import ColumnElement, Select, false, or_, select, true

from store.models import Customer, Device, EnrollmentToken, Site
from store.portal import AuditEvent
from web.db import db

T = TypeVar("T", Customer, Site, Device, EnrollmentToken, AuditEvent)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one user reaches: everything, or the union of some customers, sites and devices."""

    everything: bool = False
    customer_ids: frozenset[int] = field(default_factory=frozenset)
    site_ids: frozenset[int] = field(default_factory=frozenset)
    device_ids: frozenset[str] = field(default_factory=frozenset)

    def _any(self, *clauses: tuple[Any, frozenset[Any]]) -> ColumnElement[bool]:
        if self.everything:
            return true()
        parts = [column.in_(sorted(ids)) for column, ids in clauses if ids]
        return or_(*parts) if parts else false()

    def devices(self) -> ColumnElement[bool]:
        return self._any(
            (Device.customer_id, self.customer_ids),
            (Device.site_id, self.site_ids),
            (Device.id, self.device_ids),
        )

    def sites(self) -> ColumnElement[bool]:
        """Sites of scoped customers, scoped sites, and sites holding a scoped device."""
        via_device = select(Device.site_id).where(Device.id.in_(sorted(self.device_ids)))
        clause = self._any((Site.customer_id, self.customer_ids), (Site.id, self.site_ids))
        if self.device_ids and not self.everything:
            clause = or_(clause, Site.id.in_(via_device))
        return clause

    def customers(self) -> ColumnElement[bool]:
        """Scoped customers, and customers that own a scoped site or device (name only)."""
        clause = self._any((Customer.id, self.customer_ids))
        if self.everything:
            return clause
        if self.site_ids:
            clause = or_(
                clause,
                Customer.id.in_(select(Site.customer_id).where(Site.id.in_(sorted(self.site_ids)))),
            )
        if self.device_ids:
            clause = or_(
                clause,
                Customer.id.in_(
                    select(Device.customer_id).where(Device.id.in_(sorted(self.device_ids)))
                ),
            )
        return clause

    def tokens(self) -> ColumnElement[bool]:
        """Enrolment tokens for sites the user fully reaches (customer or site scope)."""
        return self._any(
            (EnrollmentToken.customer_id, self.customer_ids),
            (EnrollmentToken.site_id, self.site_ids),
        )

    def site_fully_reached(self, site: Site) -> bool:
        """True if every device of ``site`` is in scope (needed to enrol new ones there)."""
        return self.everything or site.customer_id in self.customer_ids or site.id in self.site_ids

    def audit(self) -> ColumnElement[bool]:
        """Events about a reachable customer, site or device; others need global scope."""
        return self._any(
            (AuditEvent.customer_id, self.customer_ids),
            (AuditEvent.site_id, self.site_ids),
            (AuditEvent.device_id, self.device_ids),
        )

    def clause_for(self, model: type[Any]) -> ColumnElement[bool]:
        clauses = {
            Customer: self.customers,
            Site: self.sites,
            Device: self.devices,
            EnrollmentToken: self.tokens,
            AuditEvent: self.audit,
        }
        return clauses[model]()


def current_scope() -> Scope:
    """The scope of the logged-in user; nothing at all without one."""
    user = g.get("user")
    return user.scope if user is not None else Scope()


def scoped(model: type[T], *columns: Any) -> Select[Any]:
    """``SELECT model`` (or the given columns) limited to the current user's scope."""
    stmt = select(*columns) if columns else select(model)
    return stmt.where(current_scope().clause_for(model))


def get_or_404(model: type[T], ident: Any) -> T:
    """The in-scope row with primary key ``ident``, else 404 (missing and hidden look alike)."""
    pk = model.__mapper__.primary_key[0]
    row: T | None = db.session.execute(scoped(model).where(pk == ident)).scalar_one_or_none()
    if row is None:
        abort(404)
    return row
