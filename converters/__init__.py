"""Checkpoint readers (no torch) and per-family converters to Flax parameter trees."""

from converters._errors import CheckpointError, ConversionError
from converters._finite import NonFinite, check_finite, find_nonfinite
from converters._identify import Identification, identify, mismatch_report
from converters._stream import StreamedStateDict, StreamedTensor
from converters.torch_reader import (
    LazyTensor,
    PickledNamespace,
    load_state_dict,
    open_state_dict,
    read_checkpoint,
    stream_state_dict,
)

__all__ = [
    "CheckpointError",
    "ConversionError",
    "Identification",
    "LazyTensor",
    "NonFinite",
    "PickledNamespace",
    "StreamedStateDict",
    "StreamedTensor",
    "check_finite",
    "find_nonfinite",
    "identify",
    "load_state_dict",
    "mismatch_report",
    "open_state_dict",
    "read_checkpoint",
    "stream_state_dict",
]
