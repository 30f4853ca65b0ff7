"""The token bucket: bursts, refill, refusal, and disconnect for floods."""

from __future__ import annotations

from gateway.limits import TokenBucket, Verdict


def test_burst_then_refuse_then_refill() -> None:
    """A full bucket admits `burst` frames at once, refuses the next, refills at `rate`."""
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.admit(0.0) for _ in range(3)] == [Verdict.ACCEPT] * 3
    assert bucket.admit(0.0) is Verdict.REFUSE
    assert bucket.admit(0.1) is Verdict.ACCEPT


def test_flood_disconnects_slight_excess_does_not() -> None:
    """Refusals beyond `burst` without accepted frames paying them back mean disconnect; a client
    slightly over the rate is only slowed down."""
    flood = TokenBucket(rate=10, burst=3, now=0.0)
    verdicts = [flood.admit(0.0) for _ in range(7)]
    assert verdicts[-1] is Verdict.DISCONNECT and Verdict.REFUSE in verdicts
    steady = TokenBucket(rate=10, burst=3, now=0.0)
    outcomes = {steady.admit(i * 0.09) for i in range(200)}  # ~11 frames/s against 10/s
    assert Verdict.DISCONNECT not in outcomes
