"""Official MaskGIT-VQGAN state dict (`maskgit-vqgan-imagenet-f16-256.bin`, fixture
`maskgit_vqgan.pth`) -> `arvg_jax.tokenizers.maskgit_vqgan` params.

Declarative table (`converters._table`) checked against the abstract param tree. Only the decode
path is ported: `encoder.*` keys are consumed unread (the release holds the whole tokenizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig, abstract_params
from converters import _table

TABLE: tuple[_table.Rule, ...] = (
    (r"quantize/embedding", ("quantize.embedding.weight",), "copy"),
    # Conv2dSame weight (O, I, kh, kw) -> kernel (kh, kw, I, O); GroupNorm weight -> scale.
    (r"decoder/(conv_in|conv_out)/kernel", ("decoder.{0}.weight",), "conv_kernel"),
    (r"decoder/(conv_in|conv_out)/bias", ("decoder.{0}.bias",), "copy"),
    (r"decoder/norm_out/scale", ("decoder.norm_out.weight",), "copy"),
    (r"decoder/norm_out/bias", ("decoder.norm_out.bias",), "copy"),
    (
        r"decoder/mid_(\d+)/(conv1|conv2|nin_shortcut)/kernel",
        ("decoder.mid.{0}.{1}.weight",),
        "conv_kernel",
    ),
    (r"decoder/mid_(\d+)/(norm1|norm2)/scale", ("decoder.mid.{0}.{1}.weight",), "copy"),
    (r"decoder/mid_(\d+)/(norm1|norm2)/bias", ("decoder.mid.{0}.{1}.bias",), "copy"),
    (
        r"decoder/up_(\d+)/block_(\d+)/(conv1|conv2|nin_shortcut)/kernel",
        ("decoder.up.{0}.block.{1}.{2}.weight",),
        "conv_kernel",
    ),
    (
        r"decoder/up_(\d+)/block_(\d+)/(norm1|norm2)/scale",
        ("decoder.up.{0}.block.{1}.{2}.weight",),
        "copy",
    ),
    (
        r"decoder/up_(\d+)/block_(\d+)/(norm1|norm2)/bias",
        ("decoder.up.{0}.block.{1}.{2}.bias",),
        "copy",
    ),
    (
        r"decoder/up_(\d+)/upsample_conv/kernel",
        ("decoder.up.{0}.upsample_conv.weight",),
        "conv_kernel",
    ),
    (r"decoder/up_(\d+)/upsample_conv/bias", ("decoder.up.{0}.upsample_conv.bias",), "copy"),
)

# The encoder is not ported (RAR only decodes).
IGNORED_KEYS: tuple[str, ...] = (r"encoder\..*",)


def convert_maskgit_vqgan(state_dict: Mapping[str, Any], cfg: MaskGITVQGANConfig) -> dict:
    """Converts the official tokenizer state dict into decoder + codebook params.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    return _table.convert(
        state_dict,
        abstract_params(cfg),
        TABLE,
        ignored=IGNORED_KEYS,
        what=f"MaskGIT-VQGAN state dict for {cfg}",
    )


def check_manifest(manifest: Mapping[str, Any], cfg: MaskGITVQGANConfig) -> dict:
    """Validates a release manifest (`reference/manifests/maskgit_vqgan.json`) without allocating."""
    return _table.convert(
        _table.manifest_sources(manifest),
        abstract_params(cfg),
        TABLE,
        ignored=IGNORED_KEYS,
        what=f"MaskGIT-VQGAN manifest for {cfg}",
        convert=False,
    )
