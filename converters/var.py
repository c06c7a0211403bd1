"""Official VAR state dict (`var_d{16,20,24,30,36}.pth`) -> `arvg_jax.families.var.model.VAR` params.

The table maps every Flax path (of the abstract tree, `jax.eval_shape` of init) to the torch key(s)
it is built from and a named hook; buffers the model recomputes are consumed by an allowlist.
Hooks are written with `jax.numpy`, so the same table validates a shapes-only release manifest
through `jax.eval_shape` without allocating anything.

Dims: C width, H heads, L tokens, V vocabulary, E VQVAE latent channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.families.var.model import VAR, VARConfig
from converters._errors import ConversionError


# ---- hooks: torch tensor(s) -> Flax leaf -----------------------------------------------------
# Array methods only (as `converters._table`): numpy in, numpy out when converting (no jax dispatch
# per leaf), tracers in when `jax.eval_shape` validates shapes.
def _copy(w):
    return w.astype(np.float32)


def _linear_kernel(w):
    """nn.Linear.weight [out, in] -> Dense kernel [in, out]."""
    return w.astype(np.float32).T


def _squeeze_leading(w):
    """pos_start / pos_1LC (1, l, C) -> [l, C]; ada_gss (1, 1, 6, C) -> [6, C]."""
    w = w.astype(np.float32)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    return w


def _scale_mul(w):
    """scale_mul_1H11 (1, H, 1, 1) -> [H]."""
    return w.astype(np.float32).reshape(-1)


def _qkv_bias(q_bias, zero_k_bias, v_bias):
    """models/basic_var.py SelfAttention.forward: torch.cat((q_bias, zero_k_bias, v_bias))."""
    return jnp.concatenate([b.astype(np.float32) for b in (q_bias, zero_k_bias, v_bias)])


HOOKS: dict[str, Callable[..., Any]] = {
    "copy": _copy,
    "linear_kernel": _linear_kernel,
    "squeeze_leading": _squeeze_leading,
    "scale_mul": _scale_mul,
    "qkv_bias": _qkv_bias,
}

# Flax path regex -> (torch key template(s), hook). Groups of the regex fill the templates.
# First match wins; every Flax path must match exactly one rule.
TABLE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (r"class_emb/embedding", ("class_emb.weight",), "copy"),
    (r"pos_start", ("pos_start",), "squeeze_leading"),
    (r"pos_1LC", ("pos_1LC",), "squeeze_leading"),
    (r"lvl_embed/embedding", ("lvl_embed.weight",), "copy"),
    (r"word_embed/kernel", ("word_embed.weight",), "linear_kernel"),
    (r"word_embed/bias", ("word_embed.bias",), "copy"),
    # SharedAdaLin is Sequential(SiLU, Linear): index 1 holds the Linear.
    (r"shared_ada_lin/kernel", ("shared_ada_lin.1.weight",), "linear_kernel"),
    (r"shared_ada_lin/bias", ("shared_ada_lin.1.bias",), "copy"),
    (r"blocks_(\d+)/attn/qkv/kernel", ("blocks.{0}.attn.mat_qkv.weight",), "linear_kernel"),
    # Order matters: [q | k | v] along the output axis, as the official F.linear bias.
    (
        r"blocks_(\d+)/attn/qkv/bias",
        ("blocks.{0}.attn.q_bias", "blocks.{0}.attn.zero_k_bias", "blocks.{0}.attn.v_bias"),
        "qkv_bias",
    ),
    (r"blocks_(\d+)/attn/scale_mul", ("blocks.{0}.attn.scale_mul_1H11",), "scale_mul"),
    (r"blocks_(\d+)/attn/proj/kernel", ("blocks.{0}.attn.proj.weight",), "linear_kernel"),
    (r"blocks_(\d+)/attn/proj/bias", ("blocks.{0}.attn.proj.bias",), "copy"),
    (r"blocks_(\d+)/ffn/(fc1|fc2)/kernel", ("blocks.{0}.ffn.{1}.weight",), "linear_kernel"),
    (r"blocks_(\d+)/ffn/(fc1|fc2)/bias", ("blocks.{0}.ffn.{1}.bias",), "copy"),
    (r"blocks_(\d+)/ada_lin/kernel", ("blocks.{0}.ada_lin.1.weight",), "linear_kernel"),
    (r"blocks_(\d+)/ada_lin/bias", ("blocks.{0}.ada_lin.1.bias",), "copy"),
    (r"blocks_(\d+)/ada_gss", ("blocks.{0}.ada_gss",), "squeeze_leading"),
    (r"head_nm/ada_lin/kernel", ("head_nm.ada_lin.1.weight",), "linear_kernel"),
    (r"head_nm/ada_lin/bias", ("head_nm.ada_lin.1.bias",), "copy"),
    (r"head/kernel", ("head.weight",), "linear_kernel"),
    (r"head/bias", ("head.bias",), "copy"),
)

# Buffers the model recomputes from the config (models/var.py registers them); consumed unread.
IGNORED_KEYS: tuple[str, ...] = (r"lvl_1L", r"attn_bias_for_masking")


def abstract_params(cfg: VARConfig) -> dict:
    """The param tree of `VAR(cfg)` as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    x = jax.ShapeDtypeStruct((1, cfg.seq_len - cfg.first_l, cfg.cvae), jnp.float32)
    variables = jax.eval_shape(VAR(cfg).init, jax.random.key(0), labels, x)
    return variables["params"]


def _plan(sources: Mapping[str, Any], cfg: VARConfig):
    """Matches the abstract tree against `sources`; returns (flat_targets, plan, problems).

    plan: list of (flax_path, torch_keys, hook_name, target ShapeDtypeStruct).
    """
    flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    plan, missing, used = [], [], set()
    for path, target in flat.items():
        for pattern, templates, hook in TABLE:
            m = re.fullmatch(pattern, path)
            if m:
                keys = tuple(t.format(*m.groups()) for t in templates)
                break
        else:  # a model change without a table change: a bug here, not in the checkpoint
            raise AssertionError(f"no conversion rule for Flax path {path!r}")
        absent = [k for k in keys if k not in sources]
        missing.extend(f"{k} (for {path} {tuple(target.shape)})" for k in absent)
        used.update(keys)
        if not absent:
            plan.append((path, keys, hook, target))
    unexpected = sorted(
        k for k in sources if k not in used and not any(re.fullmatch(p, k) for p in IGNORED_KEYS)
    )
    return plan, missing, unexpected


def _struct(x) -> jax.ShapeDtypeStruct:
    dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating) and not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"not a numeric array: {dtype}")
    return jax.ShapeDtypeStruct(tuple(x.shape), dtype)


def _check(sources: Mapping[str, Any], cfg: VARConfig, *, convert: bool) -> dict:
    plan, missing, unexpected = _plan(sources, cfg)
    misshaped, fitting = [], []
    for path, keys, hook_name, target in plan:
        hook = HOOKS[hook_name]
        src_shapes = ", ".join(f"{k} {tuple(sources[k].shape)}" for k in keys)
        try:
            got = jax.eval_shape(hook, *(_struct(sources[k]) for k in keys))
        except (TypeError, ValueError) as e:
            misshaped.append(f"{src_shapes} -> {path}: expected {tuple(target.shape)} ({e})")
            continue
        if got.shape != target.shape:
            misshaped.append(
                f"{src_shapes} -> {path}: got {tuple(got.shape)}, expected {tuple(target.shape)}"
            )
            continue
        fitting.append((path, keys, hook, got))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped keys: {misshaped}")
        raise ConversionError(f"VAR state dict does not fit {cfg}: " + "; ".join(parts))
    # Only a file that fits is read, one leaf at a time: a streamed state dict
    # (`converters.stream_state_dict`) reads each torch tensor here and frees it with the leaf.
    out = {}
    for path, keys, hook, got in fitting:
        out[path] = jnp.asarray(hook(*(np.asarray(sources[k]) for k in keys))) if convert else got
    return traverse_util.unflatten_dict(out, sep="/")


def convert_var(state_dict: Mapping[str, np.ndarray], cfg: VARConfig) -> dict:
    """Converts an official VAR state dict into `VAR(cfg)` params.

    Args:
        state_dict: flat torch-key -> array dict (`converters.torch_reader.load_state_dict`).
        cfg: the model config (e.g. `VARConfig.d16()` or `VARConfig.from_official(...)`).

    Returns:
        Nested plain dict of float32 jax arrays (the layout in `arvg_jax.families.var.model`).

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    return _check(state_dict, cfg, convert=True)


_TORCH_DTYPES = {
    "torch.float32": jnp.float32,
    "torch.float16": jnp.float16,
    "torch.bfloat16": jnp.bfloat16,
    "torch.float64": jnp.float64,
    "torch.int64": jnp.int64,
    "torch.int32": jnp.int32,
}


def check_manifest(manifest: Mapping[str, Any], cfg: VARConfig) -> dict:
    """Validates a release manifest (key -> [shape, dtype]) against `cfg` without allocating.

    Args:
        manifest: as in `reference/manifests/var_d16.json`; a `"__wrapper__"` entry is skipped.
        cfg: the model config.

    Returns:
        The abstract converted params (`jax.ShapeDtypeStruct` leaves).

    Raises:
        ConversionError: as `convert_var`.
    """
    sources = {}
    for key, entry in manifest.items():
        if key == "__wrapper__":
            continue
        shape, dtype = entry
        # int64 stays a numpy dtype: the struct only carries the shape (x64 may be off).
        np_dtype = np.dtype(_TORCH_DTYPES.get(dtype, jnp.float32))
        sources[key] = _Shaped(tuple(shape), np_dtype)
    return _check(sources, cfg, convert=False)


class _Shaped:
    """A shape/dtype stand-in for a manifest entry (no data)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


def var_config_from_state_dict(state_dict: Mapping[str, np.ndarray], **overrides) -> VARConfig:
    """Reads a `VARConfig` off an official state dict (sizes from shapes, scales from `lvl_1L`).

    Args:
        state_dict: the official VAR state dict (needs the `lvl_1L` buffer for patch_nums).
        **overrides: fields set on top (e.g. `dtype`).
    """
    c = state_dict["class_emb.weight"].shape[1]
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    heads = (
        int(np.prod(state_dict["blocks.0.attn.scale_mul_1H11"].shape))
        if ("blocks.0.attn.scale_mul_1H11" in state_dict)
        else depth
    )
    counts = np.bincount(np.asarray(state_dict["lvl_1L"]).reshape(-1))
    patch_nums = tuple(round(float(np.sqrt(n))) for n in counts)
    fields = {
        "depth": depth,
        "embed_dim": c,
        "num_heads": heads,
        "mlp_ratio": state_dict["blocks.0.ffn.fc1.weight"].shape[0] / c,
        "vocab_size": state_dict["head.weight"].shape[0],
        "cvae": state_dict["word_embed.weight"].shape[1],
        "num_classes": state_dict["class_emb.weight"].shape[0] - 1,
        "patch_nums": patch_nums,
        "shared_aln": "shared_ada_lin.1.weight" in state_dict,
        "attn_l2_norm": "blocks.0.attn.scale_mul_1H11" in state_dict,
    }
    return VARConfig(**{**fields, **overrides})
