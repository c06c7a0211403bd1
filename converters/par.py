"""Official PAR checkpoints (`PAR-{XL,XXL,3B}-4x.pt`, `PAR-3B-16x.pt`) -> `arvg_jax.families.par` params.

A declarative table maps every Flax path of the abstract tree (`jax.eval_shape` of init) to its
torch key and a named hook; the same table validates a shapes-only release manifest without
allocating anything. The GPT state dict has no buffers (gpt.py keeps `freqs_cis`, `group_mask`
and `causal_mask` as plain attributes; KV caches exist only after `setup_caches`).

Checkpoint wrapping (autoregressive/sample/sample_c2i_ddp.py): the state dict is read from
`ckpt["model"]` (DDP), else `ckpt["module"]` (deepspeed), else `ckpt["state_dict"]`, else the
bare dict (`--from-fsdp`).

Dims: C width, V vocabulary, E bridge tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.families.par.config import PARConfig
from arvg_jax.families.par.model import abstract_params
from converters._errors import ConversionError

WRAPPER_KEYS = ("model", "module", "state_dict")  # sample_c2i_ddp.py's order


def _copy(w):
    return jnp.asarray(w, jnp.float32)


def _linear_kernel(w):
    """nn.Linear.weight [out, in] -> Dense kernel [in, out]."""
    return jnp.asarray(w, jnp.float32).T


HOOKS: dict[str, Callable[..., Any]] = {"copy": _copy, "linear_kernel": _linear_kernel}

# Flax path regex -> (torch key template, hook); regex groups fill the template.
TABLE: tuple[tuple[str, str, str], ...] = (
    (r"cls_embedding/embedding", "cls_embedding.embedding_table.weight", "copy"),
    (r"tok_embeddings/embedding", "tok_embeddings.weight", "copy"),
    (r"spe_tok_embeddings/embedding", "spe_tok_embeddings.special_embeddings.weight", "copy"),
    # wqkv's output axis is [q | k | v], each head-major: the Dense kernel keeps that order.
    (
        r"layers_(\d+)/attention/(wqkv|wo)/kernel",
        "layers.{0}.attention.{1}.weight",
        "linear_kernel",
    ),
    (
        r"layers_(\d+)/feed_forward/(w1|w2|w3)/kernel",
        "layers.{0}.feed_forward.{1}.weight",
        "linear_kernel",
    ),
    (r"layers_(\d+)/(attention_norm|ffn_norm)/scale", "layers.{0}.{1}.weight", "copy"),
    (r"norm/scale", "norm.weight", "copy"),
    (r"output/kernel", "output.weight", "linear_kernel"),
)


def _plan(sources: Mapping[str, Any], cfg: PARConfig):
    """(plan, missing, unexpected); plan: (flax path, torch key, hook name, target struct)."""
    flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    plan, missing, used = [], [], set()
    for path, target in flat.items():
        for pattern, template, hook in TABLE:
            m = re.fullmatch(pattern, path)
            if m:
                key = template.format(*m.groups())
                break
        else:  # a model change without a table change: a bug here, not in the checkpoint
            raise AssertionError(f"no conversion rule for Flax path {path!r}")
        used.add(key)
        if key in sources:
            plan.append((path, key, hook, target))
        else:
            missing.append(f"{key} (for {path} {tuple(target.shape)})")
    unexpected = sorted(k for k in sources if k not in used)
    return plan, missing, unexpected


def _check(sources: Mapping[str, Any], cfg: PARConfig, *, convert: bool) -> dict:
    plan, missing, unexpected = _plan(sources, cfg)
    misshaped, fitting = [], []
    for path, key, hook_name, target in plan:
        hook = HOOKS[hook_name]
        src = sources[key]
        struct = jax.ShapeDtypeStruct(tuple(src.shape), np.dtype(src.dtype))
        try:
            got = jax.eval_shape(hook, struct)
        except (TypeError, ValueError) as e:
            misshaped.append(f"{key} {tuple(src.shape)} -> {path}: {e}")
            continue
        if got.shape != target.shape:
            misshaped.append(
                f"{key} {tuple(src.shape)} --{hook_name}--> {tuple(got.shape)}, "
                f"but {path} is {tuple(target.shape)}"
            )
            continue
        fitting.append((path, src, hook, got))
    if missing or unexpected or misshaped:
        lines = [f"PAR state dict does not fit {cfg}:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items))
        raise ConversionError("\n".join(lines))
    # Only a file that fits is read, one leaf at a time (a streamed state dict frees each tensor).
    out = {path: hook(np.asarray(src)) if convert else got for path, src, hook, got in fitting}
    return traverse_util.unflatten_dict(out, sep="/")


def convert_par(state_dict: Mapping[str, np.ndarray], cfg: PARConfig) -> dict:
    """Converts an (unwrapped) official PAR GPT state dict into `PAR(cfg)` params.

    Args:
        state_dict: flat torch key -> array (`converters.torch_reader.load_state_dict`).
        cfg: e.g. `PARConfig.xl_4x()`.

    Returns:
        Nested plain dict of float32 jax arrays (layout in `arvg_jax.families.par.model`).

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    return _check(state_dict, cfg, convert=True)


class _Shaped:
    """Shape/dtype stand-in for a manifest entry (no data)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


def check_manifest(manifest: Mapping[str, Any], cfg: PARConfig) -> dict:
    """Validates a release manifest (key -> [shape, dtype]) against `cfg` without allocating.

    Args:
        manifest: as `reference/manifests/par_xl.json`; the `"__wrapper__"` entry is skipped.
        cfg: the config the checkpoint should fit.

    Returns:
        The abstract converted params (`jax.ShapeDtypeStruct` leaves).

    Raises:
        ConversionError: as `convert_par`.
    """
    sources = {
        k: _Shaped(shape, np.float32)
        for k, (shape, _dtype) in ((k, v) for k, v in manifest.items() if k != "__wrapper__")
    }
    return _check(sources, cfg, convert=False)


def wrapper_key(path: str | os.PathLike) -> str | None:
    """The entry of a PAR checkpoint holding the state dict, in sample_c2i_ddp.py's order.

    Returns None for a bare state dict (`--from-fsdp`).

    Raises:
        CheckpointError: unreadable file.
        ConversionError: a dict with none of the wrapper keys that is not a state dict either.
    """
    from converters.torch_reader import LazyTensor, read_checkpoint

    tree = read_checkpoint(path, lazy=True)  # the pickle only; no tensor data
    if isinstance(tree, dict):
        for key in WRAPPER_KEYS:
            if key in tree:
                return key
        if tree and all(isinstance(v, LazyTensor) for v in tree.values()):
            return None
        top = sorted(str(k) for k in tree)[:20]
    else:
        top = [type(tree).__name__]
    raise ConversionError(
        f"{os.fspath(path)}: no PAR state dict under {list(WRAPPER_KEYS)} and not a bare state "
        f"dict (top level: {top})"
    )


def load_par(path: str | os.PathLike, cfg: PARConfig) -> dict:
    """Reads an official PAR checkpoint (no torch) and converts it; see `convert_par`."""
    from converters.torch_reader import load_state_dict

    return convert_par(load_state_dict(path, key=wrapper_key(path)), cfg)
