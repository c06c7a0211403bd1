"""The tiny PAR run: tokenizer, tokens, GPT, generation evaluation; assets re-saved after each.

`train_tiny_par(recipe, out_dir)` writes the `arvg_jax.assets` family layout into `out_dir`:
`tokenizer.npz` (decoder, codebook and encoder), `model.npz` (the GPT), `recipe.json`
("model_config", "tokenizer_config", "dataset", the recipe, per-stage timings, metrics,
"status": "running" until the end) and `samples.png`. The shapes classifier is the shared one
(`arvg_jax.assets.load_classifier`), not retrained.
"""

from __future__ import annotations

import datetime
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import assets
from arvg_jax.data import shapes
from arvg_jax.eval import classify, feature_fid
from arvg_jax.families.par.train._fit import fitted_train_loop
from arvg_jax.families.par.train._gpt import gpt_eval, gpt_train_step, init_gpt_state, raster_to_par
from arvg_jax.families.par.train._recipe import STAGES, TinyPARRecipe
from arvg_jax.families.par.train._tokenizer import (
    init_tokenizer_state,
    reconstruct,
    tokenize,
    tokenizer_train_step,
)
from arvg_jax.train._common import count_params, log
from arvg_jax.train.evaluation import device_desc, evaluate_generation, fid_reference
from arvg_jax.train.loop import batched_apply, dataset_record


class _Run:
    """Bookkeeping of one run: recipe.json's dict and the output files."""

    def __init__(self, recipe: TinyPARRecipe, out: pathlib.Path):
        self.out, self.t0 = out, time.perf_counter()
        self.meta: dict[str, Any] = {
            "format": "arvg-jax tiny shapes models v1",
            "family": "par",
            "status": "running",
            "dataset": dataset_record(recipe),
            "model_config": assets.config_to_dict(recipe.model),
            "tokenizer_config": assets.config_to_dict(recipe.tokenizer),
            "recipe": recipe.to_dict(),
            "param_dtype": "float32",
            "jax_version": jax.__version__,
            "device": device_desc(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
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


def train_tiny_par(
    recipe: TinyPARRecipe,
    out_dir,
    *,
    time_limits: dict[str, float] | None = None,
    stages: tuple[str, ...] = STAGES,
    classifier: tuple | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the tiny PAR, writing the asset files into `out_dir`.

    Args:
        recipe: the run definition.
        out_dir: destination directory (created).
        time_limits: optional wall limits in seconds of the "tokenizer" and "gpt" stages: the
            stage's step count is lowered so that its whole cosine schedule fits the limit
            (`_fit.fitted_train_loop`, from the step rate of its first steps); the record keeps
            the planned, fitted and done step counts.
        stages: a prefix of ("tokenizer", "gpt", "eval").
        classifier: (params, ClassifierConfig) scoring images; default the shared one.

    Returns:
        The meta dict written to recipe.json.
    """
    if tuple(stages) != STAGES[: len(stages)] or not stages:
        raise ValueError(f"stages must be a prefix of {STAGES}, got {stages}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run, limits = _Run(recipe, out), dict(time_limits or {})
    meta, metrics = run.meta, run.meta["metrics"]
    root = jax.random.key(recipe.seed)
    cls_params, ccfg = classifier if classifier is not None else assets.load_classifier()
    log(f"device {meta['device']}, jax {jax.__version__}; writing to {out}")

    t = time.perf_counter()
    size = recipe.image_size
    train_x, train_y = shapes.make_dataset(recipe.num_train, seed=recipe.data_seed, size=size)
    eval_x, eval_y = shapes.make_dataset(recipe.num_eval, seed=recipe.eval_seed, size=size)
    n_half = recipe.num_eval // 2
    _, eval_feats = classify(cls_params, ccfg, eval_x)
    real_feats = eval_feats[n_half:]  # the FID reference (the VAR recipe's)
    metrics["fid_real_half_vs_half"] = round(feature_fid(eval_feats[:n_half], real_feats), 4)
    meta["stages"]["data"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(f"[data] {recipe.num_train} + {recipe.num_eval} images in {time.perf_counter() - t:.1f}s")

    # ---- tokenizer ------------------------------------------------------------------------------
    tcfg, thp, lcfg = recipe.tokenizer, recipe.tok_hp, recipe.vq_loss
    state = init_tokenizer_state(tcfg, thp, lcfg, jax.random.fold_in(root, 2))
    metrics["tokenizer_params"] = count_params(state["params"])
    images_dev, k_tok = jnp.asarray(train_x), jax.random.fold_in(root, 12)
    state, meta["stages"]["tokenizer"] = fitted_train_loop(
        "tokenizer",
        thp,
        lambda hp: (
            lambda s: tokenizer_train_step(s, images_dev, k_tok, cfg=tcfg, hp=hp, loss_cfg=lcfg)
        ),
        state,
        log_every=recipe.log_every,
        time_limit=limits.get("tokenizer", math.inf),
    )
    tok_params = state["params"]
    state = images_dev = None  # free device memory before the next stage
    run.save_params("tokenizer", tok_params)
    recon = batched_apply(lambda x: reconstruct(tok_params, tcfg, x), eval_x, 500)
    rec_logits, rec_feats = classify(cls_params, ccfg, recon)
    metrics["tokenizer_eval_l1"] = round(float(np.mean(np.abs(recon - eval_x))), 5)
    metrics["tokenizer_eval_mse"] = round(float(np.mean(np.square(recon - eval_x))), 5)
    metrics["classifier_accuracy_on_recon"] = round(
        float(np.mean(rec_logits.argmax(-1) == eval_y)), 4
    )
    metrics["fid_recon_vs_real"] = round(feature_fid(rec_feats[:n_half], real_feats), 4)
    t = time.perf_counter()
    train_tok = batched_apply(lambda x: tokenize(tok_params, tcfg, x), train_x, 1000)
    eval_tok = batched_apply(lambda x: tokenize(tok_params, tcfg, x), eval_x, 1000)
    metrics["codes_used"] = int(np.unique(train_tok).size)
    meta["stages"]["tokenize"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(
        "[tokenizer] held-out L1 {tokenizer_eval_l1}, MSE {tokenizer_eval_mse}, classifier acc "
        "on recon {classifier_accuracy_on_recon}, recon FID {fid_recon_vs_real}, codes used "
        "{codes_used}".format(**metrics)
    )
    run.save_meta()
    if "gpt" not in stages:
        return _finish(run)

    # ---- GPT ------------------------------------------------------------------------------------
    gcfg, ghp = recipe.model, recipe.gpt_hp
    state = init_gpt_state(gcfg, tcfg, ghp, recipe.seed)
    metrics["gpt_params"] = count_params(state["params"])
    tok_dev = raster_to_par(jnp.asarray(train_tok), gcfg)
    lab_dev, k_gpt = jnp.asarray(train_y, jnp.int32), jax.random.fold_in(root, 13)

    def save_gpt(s, step, last):
        run.save_params("model", s["params"])
        meta["stages"]["gpt_checkpoint"] = {"step": step, **last}
        run.save_meta()

    state, meta["stages"]["gpt"] = fitted_train_loop(
        "gpt",
        ghp,
        lambda hp: (
            lambda s: gpt_train_step(
                s, tok_dev, lab_dev, k_gpt, cfg=gcfg, hp=hp, cond_drop=recipe.cond_drop
            )
        ),
        state,
        log_every=recipe.log_every,
        time_limit=limits.get("gpt", math.inf),
        on_save=save_gpt,
    )
    params = state["params"]
    state = tok_dev = None
    run.save_params("model", params)
    meta["stages"].pop("gpt_checkpoint", None)
    ev_tok = raster_to_par(jnp.asarray(eval_tok), gcfg)
    ev = [
        jax.device_get(
            gpt_eval(params, jnp.asarray(eval_y[s : s + 500]), ev_tok[s : s + 500], cfg=gcfg)
        )
        for s in range(0, max(recipe.num_eval // 500, 1) * 500, 500)
    ]
    for k in ("loss", "acc", "acc_parallel"):
        metrics[f"gpt_eval_{k}"] = round(float(np.mean([e[k] for e in ev])), 5)
    log(
        "[gpt] held-out teacher-forced CE {gpt_eval_loss}, token acc {gpt_eval_acc}".format(
            **metrics
        )
    )
    run.save_meta()
    if "eval" not in stages:
        return _finish(run)

    # ---- generation -----------------------------------------------------------------------------
    from arvg_jax.families.par.family import PARFamily

    t = time.perf_counter()
    metrics["generation"] = evaluate_generation(
        PARFamily(),
        (gcfg, params, tcfg, tok_params),
        (cls_params, ccfg),
        real_feats,
        settings=tuple((name, {"cfg_scale": g}) for name, g in recipe.gen_settings),
        num_gen=recipe.num_gen,
        gen_batch=recipe.gen_batch,
        key=jax.random.fold_in(root, 4),
        grid_path=out / "samples.png",
    )
    metrics["num_gen"] = recipe.num_gen
    metrics["fid_reference"] = fid_reference(ccfg.feature_dim, recipe.num_eval - n_half)
    meta["stages"]["eval"] = {"wall_s": round(time.perf_counter() - t, 1)}
    return _finish(run)


def _finish(run: _Run) -> dict[str, Any]:
    run.save_meta("complete")
    log(f"done in {time.perf_counter() - run.t0:.0f}s")
    return run.meta
