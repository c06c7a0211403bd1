"""Errors raised by the checkpoint readers and the per-family converters."""

from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint file was refused: unreadable, corrupt, hostile or not a state dict.

    The message is always one line, `"<path>: <problem>"`, so a CLI can print it as is.

    Attributes:
        path: The file that was refused.
        problem: What is wrong with it (one line).
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        # Newlines would split the one-line contract (a key or a nested error message may hold one).
        self.problem = " ".join(str(problem).split("\n"))
        super().__init__(f"{self.path}: {self.problem}".replace("\n", " "))

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class ConversionError(ValueError):
    """A state dict does not fit the model: missing, unexpected or mis-shaped keys."""
