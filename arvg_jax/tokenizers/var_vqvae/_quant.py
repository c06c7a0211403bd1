"""VAR's multi-scale residual quantizer (`models/quant.py`): codebook, φ convs, tokens <-> f̂.

Matches FoundationVision/VAR `models/quant.py` (`VectorQuantizer2`, commit 78b9539): the params
(`VectorQuantizer`: the codebook and the φ convs) and the pure functions of `(params, cfg, ...)`
that map between K scales of tokens and the latent f̂: the teacher-forcing VAR input
(`idx_to_var_input`), the sampler's step (`next_scale_input`), f̂ of all scales (`idx_to_fhat`) and
the residual quantization of a latent (`latent_to_idx`). Everything runs in float32, as the
official f̂ accumulation does.

Why a module of its own: this is the token side of the tokenizer, which the VAR transformer's
sampler and training use without the image networks (`_nets`);
`arvg_jax.tokenizers.var_vqvae` re-exports these names (import them from there).

Dims: B batch, H/W spatial, Cv = z_channels, V vocab size, K scales, pn side of a scale's token
map, L = sum(pn^2) tokens, N = B * pn^2 flattened positions.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import resample
from arvg_jax.tokenizers.var_vqvae._config import VQVAEConfig
from arvg_jax.tokenizers.var_vqvae._nets import _conv


class VectorQuantizer(nn.Module):
    """quant.py `VectorQuantizer2` params: the codebook and the φ convs (`phi_{k}`).

    Runs in float32 whatever the decoder's compute dtype: the official f̂ accumulation is float32.
    """

    cfg: VQVAEConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = self.param(
            "embedding",
            nn.initializers.normal(1.0),
            (cfg.vocab_size, cfg.z_channels),
            jnp.float32,
        )
        # quant.py `Phi` is a 3x3 conv Cv -> Cv with bias and padding 1.
        self.phi = [
            _conv(cfg.z_channels, 3, None, jnp.float32, jnp.float32) for _ in range(cfg.num_phi)
        ]

    def lookup(self, idx: jax.Array) -> jax.Array:
        """Codebook rows of int indices `[...]` -> `[..., Cv]` float32 (plain lookup, no l2-norm)."""
        return jnp.take(self.embedding, idx, axis=0).astype(jnp.float32)

    def apply_phi(self, h: jax.Array, si: int) -> jax.Array:
        """quant.py `Phi.forward` of scale si's φ: `h * (1 - r) + conv(h) * r` on `[B, H, W, Cv]`."""
        r = abs(self.cfg.quant_resi)
        h = h.astype(jnp.float32)
        return h * (1 - r) + self.phi[self.cfg.phi_table[si]](h) * r

    def codebook(self) -> jax.Array:
        """The codebook `[V, Cv]` float32."""
        return self.embedding.astype(jnp.float32)

    def __call__(self, h: jax.Array) -> jax.Array:
        """Touches every param (used by init): sum of all φ(h) plus the codebook's first row."""
        out = self.lookup(jnp.zeros(h.shape[:-1], jnp.int32))
        for phi in self.phi:
            out = out + phi(h)
        return out


def _quantizer(params: dict, cfg: VQVAEConfig, method: str, *args) -> jax.Array:
    return VectorQuantizer(cfg).apply({"params": params["quantize"]}, *args, method=method)


def _scale_to_fhat(params: dict, cfg: VQVAEConfig, h: jax.Array, si: int) -> jax.Array:
    """φ_si of scale si's embedded token map `[B, pn, pn, Cv]`, upsampled to f̂ size first.

    quant.py `get_next_autoregressive_input` / `embed_to_fhat`: bicubic to the last patch num for
    every scale but the last (which has that size), then φ ("conv after upsample").
    """
    if si != cfg.num_scales - 1:
        h = resample.bicubic_resize_nhwc(h, (cfg.latent_size, cfg.latent_size))
    return _quantizer(params, cfg, "apply_phi", h, si)


def split_idx(cfg: VQVAEConfig, idx: jax.Array | np.ndarray) -> list[jax.Array]:
    """Splits scale-concatenated tokens `[B, L]` into per-scale `[B, pn^2]` pieces."""
    if idx.shape[-1] != cfg.seq_len:
        raise ValueError(f"expected {cfg.seq_len} tokens, got idx shape {idx.shape}")
    bounds = np.cumsum([pn * pn for pn in cfg.patch_nums])[:-1].tolist()
    return jnp.split(jnp.asarray(idx), bounds, axis=-1)


def embed_scale(params: dict, cfg: VQVAEConfig, idx_si: jax.Array, si: int) -> jax.Array:
    """Codebook lookup of scale si's tokens `[B, pn^2]` -> `[B, pn, pn, Cv]` float32 (row-major)."""
    pn = cfg.patch_nums[si]
    if idx_si.shape[-1] != pn * pn:
        raise ValueError(f"scale {si} (pn={pn}) needs {pn * pn} tokens, got {idx_si.shape}")
    h = _quantizer(params, cfg, "lookup", idx_si)  # [B, pn^2, Cv]
    # embedding(idx).transpose(1, 2).view(B, C, pn, pn): token l sits at row l // pn, col l % pn.
    return h.reshape(h.shape[0], pn, pn, cfg.z_channels)


def next_scale_input(
    params: dict, cfg: VQVAEConfig, f_hat: jax.Array, idx_si: jax.Array, si: int
) -> tuple[jax.Array, jax.Array | None]:
    """quant.py `get_next_autoregressive_input`: adds scale si to f̂ and builds the next input.

    `si` must be a static Python int (jit with `static_argnums`); `cfg` is static as well.

    Args:
        params: VQVAE params (only `quantize` is read).
        cfg: the VQVAE config.
        f_hat: `[B, H, W, Cv]` float32 running sum, H = W = patch_nums[-1] (zeros before scale 0).
        idx_si: `[B, pn_si^2]` int tokens of scale si, row-major.
        si: scale index.

    Returns:
        `(f_hat, x_next)`: the updated f̂ and, for si < K - 1, the next scale's VAR input
        `area_resize(f̂ -> pn_{si+1})` flattened row-major to `[B, pn_{si+1}^2, Cv]`
        (`.view(B, C, -1).transpose(1, 2)`); None after the last scale.
    """
    h = embed_scale(params, cfg, idx_si, si)
    f_hat = f_hat.astype(jnp.float32) + _scale_to_fhat(params, cfg, h, si)
    if si == cfg.num_scales - 1:
        return f_hat, None
    pn = cfg.patch_nums[si + 1]
    x_next = resample.area_resize_nhwc(f_hat, (pn, pn))  # [B, pn, pn, Cv]
    return f_hat, x_next.reshape(x_next.shape[0], pn * pn, cfg.z_channels)


def _zeros_fhat(cfg: VQVAEConfig, batch: int) -> jax.Array:
    return jnp.zeros((batch, cfg.latent_size, cfg.latent_size, cfg.z_channels), jnp.float32)


def idx_to_var_input(params: dict, cfg: VQVAEConfig, idx_list: Sequence[jax.Array]) -> jax.Array:
    """quant.py `idxBl_to_var_input`: the teacher-forcing VAR input of scales 1 .. K-1.

    Args:
        params: VQVAE params.
        cfg: the VQVAE config.
        idx_list: K (at least the first K - 1 are read) int arrays `[B, pn^2]`, row-major.

    Returns:
        `[B, L - pn_0^2, Cv]` float32: the next-scale inputs concatenated in scale order.
    """
    f_hat = _zeros_fhat(cfg, idx_list[0].shape[0])
    xs = []
    for si in range(cfg.num_scales - 1):
        f_hat, x_next = next_scale_input(params, cfg, f_hat, idx_list[si], si)
        xs.append(x_next)
    return jnp.concatenate(xs, axis=1)


def idx_to_fhat(params: dict, cfg: VQVAEConfig, idx_list: Sequence[jax.Array]) -> jax.Array:
    """quant.py `embed_to_fhat(all_to_max_scale=True, last_one=True)` of K token maps.

    Returns:
        f̂ `[B, H, W, Cv]` float32, H = W = patch_nums[-1].
    """
    if len(idx_list) != cfg.num_scales:
        raise ValueError(f"expected {cfg.num_scales} scales, got {len(idx_list)}")
    f_hat = _zeros_fhat(cfg, idx_list[0].shape[0])
    for si in range(cfg.num_scales):
        f_hat = f_hat + _scale_to_fhat(params, cfg, embed_scale(params, cfg, idx_list[si], si), si)
    return f_hat


def latent_to_idx(
    params: dict, cfg: VQVAEConfig, f: jax.Array
) -> tuple[list[jax.Array], jax.Array]:
    """quant.py `VectorQuantizer2.f_to_idxBl_or_fhat` (using_znorm=False): residual quantization.

    For each scale: area-resize the residual to pn x pn (not for the last scale), take the nearest
    codebook row by `|z|^2 + |e|^2 - 2 z.e` (first index on ties, as `torch.argmin`), embed,
    bicubic-upsample (not for the last scale), φ, then `f̂ += h` and `residual -= h`.

    Args:
        params: VQVAE params (only `quantize` is read).
        cfg: the VQVAE config.
        f: `[B, H, W, Cv]` latent, H = W = patch_nums[-1].

    Returns:
        `(idx_list, f_hat)`: K int32 arrays `[B, pn^2]` (row-major) and the final f̂
        `[B, H, W, Cv]` float32 (the last entry of `to_fhat=True`).
    """
    b, hh, ww, c = f.shape
    if (hh, ww) != (cfg.latent_size, cfg.latent_size):
        raise ValueError(f"latent is {hh}x{ww}, expected patch_nums[-1]={cfg.latent_size}")
    f_rest = f.astype(jnp.float32)
    f_hat = jnp.zeros_like(f_rest)
    emb = _quantizer(params, cfg, "codebook")  # [V, Cv]
    emb_sq = jnp.sum(jnp.square(emb), axis=1)  # [V]
    idx_list = []
    for si, pn in enumerate(cfg.patch_nums):
        z = f_rest if si == cfg.num_scales - 1 else resample.area_resize_nhwc(f_rest, (pn, pn))
        z = z.reshape(-1, c)  # [N, Cv]; N = B * pn^2, row-major as permute(0, 2, 3, 1)
        dot = jnp.einsum("NC,VC->NV", z, emb, precision=jax.lax.Precision.HIGHEST)
        # d = sum(z^2, 1, keepdim) + sum(e^2, 1); d.addmm_(z, e.T, alpha=-2, beta=1)
        dist = (jnp.sum(jnp.square(z), axis=1, keepdims=True) + emb_sq) + (-2.0) * dot  # [N, V]
        idx = jnp.argmin(dist, axis=1).astype(jnp.int32).reshape(b, pn * pn)
        h = _scale_to_fhat(params, cfg, embed_scale(params, cfg, idx, si), si)
        f_hat = f_hat + h
        f_rest = f_rest - h
        idx_list.append(idx)
    return idx_list, f_hat
