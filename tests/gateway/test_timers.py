"""`gateway.timers.due`: idle timeout, token expiry and the expiry warning, on made-up times."""

from __future__ import annotations

from gateway.timers import EXPIRY_WARNING, Due, due


def test_active_connection_with_a_fresh_token_has_nothing_due() -> None:
    """Seen after the idle cut-off, token far from expiry: nothing."""
    assert due(last_seen=100.0, expires_at=5000.0, warned=False, idle_before=50.0, now=1000.0) is (
        Due.NOTHING
    )


def test_idle_wins_over_expiry() -> None:
    """Last seen before the cut-off: idle, even with the token expired too."""
    assert due(last_seen=49.9, expires_at=900.0, warned=False, idle_before=50.0, now=1000.0) is (
        Due.IDLE
    )


def test_expired_token() -> None:
    """At the expiry second the connection is due to close 1008."""
    assert due(100.0, expires_at=1000.0, warned=True, idle_before=50.0, now=1000.0) is Due.EXPIRED


def test_warning_once_inside_the_window() -> None:
    """Inside the warning window an unwarned connection is warned; a warned one is not again;
    just before the window nothing is due."""
    inside = 1000.0 - EXPIRY_WARNING
    assert due(100.0, 1000.0, warned=False, idle_before=50.0, now=inside) is Due.WARN
    assert due(100.0, 1000.0, warned=True, idle_before=50.0, now=inside) is Due.NOTHING
    assert due(100.0, 1000.0, warned=False, idle_before=50.0, now=inside - 0.1) is Due.NOTHING
