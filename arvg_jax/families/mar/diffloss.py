"""MAR's diffusion head: SimpleMLPAdaLN, the respaced cosine schedule and the ancestral sampler.

Matches LTH14/mar (commit fe470ac) `models/diffloss.py` (`SimpleMLPAdaLN`, `forward_with_cfg`,
`DiffLoss.sample`) and `diffusion/{__init__,gaussian_diffusion,respace}.py` (`create_diffusion(
timestep_respacing=num_sampling_steps, noise_schedule="cosine")`: learned-range variance, epsilon
prediction, no clipping, temperature-scaled noise).

Dims: N rows (independent tokens), D token channels, W head width, Cz condition width,
S respaced sampling steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.nn.layers import Dense

Array = jax.Array

_FREQ_DIM = 256  # TimestepEmbedder.frequency_embedding_size
_MAX_PERIOD = 10000


def timestep_frequencies(dim: int = _FREQ_DIM) -> np.ndarray:
    """float32 [dim // 2]: exp(-ln(10000) * k / half), rounded as torch computes it in fp32.

    diffloss.py `timestep_embedding` evaluates `-math.log(max_period) * arange(half)` (a float32
    product), divides by `half` in float32 and takes a float32 exp; float64 exp then one rounding
    gives the correctly rounded float32 value of the same argument.
    """
    half = dim // 2
    arg = (np.float32(-math.log(_MAX_PERIOD)) * np.arange(half, dtype=np.float32)) / np.float32(
        half
    )
    return np.exp(arg.astype(np.float64)).astype(np.float32)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
    return x * (1 + scale) + shift


def _ln(eps: float, affine: bool, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, use_fast_variance=False, use_scale=affine, use_bias=affine, name=name
    )


class ResBlock(nn.Module):
    """diffloss.py `ResBlock`: adaLN (shift, scale, gate) around LN -> Linear -> SiLU -> Linear."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        w = x.shape[-1]
        mod = Dense(3 * w, dtype=self.dtype, name="adaLN_modulation_1")(nn.silu(y))
        shift, scale, gate = jnp.split(mod, 3, axis=-1)  # chunk(3): (shift, scale, gate)
        h = _modulate(_ln(1e-6, True, "in_ln")(x), shift, scale)
        h = Dense(w, dtype=self.dtype, name="mlp_0")(h)
        h = Dense(w, dtype=self.dtype, name="mlp_2")(nn.silu(h))
        return x + gate * h


class SimpleMLPAdaLN(nn.Module):
    """diffloss.py `SimpleMLPAdaLN`: (x_t [N, D], t int [N], c [N, Cz]) -> [N, 2D] = [eps | v].

    `t` is the ORIGINAL (1000-step) index: the respacing wrapper maps before calling the net.

    Attributes:
        width: W (`diffloss_w`).
        depth: res blocks (`diffloss_d`).
        out_channels: 2 D.
    """

    width: int
    depth: int
    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, t: Array, c: Array) -> Array:
        d, w = self.dtype, self.width
        x = Dense(w, dtype=d, name="input_proj")(x)
        args = t.astype(jnp.float32)[:, None] * jnp.asarray(timestep_frequencies())[None]
        t_freq = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [N, 256]: [cos | sin]
        t_emb = Dense(w, dtype=d, name="time_embed_mlp_0")(t_freq)
        t_emb = Dense(w, dtype=d, name="time_embed_mlp_2")(nn.silu(t_emb))
        y = t_emb + Dense(w, dtype=d, name="cond_embed")(c)
        for i in range(self.depth):
            x = ResBlock(d, name=f"res_blocks_{i}")(x, y)
        # FinalLayer: chunk(2) = (shift, scale); LN without affine.
        mod = Dense(2 * w, dtype=d, name="final_layer_adaLN_modulation_1")(nn.silu(y))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = _modulate(_ln(1e-6, False, "final_layer_norm_final")(x), shift, scale)
        return Dense(self.out_channels, dtype=d, name="final_layer_linear")(x)


def head_apply(params: dict, x: Array, t: Array, c: Array, *, width: int, depth: int) -> Array:
    """`net.forward`: params of `SimpleMLPAdaLN` -> [N, 2D]."""
    net = SimpleMLPAdaLN(width=width, depth=depth, out_channels=2 * x.shape[-1])
    return net.apply({"params": params}, x, t, c)


def head_apply_cfg(
    params: dict, x: Array, t: Array, c: Array, cfg_scale: Array, *, width: int, depth: int
) -> Array:
    """`net.forward_with_cfg`: rows [cond; uncond]; both halves run on the cond half's x.

    eps of both halves becomes eps_u + cfg_scale (eps_c - eps_u); v stays per row.
    """
    n, dch = x.shape[0] // 2, x.shape[-1]
    half = x[:n]
    out = head_apply(params, jnp.concatenate([half, half], 0), t, c, width=width, depth=depth)
    eps, rest = out[:, :dch], out[:, dch:]
    cond_eps, uncond_eps = eps[:n], eps[n:]
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return jnp.concatenate([jnp.concatenate([half_eps, half_eps], 0), rest], axis=1)


# ------------------------------------------------------------------------------------------------
# Schedule (float64 numpy, exactly the official arithmetic)
# ------------------------------------------------------------------------------------------------


def space_timesteps(num_timesteps: int, section_counts: str) -> list[int]:
    """respace.py `space_timesteps` (sorted): Python `round` (half to even) of a float stride."""
    if section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim") :])
        for i in range(1, num_timesteps):
            if len(range(0, num_timesteps, i)) == desired:
                return list(range(0, num_timesteps, i))
        raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
    counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """gaussian_diffusion.py `betas_for_alpha_bar` with the "cosine" alpha_bar (Python floats)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ]
    )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The float64 tables of a respaced `GaussianDiffusion` (index i = respaced step)."""

    timestep_map: np.ndarray  # int64 [S]: original index of each respaced step
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.betas)


def make_schedule(num_sampling_steps: str, num_timesteps: int = 1000) -> Schedule:
    """`create_diffusion(timestep_respacing=num_sampling_steps, noise_schedule="cosine")`.

    Args:
        num_sampling_steps: `space_timesteps` section counts ("100", "7", "ddim50", "" = all).
        num_timesteps: steps of the base process.
    """
    base = cosine_betas(num_timesteps)
    use = set(space_timesteps(num_timesteps, num_sampling_steps or str(num_timesteps)))
    base_ac = np.cumprod(1.0 - np.array(base, dtype=np.float64), axis=0)
    # SpacedDiffusion.__init__: new betas from the kept cumulative products.
    last, new_betas, tmap = 1.0, [], []
    for i, ac in enumerate(base_ac):
        if i in use:
            new_betas.append(1 - ac / last)
            last = ac
            tmap.append(i)
    betas = np.array(np.array(new_betas), dtype=np.float64)
    # GaussianDiffusion.__init__ on the new betas.
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_logvar = (
        np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.array([])
    )
    return Schedule(
        timestep_map=np.array(tmap, dtype=np.int64),
        betas=betas,
        alphas_cumprod=ac,
        posterior_log_variance_clipped=post_logvar,
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
    )


def _step_tables(s: Schedule) -> dict[str, np.ndarray]:
    """Per-step fp32 tables in loop order (i = S-1 .. 0), as `_extract_into_tensor` casts them."""
    rev = slice(None, None, -1)
    f32 = lambda a: np.asarray(a, np.float64)[rev].astype(np.float32)
    return {
        "t": s.timestep_map[rev].astype(np.int32),
        "nonzero": (np.arange(s.num_steps)[rev] != 0).astype(np.float32),
        # p_mean_variance: max_log = log(betas) taken in float64, then cast.
        "max_log": f32(np.log(s.betas)),
        "min_log": f32(s.posterior_log_variance_clipped),
        "coef1": f32(s.posterior_mean_coef1),
        "coef2": f32(s.posterior_mean_coef2),
        "recip": f32(s.sqrt_recip_alphas_cumprod),
        "recipm1": f32(s.sqrt_recipm1_alphas_cumprod),
    }


def p_sample_loop(
    params: dict,
    z: Array,
    x_t: Array,
    noise: Array,
    temperature: Array,
    cfg_scale: Array | None,
    *,
    schedule: Schedule,
    width: int,
    depth: int,
    return_trajectory: bool = False,
) -> Array | tuple[Array, Array]:
    """`gen_diffusion.p_sample_loop` (clip_denoised=False) as one `lax.scan`.

    Args:
        params: `SimpleMLPAdaLN` params.
        z: [N, Cz] conditions (under CFG: [cond rows; uncond rows]).
        x_t: [N, D] the starting noise x_T (under CFG the official code passes one half twice).
        noise: [S, N, D] the per-step draws, entry j used at respaced index i = S-1-j (the last
            one is multiplied by 0, as in the official loop).
        temperature: scalar multiplying the noise.
        cfg_scale: None for `net.forward`, else the scalar of `net.forward_with_cfg`.
        schedule: the respaced tables (`make_schedule`).
        width, depth: the head's size.
        return_trajectory: also return x after every step.

    Returns:
        x_0 [N, D] (and the trajectory [S, N, D] when asked).
    """
    tables = {k: jnp.asarray(v) for k, v in _step_tables(schedule).items()}
    n, dch = x_t.shape
    temperature = jnp.asarray(temperature, jnp.float32)

    def step(x, xs):
        tab, eps_noise = xs
        t = jnp.broadcast_to(tab["t"], (n,))
        if cfg_scale is None:
            out = head_apply(params, x, t, z, width=width, depth=depth)
        else:
            out = head_apply_cfg(params, x, t, z, cfg_scale, width=width, depth=depth)
        eps, v = out[:, :dch], out[:, dch:]
        # p_mean_variance (LEARNED_RANGE, EPSILON, no clipping) then p_sample.
        frac = (v + 1) / 2
        log_var = frac * tab["max_log"] + (1 - frac) * tab["min_log"]
        x0 = tab["recip"] * x - tab["recipm1"] * eps
        mean = tab["coef1"] * x0 + tab["coef2"] * x
        x = mean + tab["nonzero"] * jnp.exp(0.5 * log_var) * eps_noise * temperature
        return x, (x if return_trajectory else None)

    x, traj = jax.lax.scan(step, x_t.astype(jnp.float32), (tables, noise.astype(jnp.float32)))
    return (x, traj) if return_trajectory else x


def sample(
    params: dict,
    z: Array,
    noise0: Array,
    noise: Array,
    temperature: Array,
    cfg_scale: Array | None,
    *,
    schedule: Schedule,
    width: int,
    depth: int,
    return_trajectory: bool = False,
):
    """`DiffLoss.sample(z, temperature, cfg)` with injected noise.

    Args:
        z: [N, Cz]; under CFG [cond; uncond] (N even).
        noise0: the x_T draw, [N, D] without CFG, [N/2, D] with it (duplicated, as official).
        noise: [S, N, D] per-step draws.
        cfg_scale: None = no CFG (`cfg == 1.0`), else the CFG scale.
        Others: as `p_sample_loop`.

    Returns:
        [N, D] samples (under CFG rows [: N/2] are the sample), or (samples, trajectory).
    """
    x_t = noise0 if cfg_scale is None else jnp.concatenate([noise0, noise0], axis=0)
    return p_sample_loop(
        params,
        z,
        x_t,
        noise,
        temperature,
        cfg_scale,
        schedule=schedule,
        width=width,
        depth=depth,
        return_trajectory=return_trajectory,
    )
