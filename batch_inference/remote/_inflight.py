"""Which calls each sent message carries, for as long as any of them is unsettled.

A server that cannot read a message answers ``refused`` with the message's
``seq`` alone; the client must then fail exactly the calls that message
carried, however many messages were sent since. So a message is remembered
until its last call is settled (answered, abandoned, cancelled or failed) and
no longer: what is kept grows with the calls pending, never with the traffic.

Owned by the client's I/O thread: it records every message it sends and hears
of every settled call (results and refusals arrive there; calls their callers
gave up on reach it through the cancel queue), so nothing here needs a lock.
"""

from __future__ import annotations

__all__ = ["InFlight"]


class InFlight:
    """``seq`` -> the calls of that message still unsettled (see the module docstring)."""

    __slots__ = ("_calls", "_seq_of")

    def __init__(self) -> None:
        self._calls: dict[int, set[int]] = {}
        self._seq_of: dict[int, int] = {}

    def __len__(self) -> int:
        """Messages with at least one unsettled call."""
        return len(self._calls)

    def sent(self, seq: int, request_ids: list[int]) -> None:
        """Message ``seq`` carried ``request_ids`` (a message of cancels alone is not kept)."""
        if request_ids:
            self._calls[seq] = set(request_ids)
            for request_id in request_ids:
                self._seq_of[request_id] = seq

    def settled(self, request_id: int) -> None:
        """``request_id`` has its outcome (or its caller gave up); unknown ids are ignored."""
        seq = self._seq_of.pop(request_id, None)
        if seq is None:
            return
        calls = self._calls[seq]
        calls.discard(request_id)
        if not calls:
            del self._calls[seq]

    def refused(self, seq: int) -> list[int]:
        """The unsettled calls of message ``seq``, forgotten now (their outcome is the refusal)."""
        calls = self._calls.pop(seq, set())
        for request_id in calls:
            del self._seq_of[request_id]
        return sorted(calls)

    def clear(self) -> None:
        """Every pending call failed at once (the connection was lost)."""
        self._calls.clear()
        self._seq_of.clear()
