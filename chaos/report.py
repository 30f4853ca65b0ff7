"""What a chaos run recorded, turned into one row per fault, and the rows into markdown. Pure.

Per step (a fault and the steady traffic around it), for every client and every notification
its user committed during the step (the creates requested in it):
- lost: committed, never received by the end of the run (clients had resumed by then);
- duplicated: received more than once by the same client;
- reordered: received after a higher seq of the same user on the same client;
- offered /s: the step's creates divided by the time from its first request to its last (what
  the producer asked for, catch-up of a backlog included);
- committed /s: the step's committed creates divided by the time from its first request to its
  last answer (what the service took, recovery included);
- producer 5xx / errors: answers >= 500 (by status) and timeouts or refused connections met by
  the producer's creates of the step (each retried with its idempotency key until answered);
- clients back: how many clients dropped during the step, and the time from the fault until the
  last of them was connected again;
- all caught up: the time from the fault until every client held every notification requested
  up to the end of the fault (for a pause, the end of the pause) or until the last dropped client
  was back, whichever is later (so it includes the replay of the gap).

And for the streaming answers in flight during the step (asked before the next step's fault,
not finished before this one's):
- answers: how many; completed: how many of them ended with `end` (status complete);
- resumed: how many of them the asker had to resume with `Last-Event-ID` after a drop;
- token gaps / repeats: answers whose concatenated tokens differ from the reply persisted in the
  chat history, or that received an event id twice;
- answers done: the time from the fault until every answer in flight at the fault had ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from chaos.chat import Answer
from chaos.load import Client, Create


@dataclass(frozen=True)
class Step:
    """When a step's fault started and ended, and when the next step began (monotonic)."""

    title: str
    fault_at: float
    fault_end: float
    step_end: float


@dataclass(frozen=True)
class Row:
    fault: str
    committed: int
    offered_rate: float  # creates per second (module docstring)
    committed_rate: float
    deliveries: int  # committed notifications times the clients of their users
    lost: int
    duplicated: int
    reordered: int
    status_5xx: dict[str, int]
    errors: dict[str, int]
    dropped: int
    back_after: float | None  # None: nobody dropped
    caught_up_after: float | None  # None: some client never caught up
    answers: int = 0
    completed: int = 0
    resumed: int = 0
    mismatched: int = 0  # token gap or repeat
    answers_done_after: float | None = None  # None: one never ended

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.reordered
            or self.mismatched
            or self.completed < self.answers
            or "500" in self.status_5xx
        )


def _answers(step: Step, answers: Sequence[Answer]) -> tuple[int, int, int, int, float | None]:
    """The chat columns of one step (see the module's docstring): answers, completed, resumed,
    mismatched, answers done after."""
    mine = [
        a
        for a in answers
        if a.asked_at < step.step_end and (a.finished_at is None or a.finished_at >= step.fault_at)
    ]
    at_fault = [a for a in mine if a.asked_at <= step.fault_at]
    ends = [a.finished_at for a in at_fault]
    done: float | None = None
    if at_fault and all(end is not None for end in ends):
        done = max(end for end in ends if end is not None) - step.fault_at
    elif not at_fault:
        done = 0.0
    return (
        len(mine),
        sum(1 for a in mine if a.status == "complete"),
        sum(1 for a in mine if a.resumes),
        sum(1 for a in mine if a.status == "complete" and not a.matches),
        done,
    )


def _row(
    index: int,
    step: Step,
    creates: Sequence[Create],
    clients: Sequence[Client],
    errors: Counter[str],
    answers: Sequence[Answer],
) -> Row:
    requested = [c for c in creates if c.step == index]
    mine = [c for c in requested if c.seq is not None]
    by_user: dict[object, set[int]] = {}
    for create in mine:
        assert create.seq is not None
        by_user.setdefault(create.user, set()).add(create.seq)
    drops = [
        (client, at)
        for client in clients
        for at in client.drops
        if step.fault_at <= at < step.step_end
    ]
    returns = [at for client, dropped_at in drops for at in client.returns if at >= dropped_at]
    back = max(returns) - step.fault_at if drops and returns else None
    # Caught up: holding everything requested until the fault ended and the clients were back.
    until = max(step.fault_end, step.fault_at + (back or 0.0))
    due: dict[object, set[int]] = {}
    for create in creates:
        if create.seq is not None and create.requested_at <= until:
            due.setdefault(create.user, set()).add(create.seq)
    lost = duplicated = reordered = deliveries = 0
    caught_up: float | None = step.fault_at
    for client in clients:
        expected = by_user.get(client.user, set())
        deliveries += len(expected)
        counts = Counter(seq for seq, _ in client.received)
        lost += sum(1 for seq in expected if counts[seq] == 0)
        duplicated += sum(counts[seq] - 1 for seq in expected if counts[seq] > 1)
        highest = 0
        for seq, _ in client.received:
            if seq < highest and seq in expected and counts[seq] == 1:
                reordered += 1
            highest = max(highest, seq)
        arrivals = {seq: at for seq, at in reversed(client.received)}  # first arrival
        needed = due.get(client.user, set())
        if caught_up is not None:
            if any(seq not in arrivals for seq in needed):
                caught_up = None
            else:
                caught_up = max([caught_up, *(arrivals[seq] for seq in needed)])
    chat = _answers(step, answers)
    five = {k: v for k, v in sorted(errors.items()) if k.isdigit() and int(k) >= 500}
    other = {k: v for k, v in sorted(errors.items()) if not k.isdigit()}
    return Row(
        fault=step.title,
        committed=len(mine),
        offered_rate=_rate(len(requested), [c.requested_at for c in requested]),
        committed_rate=_rate(
            len(mine),
            [c.requested_at for c in mine]
            + [c.committed_at for c in mine if c.committed_at is not None],
        ),
        deliveries=deliveries,
        lost=lost,
        duplicated=duplicated,
        reordered=reordered,
        status_5xx=five,
        errors=other,
        dropped=len({id(client) for client, _ in drops}),
        back_after=back,
        caught_up_after=None if caught_up is None else caught_up - step.fault_at,
        answers=chat[0],
        completed=chat[1],
        resumed=chat[2],
        mismatched=chat[3],
        answers_done_after=chat[4],
    )


def _rate(count: int, times: Sequence[float]) -> float:
    """`count` per second over the span of `times` (0 when they do not span any time)."""
    span = max(times, default=0.0) - min(times, default=0.0)
    return count / span if span > 0 else 0.0


def rows(
    steps: Sequence[Step],
    creates: Sequence[Create],
    clients: Sequence[Client],
    errors: dict[int, Counter[str]],
    answers: Sequence[Answer] = (),
) -> list[Row]:
    return [
        _row(index, step, creates, clients, errors.get(index, Counter()), answers)
        for index, step in enumerate(steps)
    ]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} x {k}" for k, v in counts.items()) or "0"


def _seconds(value: float | None, none: str) -> str:
    return none if value is None else f"{value:.2f} s"


def markdown(results: Sequence[Row], header: str) -> str:
    """The report: `header` (what was run, where), then one table row per fault."""
    lines = [
        header.rstrip(),
        "",
        "| fault | committed | offered /s | committed /s | deliveries | lost | duplicated "
        "| reordered | producer 5xx "
        "| producer timeouts / refused | clients dropped | clients back | all caught up "
        "| answers | completed | resumed | token gaps / repeats | answers done |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        back = "none dropped" if not row.dropped else _seconds(row.back_after, "never")
        lines.append(
            f"| {row.fault} | {row.committed} | {row.offered_rate:.0f} | "
            f"{row.committed_rate:.0f} | {row.deliveries} | {row.lost} | "
            f"{row.duplicated} | {row.reordered} | {_counts(row.status_5xx)} | "
            f"{_counts(row.errors)} | {row.dropped} | {back} | "
            f"{_seconds(row.caught_up_after, 'never')} | {row.answers} | {row.completed} | "
            f"{row.resumed} | {row.mismatched} | {_seconds(row.answers_done_after, 'never')} |"
        )
    return "\n".join(lines) + "\n"
