"""Official VAR VQVAE state dict (`vae_ch160v4096z32.pth`) -> `arvg_jax.tokenizers.var_vqvae` params.

The table maps every Flax path ("a/b/c") to its torch key and a named hook. It is built from the
config by mirroring the loops of FoundationVision/VAR `models/basic_vae.py` and checked against the
abstract param tree (`jax.eval_shape`), so nothing is allocated until the keys and shapes fit.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from arvg_jax.tokenizers.var_vqvae import VQVAEConfig, abstract_params
from converters._errors import ConversionError

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Hook:
    """A named conversion of one torch tensor into one Flax leaf."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[Shape], Shape | None]  # the output shape, None if the input rank is wrong


def _conv_shape(s: Shape) -> Shape | None:
    return (s[2], s[3], s[1], s[0]) if len(s) == 4 else None


# nn.Conv2d.weight (O, I, kh, kw) -> flax Conv.kernel (kh, kw, I, O).
CONV = Hook("conv_oihw_to_hwio", lambda w: np.transpose(w, (2, 3, 1, 0)), _conv_shape)
# Biases, GroupNorm weight/bias (-> scale/bias), the codebook (V, Cv): as they are.
COPY = Hook("copy", lambda w: w, tuple)

# Source keys that are deliberately dropped.
IGNORED_KEYS = frozenset(
    {
        # quant.py buffer: EMA of codebook usage per scale, training statistics only (vqvae.py
        # `load_state_dict` even overwrites it when its shape differs).
        "quantize.ema_vocab_hit_SV",
    }
)

Table = dict[str, tuple[str, Hook]]


def _conv(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/kernel"] = (f"{torch}.weight", CONV)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _norm(t: Table, flax: str, torch: str) -> None:
    t[f"{flax}/scale"] = (f"{torch}.weight", COPY)
    t[f"{flax}/bias"] = (f"{torch}.bias", COPY)


def _resnet(t: Table, flax: str, torch: str, cin: int, cout: int) -> None:
    # basic_vae.py `ResnetBlock`: nin_shortcut exists only when in_channels != out_channels.
    _norm(t, f"{flax}/norm1", f"{torch}.norm1")
    _conv(t, f"{flax}/conv1", f"{torch}.conv1")
    _norm(t, f"{flax}/norm2", f"{torch}.norm2")
    _conv(t, f"{flax}/conv2", f"{torch}.conv2")
    if cin != cout:
        _conv(t, f"{flax}/nin_shortcut", f"{torch}.nin_shortcut")


def _attn(t: Table, flax: str, torch: str) -> None:
    # basic_vae.py `AttnBlock`: the fused qkv 1x1 conv keeps its [q | k | v] output order.
    _norm(t, f"{flax}/norm", f"{torch}.norm")
    _conv(t, f"{flax}/qkv", f"{torch}.qkv")
    _conv(t, f"{flax}/proj_out", f"{torch}.proj_out")


def _mid(t: Table, flax: str, torch: str, c: int) -> None:
    _resnet(t, f"{flax}/mid_block_1", f"{torch}.mid.block_1", c, c)
    _attn(t, f"{flax}/mid_attn_1", f"{torch}.mid.attn_1")
    _resnet(t, f"{flax}/mid_block_2", f"{torch}.mid.block_2", c, c)


def _phi_key(cfg: VQVAEConfig, k: int) -> str:
    # quant.py: PhiShared holds `qresi`, PhiNonShared is a ModuleList, PhiPartiallyShared holds
    # the ModuleList `qresi_ls`.
    if cfg.share_quant_resi == 1:
        return "quantize.quant_resi.qresi"
    if cfg.share_quant_resi == 0:
        return f"quantize.quant_resi.{k}"
    return f"quantize.quant_resi.qresi_ls.{k}"


def param_table(cfg: VQVAEConfig) -> Table:
    """Flax path ("a/b/c") -> (torch key, hook) for every leaf of the VQVAE params.

    Args:
        cfg: the VQVAE config.

    Returns:
        The table, in torch module order.
    """
    t: Table = {}
    n = len(cfg.ch_mult)
    # Encoder (basic_vae.py `Encoder.__init__`).
    _conv(t, "encoder/conv_in", "encoder.conv_in")
    block_in = cfg.ch
    for lvl in range(n):
        block_out = cfg.ch * cfg.ch_mult[lvl]
        for blk in range(cfg.num_res_blocks):
            f, k = f"encoder/down_{lvl}_block_{blk}", f"encoder.down.{lvl}.block.{blk}"
            _resnet(t, f, k, block_in, block_out)
            block_in = block_out
            if lvl == n - 1:
                _attn(t, f"encoder/down_{lvl}_attn_{blk}", f"encoder.down.{lvl}.attn.{blk}")
        if lvl != n - 1:
            _conv(t, f"encoder/down_{lvl}_downsample/conv", f"encoder.down.{lvl}.downsample.conv")
    _mid(t, "encoder", "encoder", block_in)
    _norm(t, "encoder/norm_out", "encoder.norm_out")
    _conv(t, "encoder/conv_out", "encoder.conv_out")
    # Decoder (basic_vae.py `Decoder.__init__`): `up` levels are listed n-1 .. 0 as they run.
    block_in = cfg.ch * cfg.ch_mult[-1]
    _conv(t, "decoder/conv_in", "decoder.conv_in")
    _mid(t, "decoder", "decoder", block_in)
    for lvl in reversed(range(n)):
        block_out = cfg.ch * cfg.ch_mult[lvl]
        for blk in range(cfg.num_res_blocks + 1):
            f, k = f"decoder/up_{lvl}_block_{blk}", f"decoder.up.{lvl}.block.{blk}"
            _resnet(t, f, k, block_in, block_out)
            block_in = block_out
            if lvl == n - 1:
                _attn(t, f"decoder/up_{lvl}_attn_{blk}", f"decoder.up.{lvl}.attn.{blk}")
        if lvl != 0:
            _conv(t, f"decoder/up_{lvl}_upsample/conv", f"decoder.up.{lvl}.upsample.conv")
    _norm(t, "decoder/norm_out", "decoder.norm_out")
    _conv(t, "decoder/conv_out", "decoder.conv_out")
    # vqvae.py latent convs and quant.py `VectorQuantizer2`.
    _conv(t, "quant_conv", "quant_conv")
    _conv(t, "post_quant_conv", "post_quant_conv")
    t["quantize/embedding"] = ("quantize.embedding.weight", COPY)
    for k in range(cfg.num_phi):
        _conv(t, f"quantize/phi_{k}", _phi_key(cfg, k))
    return t


def _plan(shapes: Mapping[str, Sequence[int]], cfg: VQVAEConfig) -> tuple[Table, dict[str, Any]]:
    """Checks source keys and shapes against the table and the abstract tree; allocates nothing.

    Returns:
        The table and the abstract leaves by Flax path.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    leaves = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    table = param_table(cfg)
    if set(table) != set(leaves):  # a bug in this file, not in the checkpoint
        raise AssertionError(
            f"var_vae table out of sync with the model: only in table "
            f"{sorted(set(table) - set(leaves))}, only in model {sorted(set(leaves) - set(table))}"
        )
    used = {key for key, _ in table.values()}
    missing = sorted(key for key in used if key not in shapes)
    unexpected = sorted(k for k in shapes if k not in used and k not in IGNORED_KEYS)
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
        lines = [f"VAR VQVAE state dict does not fit {cfg}:"]
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


def check_manifest_keys(
    manifest_keys_shapes: Mapping[str, Sequence[int]], cfg: VQVAEConfig
) -> None:
    """Validates a state dict's keys and shapes for `cfg` from shapes alone (nothing allocated).

    Args:
        manifest_keys_shapes: torch key -> shape (e.g. from `reference/manifests/*.json`).
        cfg: the VQVAE config the state dict should fit.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    _plan(manifest_keys_shapes, cfg)


def convert_vae(state_dict: Mapping[str, np.ndarray], cfg: VQVAEConfig) -> dict:
    """Official VQVAE state dict -> params of `arvg_jax.tokenizers.var_vqvae`.

    Args:
        state_dict: torch key -> array (`converters.torch_reader.load_state_dict`).
        cfg: the VQVAE config; leaves are cast to its `param_dtype`.

    Returns:
        Plain nested dict `{'encoder', 'decoder', 'quant_conv', 'post_quant_conv', 'quantize'}`.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    table, leaves = _plan({k: np.shape(v) for k, v in state_dict.items()}, cfg)
    flat = {}
    for path, (key, hook) in table.items():
        value = hook.apply(np.asarray(state_dict[key]))
        flat[path] = jnp.asarray(np.ascontiguousarray(value), dtype=leaves[path].dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def load_vae(path: str | os.PathLike, cfg: VQVAEConfig) -> dict:
    """Reads a VQVAE checkpoint (no torch) and converts it; see `convert_vae`."""
    from converters.torch_reader import load_state_dict  # lazy: only this helper reads files

    return convert_vae(load_state_dict(path), cfg)


# Keys of the reference fixture's `config.json` (FoundationVision/VAR `build_vae_var` arguments).
_FIXTURE_VAE_KEYS = {
    "V": "vocab_size",
    "Cvae": "z_channels",
    "ch": "ch",
    "share_quant_resi": "share_quant_resi",
    "patch_nums": "patch_nums",
}
# Keys that configure the VAR transformer, not the VQVAE.
_FIXTURE_VAR_KEYS = frozenset(
    {
        "num_classes",
        "depth",
        "shared_aln",
        "attn_l2_norm",
        "seed",
        "flash_if_available",
        "fused_if_available",
        "init_adaln",
        "init_adaln_gamma",
        "init_head",
        "init_std",
    }
)


def vae_config_from_fixture(config_json: Mapping[str, Any], **overrides) -> VQVAEConfig:
    """VQVAE config from a VAR fixture's `config.json` (`build_vae_var` arguments).

    Missing keys take `build_vae_var`'s defaults (the release: V 4096, Cvae 32, ch 160,
    share_quant_resi 4, the 256-px patch_nums).

    Args:
        config_json: the parsed `config.json`.
        **overrides: further `VQVAEConfig` fields (e.g. `dtype`).

    Raises:
        ConversionError: on a key that is neither a VQVAE nor a known VAR transformer setting.
    """
    unknown = sorted(
        k for k in config_json if k not in _FIXTURE_VAE_KEYS and k not in _FIXTURE_VAR_KEYS
    )
    if unknown:
        raise ConversionError(f"unknown VAR config keys {unknown}")
    kw = {field: config_json[k] for k, field in _FIXTURE_VAE_KEYS.items() if k in config_json}
    if "patch_nums" in kw:
        kw["patch_nums"] = tuple(int(p) for p in kw["patch_nums"])
    return VQVAEConfig(**{**kw, **overrides})
