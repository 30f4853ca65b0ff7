"""chaos.report: lost, duplicated and reordered deliveries, clients back and catch-up, counted
from recorded arrivals (pure)."""

from __future__ import annotations

import uuid
from collections import Counter

from chaos import report
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
    assert "| kill | 3 | 6 | 0 | 0 | 0 | 0 | 0 | 1 | 1.00 s | 1.30 s |" in report.markdown(
        [row], "# t"
    )
