"""LlamaGen VQ-16 checkpoint (`vq_ds16_c2i.pt`) -> `arvg_jax.tokenizers.llamagen_vq16` params.

The table is built from the config by mirroring `tokenizer/tokenizer_image/vq_model.py`
`Decoder.__init__` and checked against the abstract param tree (`jax.eval_shape`), so nothing is
allocated until keys and shapes fit. Only the decode path is converted: the encoder, `quant_conv`
and the training-only `quantize.codebook_used` buffer are consumed by an explicit allowlist.

The release file is `{"model": state_dict}` (sample_c2i_ddp.py: `checkpoint["model"]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.tokenizers.llamagen_vq16 import VQ16Config, abstract_params
from converters._errors import ConversionError

Shape = tuple[int, ...]

# Source keys the decoder does not use (regexes, full match).
IGNORED_KEYS: tuple[str, ...] = (
    r"encoder\..*",  # the encoder (images -> latents): not needed to sample
    r"quant_conv\.(weight|bias)",  # encoder side of the codebook
    r"quantize\.codebook_used",  # training-only usage buffer
)

CONV, COPY = "conv_oihw_to_hwio", "copy"
Table = dict[str, tuple[str, str]]


def _hook_shape(hook: str, s: Shape) -> Shape | None:
    if hook == CONV:
        return (s[2], s[3], s[1], s[0]) if len(s) == 4 else None
    return tuple(s)


def _apply_hook(hook: str, w: np.ndarray) -> np.ndarray:
    # nn.Conv2d.weight (O, I, kh, kw) -> flax Conv kernel (kh, kw, I, O).
    return np.transpose(w, (2, 3, 1, 0)) if hook == CONV else w


def _conv(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/kernel"] = (f"{torch}.weight", CONV)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _norm(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/scale"] = (f"{torch}.weight", COPY)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _resnet(t: Table, flax: str, torch: str, cin: int, cout: int) -> None:
    # vq_model.py `ResnetBlock`: nin_shortcut (1x1) exists only when in_channels != out_channels.
    _norm(t, f"{flax}/norm1", f"{torch}.norm1")
    _conv(t, f"{flax}/conv1", f"{torch}.conv1")
    _norm(t, f"{flax}/norm2", f"{torch}.norm2")
    _conv(t, f"{flax}/conv2", f"{torch}.conv2")
    if cin != cout:
        _conv(t, f"{flax}/nin_shortcut", f"{torch}.nin_shortcut")


def _attn(t: Table, flax: str, torch: str) -> None:
    # vq_model.py `AttnBlock`: separate q, k, v 1x1 convs and proj_out.
    _norm(t, f"{flax}/norm", f"{torch}.norm")
    for name in ("q", "k", "v", "proj_out"):
        _conv(t, f"{flax}/{name}", f"{torch}.{name}")


def param_table(cfg: VQ16Config) -> Table:
    """Flax path ("a/b/c") -> (torch key, hook) for every decode param, in torch module order."""
    t: Table = {"quantize/embedding": ("quantize.embedding.weight", COPY)}
    _conv(t, "post_quant_conv", "post_quant_conv")
    mult = cfg.decoder_ch_mult
    n = len(mult)
    block_in = cfg.ch * mult[-1]
    _conv(t, "decoder/conv_in", "decoder.conv_in")
    _resnet(t, "decoder/mid_0", "decoder.mid.0", block_in, block_in)
    _attn(t, "decoder/mid_1", "decoder.mid.1")
    _resnet(t, "decoder/mid_2", "decoder.mid.2", block_in, block_in)
    for i, lvl in enumerate(reversed(range(n))):  # conv_blocks.0 is the lowest resolution
        block_out = cfg.ch * mult[lvl]
        for j in range(cfg.num_res_blocks + 1):
            f, k = f"decoder/conv_blocks_{i}", f"decoder.conv_blocks.{i}"
            _resnet(t, f"{f}_res_{j}", f"{k}.res.{j}", block_in, block_out)
            block_in = block_out
            if lvl == n - 1:
                _attn(t, f"{f}_attn_{j}", f"{k}.attn.{j}")
        if i != n - 1:
            _conv(
                t,
                f"decoder/conv_blocks_{i}_upsample/conv",
                f"decoder.conv_blocks.{i}.upsample.conv",
            )
    _norm(t, "decoder/norm_out", "decoder.norm_out")
    _conv(t, "decoder/conv_out", "decoder.conv_out")
    return t


def _plan(shapes: Mapping[str, Sequence[int]], cfg: VQ16Config) -> tuple[Table, dict[str, Any]]:
    leaves = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    table = param_table(cfg)
    if set(table) != set(leaves):  # a bug in this file, not in the checkpoint
        raise AssertionError(
            f"llamagen_vq16 table out of sync with the model: only in table "
            f"{sorted(set(table) - set(leaves))}, only in model {sorted(set(leaves) - set(table))}"
        )
    used = {key for key, _ in table.values()}
    missing = sorted(key for key in used if key not in shapes)
    unexpected = sorted(
        k for k in shapes if k not in used and not any(re.fullmatch(p, k) for p in IGNORED_KEYS)
    )
    misshaped = []
    for path, (key, hook) in table.items():
        if key not in shapes:
            continue
        src = tuple(int(d) for d in shapes[key])
        want = tuple(leaves[path].shape)
        got = _hook_shape(hook, src)
        if got != want:
            misshaped.append(f"{key} {src} --{hook}--> {got}, but {path} is {want}")
    if missing or unexpected or misshaped:
        lines = [f"LlamaGen VQ-16 state dict does not fit {cfg}:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items))
        raise ConversionError("\n".join(lines))
    return table, leaves


def check_manifest(manifest: Mapping[str, Any], cfg: VQ16Config) -> None:
    """Validates a manifest (key -> [shape, dtype]; `"__wrapper__"` skipped) without allocating.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    _plan({k: v[0] for k, v in manifest.items() if k != "__wrapper__"}, cfg)


def convert_vq16(state_dict: Mapping[str, np.ndarray], cfg: VQ16Config) -> dict:
    """Official VQ-16 state dict (unwrapped) -> decode params (float32 jax arrays).

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    table, leaves = _plan({k: np.shape(v) for k, v in state_dict.items()}, cfg)
    flat = {}
    for path, (key, hook) in table.items():
        value = _apply_hook(hook, np.asarray(state_dict[key]))
        flat[path] = jnp.asarray(np.ascontiguousarray(value), dtype=leaves[path].dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def load_vq16(path: str | os.PathLike, cfg: VQ16Config, *, key: str | None = "model") -> dict:
    """Reads `vq_ds16_c2i.pt` (`{"model": state_dict}`; no torch) and converts it."""
    from converters.torch_reader import load_state_dict

    return convert_vq16(load_state_dict(path, key=key), cfg)
