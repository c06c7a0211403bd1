"""A dependency-free progress bar for long host-side loops (calibration, generation, stages)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Prints `desc [#####.....] i/n elapsed` to stderr; redraws in place on a TTY.

    Args:
      total: number of steps.
      desc: label printed before the bar.
      enabled: False silences it (tests, --quiet).
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, width: int = 28):
        self.total, self.desc, self.enabled, self.width = max(int(total), 1), desc, enabled, width
        self.n = 0
        self.start = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._last_len = 0
        if enabled:
            self._draw()

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.n = min(self.n + n, self.total)
        if self.enabled:
            self._draw(postfix)

    def _draw(self, postfix: str = "") -> None:
        filled = int(self.width * self.n / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {elapsed:6.1f}s {postfix}".rstrip()
        if self._tty:
            sys.stderr.write("\r" + line.ljust(self._last_len))
            self._last_len = len(line)
            if self.n >= self.total:
                sys.stderr.write("\n")
        elif self.n >= self.total or self.n == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.n < self.total and self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def track(items: Iterable[T], desc: str = "", total: int | None = None, **kw) -> Iterator[T]:
    """Wraps an iterable with a `Progress` bar."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(total, desc, **kw)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
