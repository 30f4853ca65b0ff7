"""The send floor: real processes, real loopback sockets, on the benchmark's cores."""

from __future__ import annotations

from bench import sendfloor, system


def test_measures_every_round_of_writes_to_every_connection() -> None:
    """Each round writes one frame to every connection; the figures are the rounds' CPU and
    wall times, consistent with each other and with the count of connections."""
    result = sendfloor.measure(system.plan_cores(), connections=50, rounds=3)
    assert result["connections"] == 50
    assert result["rounds"] == 3
    assert result["frame_bytes"] == len(sendfloor.FRAME)
    assert result["bytes_received"] == 50 * 3 * len(sendfloor.FRAME)
    assert 0 < result["cpu_ms_min"] <= result["cpu_ms_p50"] <= result["cpu_ms_max"]
    assert result["wall_ms_p50"] <= result["wall_ms_p99"]
    assert result["us_per_write_p50"] == round(result["cpu_ms_p50"] * 1000 / 50, 2)
