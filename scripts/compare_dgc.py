"""DGC official vs shrinkage (vs cond-only) on the packaged tiny VAR: fidelity of PTQ4ARVG models.

    PYTHONPATH=. python scripts/compare_dgc.py --calib 64 --bits w6a6,w8a8 --out out/dgc.md

One candidate pool (2 x calib rows: cond and uncond halves of `calib` float generations, seed 42) is
selected three ways; each selection calibrates PTQ4ARVG; each model is compared with the float
model on the same labels and keys (`arvg_jax.evaluate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--bits", default="w6a6,w8a8")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import numpy as np

    from arvg_jax import assets
    from arvg_jax.commands.evaluate import evaluate
    from arvg_jax.evaluate import TABLE_HEADER
    from arvg_jax.families.var.calibration import calibration_batch, generate_candidates
    from arvg_jax.families.var.quant_adapter import VARAdapter
    from arvg_jax.models import Model
    from quant import api
    from quant.algorithms import dgc
    from quant.recipes import Recipe

    t0 = time.perf_counter()
    var_cfg, var_params, vae_cfg, vae_params, _, _ = assets.load_tiny()
    model = Model("var", var_cfg, var_params, vae_cfg, vae_params, name="tiny")
    adapter = VARAdapter(var_cfg)
    cands = generate_candidates(var_params, vae_params, var_cfg, vae_cfg, args.calib, seed=42)
    feats = dgc.candidate_features(
        adapter, var_params, calibration_batch(vae_params, vae_cfg, cands)
    )
    selections = {
        "official": dgc.select(feats, cands, "official").indices,
        "shrinkage": dgc.select(feats, cands, "shrinkage", num=args.calib).indices,
        "cond only": np.nonzero(cands.is_cond)[0],
    }
    q_models = []
    for bits in args.bits.split(","):
        for mode, idx in selections.items():
            batch = calibration_batch(vae_params, vae_cfg, cands, idx)
            recipe = Recipe.parse("ptq4arvg", bits, calib=args.calib)
            q, _ = api.quantize(adapter, var_params, batch, recipe, progress=False)
            frac = float(np.mean(cands.is_cond[idx]))
            name = f"PTQ4ARVG {bits.upper()}, DGC {mode} ({len(idx)} seqs, {100 * frac:.0f} % cond)"
            q_models.append((name, dataclasses.replace(model, params=q, name=name)))
    classes = [c for c in range(var_cfg.num_classes) for _ in range(args.per_class)]
    results, _ = evaluate(
        model,
        q_models,
        classes,
        seed=0,
        cfg=3.0,
        top_k=0,
        top_p=0.0,
        batch=len(classes),
        progress=False,
    )
    text = "\n".join([TABLE_HEADER] + [r.row() for r in results])
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + f"\n\n{time.perf_counter() - t0:.0f} s\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
