"""protocol.desktop: every message round-trips, every limit holds, bad input gets a clear
MessageError and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.desktop import (
    BY_SITE_CONTACT,
    CONSENT_TIMEOUT_MAX,
    MAX_BY,
    MAX_COUNT,
    MAX_NAME,
    MAX_REASON,
    MAX_REPORT_TEXT,
    REPORTED,
    ConsentAnswer,
    Decision,
    EndReason,
    EndRequest,
    JoinMeta,
    Mode,
    PolicyReport,
    Requester,
    RequestReply,
    SessionId,
    SessionRequest,
    State,
    StateReply,
    StateReport,
    clean_text,
    new_session_id,
    parse_session_id,
)
from protocol.envelope import ERR_BAD_REQUEST, MessageError

SID = SessionId("6f1c2b0e-8d7a-4c55-9e0b-1a2b3c4d5e6f")

Parser = Callable[[object], object]
PARSERS: list[Parser] = [
    SessionRequest.parse,
    RequestReply.parse,
    ConsentAnswer.parse,
    EndRequest.parse,
    StateReply.parse,
    JoinMeta.parse,
    StateReport.parse,
    PolicyReport.parse,
]


def refused(parse: Parser, obj: object, words: str) -> None:
    """``parse(obj)`` raises bad_request with a message that names the problem."""
    with pytest.raises(MessageError) as error:
        parse(obj)
    assert error.value.code == ERR_BAD_REQUEST
    assert words in error.value.message


# -- session ids ------------------------------------------------------------------------------


def test_new_session_ids_are_canonical() -> None:
    sid = new_session_id()
    assert parse_session_id(sid) == sid


@pytest.mark.parametrize(
    "value",
    [
        None,
        7,
        "",
        "not-a-uuid",
        "6F1C2B0E-8D7A-4C55-9E0B-1A2B3C4D5E6F",  # upper case: not what we report back
        "6f1c2b0e-8d7a-4c55-9e0b-1A2B3C4D5E6F",
        "{6f1c2b0e-8d7a-4c55-9e0b-1a2b3c4d5e6f}",
        "6f1c2b0e8d7a4c559e0b1a2b3c4d5e6f",
        "../1c2b0e-8d7a-4c55-9e0b-1a2b3c4d5e6f",
    ],
)
def test_session_ids_are_canonical_uuids_in_every_message(value: Any) -> None:
    refused(parse_session_id, value, "session_id")
    refused(EndRequest.parse, {"session_id": value}, "session_id")
    refused(
        JoinMeta.parse,
        {**JoinMeta(SID, Mode.VIEW, "erika").to_json(), "session_id": value},
        "session_id",
    )
    report = StateReport(SID, State.ACCEPTED, "device", "", Mode.VIEW).to_json()
    refused(StateReport.parse, {**report, "session_id": value}, "session_id")


# -- display text -----------------------------------------------------------------------------


def test_display_strings_are_one_clean_line() -> None:
    requester = Requester.parse(
        {"user": "erika", "name": "Erika\n\nAccept now!\u202e", "organisation": None}
    )
    assert requester == Requester("erika", "Erika Accept now!", "")
    assert Requester.parse({"user": "erika"}).name == "erika"
    refused(Requester.parse, {"name": "no user"}, "requester.user")
    refused(Requester.parse, {"user": " \t\n"}, "requester.user must not be empty")
    assert clean_text("x" * MAX_REASON, MAX_REASON, "reason", required=False)
    refused(
        lambda v: clean_text(v, MAX_REASON, "reason", required=False),
        "x" * (MAX_REASON + 1),
        f"reason exceeds {MAX_REASON} characters",
    )
    # cleaning comes first: control characters do not count against the limit
    assert clean_text("x" * MAX_NAME + "\x00", MAX_NAME, "name", required=True) == "x" * MAX_NAME


@given(st.text(max_size=600))
def test_reason_cleaning_never_raises_anything_but_message_error(text: str) -> None:
    try:
        cleaned = clean_text(text, MAX_REASON, "reason", required=False)
    except MessageError:
        return
    assert "\n" not in cleaned and len(cleaned) <= MAX_REASON


# -- round trips ------------------------------------------------------------------------------

session_ids = st.uuids().map(lambda u: SessionId(str(u)))
# Text as a clean parse leaves it: one line, no control/format characters, single spaces.
words = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Zs", "Cs")),
    min_size=1,
    max_size=12,
)


def clean(limit: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    return (
        st.lists(words, min_size=min_size, max_size=8)
        .map(" ".join)
        .filter(lambda s: len(s) <= limit)
    )


def raw(limit: int) -> st.SearchStrategy[str]:
    return st.text(max_size=limit)


requesters = st.builds(
    Requester, clean(MAX_NAME, min_size=1), clean(MAX_NAME, min_size=1), clean(MAX_NAME)
)
seconds = st.integers(1, CONSENT_TIMEOUT_MAX).map(float) | st.sampled_from([0.5, 2.25, 599.999])
counts = st.integers(0, MAX_COUNT)

MESSAGES: st.SearchStrategy[Any] = st.one_of(
    st.builds(SessionRequest, session_ids, st.sampled_from(Mode), requesters, clean(MAX_REASON)),
    st.builds(RequestReply, st.just(State.ACCEPTED)),
    st.builds(RequestReply, st.just(State.PROMPTING), seconds, st.booleans()),
    st.builds(
        ConsentAnswer,
        session_ids,
        st.sampled_from(Decision),
        clean(MAX_NAME, min_size=1),
        clean(MAX_NAME),
    ),
    st.builds(EndRequest, session_ids),
    st.builds(StateReply, st.sampled_from(State)),
    st.builds(
        JoinMeta, session_ids, st.sampled_from(Mode), clean(MAX_NAME, min_size=1), st.booleans()
    ),
    st.builds(PolicyReport, st.booleans(), seconds, st.booleans()),
    st.builds(
        StateReport,
        session_ids,
        st.sampled_from(sorted(REPORTED - {State.ENDED})),
        raw(MAX_BY),
        raw(MAX_REPORT_TEXT),
        st.none() | st.sampled_from(Mode),
        raw(MAX_NAME),
    ),
    st.builds(
        StateReport,
        session_ids,
        st.just(State.ENDED),
        raw(MAX_BY),
        raw(MAX_REPORT_TEXT),
        st.none() | st.sampled_from(Mode),
        raw(MAX_NAME),
        raw(MAX_REPORT_TEXT),
        st.integers(0, 10**9).map(float),
        counts,
        counts,
        counts,
    ),
)


@given(MESSAGES)
def test_every_message_round_trips(message: Any) -> None:
    assert type(message).parse(message.to_json()) == message


def test_what_the_agent_sends_is_what_it_sent_before() -> None:
    """The JSON of each message, spelled out (the wire must not drift by accident)."""
    requester = Requester("erika", "Erika", "Acme")
    assert SessionRequest(SID, Mode.CONTROL, requester, "error 42").to_json() == {
        "action": "desktop.request",
        "session_id": SID,
        "mode": "control",
        "requester": {"user": "erika", "name": "Erika", "organisation": "Acme"},
        "reason": "error 42",
    }
    assert RequestReply(State.PROMPTING, 30.0, True).to_json() == {
        "state": "prompting",
        "consent_required": True,
        "timeout_s": 30,
        "remote_consent_allowed": True,
    }
    assert RequestReply(State.ACCEPTED).to_json() == {
        "state": "accepted",
        "consent_required": False,
    }
    assert ConsentAnswer(SID, Decision.DENY, "bob", "Bob").to_json() == {
        "action": "desktop.answer",
        "session_id": SID,
        "decision": "deny",
        "by": {"user": "bob", "name": "Bob"},
    }
    assert EndRequest(SID).to_json() == {"action": "desktop.end", "session_id": SID}
    assert JoinMeta(SID, Mode.VIEW, "erika", True).to_json() == {
        "session_id": SID,
        "mode": "view",
        "viewer": "erika",
        "clipboard": True,
    }
    assert PolicyReport(True, 2.5, False).to_json() == {
        "consent_required": True,
        "consent_timeout_s": 2.5,
        "remote_consent_allowed": False,
    }
    assert StateReport(SID, State.TIMEOUT, "device", "no answer within 30 s").to_json() == {
        "session_id": SID,
        "state": "timeout",
        "by": "device",
        "reason": "no answer within 30 s",
    }
    ended = StateReport(
        SID,
        State.ENDED,
        BY_SITE_CONTACT + "bob",
        EndReason.IDLE_TIMEOUT,
        end_reason=EndReason.IDLE_TIMEOUT,
        duration_s=1100.0,
        bytes_to_viewer=1000,
        bytes_from_viewer=6,
    )
    assert ended.to_json() == {
        "session_id": SID,
        "state": "ended",
        "by": "site-contact:bob",
        "reason": "idle-timeout",
        "end_reason": "idle-timeout",
        "duration_s": 1100,
        "bytes_to_viewer": 1000,
        "bytes_from_viewer": 6,
        "inputs_dropped": 0,
    }


def test_fields_a_side_does_not_know_are_ignored() -> None:
    request = SessionRequest(SID, Mode.VIEW, Requester("erika", "Erika", ""), "")
    assert SessionRequest.parse({**request.to_json(), "timeout_s": 30, "new": 1}) == request


# -- limits -----------------------------------------------------------------------------------


def request_with(**fields: Any) -> dict[str, Any]:
    base = SessionRequest(SID, Mode.VIEW, Requester("erika", "Erika", "Acme"), "why")
    return {**base.to_json(), **fields}


def report_with(**fields: Any) -> dict[str, Any]:
    base = StateReport(SID, State.ENDED, "device", "not-joined", end_reason="not-joined")
    return {**base.to_json(), **fields}


def test_each_limit_is_inclusive() -> None:
    at, over = "x" * MAX_NAME, "x" * (MAX_NAME + 1)
    assert SessionRequest.parse(request_with(requester={"user": at})).requester.user == at
    refused(SessionRequest.parse, request_with(requester={"user": over}), "requester.user")
    refused(
        SessionRequest.parse,
        request_with(requester={"user": "e", "organisation": over}),
        "requester.organisation",
    )
    assert SessionRequest.parse(request_with(reason="r" * MAX_REASON)).reason == "r" * MAX_REASON
    refused(SessionRequest.parse, request_with(reason="r" * (MAX_REASON + 1)), "reason")
    refused(
        ConsentAnswer.parse,
        {"session_id": SID, "decision": "accept", "by": {"user": over}},
        "by.user",
    )
    refused(JoinMeta.parse, {"session_id": SID, "mode": "view", "viewer": over}, "viewer")

    assert StateReport.parse(report_with(by="b" * MAX_BY)).by == "b" * MAX_BY
    refused(StateReport.parse, report_with(by="b" * (MAX_BY + 1)), "by")
    text = "t" * MAX_REPORT_TEXT
    assert StateReport.parse(report_with(reason=text, end_reason=text)).end_reason == text
    refused(StateReport.parse, report_with(reason=text + "t"), "reason")
    refused(StateReport.parse, report_with(end_reason=text + "t"), "end_reason")
    refused(StateReport.parse, report_with(viewer="v" * (MAX_NAME + 1)), "viewer")
    assert StateReport.parse(report_with(bytes_to_viewer=MAX_COUNT)).bytes_to_viewer == MAX_COUNT
    for key in ("bytes_to_viewer", "bytes_from_viewer", "inputs_dropped", "duration_s"):
        refused(StateReport.parse, report_with(**{key: MAX_COUNT + 1}), key)
        refused(StateReport.parse, report_with(**{key: -1}), key)

    policy = PolicyReport(True, CONSENT_TIMEOUT_MAX, False).to_json()
    assert PolicyReport.parse(policy).consent_timeout_s == CONSENT_TIMEOUT_MAX
    refused(
        PolicyReport.parse,
        {**policy, "consent_timeout_s": CONSENT_TIMEOUT_MAX + 1},
        "consent_timeout_s",
    )
    reply = RequestReply(State.PROMPTING, CONSENT_TIMEOUT_MAX).to_json()
    assert RequestReply.parse(reply).timeout_s == CONSENT_TIMEOUT_MAX
    refused(RequestReply.parse, {**reply, "timeout_s": CONSENT_TIMEOUT_MAX + 0.5}, "timeout_s")


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "obj", "words"),
    [
        (SessionRequest.parse, None, "request must be an object"),
        (SessionRequest.parse, request_with(mode="admin"), 'mode must be "view" or "control"'),
        (SessionRequest.parse, request_with(requester="erika"), "requester must be an object"),
        (SessionRequest.parse, request_with(reason=["x"]), "reason must be a string"),
        (RequestReply.parse, {"state": "ended"}, 'state must be "prompting" or "accepted"'),
        (RequestReply.parse, {"state": "prompting", "remote_consent_allowed": False}, "timeout_s"),
        (RequestReply.parse, {"state": "prompting", "timeout_s": 30}, "remote_consent_allowed"),
        (
            ConsentAnswer.parse,
            {"session_id": SID, "decision": "yes", "by": {"user": "bob"}},
            "decision",
        ),
        (ConsentAnswer.parse, {"session_id": SID, "decision": "accept"}, "by.user"),
        (StateReply.parse, {"state": "bored"}, "state must be one of"),
        (StateReply.parse, [], "reply must be an object"),
        (JoinMeta.parse, {"session_id": SID, "mode": "view"}, "viewer"),
        (
            JoinMeta.parse,
            {"session_id": SID, "mode": "view", "viewer": "e", "clipboard": "yes"},
            "clipboard must be a boolean",
        ),
        (StateReport.parse, report_with(state="prompting"), "state must be one of"),
        (StateReport.parse, report_with(state="requested"), "state must be one of"),
        (StateReport.parse, report_with(by=None), "by must be a string"),
        (StateReport.parse, report_with(mode="admin"), "mode"),
        (StateReport.parse, report_with(bytes_to_viewer=True), "bytes_to_viewer"),
        (StateReport.parse, report_with(duration_s="1"), "duration_s"),
        (StateReport.parse, report_with(duration_s=float("inf")), "duration_s"),
        # desktop.policy, as a relay received it from a misbehaving agent
        (PolicyReport.parse, {}, "consent_required must be a boolean"),
        (
            PolicyReport.parse,
            {"consent_required": 1, "consent_timeout_s": 30, "remote_consent_allowed": False},
            "consent_required",
        ),
        (
            PolicyReport.parse,
            {"consent_required": True, "consent_timeout_s": True, "remote_consent_allowed": False},
            "consent_timeout_s",
        ),
        (
            PolicyReport.parse,
            {"consent_required": True, "consent_timeout_s": 0, "remote_consent_allowed": False},
            "consent_timeout_s",
        ),
        (
            PolicyReport.parse,
            {
                "consent_required": True,
                "consent_timeout_s": float("nan"),
                "remote_consent_allowed": False,
            },
            "consent_timeout_s",
        ),
        (
            PolicyReport.parse,
            {"consent_required": True, "consent_timeout_s": "30", "remote_consent_allowed": None},
            "consent_timeout_s",
        ),
        (
            PolicyReport.parse,
            {"consent_required": True, "consent_timeout_s": 30, "remote_consent_allowed": None},
            "remote_consent_allowed",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(parse: Parser, obj: object, words: str) -> None:
    refused(parse, obj, words)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
likely_keys = st.sampled_from(
    [
        "session_id",
        "mode",
        "requester",
        "reason",
        "state",
        "timeout_s",
        "decision",
        "by",
        "viewer",
        "clipboard",
        "end_reason",
        "duration_s",
        "bytes_to_viewer",
        "consent_required",
        "consent_timeout_s",
        "remote_consent_allowed",
    ]
)


@given(st.sampled_from(PARSERS), json_values | st.dictionaries(likely_keys, json_values))
def test_parsers_raise_only_message_errors(parse: Parser, obj: object) -> None:
    """... and what they accept is a fixpoint: ``parse(m.to_json()) == m``."""
    try:
        message = parse(obj)
    except MessageError as exc:
        assert exc.code == ERR_BAD_REQUEST and exc.message
    else:
        assert type(message).parse(message.to_json()) == message


def test_a_report_before_the_end_ignores_the_end_fields() -> None:
    """Found by fuzz/fuzz_desktop_protocol.py: they were kept, then dropped by to_json()."""
    report = {"session_id": SID, "state": "started", "by": "device", "reason": ""}
    parsed = StateReport.parse({**report, "end_reason": "ended", "duration_s": 5})
    assert parsed == StateReport.parse(report) and parsed.end_reason == ""
    ended = StateReport.parse({**report, "state": "ended", "duration_s": 0.12345})
    assert StateReport.parse(ended.to_json()) == ended
