"""FID Inception-v3 weights (PyTorch layouts) -> `arvg_jax.metrics.inception` params.

Accepted layouts, both converted from the TF graph classify_image_graph_def.pb (2015-12-05):
- torch-fidelity `weights-inception-2015-12-05-6726825d.pth`
  (utils/util_convert_inception_weights.py): a plain dict of 472 float32 tensors, `X.bn.{weight,bias,running_mean,running_var}` then
  `X.conv.weight`, plus `fc.weight` [1008, 2048] and `fc.bias`;
- pytorch-fid `pt_inception-2015-12-05-6726825d.pth` (`fid_inception_v3`, torchvision's
  Inception3 module names without AuxLogits): the same parameter keys, conv before bn, and the
  batch-norm buffers `X.bn.num_batches_tracked` a torchvision state dict carries (ignored).
Key order is never relied on, and tensors may alias one storage (read them with
`converters.torch_reader.load_state_dict`, which honours storage offsets; every leaf here is
a copy).

Mapping (TF names in brackets): `X.conv.weight` OIHW [TF `X/conv2d_params` HWIO] -> `X/kernel`
HWIO; `X.bn.weight/bias/running_mean/running_var` [TF `X/batchnorm/gamma/beta/moving_mean/
moving_variance`] -> `X/gamma, beta, moving_mean, moving_variance`; `fc.weight` [K, 2048]
[TF `softmax/weights`^T] -> `fc/kernel` [2048, K]; `fc.bias` -> `fc/bias`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.metrics.inception import InceptionConfig, abstract_params
from converters._errors import ConversionError
from converters.torch_reader import load_state_dict


# ---- hooks: torch tensor -> Flax leaf ------------------------------------------------------
# numpy, applied once per tensor; each has a shape rule so a manifest is checked without data.
def _copy(w: np.ndarray) -> np.ndarray:
    return np.array(w, np.float32)  # a copy: the source may be a view of a shared storage


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """Conv2d.weight OIHW -> HWIO (TF's conv2d_params layout, the inverse of permute(3,2,0,1))."""
    return np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0)))


def _linear_kernel(w: np.ndarray) -> np.ndarray:
    """Linear.weight [out, in] -> [in, out]."""
    return np.ascontiguousarray(np.asarray(w, np.float32).T)


# name -> (hook, source shape -> converted shape; None where the source rank is wrong)
HOOKS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[tuple], tuple | None]]] = {
    "copy": (_copy, lambda s: s),
    "conv_kernel": (_conv_kernel, lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None),
    "linear_kernel": (_linear_kernel, lambda s: (s[1], s[0]) if len(s) == 2 else None),
}

# Flax path regex -> (torch key template, hook); `{0}` is the module path with dots.
TABLE: tuple[tuple[str, str, str], ...] = (
    (r"fc/kernel", "fc.weight", "linear_kernel"),
    (r"fc/bias", "fc.bias", "copy"),
    (r"(.+)/kernel", "{0}.conv.weight", "conv_kernel"),
    (r"(.+)/gamma", "{0}.bn.weight", "copy"),
    (r"(.+)/beta", "{0}.bn.bias", "copy"),
    (r"(.+)/moving_mean", "{0}.bn.running_mean", "copy"),
    (r"(.+)/moving_variance", "{0}.bn.running_var", "copy"),
)

# Buffers of a torchvision-style state dict (pytorch-fid layout) that inference does not read.
IGNORED_KEYS: tuple[str, ...] = (r".+\.bn\.num_batches_tracked",)


def _plan(sources: Mapping[str, Any], config: InceptionConfig):
    flat = traverse_util.flatten_dict(abstract_params(config), sep="/")
    plan, missing, used = [], [], set()
    for path, target in flat.items():
        for pattern, template, hook in TABLE:
            m = re.fullmatch(pattern, path)
            if m:
                key = template.format(*(g.replace("/", ".") for g in m.groups()))
                break
        else:  # a model change without a table change: a bug here, not in the checkpoint
            raise AssertionError(f"no conversion rule for Flax path {path!r}")
        used.add(key)
        if key in sources:
            plan.append((path, key, hook, target))
        else:
            missing.append(f"{key} (for {path} {tuple(target.shape)})")
    unexpected = sorted(
        k for k in sources if k not in used and not any(re.fullmatch(p, k) for p in IGNORED_KEYS)
    )
    return plan, missing, unexpected


def _check(sources: Mapping[str, Any], config: InceptionConfig, *, convert: bool) -> dict:
    plan, missing, unexpected = _plan(sources, config)
    misshaped, out = [], {}
    for path, key, hook_name, target in plan:
        src = sources[key]
        hook, shape_rule = HOOKS[hook_name]
        if not np.issubdtype(np.dtype(src.dtype), np.floating):
            misshaped.append(f"{key} {tuple(src.shape)} {src.dtype} -> {path}: not a float tensor")
            continue
        got = shape_rule(tuple(src.shape))
        if got != tuple(target.shape):
            misshaped.append(
                f"{key} {tuple(src.shape)} -> {path}: got {got}, expected {tuple(target.shape)}"
            )
            continue
        out[path] = jnp.asarray(hook(src)) if convert else jax.ShapeDtypeStruct(got, jnp.float32)
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped keys: {misshaped}")
        raise ConversionError("Inception-v3 state dict does not fit: " + "; ".join(parts))
    return traverse_util.unflatten_dict(out, sep="/")


def convert_inception(
    state_dict: Mapping[str, np.ndarray], config: InceptionConfig | None = None
) -> dict:
    """Converts a torch-fidelity or pytorch-fid Inception state dict into params.

    Args:
        state_dict: flat torch-key -> array dict (`converters.torch_reader.load_state_dict`).
        config: the architecture (default `InceptionConfig.adm()`).

    Returns:
        Nested plain dict of float32 jax arrays (the layout in `arvg_jax.metrics.inception`).

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    return _check(state_dict, config or InceptionConfig.adm(), convert=True)


class _Shaped:
    """A shape/dtype stand-in for a manifest entry (no data)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


_MANIFEST_DTYPES = {
    "torch.float32": np.float32,
    "torch.float16": np.float16,
    "torch.float64": np.float64,
    "torch.int64": np.int64,
}


def check_manifest(manifest: Mapping[str, Any], config: InceptionConfig | None = None) -> dict:
    """Validates a key -> [shape, dtype] manifest (eval/inception_manifest.json) without data.

    Returns:
        The abstract converted params (`jax.ShapeDtypeStruct` leaves).

    Raises:
        ConversionError: as `convert_inception`.
    """
    sources = {
        k: _Shaped(tuple(shape), np.dtype(_MANIFEST_DTYPES.get(dtype, np.float32)))
        for k, (shape, dtype) in manifest.items()
        if k != "__wrapper__"
    }
    return _check(sources, config or InceptionConfig.adm(), convert=False)


def load_inception(path, config: InceptionConfig | None = None) -> dict:
    """Reads (no torch) and converts an Inception weights file (.pth of either layout).

    Raises:
        CheckpointError: the file is refused by the reader.
        ConversionError: as `convert_inception`.
    """
    return convert_inception(load_state_dict(path), config)
