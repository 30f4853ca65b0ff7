"""The pub/sub link of the ordering state machines (`tests/gateway/test_ordering*.py`): what is
published while it is up travels in order (`in_flight`); dropping it loses what travels; its
return is when the gateway resyncs, which each machine answers as its owner does."""

from __future__ import annotations

from typing import Generic, TypeVar

from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

F = TypeVar("F")


class PubSubLinkMachine(RuleBasedStateMachine, Generic[F]):
    """Rules `link_down` and `link_back` over `link_up` and `in_flight`, which the machine's
    `@initialize` sets; `link_back` calls `resynced()`."""

    link_up: bool
    in_flight: list[F]

    @precondition(lambda self: self.link_up)
    @rule()
    def link_down(self) -> None:
        self.link_up = False
        self.in_flight.clear()

    @precondition(lambda self: not self.link_up)
    @rule()
    def link_back(self) -> None:
        self.link_up = True
        self.resynced()

    def resynced(self) -> None:
        """The link is back: what was published while it was down is lost."""
        raise NotImplementedError
