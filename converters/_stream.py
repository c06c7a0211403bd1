"""A state dict read one tensor at a time: converting a checkpoint in about one copy of memory.

`load_state_dict` reads every tensor before a converter starts, so converting held the torch
arrays and the converted tree at once (~3.6x the file size at peak with the save). A
`StreamedStateDict` holds only shapes and dtypes (`LazyTensor`s); a converter reads a tensor by
`np.asarray(sd[key])`, which reads just that tensor's bytes into an array of its own
(`converters._lazy.read_owned`), checks it for NaN / Inf, and hands it over: the torch array is
freed as soon as the converter has made its leaf from it.

The non-finite check of `check_finite` is folded into the same read (one pass over the file, not
two): the first tensor found non-finite triggers `check_finite` over the whole (lazy) state dict,
so the refusal names the same tensors and counts as before; `finish()` checks the tensors the
converter never read (buffers it recomputes), which `check_finite` used to check as well.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import numpy as np

from converters._finite import MASK_KEYS, check_finite, find_nonfinite
from converters._lazy import LazyTensor, read_owned, refusals


class StreamedTensor:
    """One tensor of a `StreamedStateDict`: shape and dtype now, its data on `np.asarray`."""

    __slots__ = ("_owner", "key", "lazy")

    def __init__(self, owner: StreamedStateDict, key: str, lazy: LazyTensor):
        self._owner, self.key, self.lazy = owner, key, lazy

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lazy.shape

    @property
    def dtype(self) -> np.dtype:
        return self.lazy.dtype

    @property
    def ndim(self) -> int:
        return len(self.lazy.shape)

    @property
    def size(self) -> int:
        return math.prod(self.lazy.shape)

    @property
    def nbytes(self) -> int:
        return self.lazy.nbytes

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        del copy  # every read is a fresh array of its own
        a = self._owner.read(self.key)
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"StreamedTensor({self.key!r}, shape={self.shape}, dtype={self.dtype})"


class StreamedStateDict(Mapping[str, StreamedTensor]):
    """name -> `StreamedTensor` of one checkpoint file; nothing is held between reads.

    Args:
        lazy: the state dict as `open_state_dict` returns it.
        path: the checkpoint file (for messages).
        allow_nonfinite: skip the NaN / Inf check (the CLI's --allow-nonfinite).
    """

    def __init__(
        self,
        lazy: Mapping[str, LazyTensor],
        path: str | os.PathLike,
        *,
        allow_nonfinite: bool = False,
    ):
        self._lazy = dict(lazy)
        self.path = os.fspath(path)
        self.allow_nonfinite = allow_nonfinite
        self._items = {k: StreamedTensor(self, k, v) for k, v in self._lazy.items()}
        self._read: set[str] = set()
        self.bytes_read = 0

    def __getitem__(self, key: str) -> StreamedTensor:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def read(self, key: str) -> np.ndarray:
        """Tensor `key` as a fresh array (checked finite unless allowed).

        Raises:
            CheckpointError: the file became unreadable, or the tensor holds NaN / Inf (then
                naming every non-finite tensor of the file, as `check_finite`).
        """
        with refusals(self.path), open(self.path, "rb") as fh:
            a = read_owned(self._lazy[key], fh)
        self.bytes_read += a.nbytes
        if key not in self._read:
            self._read.add(key)
            if not self.allow_nonfinite and find_nonfinite({key: a}, mask_keys=MASK_KEYS):
                del a
                check_finite(self._lazy, self.path)  # raises, naming all of them
        return a

    def finish(self) -> None:
        """Checks the tensors never read (buffers the converter ignores) for NaN / Inf.

        Raises:
            CheckpointError: as `check_finite`.
        """
        if self.allow_nonfinite:
            return
        rest = {k: v for k, v in self._lazy.items() if k not in self._read}
        if find_nonfinite(rest, mask_keys=MASK_KEYS):
            check_finite(self._lazy, self.path)
