"""PAR token order, sequence layout, RoPE table, group attention mask and pass schedule.

All static numpy, derived from the config as YuqingWang1029/PAR builds them
(`autoregressive/models/gpt.py` Transformer.__init__ / setup_caches / precompute_freqs_cis_2d,
`autoregressive/models/generate.py` generate, `autoregressive/sample/sample_c2i_ddp.py`).

PAR order: the g x g grid is cut into s x s regions of side m = g / s; grid cell
(R·m + r, C·m + c) has PAR index ((r·m + c)·s + R)·s + C, so each group of A = s² consecutive
tokens is one local position (r, c) in every region.

Sequence (teacher forcing, length 1 + N + E): [cls] [t_0 .. t_{A-1}] [spe_0 .. spe_{E-1}]
[t_A .. t_{N-1}]; output position p predicts PAR token p.

Dims: B batch, N = g² tokens, A tokens per parallel step, E = A - 1 bridge tokens, K head dim,
P = K/2 rotary pairs, S mask size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.par.config import PARConfig
from arvg_jax.nn.rope import rope_2d_grid

Array = jax.Array


def par_index_to_raster(cfg: PARConfig) -> np.ndarray:
    """int64 [N]: the raster index (row·g + col) of PAR token p (`raster[:, t] = par`).

    train_c2i.py's z_indices permutation: arange(N).reshape(1, s, m, s, m).permute(0,2,4,1,3).
    """
    g, s = cfg.grid_size, cfg.sub_num
    m = g // s
    idx = np.arange(g * g, dtype=np.int64).reshape(s, m, s, m)  # [R, r, C, c]
    return idx.transpose(1, 3, 0, 2).reshape(-1)  # [(r, c, R, C)]


def par_to_raster(tokens: Array, cfg: PARConfig) -> Array:
    """[B, N] PAR order -> [B, N] raster order (sample_c2i_ddp.py's reshape / permute)."""
    g, s = cfg.grid_size, cfg.sub_num
    b = tokens.shape[0]
    x = tokens.reshape(b, g // s, g // s, s, s)  # [B, r, c, R, C]
    return x.transpose(0, 3, 1, 4, 2).reshape(b, g * g)  # [B, (R, r, C, c)]


def rope_table(cfg: PARConfig) -> np.ndarray:
    """float32 [1 + N + E, P, 2]: gpt.py `freqs_cis` (precompute_freqs_cis_2d).

    Rows: zeros (cls), grid rows of t_0..t_{A-1}, zeros (E bridge tokens), rows of t_A..t_{N-1}.
    The zero rows zero q and k at those positions (LlamaGen quirk, kept).
    """
    g = cfg.grid_size
    grid = rope_2d_grid(g, cfg.head_dim, cfg.rope_base)  # [g, g, P, 2]
    p = grid.shape[2]
    cells = grid.reshape(g * g, p, 2)[par_index_to_raster(cfg)]  # PAR order [N, P, 2]
    a = cfg.ar_token_num
    cls_rows = np.zeros((cfg.cls_token_num, p, 2), np.float32)
    spe_rows = np.zeros((cfg.spe_token_num, p, 2), np.float32)
    return np.concatenate([cls_rows, cells[:a], spe_rows, cells[a:]])


def group_mask(cfg: PARConfig, size: int) -> np.ndarray:
    """bool [S, S] (True = may attend): gpt.py `group_mask` / setup_caches' causal_mask.

    Lower-triangular with column 0 forced True; then rows [A + i(E+1), A + (i+1)(E+1)) see every
    column before A + (i+1)(E+1), so each group of E + 1 = A positions from A on attends within
    itself bidirectionally.
    """
    mask = np.tril(np.ones((size, size), bool))
    mask[:, 0] = True
    group = cfg.spe_token_num + 1
    for i in range(size // group):
        start = cfg.ar_token_num + i * group
        mask[start : start + group, : start + group] = True
    return mask


def pass_schedule(cfg: PARConfig) -> tuple[np.ndarray, np.ndarray]:
    """The forward passes of generate().

    Returns:
        input_pos: int64 [passes, A], sequence positions of each pass, padded with -1: passes
            0..A-1 run positions 0..A-1 one at a time, pass A + k runs A(k+1) .. A(k+1)+A-1.
        token_step: int64 [N], the pass that emits PAR token p.
    """
    a, n = cfg.ar_token_num, cfg.block_size
    pos = np.full((cfg.num_passes, a), -1, np.int64)
    pos[:a, 0] = np.arange(a)
    for k in range(cfg.num_passes - a):
        pos[a + k] = a * (k + 1) + np.arange(a)
    token_step = np.concatenate([np.arange(a), a + np.arange(n - a) // a]).astype(np.int64)
    return pos, token_step


def assemble_sequence(cls_emb: Array, tok_emb: Array, spe_emb: Array, cfg: PARConfig) -> Array:
    """gpt.py forward (training branch): [cls, tok[:A], spe, tok[A:]] along axis 1.

    Args:
        cls_emb: [B, 1, C]; tok_emb: [B, n, C] (the inputs, i.e. tokens[:, :-1]); spe_emb: [E, C].
    """
    a = cfg.ar_token_num
    spe = jnp.broadcast_to(spe_emb[None].astype(tok_emb.dtype), (tok_emb.shape[0], *spe_emb.shape))
    return jnp.concatenate([cls_emb, tok_emb[:, :a], spe, tok_emb[:, a:]], axis=1)
