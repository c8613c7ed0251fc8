"""Where a run's wall time goes, phase by phase: printed when it ends and kept in metrics.json.

On a small run the optimizer steps are a minority of the time (loading, the reference pass,
held-out scoring and answers surround them); a run that says so shows what to cache or cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """Seconds per named phase, in the order the phases first ran; a phase that runs twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        # the phase running now, or the one an exception left: what a stopped run says it stopped in
        self.current: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started, outer = time.perf_counter(), self.current
        self.current = name
        try:
            yield
            self.current = outer
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        """The phases to a tenth of a second, for metrics.json."""
        return {name: round(seconds, 1) for name, seconds in self.seconds.items()}

    def line(self, highlight: str | None = None) -> str:
        """``Time: a 3 s, b 20 s (87%); 23 s in all.``, with ``highlight``'s share of the whole."""
        total = sum(self.seconds.values())
        parts = []
        for name, seconds in self.seconds.items():
            share = f" ({seconds / total:.0%})" if name == highlight and total else ""
            parts.append(f"{name} {seconds:.0f} s{share}")
        return f"Time: {', '.join(parts)}; {total:.0f} s in all."
