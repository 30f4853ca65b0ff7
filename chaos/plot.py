"""The chaos run's picture: delivered notifications per second over the run with every fault
shaded, and per fault the time until every client caught up and every answer in flight ended.

Needs matplotlib (the `bench` extra, which `make chaos` installs); `draw` returns False without
it and the report says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from chaos.report import Row, Step


def per_second(times: Sequence[float], start: float) -> tuple[list[int], list[int]]:
    """Seconds since `start` and how many `times` fell in each (pure; empty seconds are 0)."""
    counts = Counter(int(at - start) for at in times if at >= start)
    if not counts:
        return [], []
    seconds = list(range(max(counts) + 1))
    return seconds, [counts.get(second, 0) for second in seconds]


def draw(
    rows: Sequence[Row], steps: Sequence[Step], arrivals: Sequence[float], start: float, out: Path
) -> bool:
    """Write the PNG to `out`; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (rate, catch) = plt.subplots(2, 1, figsize=(11, 8), height_ratios=(3, 2))
    seconds, counts = per_second(arrivals, start)
    rate.plot(seconds, counts, linewidth=0.8, color="tab:blue")
    for index, step in enumerate(steps, start=1):
        rate.axvspan(
            step.fault_at - start,
            max(step.fault_end - start, step.fault_at - start + 0.5),
            color="tab:red",
            alpha=0.25,
        )
        rate.annotate(
            str(index), (step.fault_at - start, 0), textcoords="offset points", xytext=(2, 4)
        )
    rate.set_xlabel("seconds since the clients began to connect (faults shaded, numbered)")
    rate.set_ylabel("notifications delivered / s (all clients)")
    labels = [f"{index}. {row.fault}" for index, row in enumerate(rows, start=1)]
    positions = range(len(rows))
    caught = [row.caught_up_after or 0.0 for row in rows]
    answered = [row.answers_done_after or 0.0 for row in rows]
    catch.barh([p - 0.2 for p in positions], caught, height=0.4, label="every client caught up")
    catch.barh([p + 0.2 for p in positions], answered, height=0.4, label="answers in flight ended")
    catch.set_yticks(list(positions), labels, fontsize=7)
    catch.invert_yaxis()
    catch.set_xlabel("seconds after the fault")
    catch.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True
