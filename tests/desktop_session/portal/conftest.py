"""The portal's fixtures (tests/web/conftest.py: app, fleet, one user per role, logged-in
clients) with the relay replaced by a stand-in that answers like the agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.web.conftest import app, client_for, fleet, users  # noqa: F401  (fixtures)

PROMPTING = {
    "state": "prompting",
    "consent_required": True,
    "timeout_s": 30,
    "remote_consent_allowed": True,
}


@dataclass
class AgentStandIn:
    """``OUTLINK_RELAY_RPC``: answers ``instruct`` per action; records every call."""

    answers: dict[str, Any] = field(
        default_factory=lambda: {
            "desktop.request": PROMPTING,
            "desktop.answer": {"state": "accepted"},
            "desktop.end": {"state": "ended"},
        }
    )
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, url: str, op: str, args: dict[str, Any], _config: Any) -> dict[str, Any]:
        assert op == "instruct"
        self.calls.append(args)
        answer = self.answers[args["instruction"]["action"]]
        if isinstance(answer, Exception):
            raise answer
        return {"result": answer}


@pytest.fixture
def relay_calls() -> AgentStandIn:
    return AgentStandIn()
