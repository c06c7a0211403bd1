"""Official RAR state dict (`rar_{b,l,xl,xxl}.bin`, fixture `rar.pth`) -> `RAR` params.

A declarative table from every Flax path of the abstract tree (`jax.eval_shape` of init) to its
torch key and a named hook (`converters._table`). The releases are flat fp32 dicts without the
non-persistent `attn_mask` buffer (accepted and ignored if present).

Dims: C width, P position-table rows, V codebook size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from arvg_jax.families.rar.config import POS_EXTRA_ROWS, TIMESTEP_EXTRA_ROWS, RARConfig
from arvg_jax.families.rar.model import abstract_params
from converters import _table

TABLE: tuple[_table.Rule, ...] = (
    (r"cls_token", ("cls_token",), "flatten"),  # (1, 1, C) -> [C]
    (r"pos_embed", ("pos_embed",), "squeeze_leading"),  # (1, P, C) -> [P, C]
    (r"target_aware_pos_embed", ("target_aware_pos_embed",), "squeeze_leading"),
    (r"timesteps_embeddings", ("timesteps_embeddings",), "squeeze_leading"),
    (r"embeddings/embedding", ("embeddings.weight",), "copy"),
    # nn.LayerNorm weight -> scale.
    (r"blocks_(\d+)/(norm1|norm2)/scale", ("blocks.{0}.{1}.weight",), "copy"),
    (r"blocks_(\d+)/(norm1|norm2)/bias", ("blocks.{0}.{1}.bias",), "copy"),
    (r"blocks_(\d+)/attn/(q_norm|k_norm)/scale", ("blocks.{0}.attn.{1}.weight",), "copy"),
    (r"blocks_(\d+)/attn/(q_norm|k_norm)/bias", ("blocks.{0}.attn.{1}.bias",), "copy"),
    # qkv keeps torch's [q | k | v] output order, each third head-major (H, K).
    (r"blocks_(\d+)/attn/(qkv|proj)/kernel", ("blocks.{0}.attn.{1}.weight",), "linear_kernel"),
    (r"blocks_(\d+)/attn/(qkv|proj)/bias", ("blocks.{0}.attn.{1}.bias",), "copy"),
    (r"blocks_(\d+)/mlp/(fc1|fc2)/kernel", ("blocks.{0}.mlp.{1}.weight",), "linear_kernel"),
    (r"blocks_(\d+)/mlp/(fc1|fc2)/bias", ("blocks.{0}.mlp.{1}.bias",), "copy"),
    # adaLN_modulation is Sequential(SiLU, Linear): index 1 holds the Linear.
    (
        r"blocks_(\d+)/adaLN_modulation/kernel",
        ("blocks.{0}.adaLN_modulation.1.weight",),
        "linear_kernel",
    ),
    (r"blocks_(\d+)/adaLN_modulation/bias", ("blocks.{0}.adaLN_modulation.1.bias",), "copy"),
    (
        r"adaln_before_head/adaLN_modulation/kernel",
        ("adaln_before_head.adaLN_modulation.1.weight",),
        "linear_kernel",
    ),
    (
        r"adaln_before_head/adaLN_modulation/bias",
        ("adaln_before_head.adaLN_modulation.1.bias",),
        "copy",
    ),
    (r"lm_head/kernel", ("lm_head.weight",), "linear_kernel"),
    (r"lm_head/bias", ("lm_head.bias",), "copy"),
)

# The causal mask buffer is non-persistent (absent from the releases); tolerated if present.
IGNORED_KEYS: tuple[str, ...] = (r"attn_mask",)


def convert_rar(state_dict: Mapping[str, Any], cfg: RARConfig) -> dict:
    """Converts an official RAR state dict into `RAR(cfg)` params.

    Args:
        state_dict: flat torch key -> array (`converters.torch_reader.load_state_dict`).
        cfg: the architecture (`RARConfig.b()`, `RARConfig.from_json(...)`, or
            `rar_config_from_state_dict`).

    Returns:
        Nested plain dict of float32 jax arrays (layout in `arvg_jax.families.rar.model`).

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    return _table.convert(
        state_dict,
        abstract_params(cfg),
        TABLE,
        ignored=IGNORED_KEYS,
        what=f"RAR state dict for {cfg}",
    )


def check_manifest(manifest: Mapping[str, Any], cfg: RARConfig) -> dict:
    """Validates a release manifest (`reference/manifests/rar_b.json`) against cfg, allocating
    nothing; returns the abstract converted params. Raises ConversionError as `convert_rar`."""
    return _table.convert(
        _table.manifest_sources(manifest),
        abstract_params(cfg),
        TABLE,
        ignored=IGNORED_KEYS,
        what=f"RAR manifest for {cfg}",
        convert=False,
    )


def rar_config_from_state_dict(state_dict: Mapping[str, Any]) -> RARConfig:
    """Reads the architecture off an official state dict's shapes.

    Heads are not recorded by any shape except through the qk-norm width (head dim):
    H = C / q_norm.weight.shape[0].
    """
    c = int(state_dict["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    head_dim = int(np.prod(state_dict["blocks.0.attn.q_norm.weight"].shape))
    n = int(state_dict["timesteps_embeddings"].shape[-2]) - TIMESTEP_EXTRA_ROWS
    if int(state_dict["pos_embed"].shape[-2]) != n + POS_EXTRA_ROWS:
        raise ValueError(
            f"pos_embed rows {state_dict['pos_embed'].shape} do not fit image_seq_len {n}"
        )
    v = int(state_dict["lm_head.weight"].shape[0])
    return RARConfig(
        hidden_size=c,
        num_hidden_layers=depth,
        num_attention_heads=c // head_dim,
        intermediate_size=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]),
        image_seq_len=n,
        condition_num_classes=int(state_dict["embeddings.weight"].shape[0]) - v - 2,
        codebook_size=v,
    )
