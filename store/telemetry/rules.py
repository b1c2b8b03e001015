"""Alarm rules as people type them (``telemetry_rules``; the language is
`telemetry.rules`): validated before they are saved; relays reload them when
`rules_version` changes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Boolean, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from store.models import Base
from telemetry.rules import Rule, validate_rule

MAX_RULE_NAME = 200


class TelemetryRule(Base):
    """A rule as typed (``text``, see `telemetry.rules`); validated before it is saved."""

    __tablename__ = "telemetry_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_RULE_NAME))
    text: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(64))


def list_rules(session: Session) -> list[TelemetryRule]:
    return list(session.scalars(select(TelemetryRule).order_by(TelemetryRule.id)))


def _check_rule(name: str, text: str, webhooks: Iterable[str] | None) -> Rule:
    if not name.strip() or len(name) > MAX_RULE_NAME:
        raise ValueError(f"the rule needs a name of at most {MAX_RULE_NAME} characters")
    return validate_rule(text, webhooks=webhooks)


def create_rule(
    session: Session,
    *,
    name: str,
    text: str,
    actor: str,
    enabled: bool = True,
    webhooks: Iterable[str] | None = None,
    now: datetime | None = None,
) -> TelemetryRule:
    """Validate and save a rule; raises `telemetry.rules.RuleSyntaxError` (a ValueError)."""
    _check_rule(name, text, webhooks)
    now = now or datetime.now(UTC)
    rule = TelemetryRule(
        name=name.strip(),
        text=text.strip(),
        enabled=enabled,
        created_at=now,
        created_by=actor,
        updated_at=now,
        updated_by=actor,
    )
    session.add(rule)
    session.flush()
    return rule


def update_rule(
    session: Session,
    rule: TelemetryRule,
    *,
    name: str,
    text: str,
    enabled: bool,
    actor: str,
    webhooks: Iterable[str] | None = None,
    now: datetime | None = None,
) -> None:
    """Validate and change a rule (its alarms keep pointing at it)."""
    _check_rule(name, text, webhooks)
    rule.name, rule.text, rule.enabled = name.strip(), text.strip(), enabled
    rule.updated_at, rule.updated_by = now or datetime.now(UTC), actor


def delete_rule(session: Session, rule: TelemetryRule) -> None:
    """Delete a rule; its alarms stay (``rule_id`` becomes NULL)."""
    session.delete(rule)


def rules_version(session: Session) -> tuple[int, datetime | None]:
    """(count, newest update) of the rules: relays reload when it changes."""
    count, newest = session.execute(
        select(func.count(TelemetryRule.id), func.max(TelemetryRule.updated_at))
    ).one()
    return int(count), newest
