"""The tiny MAR run: KL VAE, token statistics, MAR, generation evaluation, in one go.

`train_tiny(recipe, out_dir)` writes the `assets.load_family_tiny` layout into `out_dir`:
`tokenizer.npz` (the decode path with the token scale folded in), `model.npz`
(`{"transformer", "diffloss"}`, the EMA weights when the recipe keeps an EMA), `recipe.json` and
`samples.png`, re-saving after each stage and every minute of MAR training (an interrupted run
leaves usable files; `status` says how far it got). Generated samples are scored with the shared
shapes classifier (`assets.load_classifier`, trained by the VAR recipe).
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import assets, families
from arvg_jax.data import shapes
from arvg_jax.eval import classify, feature_fid
from arvg_jax.families.mar.family import TOKEN_SCALE
from arvg_jax.families.mar.train import _mar, _vae
from arvg_jax.families.mar.train._recipe import MARTinyRecipe
from arvg_jax.train._common import count_params, log
from arvg_jax.train.evaluation import evaluate_generation, fid_reference
from arvg_jax.train.loop import batched_apply, dataset_record, run_stamp, train_loop

STAGES = ("vae", "mar", "eval")


class _Run:
    """The meta dict and file writing of one `train_tiny` call."""

    def __init__(self, recipe: MARTinyRecipe, out: pathlib.Path):
        self.out, self.t0 = out, time.perf_counter()
        self.meta: dict[str, Any] = {
            "format": "arvg-jax tiny shapes models v1",
            "family": "mar",
            "status": "running",
            "dataset": dataset_record(recipe),
            "model_config": assets.config_to_dict(recipe.mar),
            "tokenizer_config": assets.config_to_dict(recipe.vae),
            "recipe": recipe.to_dict(),
            **run_stamp(),
            "stages": {},
            "metrics": {},
        }

    def save_meta(self, status: str | None = None) -> None:
        if status is not None:
            self.meta["status"] = status
        self.meta["wall_time_s"] = round(time.perf_counter() - self.t0, 1)
        assets.write_json(self.out / "recipe.json", self.meta)

    def save_params(self, name: str, params) -> None:
        size = assets.save_params(self.out / f"{name}.npz", jax.device_get(params))
        self.meta.setdefault("file_bytes", {})[f"{name}.npz"] = size


def train_tiny(
    recipe: MARTinyRecipe,
    out_dir,
    *,
    time_limits: dict[str, float] | None = None,
    stages: tuple[str, ...] = STAGES,
    classifier_dir=None,
) -> dict[str, Any]:
    """Trains and evaluates the tiny MAR, writing its asset files into `out_dir`.

    Args:
        recipe: the run definition.
        out_dir: destination (created).
        time_limits: per-stage wall limits in seconds ("vae", "mar").
        stages: a prefix of ("vae", "mar", "eval").
        classifier_dir: where the shared classifier lives (default: the packaged VAR assets).

    Returns:
        The meta dict written to recipe.json.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    limits = dict(time_limits or {})
    run = _Run(recipe, out)
    meta, metrics = run.meta, run.meta["metrics"]
    root = jax.random.key(recipe.seed)
    log(f"device {meta['device']}, jax {jax.__version__}; writing to {out}")

    t = time.perf_counter()
    size = recipe.image_size
    train_x, train_y = shapes.make_dataset(recipe.num_train, seed=recipe.data_seed, size=size)
    eval_x, eval_y = shapes.make_dataset(recipe.num_eval, seed=recipe.eval_seed, size=size)
    meta["stages"]["data"] = {"wall_s": round(time.perf_counter() - t, 1)}
    cls_params, ccfg = assets.load_classifier(classifier_dir)
    _, eval_feats = classify(cls_params, ccfg, eval_x)
    n_half = recipe.num_eval // 2
    real_feats = eval_feats[n_half:]

    # ---- VAE ------------------------------------------------------------------------------------
    vcfg, vhp = recipe.vae, recipe.vae_hp
    state = _vae.init_vae_state(vcfg, vhp, size, jax.random.fold_in(root, 2))
    metrics["tokenizer_params_trained"] = count_params(state["params"])
    metrics["tokenizer_params_shipped"] = count_params(state["params"]["decoder"])
    k_vae, x_dev = jax.random.fold_in(root, 12), jnp.asarray(train_x)
    state, meta["stages"]["vae"] = train_loop(
        "vae",
        vhp,
        lambda s: _vae.vae_train_step(s, x_dev, k_vae, cfg=vcfg, hp=vhp, loss_cfg=recipe.vae_loss),
        state,
        log_every=recipe.log_every,
        time_limit=limits.get("vae", math.inf),
    )
    vae_params = state["params"]
    state = x_dev = None  # free device memory
    recon = batched_apply(lambda x: _vae.reconstruct(vae_params, vcfg, x), eval_x, 500)
    rec_logits, rec_feats = classify(cls_params, ccfg, recon)
    metrics["vae_eval_l1"] = round(float(np.mean(np.abs(recon - eval_x))), 5)
    metrics["vae_eval_mse"] = round(float(np.mean(np.square(recon - eval_x))), 5)
    metrics["classifier_accuracy_on_vae_recon"] = round(
        float(np.mean(rec_logits.argmax(-1) == eval_y)), 4
    )
    metrics["fid_vae_recon_vs_real"] = round(feature_fid(rec_feats[:n_half], real_feats), 4)
    metrics["fid_real_half_vs_half"] = round(feature_fid(eval_feats[:n_half], real_feats), 4)

    # ---- token statistics: MAR tokens = latents / latent_std (unit variance) --------------------
    t = time.perf_counter()
    enc = lambda x: _vae.encode_moments(vae_params["encoder"], vcfg, x)
    train_mean, train_std = batched_apply(enc, train_x, 1000)
    draw = np.random.default_rng(recipe.seed).standard_normal(train_mean.shape, np.float32)
    latent_std = float(np.std(train_mean + train_std * draw))
    metrics["latent_std"] = round(latent_std, 6)
    metrics["latent_mean"] = round(float(np.mean(train_mean)), 6)
    metrics["posterior_std_mean"] = round(float(np.mean(train_std)), 6)
    meta["token_scale"] = {
        "latent_std": latent_std,
        "folded_into": "tokenizer.npz post_quant_conv kernel x (0.2325 * latent_std)",
        "note": (
            "MAR tokens = VAE latents / latent_std (unit variance over the training set; the "
            "official KL-16 uses latents x 0.2325). The sampler decodes tokens / 0.2325 as the "
            "official engine does, and the folded post_quant_conv maps that back to latents."
        ),
        "sampler_token_scale": TOKEN_SCALE,
    }
    run.save_params("tokenizer", _vae.fold_token_scale(vae_params["decoder"], latent_std))
    meta["stages"]["tokenize"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(
        "[vae] held-out L1 {vae_eval_l1}, MSE {vae_eval_mse}, classifier acc on recon "
        "{classifier_accuracy_on_vae_recon}, recon FID {fid_vae_recon_vs_real}, latent std "
        "{latent_std}".format(**metrics)
    )
    run.save_meta("tokenizer trained")
    if "mar" not in stages:
        return _finish(run)
    moments = (jnp.asarray(train_mean / latent_std), jnp.asarray(train_std / latent_std))
    eval_mean, _ = batched_apply(enc, eval_x, 1000)
    eval_tokens = eval_mean / latent_std
    del train_mean, train_std

    # ---- MAR ------------------------------------------------------------------------------------
    mcfg, mhp = recipe.mar, recipe.mar_hp
    use_ema = recipe.ema_decay > 0
    state = _mar.init_mar_state(mcfg, mhp, jax.random.fold_in(root, 3), ema=use_ema)
    metrics["mar_params"] = count_params(state["params"])
    metrics["mar_transformer_params"] = count_params(state["params"]["transformer"])
    metrics["mar_diffloss_params"] = count_params(state["params"]["diffloss"])
    k_mar, y_dev = jax.random.fold_in(root, 13), jnp.asarray(train_y)
    shipped = lambda s: s["ema"] if use_ema else s["params"]

    def save_mar(s, step, last):
        run.save_params("model", shipped(s))
        meta["stages"]["mar_checkpoint"] = {"step": step, **last}
        run.save_meta("mar training (checkpoint)")

    state, meta["stages"]["mar"] = train_loop(
        "mar",
        mhp,
        lambda s: _mar.mar_train_step(
            s, moments, y_dev, k_mar, cfg=mcfg, hp=mhp, ema_decay=recipe.ema_decay
        ),
        state,
        log_every=recipe.log_every,
        time_limit=limits.get("mar", math.inf),
        on_save=save_mar,
    )
    mar_params = jax.device_get(shipped(state))
    run.save_params("model", mar_params)
    meta["stages"].pop("mar_checkpoint", None)
    meta["weights"] = "ema" if use_ema else "raw"
    state = moments = None
    k_ev = jax.random.fold_in(root, 14)
    n_ev = min(recipe.num_eval, 1000)
    ev = _mar.mar_eval_loss(
        mar_params, jnp.asarray(eval_tokens[:n_ev]), jnp.asarray(eval_y[:n_ev]), k_ev, cfg=mcfg
    )
    for k, v in jax.device_get(ev).items():
        metrics[f"mar_eval_{k}"] = round(float(v), 5)
    log(
        "[mar] held-out loss {mar_eval_loss} (mse {mar_eval_mse}, vb {mar_eval_vb})".format(
            **metrics
        )
    )
    run.save_meta("mar trained")
    if "eval" not in stages:
        return _finish(run)

    # ---- generation eval ------------------------------------------------------------------------
    t = time.perf_counter()
    tok_params = assets.load_params(out / "tokenizer.npz")  # exactly what ships
    metrics["generation"] = evaluate_generation(
        families.get("mar"),
        (mcfg, mar_params, vcfg, tok_params),
        (cls_params, ccfg),
        real_feats,
        settings=recipe.gen_settings,
        num_gen=recipe.num_gen,
        gen_batch=recipe.gen_batch,
        key=jax.random.fold_in(root, 4),
        grid_path=out / "samples.png",
    )
    metrics["num_gen"] = recipe.num_gen
    metrics["fid_reference"] = fid_reference(ccfg.feature_dim, recipe.num_eval - n_half)
    meta["stages"]["eval"] = {"wall_s": round(time.perf_counter() - t, 1)}
    return _finish(run)


def reevaluate(
    asset_dir,
    settings: tuple[tuple[str, dict], ...],
    *,
    num_gen: int,
    gen_batch: int = 400,
    seed: int = 0,
    classifier_dir=None,
) -> dict[str, Any]:
    """Re-runs the generation evaluation of saved assets with other sampling settings, merging
    the results into recipe.json's `metrics.generation` (the first setting rewrites samples.png).
    """
    asset_dir = pathlib.Path(asset_dir)
    fam = families.get("mar")
    cfg, params, tok_cfg, tok_params, meta = assets.load_family_tiny(fam, asset_dir)
    ds = meta["dataset"]
    eval_x, _ = shapes.make_dataset(ds["eval"]["n"], seed=ds["eval"]["seed"], size=ds["image_size"])
    n_half = ds["eval"]["n"] // 2
    cls_params, ccfg = assets.load_classifier(classifier_dir)
    _, feats = classify(cls_params, ccfg, eval_x[n_half:])
    t = time.perf_counter()
    results = evaluate_generation(
        fam,
        (cfg, params, tok_cfg, tok_params),
        (cls_params, ccfg),
        feats,
        settings=settings,
        num_gen=num_gen,
        gen_batch=gen_batch,
        key=jax.random.fold_in(jax.random.key(seed), 4),
        grid_path=asset_dir / "samples.png",
    )
    metrics = meta.setdefault("metrics", {})
    metrics["generation"] = {**metrics.get("generation", {}), **results}
    meta.setdefault("reevaluations", []).append(
        {
            **run_stamp(),
            "settings": [list(x) for x in settings],
            "num_gen": num_gen,
            "wall_s": round(time.perf_counter() - t, 1),
        }
    )
    assets.write_json(asset_dir / "recipe.json", meta)
    return meta


def _finish(run: _Run) -> dict[str, Any]:
    run.save_meta("complete")
    log(f"done in {time.perf_counter() - run.t0:.0f}s")
    return run.meta
