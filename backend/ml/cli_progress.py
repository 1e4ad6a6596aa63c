"""What a long command shows while it works: a bar line per model trained or checked, and a
retry wait counting down in place on a terminal (plain lines when piped)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_printer(total: int, *, stream: Any = sys.stderr) -> Callable[[Any], None]:
    """A per-model progress bar on a terminal; plain lines when piped."""
    done = 0
    started = time.perf_counter()

    def report(result: Any) -> None:
        nonlocal done
        done += 1
        if result.unchanged:
            score, flag = "unchanged", "  (same data and parameters as production)"
        else:
            score = "failed" if not result.ok else f"{result.metric}={result.score:.3f}"
            flag = "" if result.passed else "  BELOW THRESHOLD" if result.ok else \
                f"  ({result.error})"
        stream.write(f"{bar(done, total)} {done:2d}/{total} {result.name:<24} {score}{flag} "
                     f"({time.perf_counter() - started:.1f}s)\n")
        stream.flush()

    return report


class CheckPrinter:
    """A check's progress on stderr: a bar line per model checked, one per retrain attempt,
    and a backoff wait counting down in place on a terminal (one line when piped)."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.waiting: tuple[str, int] | None = None  # the wait on show

    def __call__(self, step: Any) -> None:
        if step.kind == "waiting":
            key = (step.model, step.attempt)
            if self.live:
                self.stream.write(f"\r{step.line()}\x1b[K")
            elif key != self.waiting:
                self.stream.write(step.line() + "\n")
            self.waiting = key
        else:
            self.close()
            lead = f"{bar(step.done, step.total)} " if step.kind == "checked" else "  "
            self.stream.write(lead + step.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a countdown line left on show."""
        if self.waiting is not None and self.live:
            self.stream.write("\n")
            self.stream.flush()
        self.waiting = None
