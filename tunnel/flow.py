"""Per-channel credit flow control, one small pure class per direction.

Credit is counted in payload bytes. The receiver advertises a window in OPEN or
ACCEPT; the sender may have at most that many bytes sent but not yet credited.
The receiver grants credit back only when the *application* has consumed data,
so a slow consumer slows its own sender and nobody else.
"""

from __future__ import annotations

from .limits import MAX_CREDIT_BATCH


class SendCredit:
    """The sender's view: how many bytes the peer still lets us send.

    :meth:`cap` lets the sender use less than the peer's window on its own initiative
    (no wire change): credit above the cap is kept in ``reserve`` and not spent.
    """

    __slots__ = ("credit", "reserve", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.credit = window
        self.reserve = 0

    @property
    def usable(self) -> int:
        """Bytes we may send now: the credit less what :meth:`cap` holds back."""
        return self.credit - self.reserve

    def cap(self, in_flight: int | None) -> None:
        """Keep at most ``in_flight`` bytes sent but not yet credited; None = the window."""
        self.reserve = 0 if in_flight is None else max(0, self.window - in_flight)

    def spend(self, nbytes: int) -> None:
        """Account for a sent chunk; the caller never sends more than :attr:`credit`."""
        assert 0 < nbytes <= self.credit
        self.credit -= nbytes

    def grant(self, increment: int) -> bool:
        """Add credit from a CREDIT frame; False if it would exceed the window.

        An honest receiver only returns bytes we sent, so credit can never exceed
        the window it advertised: more is a FLOW_CONTROL_ERROR.
        """
        credit = self.credit + increment
        if credit > self.window:
            return False
        self.credit = credit
        return True


class ReceiveWindow:
    """The receiver's view, keeping ``available + held + unreturned == window``.

    * ``available`` -- bytes the peer may still send without new credit;
    * ``held`` -- bytes received and not yet consumed by the application
      (complete messages waiting to be read plus a partial message being reassembled);
    * ``unreturned`` -- bytes consumed but not yet credited back.
    """

    __slots__ = ("available", "held", "threshold", "unreturned", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.available = window
        self.held = 0
        self.unreturned = 0
        # Batch CREDIT frames: return credit in quarters of the window, not per message,
        # but never wait for more than a sender that caps what it has in flight may send.
        self.threshold = max(1, min(window // 4, MAX_CREDIT_BATCH))

    def receive(self, nbytes: int) -> bool:
        """Account for a received chunk; False if the peer sent beyond its credit."""
        if nbytes > self.available:
            return False
        self.available -= nbytes
        self.held += nbytes
        return True

    def consume(self, nbytes: int) -> None:
        """The application took ``nbytes`` of complete messages."""
        if not 0 <= nbytes <= self.held:
            raise ValueError(f"consumed {nbytes} bytes but only {self.held} are held")
        self.held -= nbytes
        self.unreturned += nbytes

    def credit_due(self, partial: int) -> int:
        """Return the CREDIT increment to send now (0 = not yet) and count it as granted.

        ``partial`` is the size of the message being reassembled. Credit is batched
        until a quarter of the window (at most MAX_CREDIT_BATCH) is owed, except when
        everything held is that partial message: the application cannot consume it,
        so the sender may be waiting for credit to finish it, and withholding credit
        would deadlock.
        """
        due = self.unreturned
        if due and (due >= self.threshold or (partial and self.held == partial)):
            self.unreturned = 0
            self.available += due
            return due
        return 0
