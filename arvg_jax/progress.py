"""Progress bars (tqdm, on stderr) for long host-side loops: calibration, generation, stages."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

# On a terminal tqdm redraws in place; in a log file every redraw is kept, so redraw seldom there.
_LOG_MININTERVAL_S = 10.0
# tqdm's default layout with a fixed bar width; rate_fmt switches to s/it for slow steps.
_BAR_FORMAT = "{l_bar}{bar:WIDTH}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class Progress:
    """`desc: 40%|####      | 2/5 [00:03<00:04, 1.52s/it, postfix]` on stderr.

    A thin wrapper over tqdm that keeps this project's small API (`update`, `close`, `n`, `total`).
    A disabled bar prints nothing but still counts.

    Args:
      total: number of steps (at least 1 is shown).
      desc: label printed before the bar.
      enabled: False silences it (tests, --quiet).
      width: bar width in characters.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, width: int = 28):
        self.total, self.desc, self.enabled = max(int(total), 1), desc, enabled
        self.n = 0
        file = sys.stderr
        tty = bool(getattr(file, "isatty", lambda: False)())
        self._bar = tqdm(
            total=self.total,
            desc=desc,
            disable=not enabled,
            file=file,
            leave=True,
            mininterval=0.1 if tty else _LOG_MININTERVAL_S,
            bar_format=_BAR_FORMAT.replace("WIDTH", str(int(width))),
        )

    def update(self, n: int = 1, postfix: str = "") -> None:
        """Advances by `n` steps (never past `total`); `postfix` names the step just done."""
        step = max(min(n, self.total - self.n), 0)
        self.n += step
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(step)

    def close(self) -> None:
        """Ends the bar's line; safe to call twice."""
        self._bar.close()


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
