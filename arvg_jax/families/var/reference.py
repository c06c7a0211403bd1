"""The official-code VAR fixture (`../shared/reference/var/`) recomputed by the port: teacher-forced
logits, decoded images and greedy CFG generation (docs/design.md, reference-check contract)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from arvg_jax.reference import load_inputs


def var_outputs(fixture: str | os.PathLike) -> dict[str, np.ndarray]:
    """All output arrays of `reference/var/io.npz`, computed on the CPU in float32."""
    import jax
    import jax.numpy as jnp

    from arvg_jax.families.var import sampler as var_sampler
    from arvg_jax.families.var.model import VAR
    from arvg_jax.models import load_float
    from arvg_jax.tokenizers import var_vqvae

    fixture = pathlib.Path(fixture)
    inputs = load_inputs(fixture, "io.npz")
    m = load_float("var", fixture / "var.pth", fixture / "vae.pth", fixture / "config.json")
    out: dict[str, np.ndarray] = {}

    idx_list = var_vqvae.split_idx(m.vae_cfg, inputs["tf_idx"])
    x = var_vqvae.idx_to_var_input(m.vae_params, m.vae_cfg, idx_list)
    out["tf_x_BLCv_wo_first_l"] = np.asarray(x, np.float32)
    logits = VAR(m.cfg).apply({"params": m.params}, jnp.asarray(inputs["tf_labels"]), x)
    out["tf_logits_every8"] = np.asarray(logits[:, :, ::8], np.float32)
    img = var_vqvae.idx_to_img(m.vae_params, m.vae_cfg, idx_list)  # [B, H, W, 3] in [-1, 1]
    out["dec_img"] = np.asarray(jnp.transpose(img, (0, 3, 1, 2)), np.float32)

    for prefix, cfg in (("gen_cfg1p5", 1.5), ("gen_cfg0p0", 0.0)):
        labels = inputs[f"{prefix}_labels"]
        # The fixture ran top_k=1, top_p=0: greedy, so no PRNG stream has to match.
        gen = var_sampler.generate(
            m.params,
            m.vae_params,
            m.cfg,
            m.vae_cfg,
            labels,
            jax.random.PRNGKey(0),
            cfg=cfg,
            top_k=1,
            top_p=0.0,
            greedy=True,
            return_logits_margin=True,
        )
        out[f"{prefix}_labels"] = np.asarray(labels)
        out[f"{prefix}_idx"] = np.asarray(gen["tokens"], np.int64)
        out[f"{prefix}_img"] = np.asarray(jnp.transpose(gen["images"], (0, 3, 1, 2)), np.float32)
        out[f"{prefix}_top2_margin"] = np.asarray(gen["top2_margin"], np.float32)
    out["tf_labels"] = np.asarray(inputs["tf_labels"])
    out["tf_idx"] = np.asarray(inputs["tf_idx"])
    return out
