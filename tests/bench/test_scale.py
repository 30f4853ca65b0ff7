"""Benchmark size presets and their environment overrides."""

from __future__ import annotations

import pytest

from bench import scale


def test_default_is_full_scale() -> None:
    """Without BENCH_SCALE the published (full) preset runs."""
    assert scale.from_env({}).idle_levels == (1000, 5000, 10000)


def test_fields_can_be_overridden() -> None:
    """BENCH_<FIELD> replaces one knob of the chosen preset, typed."""
    chosen = scale.from_env(
        {"BENCH_SCALE": "small", "BENCH_IDLE_LEVELS": "10,20", "BENCH_STEP_SECONDS": "0.2"}
    )
    assert chosen.name == "small"
    assert chosen.idle_levels == (10, 20)
    assert chosen.step_seconds == 0.2


def test_bad_values_name_the_variable() -> None:
    """An unknown preset or a malformed number is refused with the variable's name."""
    with pytest.raises(ValueError, match="BENCH_SCALE"):
        scale.from_env({"BENCH_SCALE": "huge"})
    with pytest.raises(ValueError, match="BENCH_RATE_START"):
        scale.from_env({"BENCH_RATE_START": "fast"})
    with pytest.raises(ValueError, match="BENCH_SERVERS"):
        scale.from_env({"BENCH_SERVERS": "gateway,nginx"})
