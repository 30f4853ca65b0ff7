"""Progress on stderr: one line per finished step, with a bar of the whole run.

Plain text (no terminal control codes), so it reads the same in a terminal, a CI log or a file.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, width: int = 24) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.width = width
        self.started = time.monotonic()

    def step(self, message: str, *, count: bool = True) -> None:
        """Report a finished step (`count=False`: a note that does not advance the bar)."""
        if count:
            self.done = min(self.done + 1, self.total)
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"[{bar}] {elapsed:6.1f}s  {message}\n")
        sys.stderr.flush()

    def add(self, steps: int) -> None:
        """Grow the expected total (a scenario found it has more steps than planned)."""
        self.total += steps
