"""Official KL-16 VAE state dict (`kl16.ckpt`, `{"model": sd}`) -> `arvg_jax.tokenizers.kl16_vae`.

Only the decode path is converted (`post_quant_conv`, `decoder.*`); the encoder side
(`encoder.*`, `quant_conv.*`) is dropped by an explicit allowlist, as are LDM training-loss
entries (`loss.*`) should a checkpoint carry them (the official load is strict=False). The table
mirrors LTH14/mar `models/vae.py` (commit fe470ac) `Decoder.__init__` and is checked against the
abstract param tree (`jax.eval_shape`) before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.tokenizers.kl16_vae import KL16Config, abstract_params
from converters._errors import ConversionError
from converters.var_vae import CONV, COPY, Table

# Source key prefixes that are deliberately dropped (not on the decode path).
IGNORED_PREFIXES = ("encoder.", "quant_conv.", "loss.")


def _conv(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/kernel"] = (f"{torch}.weight", CONV)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _norm(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/scale"] = (f"{torch}.weight", COPY)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _resnet(t: Table, flax: str, torch: str, cin: int, cout: int) -> None:
    # vae.py ResnetBlock: nin_shortcut (1x1) only when the widths differ; no temb_proj (temb 0).
    _norm(t, f"{flax}/norm1", f"{torch}.norm1")
    _conv(t, f"{flax}/conv1", f"{torch}.conv1")
    _norm(t, f"{flax}/norm2", f"{torch}.norm2")
    _conv(t, f"{flax}/conv2", f"{torch}.conv2")
    if cin != cout:
        _conv(t, f"{flax}/nin_shortcut", f"{torch}.nin_shortcut")


def param_table(cfg: KL16Config) -> Table:
    """Flax path -> (torch key, hook) for every leaf of the decode path."""
    t: Table = {}
    _conv(t, "post_quant_conv", "post_quant_conv")
    n = len(cfg.ch_mult)
    block_in = cfg.ch * cfg.ch_mult[-1]
    _conv(t, "decoder/conv_in", "decoder.conv_in")
    _resnet(t, "decoder/mid_block_1", "decoder.mid.block_1", block_in, block_in)
    _norm(t, "decoder/mid_attn_1/norm", "decoder.mid.attn_1.norm")
    for name in ("q", "k", "v", "proj_out"):
        _conv(t, f"decoder/mid_attn_1/{name}", f"decoder.mid.attn_1.{name}")
    _resnet(t, "decoder/mid_block_2", "decoder.mid.block_2", block_in, block_in)
    # `self.up.insert(0, up)`: torch index = level, built from level n-1 down.
    for lvl in reversed(range(n)):
        block_out = cfg.ch * cfg.ch_mult[lvl]
        for blk in range(cfg.num_res_blocks + 1):
            f, k = f"decoder/up_{lvl}_block_{blk}", f"decoder.up.{lvl}.block.{blk}"
            _resnet(t, f, k, block_in, block_out)
            block_in = block_out
        if lvl != 0:
            _conv(t, f"decoder/up_{lvl}_upsample/conv", f"decoder.up.{lvl}.upsample.conv")
    _norm(t, "decoder/norm_out", "decoder.norm_out")
    _conv(t, "decoder/conv_out", "decoder.conv_out")
    return t


def _plan(shapes: Mapping[str, Sequence[int]], cfg: KL16Config) -> tuple[Table, dict[str, Any]]:
    leaves = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    table = param_table(cfg)
    if set(table) != set(leaves):  # a bug in this file, not in the checkpoint
        raise AssertionError(
            f"kl16 table out of sync with the model: only in table "
            f"{sorted(set(table) - set(leaves))}, only in model {sorted(set(leaves) - set(table))}"
        )
    used = {key for key, _ in table.values()}
    missing = sorted(key for key in used if key not in shapes)
    unexpected = sorted(k for k in shapes if k not in used and not k.startswith(IGNORED_PREFIXES))
    misshaped = []
    for path, (key, hook) in table.items():
        if key not in shapes:
            continue
        src = tuple(int(d) for d in shapes[key])
        want = tuple(leaves[path].shape)
        got = hook.shape(src)
        if got != want:
            misshaped.append(f"{key} {src} --{hook.name}--> {got}, but {path} is {want}")
    if missing or unexpected or misshaped:
        lines = [f"KL-16 VAE state dict does not fit {cfg}:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        raise ConversionError("\n".join(lines))
    return table, leaves


def check_manifest(manifest: Mapping[str, Any], cfg: KL16Config) -> dict:
    """Validates a manifest (`reference/manifests/kl16_vae.json`); returns the abstract tree.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    shapes = {k: v[0] for k, v in manifest.items() if k != "__wrapper__"}
    _plan(shapes, cfg)
    return abstract_params(cfg)


def convert_kl16(state_dict: Mapping[str, np.ndarray], cfg: KL16Config) -> dict:
    """The unwrapped `AutoencoderKL` state dict -> `{"post_quant_conv", "decoder"}` params.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    table, leaves = _plan({k: np.shape(v) for k, v in state_dict.items()}, cfg)
    flat = {}
    for path, (key, hook) in table.items():
        value = hook.apply(np.asarray(state_dict[key]))
        flat[path] = jnp.asarray(np.ascontiguousarray(value), dtype=leaves[path].dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def load_kl16(path: str | os.PathLike, cfg: KL16Config, *, key: str | None = "model") -> dict:
    """Reads `kl16.ckpt` without torch (the state dict sits under `key`; None = a flat file)."""
    from converters.torch_reader import load_state_dict  # lazy: only this helper reads files

    return convert_kl16(load_state_dict(path, key=key), cfg)
