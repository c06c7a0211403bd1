"""A random-weight FID Inception-v3 weights file, written by the tests (no torch, no download).

`write_random_inception(path, seed, layout)` writes a `torch.save` zip (tests/_torch_writer.py) with
every key, shape and dtype of one of the two published layouts that `converters/inception.py`
reads:
- "torch-fidelity" (`weights-inception-2015-12-05-6726825d.pth`): a plain dict, per conv module
  `X.bn.{weight,bias,running_mean,running_var}` then `X.conv.weight`, plus `fc.weight`, `fc.bias`;
- "pytorch-fid" (`pt_inception-2015-12-05-6726825d.pth`): conv before bn, and the
  `X.bn.num_batches_tracked` int64 buffers of a torchvision state dict.
The keys come from the architecture (`arvg_jax.metrics.inception.abstract_params`), mapped to
torch names here, independently of the converter's table.

Aliasing, as `torch.save` writes views: every conv weight is a view at its own offset into ONE
shared storage (neighbouring views overlap), the four batch-norm vectors of a module are views at
offsets 0, C, 2C, 3C of one storage, and `fc.weight` starts 7 elements into its storage.

Weights are scaled so the untrained net stays finite at every layer: the shared storage is
N(0, 1) and each batch norm divides its conv's output by sqrt(fan_in) (running_var = fan_in, i.e.
unit-variance inputs assumed), with gamma ~ 1 and beta ~ 0.5 so most units are active;
`fc.weight` ~ N(0, 0.01^2) keeps the softmax unsaturated (the Inception Score takes log p).
Uncalibrated running means leave a large common mode: features of different images differ by
~1e-3 of their norm, so FID is small and IS ~ 1 (enough to test the plumbing, not a realistic
network; the reference fixture's `eval/inception.pth` calibrates its statistics).
"""

from __future__ import annotations

import pathlib

import numpy as np
from _torch_writer import Storage, Tensor, strides_of, write_zip
from flax import traverse_util

LAYOUTS = ("torch-fidelity", "pytorch-fid")
_SHARED = 1 << 21  # elements of the shared conv storage (8 MiB): holds the largest conv, 1.5 M
_BN = ("weight", "bias", "running_mean", "running_var")


def _convs() -> dict[str, tuple[int, ...]]:
    """{torch module path: conv weight shape OIHW} in the architecture's order."""
    from arvg_jax.metrics.inception import InceptionConfig, abstract_params

    flat = traverse_util.flatten_dict(abstract_params(InceptionConfig.adm()), sep="/")
    out = {}
    for path, leaf in flat.items():
        if path.endswith("/kernel") and not path.startswith("fc/"):
            h, w, i, o = leaf.shape  # Flax HWIO
            out[path[: -len("/kernel")].replace("/", ".")] = (o, i, h, w)
    return out


def _view(storage: Storage, offset: int, shape: tuple[int, ...]) -> Tensor:
    return Tensor(storage, offset, tuple(shape), strides_of(shape))


def random_inception_state(seed: int = 0, layout: str = "torch-fidelity") -> dict[str, Tensor]:
    """{torch key: Tensor} of a random-weight Inception in `layout` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    rng = np.random.default_rng([seed, 21])
    shared = Storage(rng.standard_normal(_SHARED).astype(np.float32))
    out: dict[str, Tensor] = {}
    for module, shape in _convs().items():
        o, i, h, w = shape
        size = o * i * h * w
        conv = _view(shared, int(rng.integers(0, _SHARED - size + 1)), shape)
        bn = np.stack(
            [
                1.0 + 0.1 * rng.standard_normal(o),  # gamma
                0.5 + 0.1 * rng.standard_normal(o),  # beta
                0.1 * rng.standard_normal(o),  # running_mean
                i * h * w * np.exp(0.1 * rng.standard_normal(o)),  # running_var ~ fan_in
            ]
        ).astype(np.float32)
        bn_storage = Storage(bn.reshape(-1))
        entries = {f"{module}.bn.{k}": _view(bn_storage, j * o, (o,)) for j, k in enumerate(_BN)}
        if layout == "torch-fidelity":
            out.update(entries)
            out[f"{module}.conv.weight"] = conv
        else:
            out[f"{module}.conv.weight"] = conv
            out.update(entries)
            tracked = Storage(np.array([1000], np.int64))  # (draws nothing: same weights)
            out[f"{module}.bn.num_batches_tracked"] = Tensor(tracked, 0, (), ())
    fc = np.concatenate([np.zeros(7), 0.01 * rng.standard_normal(1008 * 2048)])
    out["fc.weight"] = _view(Storage(fc.astype(np.float32)), 7, (1008, 2048))
    out["fc.bias"] = _view(
        Storage((0.5 * rng.standard_normal(1008)).astype(np.float32)), 0, (1008,)
    )
    return out


def write_random_inception(path, seed: int = 0, layout: str = "torch-fidelity") -> pathlib.Path:
    """Writes the random Inception of `seed` in `layout` as a torch.save zip file; returns `path`."""
    return pathlib.Path(write_zip(path, random_inception_state(seed, layout)))
