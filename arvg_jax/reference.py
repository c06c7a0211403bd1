"""Recomputes the official reference fixtures' output arrays with the port (see docs/design).

Used by `scripts/reference_check.py` and by the parity tests. Every output is computed from the
fixture's checkpoints and input arrays; nothing is copied from the reference outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import numpy as np


def _load_inputs(fixture: pathlib.Path, npz_name: str) -> dict[str, np.ndarray]:
    names = json.loads((fixture / "inputs.json").read_text())
    data = np.load(fixture / npz_name)
    missing = [n for n in names if n not in data.files]
    if missing:
        raise ValueError(f"{fixture / npz_name}: missing input arrays {missing}")
    return {n: data[n] for n in names}


def var_outputs(fixture: str | os.PathLike) -> dict[str, np.ndarray]:
    """All output arrays of `reference/var/io.npz`, computed on the CPU in float32."""
    import jax
    import jax.numpy as jnp

    from arvg_jax import var_sampler
    from arvg_jax.models import load_float
    from arvg_jax.tokenizers import var_vqvae
    from arvg_jax.var import VAR

    fixture = pathlib.Path(fixture)
    inputs = _load_inputs(fixture, "io.npz")
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


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def compare(ours: dict[str, np.ndarray], ref_path: pathlib.Path) -> list[str]:
    """Informational comparison lines (relative L2 error, or exact match for integers)."""
    if not ref_path.exists():
        return []
    ref = np.load(ref_path)
    lines = []
    for name, a in ours.items():
        if name not in ref.files:
            continue
        r = ref[name]
        if a.shape != r.shape:
            lines.append(f"{name:28s} SHAPE {a.shape} vs reference {r.shape}")
        elif a.dtype.kind in "iub":
            lines.append(f"{name:28s} int   {int(np.sum(a != r))} of {a.size} differ")
        else:
            err = np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30)
            lines.append(f"{name:28s} float rel err {err:.2e}, max abs {np.max(np.abs(a - r)):.2e}")
    return lines


def run_var_reference(fixture: str | os.PathLike, out_path: str | os.PathLike) -> None:
    fixture, out_path = pathlib.Path(fixture), pathlib.Path(out_path)
    outputs = var_outputs(fixture)
    _write_npz(out_path, outputs)
    for line in compare(outputs, fixture / "io.npz"):
        print(line, file=sys.stderr)
    print(f"wrote {out_path} ({len(outputs)} arrays)", file=sys.stderr)
