"""The session book without a clock: ``now`` is a number the test chooses."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.desktop.policy import (
    DesktopPolicy,
    Refusal,
    SessionBook,
    desktop_enabled,
    resolve_display,
)
from protocol.desktop import (
    JOIN_WINDOW,
    Mode,
    Requester,
    SessionId,
    State,
    StateReport,
    new_session_id,
)

ERIKA = Requester("erika", "Erika Engineer", "Acme Service")
POLICY = DesktopPolicy(consent_timeout_s=30, max_session_s=3600, idle_timeout_s=600)


def new_id() -> SessionId:
    return new_session_id()


def states(changes: list[StateReport]) -> list[str]:
    return [str(c.state) for c in changes]


def code(exc: pytest.ExceptionInfo[Refusal]) -> str:
    return exc.value.code


def accepted(book: SessionBook, now: float = 0.0, mode: Mode = Mode.CONTROL) -> str:
    sid = new_id()
    book.request(sid, mode, ERIKA, "", now)
    book.answer(sid, True, now)
    return sid


def test_request_prompts_until_the_timeout_then_is_denied_by_silence() -> None:
    book = SessionBook(POLICY)
    sid = new_id()
    session, changes = book.request(sid, Mode.VIEW, ERIKA, "why", 100.0)
    assert session.state is State.PROMPTING and changes == []
    assert book.next_deadline() == 130.0
    assert book.tick(129.999) == []
    [timeout] = book.tick(130.0)
    assert timeout.to_json() == {
        "session_id": sid,
        "state": "timeout",
        "by": "device",
        "reason": "no answer within 30 s",
    }
    assert book.next_deadline() is None and book.live == []
    with pytest.raises(Refusal) as late:
        book.answer(sid, True, 130.1)
    assert code(late) == "conflict"
    with pytest.raises(Refusal) as join:
        book.join(sid, Mode.VIEW, "erika", 130.2)
    assert code(join) == "forbidden"


def test_accept_then_join_within_the_window_in_the_accepted_mode_once() -> None:
    book = SessionBook(POLICY)
    sid = new_id()
    book.request(sid, Mode.VIEW, ERIKA, "", 0.0)
    [change] = book.answer(sid, True, 5.0)
    assert change.to_json() == {
        "session_id": sid,
        "state": "accepted",
        "by": "device",
        "reason": "accepted on the device",
        "mode": "view",
    }
    assert book.next_deadline() == 5.0 + JOIN_WINDOW
    with pytest.raises(Refusal) as stronger:
        book.join(sid, Mode.CONTROL, "erika", 6.0)
    assert code(stronger) == "forbidden"
    [started] = book.join(sid, Mode.VIEW, "erika", 6.0)
    assert started.to_json()["viewer"] == "erika"
    with pytest.raises(Refusal) as second:
        book.join(sid, Mode.VIEW, "mallory", 7.0)
    assert code(second) == "forbidden"


def test_a_control_session_may_be_joined_view_only() -> None:
    book = SessionBook(POLICY)
    sid = accepted(book)
    assert states(book.join(sid, Mode.VIEW, "erika", 1.0)) == ["started"]


def test_not_joined_in_time() -> None:
    book = SessionBook(POLICY)
    sid = accepted(book, 10.0)
    with pytest.raises(Refusal):
        book.join(sid, Mode.CONTROL, "erika", 10.0 + JOIN_WINDOW)
    [ended] = book.tick(10.0 + JOIN_WINDOW)
    assert ended.to_json()["end_reason"] == "not-joined"
    assert ended.to_json()["duration_s"] == 0


def test_idle_and_maximum_length() -> None:
    book = SessionBook(POLICY)
    sid = accepted(book)
    book.join(sid, Mode.CONTROL, "erika", 0.0)
    assert book.next_deadline() == 600.0  # idle
    book.received(sid, 6, 500.0)  # input: idle restarts
    book.sent(sid, 1000)
    assert book.next_deadline() == 1100.0
    assert book.tick(1099.0) == []
    [idle] = book.tick(1100.0)
    assert idle.to_json() == {
        "session_id": sid,
        "state": "ended",
        "by": "device",
        "reason": "idle-timeout",
        "end_reason": "idle-timeout",
        "duration_s": 1100,
        "bytes_to_viewer": 1000,
        "bytes_from_viewer": 6,
        "inputs_dropped": 0,
    }

    sid = accepted(book, 2000.0)
    book.join(sid, Mode.CONTROL, "erika", 2000.0)
    for t in range(2100, 5600, 100):  # busy all the time
        book.received(sid, 6, float(t))
    assert book.next_deadline() == 2000.0 + 3600
    [over] = book.tick(5600.0)
    assert over.to_json()["end_reason"] == "max-length"


def test_consent_off_accepts_at_once_by_policy() -> None:
    book = SessionBook(DesktopPolicy(consent_required=False))
    session, [change] = book.request(new_id(), Mode.CONTROL, ERIKA, "", 0.0)
    assert session.state is State.ACCEPTED
    assert (change.state, change.by) == (State.ACCEPTED, "policy:no-consent")


def test_remote_answers_only_where_allowed() -> None:
    book = SessionBook(POLICY)
    sid = new_id()
    book.request(sid, Mode.VIEW, ERIKA, "", 0.0)
    with pytest.raises(Refusal) as refused:
        book.answer(sid, True, 1.0, site_contact="bob")
    assert code(refused) == "forbidden"
    with pytest.raises(Refusal) as unknown:  # forbidden before anything else is said
        book.answer(new_id(), True, 1.0, site_contact="bob")
    assert code(unknown) == "forbidden"
    assert book.get(sid) is not None and book.get(sid).state is State.PROMPTING  # type: ignore[union-attr]

    book = SessionBook(DesktopPolicy(allow_remote_consent=True))
    sid = new_id()
    book.request(sid, Mode.VIEW, ERIKA, "", 0.0)
    [denied] = book.answer(sid, False, 1.0, site_contact="bob")
    assert (denied.state, denied.by, denied.reason) == (
        State.DENIED,
        "site-contact:bob",
        "denied by a site contact",
    )


def test_a_remote_answer_named_for_the_requester_is_refused() -> None:
    """Four eyes at the device too: the portal's rule is the full one, but a remote
    answer in the requester's own name never counts here either."""
    book = SessionBook(DesktopPolicy(allow_remote_consent=True))
    sid = new_id()
    book.request(sid, Mode.CONTROL, ERIKA, "", 0.0)
    with pytest.raises(Refusal) as refused:
        book.answer(sid, True, 1.0, site_contact=ERIKA.user)
    assert code(refused) == "forbidden"
    assert book.get(sid).state is State.PROMPTING  # type: ignore[union-attr]
    [accepted_by_contact] = book.answer(sid, True, 2.0, site_contact="bob")
    assert accepted_by_contact.by == "site-contact:bob"


def test_one_live_session_at_a_time_and_ids_are_unique() -> None:
    book = SessionBook(POLICY)
    sid = new_id()
    book.request(sid, Mode.VIEW, ERIKA, "", 0.0)
    with pytest.raises(Refusal) as busy:
        book.request(new_id(), Mode.VIEW, ERIKA, "", 1.0)
    assert code(busy) == "busy"
    book.end(sid, "ended-by-portal", 2.0)
    with pytest.raises(Refusal) as again:
        book.request(sid, Mode.VIEW, ERIKA, "", 3.0)
    assert code(again) == "conflict"
    assert book.request(new_id(), Mode.VIEW, ERIKA, "", 3.0)[0].state is State.PROMPTING


def test_end_is_final() -> None:
    book = SessionBook(POLICY)
    sid = accepted(book)
    assert states(book.end(sid, "ended-by-customer", 1.0)) == ["ended"]
    calls: list[Callable[[], object]] = [
        lambda: book.end(sid, "ended-by-portal", 2.0),
        lambda: book.answer(sid, True, 2.0),
        lambda: book.join(sid, Mode.VIEW, "erika", 2.0),
    ]
    for call in calls:
        with pytest.raises(Refusal):
            call()
    with pytest.raises(Refusal) as unknown:
        book.end(new_id(), "ended-by-portal", 2.0)
    assert code(unknown) == "not_found"


def test_enabled_and_display_resolution() -> None:
    def no_x(display: str) -> bool:
        return False

    assert desktop_enabled(False, ":0", {"DISPLAY": ":1"}, no_x)[0] is False
    assert desktop_enabled(None, ":3", {}, no_x)[0] is True
    assert desktop_enabled(None, "", {"DISPLAY": ":1"}, no_x)[0] is True
    assert desktop_enabled(None, "", {}, no_x) == (
        False,
        "no display configured, no $DISPLAY, no X server on :0",
    )
    assert desktop_enabled(None, "", {}, lambda d: d == ":0")[0] is True
    assert resolve_display("", {"DISPLAY": ":7"}) == ":7"
    assert resolve_display("", {}) == ":0"
    assert resolve_display(":2", {"DISPLAY": ":7"}) == ":2"


# -- the rules hold whatever happens, in any order --------------------------------------


class Book(RuleBasedStateMachine):
    """Random requests, answers, joins, ends, traffic and time against the book; the
    model checks every started session was accepted, joined in time, in an allowed
    mode, once, and that every change of state was reported exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.remote = False
        self.book = SessionBook(
            DesktopPolicy(consent_timeout_s=30, max_session_s=500, idle_timeout_s=100)
        )
        self.now = 0.0
        self.ids: list[str] = []
        self.reported: dict[str, list[str]] = {}
        self.accepted: dict[str, tuple[float, Mode]] = {}
        self.joins: dict[str, int] = {}

    def record(self, changes: list[StateReport]) -> None:
        for change in changes:
            self.reported.setdefault(change.session_id, []).append(str(change.state))
            if change.state is State.ACCEPTED:
                assert change.mode is not None
                self.accepted[change.session_id] = (self.now, change.mode)

    def pick(self, data: st.DataObject) -> str:
        """Mostly the newest session (the one that can be live), sometimes an old or
        unknown one."""
        unknown = "00000000-0000-4000-8000-000000000000"
        return data.draw(st.sampled_from([*self.ids[-1:] * 6, *self.ids, unknown]))

    @rule(mode=st.sampled_from(Mode))
    def request(self, mode: Mode) -> None:
        sid = new_id()
        try:
            _, changes = self.book.request(sid, mode, ERIKA, "", self.now)
        except Refusal as exc:
            assert exc.code == "busy"
            return
        self.ids.append(sid)
        self.record(changes)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), accept=st.booleans(), remote=st.sampled_from([False, False, True]))
    def answer(self, data: st.DataObject, accept: bool, remote: bool) -> None:
        try:
            changes = self.book.answer(
                self.pick(data), accept, self.now, site_contact="bob" if remote else None
            )
        except Refusal as exc:
            assert exc.code in ("forbidden", "conflict", "not_found")
            assert not remote or exc.code == "forbidden"
            return
        assert not remote
        self.record(changes)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), mode=st.sampled_from(Mode))
    def join(self, data: st.DataObject, mode: Mode) -> None:
        sid = self.pick(data)
        try:
            changes = self.book.join(sid, mode, "erika", self.now)
        except Refusal as exc:
            assert exc.code == "forbidden"
            return
        accepted_at, accepted_mode = self.accepted[sid]
        assert self.now < accepted_at + JOIN_WINDOW
        assert accepted_mode.allows(mode)
        self.joins[sid] = self.joins.get(sid, 0) + 1
        assert self.joins[sid] == 1
        self.record(changes)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        try:
            self.record(self.book.end(self.pick(data), "ended-by-portal", self.now))
        except Refusal as exc:
            assert exc.code in ("conflict", "not_found")

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), nbytes=st.integers(1, 100))
    def traffic(self, data: st.DataObject, nbytes: int) -> None:
        sid = self.pick(data)
        self.book.sent(sid, nbytes)
        self.book.received(sid, nbytes, self.now)

    # Mostly short steps, plus the interesting boundaries (consent 30, join 60, idle 100,
    # maximum length 500).
    @rule(dt=st.one_of(st.floats(0, 5), st.sampled_from([29.9, 30, 59.9, 60, 100, 500])))
    def time_passes(self, dt: float) -> None:
        deadline = self.book.next_deadline()
        self.now += dt
        changes = self.book.tick(self.now)
        assert bool(changes) == (deadline is not None and deadline <= self.now)
        self.record(changes)

    @invariant()
    def reports_match_states(self) -> None:
        for sid in self.ids:
            session = self.book.get(sid)
            if session is None:
                continue  # forgotten after MAX_FINISHED
            history = self.reported.get(sid, [])
            if session.state is State.PROMPTING:
                assert history == []
            else:
                assert history[-1] == str(session.state)
                assert len(history) == len(set(history))  # each state reported once
                assert history[0] in ("accepted", "denied", "timeout", "ended")
                if "started" in history:
                    assert history[:2] == ["accepted", "started"]

    @invariant()
    def deadlines_are_in_the_future(self) -> None:
        deadline = self.book.next_deadline()
        assert deadline is None or deadline > self.now
        assert len(self.book.live) <= 1


TestBook = Book.TestCase
TestBook.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
