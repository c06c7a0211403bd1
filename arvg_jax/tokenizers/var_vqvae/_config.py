"""VAR VQVAE settings: `VQVAEConfig` and the official φ tick rule (`phi_index_table`).

Matches the constructor arguments of FoundationVision/VAR `models/vqvae.py` (`VQVAE`) and the φ
selection of `models/quant.py` (commit 78b9539). The config is what checkpoints and converters
store and what every other piece of the tokenizer takes (`_nets`, `_quant`,
`var_vqvae`, `converters/var_vae.py`); it needs none of them, so it sits below them in a module of
its own. Import it from `arvg_jax.tokenizers.var_vqvae`, which re-exports these names.
"""

import dataclasses

import numpy as np

_GN_GROUPS = 32  # basic_vae.py `Normalize`: GroupNorm(32, eps=1e-6, affine=True)
_GN_EPS = 1e-6


def phi_index_table(
    num_scales: int, share_quant_resi: int, default_qresi_counts: int = 0
) -> tuple[int, ...]:
    """Which φ conv each scale uses, derived from the official tick rule.

    quant.py: `quant_resi[si / (SN - 1)]` picks the φ whose tick is nearest to si / (SN - 1), with
    `ticks = linspace(1/3/K, 1 - 1/3/K, K)` for K == 4 else `linspace(1/2/K, 1 - 1/2/K, K)`
    (`PhiPartiallyShared`, `PhiNonShared`), first index on ties (`np.argmin`). 10 scales with 4 φ
    have exact ties (si = 2 and 7): the float64 rounding of numpy decides them, so the same numpy
    expressions are evaluated here.

    Args:
        num_scales: K scales (at least 2, since the official code divides by K - 1).
        share_quant_resi: 0 = one φ per scale (or `default_qresi_counts`), 1 = one shared φ,
            n > 1 = n partially shared φ.
        default_qresi_counts: φ count when `share_quant_resi == 0` (0 = num_scales).

    Returns:
        The φ index of each scale; (0, 0, 1, 1, 1, 2, 2, 3, 3, 3) for the release.
    """
    if num_scales < 2:
        raise ValueError(f"need at least 2 scales, got {num_scales}")
    if share_quant_resi == 1:  # PhiShared: every scale uses the same φ
        return (0,) * num_scales
    k = share_quant_resi if share_quant_resi > 1 else (default_qresi_counts or num_scales)
    ticks = (
        np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        if k == 4
        else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    )
    return tuple(
        int(np.argmin(np.abs(ticks - si / (num_scales - 1))).item()) for si in range(num_scales)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQVAEConfig:
    """VAR VQVAE settings; the defaults are the release `vae_ch160v4096z32.pth`."""

    vocab_size: int = 4096  # V, codebook rows
    z_channels: int = 32  # Cvae, latent and codebook width
    ch: int = 160  # base width; level widths are ch * ch_mult
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # vq-f16 ddconfig; downsampling 2^(len - 1)
    num_res_blocks: int = 2  # per encoder level (the decoder has one more)
    in_channels: int = 3  # image channels
    dropout: float = 0.0  # training only; ignored (inference port)
    quant_conv_ks: int = 3  # kernel of quant_conv / post_quant_conv
    quant_resi: float = 0.5  # φ(h) = (1 - |r|) h + |r| conv(h)
    share_quant_resi: int = 4  # 0 non-shared, 1 shared, n > 1 partially shared (n φ)
    default_qresi_counts: int = 0  # φ count for share_quant_resi == 0 (0 = one per scale)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # pn of each scale

    def __post_init__(self):
        if len(self.patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least 2 scales, got {self.patch_nums}")
        if abs(self.quant_resi) <= 1e-6:
            # quant.py then uses nn.Identity for φ; no release does.
            raise NotImplementedError("quant_resi == 0 (identity φ) is not supported")
        for m in self.ch_mult:
            if (self.ch * m) % _GN_GROUPS:
                raise ValueError(f"ch * ch_mult = {self.ch * m} is not divisible by 32 groups")

    @classmethod
    def release(cls, **overrides) -> "VQVAEConfig":
        """`vae_ch160v4096z32.pth`, the VQVAE of every released VAR model (256 px)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "VQVAEConfig":
        """The reference fixture (`reference/var/vae.pth`): the release with ch = 32."""
        return cls(**{"ch": 32, **overrides})

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Side of f̂ (the last patch num)."""
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.latent_size * self.downsample

    @property
    def seq_len(self) -> int:
        """L = sum(pn^2)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def num_phi(self) -> int:
        if self.share_quant_resi == 1:
            return 1
        if self.share_quant_resi == 0:
            return self.default_qresi_counts or self.num_scales
        return self.share_quant_resi

    @property
    def phi_table(self) -> tuple[int, ...]:
        """φ index of each scale."""
        return phi_index_table(self.num_scales, self.share_quant_resi, self.default_qresi_counts)
