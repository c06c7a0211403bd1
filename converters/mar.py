"""Official MAR checkpoint (`checkpoint-last.pth`) -> `arvg_jax.families.mar` params.

The release wraps two state dicts of identical keys, `{"model": ..., "model_ema": ...}`; the
official sampler uses `model_ema` (demo notebook, `engine_mar.evaluate(use_ema=True)`), and which
one to convert is an explicit argument here. The table maps every Flax path to its torch key and
a named hook; it is built from the config by mirroring LTH14/mar `models/mar.py` and
`models/diffloss.py` (commit fe470ac) and checked against the abstract param tree
(`jax.eval_shape`), so nothing is allocated until the keys and shapes fit.

Result: `{"transformer": <MAR params>, "diffloss": <SimpleMLPAdaLN params>}`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import abstract_params
from converters._errors import ConversionError

Shape = tuple[int, ...]
Weights = Literal["model_ema", "model", "flat"]
WEIGHTS = ("model_ema", "model", "flat")


@dataclasses.dataclass(frozen=True)
class Hook:
    """A named conversion of one torch tensor into one Flax leaf."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[Shape], Shape | None]  # the output shape, None if the input rank is wrong


def _drop_leading(n: int) -> Hook:
    # (1, P, C) pos embeds, (1, C) fake_latent, (1, 1, C) mask_token -> without the unit dims.
    def shape(s: Shape) -> Shape | None:
        return s[n:] if len(s) > n and all(d == 1 for d in s[:n]) else None

    return Hook(f"drop_{n}_leading", lambda w: w.reshape(w.shape[n:]), shape)


COPY = Hook("copy", lambda w: w, tuple)
# nn.Linear.weight (out, in) -> Dense kernel (in, out).
LINEAR = Hook("linear_transpose", lambda w: w.T, lambda s: s[::-1] if len(s) == 2 else None)
DROP1 = _drop_leading(1)
DROP2 = _drop_leading(2)

Table = dict[str, tuple[str, Hook]]


def _dense(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/kernel"] = (f"{torch}.weight", LINEAR)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _norm(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/scale"] = (f"{torch}.weight", COPY)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _block(t: Table, flax: str, torch: str) -> None:
    # timm vision_transformer.Block (qkv_bias=True, no layer scale, no qk-norm).
    _norm(t, f"{flax}/norm1", f"{torch}.norm1")
    _dense(t, f"{flax}/attn/qkv", f"{torch}.attn.qkv")
    _dense(t, f"{flax}/attn/proj", f"{torch}.attn.proj")
    _norm(t, f"{flax}/norm2", f"{torch}.norm2")
    _dense(t, f"{flax}/mlp/fc1", f"{torch}.mlp.fc1")
    _dense(t, f"{flax}/mlp/fc2", f"{torch}.mlp.fc2")


def param_table(cfg: MARConfig) -> Table:
    """Flax path ("transformer/…", "diffloss/…") -> (torch key, hook) for every leaf."""
    t: Table = {}
    # mar.py MAR.__init__
    t["transformer/class_emb/embedding"] = ("class_emb.weight", COPY)
    t["transformer/fake_latent"] = ("fake_latent", DROP1)
    t["transformer/mask_token"] = ("mask_token", DROP2)
    for name in ("encoder_pos_embed_learned", "decoder_pos_embed_learned"):
        t[f"transformer/{name}"] = (name, DROP1)
    t["transformer/diffusion_pos_embed_learned"] = ("diffusion_pos_embed_learned", DROP1)
    _dense(t, "transformer/z_proj", "z_proj")
    _norm(t, "transformer/z_proj_ln", "z_proj_ln")
    for i in range(cfg.encoder_depth):
        _block(t, f"transformer/encoder_blocks_{i}", f"encoder_blocks.{i}")
    _norm(t, "transformer/encoder_norm", "encoder_norm")
    _dense(t, "transformer/decoder_embed", "decoder_embed")
    for i in range(cfg.decoder_depth):
        _block(t, f"transformer/decoder_blocks_{i}", f"decoder_blocks.{i}")
    _norm(t, "transformer/decoder_norm", "decoder_norm")
    # diffloss.py SimpleMLPAdaLN (nn.Sequential indices: mlp.0 / mlp.2, adaLN_modulation.1).
    h = "diffloss.net"
    _dense(t, "diffloss/input_proj", f"{h}.input_proj")
    _dense(t, "diffloss/time_embed_mlp_0", f"{h}.time_embed.mlp.0")
    _dense(t, "diffloss/time_embed_mlp_2", f"{h}.time_embed.mlp.2")
    _dense(t, "diffloss/cond_embed", f"{h}.cond_embed")
    for i in range(cfg.diffloss_d):
        f, k = f"diffloss/res_blocks_{i}", f"{h}.res_blocks.{i}"
        _norm(t, f"{f}/in_ln", f"{k}.in_ln")
        _dense(t, f"{f}/mlp_0", f"{k}.mlp.0")
        _dense(t, f"{f}/mlp_2", f"{k}.mlp.2")
        _dense(t, f"{f}/adaLN_modulation_1", f"{k}.adaLN_modulation.1")
    _dense(t, "diffloss/final_layer_adaLN_modulation_1", f"{h}.final_layer.adaLN_modulation.1")
    _dense(t, "diffloss/final_layer_linear", f"{h}.final_layer.linear")
    return t


def _plan(shapes: Mapping[str, Sequence[int]], cfg: MARConfig) -> tuple[Table, dict[str, Any]]:
    """Checks source keys and shapes against the table and the abstract tree; allocates nothing.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    leaves = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    table = param_table(cfg)
    if set(table) != set(leaves):  # a bug in this file, not in the checkpoint
        raise AssertionError(
            f"mar table out of sync with the model: only in table "
            f"{sorted(set(table) - set(leaves))}, only in model {sorted(set(leaves) - set(table))}"
        )
    used = {key for key, _ in table.values()}
    missing = sorted(key for key in used if key not in shapes)
    unexpected = sorted(k for k in shapes if k not in used)
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
        lines = [f"MAR state dict does not fit {cfg}:"]
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


def check_manifest(manifest: Mapping[str, Any], cfg: MARConfig) -> dict:
    """Validates a manifest (`reference/manifests/mar_*.json`: key -> [shape, dtype]) for `cfg`.

    The `"__wrapper__"` entry (which wrapper keys hold the state dict) is skipped.

    Returns:
        The abstract param tree (`jax.ShapeDtypeStruct` leaves), nothing allocated.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    shapes = {k: v[0] for k, v in manifest.items() if k != "__wrapper__"}
    _plan(shapes, cfg)
    return abstract_params(cfg)


def convert_mar(state_dict: Mapping[str, np.ndarray], cfg: MARConfig) -> dict:
    """One official MAR state dict (already unwrapped) -> `{"transformer", "diffloss"}` params.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    table, leaves = _plan({k: np.shape(v) for k, v in state_dict.items()}, cfg)
    flat = {}
    for path, (key, hook) in table.items():
        value = hook.apply(np.asarray(state_dict[key]))
        flat[path] = jnp.asarray(np.ascontiguousarray(value), dtype=leaves[path].dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def load_mar(path: str | os.PathLike, cfg: MARConfig, *, weights: Weights) -> dict:
    """Reads a MAR checkpoint without torch and converts the chosen weights.

    Args:
        path: `checkpoint-last.pth` (or a flat state dict, e.g. a safetensors mirror).
        cfg: the architecture.
        weights: "model_ema" (what the official sampler uses), "model" (the raw training
            weights), or "flat" for a file that holds one unwrapped state dict.

    Raises:
        ValueError: on an unknown `weights`.
        CheckpointError: the file is refused or lacks the chosen entry.
        ConversionError: the state dict does not fit `cfg`.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    from converters.torch_reader import load_state_dict  # lazy: only this helper reads files

    key = None if weights == "flat" else weights
    return convert_mar(load_state_dict(path, key=key), cfg)
