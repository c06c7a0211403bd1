"""Progress bars of long quantization loops (calibration stages, candidate generation), on tqdm.

Same interface as `arvg_jax.progress.Progress` (quant/ does not import arvg_jax).
"""

from __future__ import annotations

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar on stderr; `enabled=False` silences it (tests, --quiet).

    Args:
      total: number of steps.
      desc: label printed before the bar.
      enabled: whether to draw at all.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, **_):
        self._bar = tqdm(total=max(int(total), 1), desc=desc, disable=not enabled, leave=True)

    @property
    def n(self) -> int:
        return int(self._bar.n)

    def update(self, n: int = 1, postfix: str = "") -> None:
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
