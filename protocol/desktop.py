"""The remote desktop session contract (sans-I/O): what portal, relay and agent say.

Portal -> agent: an rpc ``instruct`` (`protocol.rpc`) that the relay passes on as a
control ``instruct`` (`protocol.control`); the agent's answer comes back as its result.

* ACTION_REQUEST `SessionRequest` -> `RequestReply`: ``prompting`` (the person at the
  device is asked, with the device's own timeout) or ``accepted`` (the device asks for
  no consent). The device's policy sets the consent timeout (R31): a request has none.
* ACTION_ANSWER `ConsentAnswer` (a site contact's answer from the portal, sent only
  when `store.consent.may_answer` allows it, taken only where the device allows it and
  never in the requester's name) -> `StateReply`.
* ACTION_END `EndRequest` (end a session, or withdraw a request) -> `StateReply`.

Relay -> agent: the OPEN of a CHANNEL_KIND channel carries `JoinMeta` (the viewer
joins an accepted session).

Agent -> relay, control ``event``s:

* EVENT_STATE `StateReport`, on every change of a session's state;
* EVENT_POLICY `PolicyReport`, on every link: the device's consent setting.

Every ``parse`` takes a decoded JSON value, bounds every field, ignores fields it does
not know (so either side can add one) and raises `MessageError` (code
``bad_request``, a message safe to send) and nothing else. ``to_json`` gives the JSON
object; ``parse(x.to_json()) == x`` for every valid message.

Session ids are canonical UUIDs, lower case with hyphens, exactly as `new_session_id`
makes them; anything else (upper case included) is refused, so the id each side echoes
is byte for byte the one it was given. Text a person at the device reads (names, the
reason) is one clean line (`clean_text`).
"""

from __future__ import annotations

import contextlib
import unicodedata
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, NewType

from protocol.envelope import ERR_BAD_REQUEST, MessageError

SessionId = NewType("SessionId", str)

# -- names ------------------------------------------------------------------------------------

ACTION_REQUEST: Final = "desktop.request"
ACTION_ANSWER: Final = "desktop.answer"
ACTION_END: Final = "desktop.end"
EVENT_STATE: Final = "desktop.state"
EVENT_POLICY: Final = "desktop.policy"
CHANNEL_KIND: Final = "desktop"

# -- limits -----------------------------------------------------------------------------------

SESSION_ID_LEN: Final = 36
"""``str(uuid.UUID(...))``: 32 hex digits and 4 hyphens."""

MAX_NAME: Final = 128
"""A user name, display name or organisation: what fits on one line of the prompt."""

MAX_REASON: Final = 500
"""The engineer's reason, as the device's prompt shows it."""

MAX_BY: Final = 200
"""Who decided: ``device``, ``policy:no-consent``, ``site-contact:<user>`` (a MAX_NAME
user), and the server's own ``server:...`` values."""

MAX_REPORT_TEXT: Final = 2000
"""A state report's ``reason`` and ``end_reason``: the agent sends short codes and
sentences; longer text is not a reason, and the report is refused."""

MAX_COUNT: Final = 2**53 - 1
"""Byte and input counters and durations: the largest integer JSON carries exactly."""

JOIN_WINDOW: Final = 60.0
"""Seconds from acceptance within which the viewer must join: the portal's ticket lives
60 s, and an accepted session nobody joins must not stay open for later. The agent ends
it then (``not-joined``); the server follows suit if that report never comes."""

CONSENT_TIMEOUT_MAX: Final = 600
"""The longest consent timeout (s) an agent can have (its configuration's limit), so
the longest a reply or a policy report may state."""

# -- vocabulary -------------------------------------------------------------------------------


class Mode(StrEnum):
    """What the viewer may do; ordered: ``control`` includes ``view``."""

    VIEW = "view"
    CONTROL = "control"

    def allows(self, wanted: Mode) -> bool:
        return wanted is Mode.VIEW or self is Mode.CONTROL


class State(StrEnum):
    """A session's life. The agent's own states go ``prompting`` -> ``accepted`` |
    ``denied`` | ``timeout``, ``accepted`` -> ``started`` -> ``ended``. The server adds
    ``requested`` (stored, instruction on its way) and ``failed`` (the device could not
    be asked), which no agent reports."""

    REQUESTED = "requested"
    PROMPTING = "prompting"
    ACCEPTED = "accepted"
    DENIED = "denied"
    TIMEOUT = "timeout"
    FAILED = "failed"
    STARTED = "started"
    ENDED = "ended"


REPORTED: Final = frozenset(
    {State.ACCEPTED, State.DENIED, State.TIMEOUT, State.STARTED, State.ENDED}
)
"""The states a `StateReport` carries (``prompting`` is the agent's reply to the request
itself)."""


class Decision(StrEnum):
    ACCEPT = "accept"
    DENY = "deny"


class EndReason(StrEnum):
    """Why a session ended: stable codes, stored by the server and described by the
    portal. The agent reports most; the relay and portal write the last five."""

    BY_CUSTOMER = "ended-by-customer"  # the indicator's button, or the local command
    BY_PORTAL = "ended-by-portal"  # ACTION_END
    VIEWER_LEFT = "viewer-left"
    CHANNEL_RESET = "channel-reset"
    NOT_JOINED = "not-joined"  # no viewer within JOIN_WINDOW (agent or server)
    MAX_LENGTH = "max-length"
    IDLE_TIMEOUT = "idle-timeout"
    INDICATOR_LOST = "indicator-lost"
    STREAM_FAILED = "stream-failed"
    VIEWER_PROTOCOL_ERROR = "viewer-protocol-error"
    AGENT_STOPPING = "agent-stopping"
    # written by the relay or the portal
    BY_ENGINEER = "ended-by-engineer"  # the portal could not reach the device to end it
    ACCESS_WITHDRAWN = "access-withdrawn"
    DEVICE_DISCONNECTED = "device-disconnected"


# Who decided (a StateReport's ``by``).
BY_DEVICE: Final = "device"
BY_POLICY: Final = "policy:no-consent"
BY_SITE_CONTACT: Final = "site-contact:"
"""Prefix: ``site-contact:<user>``, a site contact's answer from the portal."""

# The agent's refusal codes (error replies to the actions), besides the envelope's
# ERR_BAD_REQUEST and ERR_BUSY (one live session per device).
ERR_CONFLICT: Final = "conflict"
ERR_FORBIDDEN: Final = "forbidden"
ERR_NOT_FOUND: Final = "not_found"


def new_session_id() -> SessionId:
    return SessionId(str(uuid.uuid4()))


# -- field rules ------------------------------------------------------------------------------


def parse_session_id(value: object) -> SessionId:
    """A canonical session id (see the module docstring), else MessageError."""
    if isinstance(value, str) and len(value) == SESSION_ID_LEN:
        with contextlib.suppress(ValueError):
            if str(uuid.UUID(value)) == value:
                return SessionId(value)
    raise _bad("session_id must be a UUID in canonical form")


def parse_mode(value: object) -> Mode:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return Mode(value)
    raise _bad('mode must be "view" or "control"')


def clean_text(value: object, limit: int, what: str, *, required: bool) -> str:
    """A display string: no control or format characters (a reason must not fake more
    lines or reorder text in the prompt), spaces collapsed, at most ``limit``
    characters; ``""`` when absent and not required."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{what} must be a string")
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in value)
    text = " ".join(text.split())
    if required and not text:
        raise _bad(f"{what} must not be empty")
    if len(text) > limit:
        raise _bad(f"{what} exceeds {limit} characters")
    return text


def seconds_field(value: float) -> int | float:
    """Durations on the wire: whole seconds stay integers in the JSON."""
    return int(value) if float(value).is_integer() else round(value, 3)


# -- portal -> agent --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, as the portal says; shown in the prompt and on the indicator."""

    user: str
    name: str
    organisation: str

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "name": self.name, "organisation": self.organisation}

    @classmethod
    def parse(cls, obj: object) -> Requester:
        """``name`` defaults to ``user``; ``organisation`` may be absent."""
        fields = _object(obj, "requester")
        user = clean_text(fields.get("user"), MAX_NAME, "requester.user", required=True)
        name = clean_text(fields.get("name"), MAX_NAME, "requester.name", required=False)
        organisation = clean_text(
            fields.get("organisation"), MAX_NAME, "requester.organisation", required=False
        )
        return cls(user, name or user, organisation)


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """ACTION_REQUEST: ask the device for a session."""

    session_id: SessionId
    mode: Mode
    requester: Requester
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "action": ACTION_REQUEST,
            "session_id": self.session_id,
            "mode": str(self.mode),
            "requester": self.requester.to_json(),
            "reason": self.reason,
        }

    @classmethod
    def parse(cls, obj: object) -> SessionRequest:
        fields = _object(obj, "request")
        return cls(
            parse_session_id(fields.get("session_id")),
            parse_mode(fields.get("mode")),
            Requester.parse(fields.get("requester")),
            clean_text(fields.get("reason"), MAX_REASON, "reason", required=False),
        )


@dataclass(frozen=True, slots=True)
class RequestReply:
    """The agent's reply to ACTION_REQUEST. ``prompting``: the device asks, and waits
    ``timeout_s``; ``remote_consent_allowed`` says whether a site contact may answer
    from the portal. ``accepted``: the device asks for no consent (the other fields
    are not sent)."""

    state: State
    timeout_s: float = 0.0
    remote_consent_allowed: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.state is State.ACCEPTED:
            return {"state": str(State.ACCEPTED), "consent_required": False}
        return {
            "state": str(State.PROMPTING),
            "consent_required": True,
            "timeout_s": seconds_field(self.timeout_s),
            "remote_consent_allowed": self.remote_consent_allowed,
        }

    @classmethod
    def parse(cls, obj: object) -> RequestReply:
        fields = _object(obj, "reply")
        state = fields.get("state")
        if state == State.ACCEPTED:
            return cls(State.ACCEPTED)
        if state != State.PROMPTING:
            raise _bad('state must be "prompting" or "accepted"')
        return cls(
            State.PROMPTING,
            _consent_timeout(fields, "timeout_s"),
            _bool(fields, "remote_consent_allowed"),
        )


@dataclass(frozen=True, slots=True)
class ConsentAnswer:
    """ACTION_ANSWER: a site contact (``user``, shown as ``name``) answers a request
    from the portal. The agent takes it only where its policy allows it, and never
    from the requester (``user`` equal to the request's ``Requester.user``)."""

    session_id: SessionId
    decision: Decision
    user: str
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "action": ACTION_ANSWER,
            "session_id": self.session_id,
            "decision": str(self.decision),
            "by": {"user": self.user, "name": self.name},
        }

    @classmethod
    def parse(cls, obj: object) -> ConsentAnswer:
        fields = _object(obj, "answer")
        session_id = parse_session_id(fields.get("session_id"))
        decision = fields.get("decision")
        if decision not in (Decision.ACCEPT, Decision.DENY):
            raise _bad('decision must be "accept" or "deny"')
        by = fields.get("by")
        by = by if isinstance(by, dict) else {}
        return cls(
            session_id,
            Decision(decision),
            clean_text(by.get("user"), MAX_NAME, "by.user", required=True),
            clean_text(by.get("name"), MAX_NAME, "by.name", required=False),
        )


@dataclass(frozen=True, slots=True)
class EndRequest:
    """ACTION_END: end a session (or withdraw a request still prompting)."""

    session_id: SessionId

    def to_json(self) -> dict[str, Any]:
        return {"action": ACTION_END, "session_id": self.session_id}

    @classmethod
    def parse(cls, obj: object) -> EndRequest:
        return cls(parse_session_id(_object(obj, "end").get("session_id")))


@dataclass(frozen=True, slots=True)
class StateReply:
    """The agent's reply to ACTION_ANSWER and ACTION_END: the state the session is in."""

    state: State

    def to_json(self) -> dict[str, Any]:
        return {"state": str(self.state)}

    @classmethod
    def parse(cls, obj: object) -> StateReply:
        return cls(_state(_object(obj, "reply").get("state"), State))


# -- relay -> agent ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinMeta:
    """A CHANNEL_KIND channel's OPEN metadata: the viewer ``viewer`` joins the session in
    ``mode`` (the ticket's, whatever the browser asked); ``clipboard``: whether the user
    may use the clipboard when the session starts."""

    session_id: SessionId
    mode: Mode
    viewer: str
    clipboard: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "mode": str(self.mode),
            "viewer": self.viewer,
            "clipboard": self.clipboard,
        }

    @classmethod
    def parse(cls, obj: object) -> JoinMeta:
        fields = _object(obj, "meta")
        return cls(
            parse_session_id(fields.get("session_id")),
            parse_mode(fields.get("mode")),
            clean_text(fields.get("viewer"), MAX_NAME, "viewer", required=True),
            _bool(fields, "clipboard", default=False),
        )


# -- agent -> relay ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateReport:
    """EVENT_STATE: a session changed state (one of REPORTED), who decided (``by``) and
    why. ``accepted`` and ``started`` carry the ``mode``, ``started`` the ``viewer``;
    ``ended`` carries ``end_reason`` (an `EndReason`), how long the stream ran and how
    much passed each way."""

    session_id: SessionId
    state: State
    by: str
    reason: str
    mode: Mode | None = None
    viewer: str = ""
    end_reason: str = ""
    duration_s: float = 0
    bytes_to_viewer: int = 0
    bytes_from_viewer: int = 0
    inputs_dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "session_id": self.session_id,
            "state": str(self.state),
            "by": self.by,
            "reason": self.reason,
        }
        if self.mode is not None:
            fields["mode"] = str(self.mode)
        if self.viewer:
            fields["viewer"] = self.viewer
        if self.state is State.ENDED:
            fields.update(
                end_reason=self.end_reason,
                duration_s=seconds_field(self.duration_s),
                bytes_to_viewer=self.bytes_to_viewer,
                bytes_from_viewer=self.bytes_from_viewer,
                inputs_dropped=self.inputs_dropped,
            )
        return fields

    @classmethod
    def parse(cls, obj: object) -> StateReport:
        fields = _object(obj, "report")
        state = _state(fields.get("state"), REPORTED)
        mode = fields.get("mode")
        duration = fields.get("duration_s", 0)
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not (0 <= duration <= MAX_COUNT)
        ):
            raise _bad(f"duration_s must be a number in [0, {MAX_COUNT}]")
        report = cls(
            parse_session_id(fields.get("session_id")),
            state,
            _string(fields, "by", MAX_BY, required=True),
            _string(fields, "reason", MAX_REPORT_TEXT),
            mode=None if mode is None else parse_mode(mode),
            viewer=_string(fields, "viewer", MAX_NAME),
        )
        if state is not State.ENDED:  # the end's fields mean nothing before it: ignored
            return report
        return replace(
            report,
            end_reason=_string(fields, "end_reason", MAX_REPORT_TEXT),
            duration_s=seconds_field(duration),  # as to_json() sends it: parse is a fixpoint
            bytes_to_viewer=_count(fields, "bytes_to_viewer"),
            bytes_from_viewer=_count(fields, "bytes_from_viewer"),
            inputs_dropped=_count(fields, "inputs_dropped"),
        )


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """EVENT_POLICY: the device's consent setting, sent on every link so the portal shows
    it before anyone asks (the agent still decides)."""

    consent_required: bool
    consent_timeout_s: float
    remote_consent_allowed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "consent_required": self.consent_required,
            "consent_timeout_s": seconds_field(self.consent_timeout_s),
            "remote_consent_allowed": self.remote_consent_allowed,
        }

    @classmethod
    def parse(cls, obj: object) -> PolicyReport:
        fields = _object(obj, "report")
        return cls(
            _bool(fields, "consent_required"),
            _consent_timeout(fields, "consent_timeout_s"),
            _bool(fields, "remote_consent_allowed"),
        )


# -- helpers ----------------------------------------------------------------------------------


def _bad(message: str) -> MessageError:
    return MessageError(ERR_BAD_REQUEST, message)


def _object(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be an object")
    return obj


def _string(fields: dict[str, Any], key: str, limit: int, *, required: bool = False) -> str:
    """A string of at most ``limit`` characters, as sent (a code or a sentence for the
    record, not for the prompt); ``""`` when absent and not required."""
    value = fields.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{key} must be a string of <= {limit} characters")
    return value


def _bool(fields: dict[str, Any], key: str, *, default: bool | None = None) -> bool:
    value = fields.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{key} must be a boolean")
    return value


def _count(fields: dict[str, Any], key: str) -> int:
    value = fields.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _bad(f"{key} must be an integer in [0, {MAX_COUNT}]")
    return value


def _consent_timeout(fields: dict[str, Any], key: str) -> float:
    value = fields.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= CONSENT_TIMEOUT_MAX
    ):
        raise _bad(f"{key} must be a number of seconds in (0, {CONSENT_TIMEOUT_MAX}]")
    return value


def _state(value: object, allowed: frozenset[State] | type[State]) -> State:
    if isinstance(value, str) and value in {str(s) for s in allowed}:
        return State(value)
    raise _bad(f"state must be one of {', '.join(sorted(str(s) for s in allowed))}")
