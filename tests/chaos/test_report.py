"""chaos.report: lost, duplicated and reordered deliveries, clients back and catch-up, counted
from recorded arrivals (pure)."""

from __future__ import annotations

import uuid
from collections import Counter

from chaos import report
from chaos.chat import Answer
from chaos.load import Client, Create


def _client(user: uuid.UUID, arrivals: list[tuple[int, float]]) -> Client:
    client = Client("ws://x", user)
    client.received = arrivals
    return client


def test_counts_loss_duplicates_and_reordering_per_client() -> None:
    """A missing seq is lost, a repeat is a duplicate, a seq after a higher one is reordered;
    only the step's own creates count, and 500s are told apart from 503s."""
    user = uuid.uuid4()
    creates = [
        Create(user, 0, 0.0, 1),
        Create(user, 1, 5.0, 2),
        Create(user, 1, 5.1, 3),
        Create(user, 1, 5.2, 4),
        Create(user, 1, 5.3, 5),
    ]
    clients = [
        _client(user, [(1, 0.1), (2, 5.5), (3, 5.6), (4, 5.7), (5, 5.8)]),
        _client(user, [(1, 0.1), (3, 5.6), (2, 5.7), (3, 5.8), (5, 6.0)]),
    ]
    steps = [report.Step("a", 0.0, 0.0, 5.0), report.Step("b", 5.0, 5.0, 9.0)]
    errors = {1: Counter({"503": 2, "500": 1, "timeout": 3})}
    first, second = report.rows(steps, creates, clients, errors)
    assert (first.lost, first.duplicated, first.reordered, first.committed) == (0, 0, 0, 1)
    assert (second.lost, second.duplicated, second.reordered) == (1, 1, 1)
    assert second.deliveries == 8
    assert second.status_5xx == {"500": 1, "503": 2} and second.errors == {"timeout": 3}
    assert not second.clean and first.clean


def test_clients_back_and_caught_up_are_measured_from_the_fault() -> None:
    """A client dropped at 10.2 s and back at 11.0 s after a fault at 10 s: back after 1 s;
    caught up when it holds everything requested until then (its last replayed seq at 11.3 s)."""
    user = uuid.uuid4()
    creates = [Create(user, 0, 9.0, 1), Create(user, 0, 10.5, 2), Create(user, 0, 12.0, 3)]
    client = _client(user, [(1, 9.1), (2, 11.3), (3, 12.1)])
    client.drops, client.returns = [10.2], [11.0]
    calm = _client(user, [(1, 9.1), (2, 10.6), (3, 12.1)])
    (row,) = report.rows([report.Step("kill", 10.0, 10.0, 20.0)], creates, [client, calm], {})
    assert row.dropped == 1
    assert row.back_after is not None and abs(row.back_after - 1.0) < 1e-9
    assert row.caught_up_after is not None and abs(row.caught_up_after - 1.3) < 1e-9
    assert "| kill | 3 | 1 | 1 | 6 | 0 | 0 | 0 | 0 | 0 | 1 | 1.00 s | 1.30 s | 0 |" in (
        report.markdown([row], "# t")
    )


def test_offered_and_committed_rates_span_the_steps_requests_and_answers() -> None:
    """Offered: the step's creates over the time from its first request to its last; committed:
    the committed ones over the time from the first request to the last answer. An unanswered
    create is offered, not committed; another step's creates count in neither."""
    user = uuid.uuid4()
    creates = [
        Create(user, 0, 1.0, 1, committed_at=1.5),
        Create(user, 1, 10.0, 2, committed_at=10.5),
        Create(user, 1, 11.0, 3, committed_at=12.0),
        Create(user, 1, 12.0, 4, committed_at=14.0),
        Create(user, 1, 12.0),
    ]
    client = _client(user, [(1, 1.6), (2, 10.6), (3, 12.1), (4, 14.1)])
    steps = [report.Step("a", 1.0, 1.0, 9.0), report.Step("b", 10.0, 10.0, 20.0)]
    _, row = report.rows(steps, creates, [client], {})
    assert (row.committed, row.offered_rate, row.committed_rate) == (3, 2.0, 0.75)


def test_answer_records_tokens_and_counts_a_repeated_event() -> None:
    """Events after `start` add tokens; an event id not above the last one is a repeat and
    adds nothing; `end` finishes the answer; it matches only the persisted reply."""
    answer = Answer(0, 0.0)
    answer.take({"type": "start", "message_id": "m", "event_id": "1-0"}, 0.1)
    answer.take({"type": "token", "content": "a ", "event_id": "1-1"}, 0.2)
    answer.take({"type": "token", "content": "a ", "event_id": "1-1"}, 0.3)
    answer.take({"type": "token", "content": "b", "event_id": "2-0"}, 1.5)
    answer.take({"type": "end", "status": "complete", "event_id": "2-1"}, 1.6)
    assert (answer.message_id, answer.text, answer.repeats) == ("m", "a b", 1)
    assert answer.status == "complete" and answer.finished_at == 1.6
    assert abs(answer.longest_silence - 1.3) < 1e-9
    answer.persisted = "a b"
    assert not answer.matches  # the repeated event
    answer.repeats = 0
    assert answer.matches


def test_answer_columns_count_answers_in_flight_during_the_step() -> None:
    """An answer counts in a step when it was asked before the step ended and had not ended
    before its fault; one whose tokens differ from the stored reply is a gap or repeat."""
    user = uuid.uuid4()
    good = Answer(0, 8.0, "m1", ["x"], persisted="x", status="complete", finished_at=14.0)
    good.resumes = 1
    gap = Answer(0, 11.0, "m2", ["x"], persisted="x y", status="complete", finished_at=16.0)
    before = Answer(0, 1.0, "m0", ["x"], persisted="x", status="complete", finished_at=5.0)
    (row,) = report.rows(
        [report.Step("kill", 10.0, 10.0, 20.0)],
        [Create(user, 0, 9.0, 1)],
        [_client(user, [(1, 9.1)])],
        {},
        [before, good, gap],
    )
    assert (row.answers, row.completed, row.resumed, row.mismatched) == (2, 2, 1, 1)
    assert row.answers_done_after == 4.0  # `good` was in flight at the fault, ended at 14 s
    assert not row.clean
