"""The tiny shapes recipe: classifier, multi-scale VQVAE, then VAR, trained and evaluated in one go.

`train_tiny(recipe, out_dir)` writes `classifier.npz`, `vae.npz`, `var.npz`, `recipe.json` (the
`arvg_jax.assets` layout) and `samples.png` into `out_dir`, re-saving after each stage and
periodically during the VAR stage, so an interrupted run still leaves usable files.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax import assets, families
from arvg_jax.data import shapes
from arvg_jax.eval import ClassifierConfig, classify, feature_fid
from arvg_jax.families.var.model import VARConfig
from arvg_jax.families.var.train._var import init_var_state, var_eval_loss, var_train_step
from arvg_jax.families.var.train._vqvae import (
    VQLossConfig,
    init_vqvae_state,
    reconstruct,
    tokenize,
    vqvae_train_step,
)
from arvg_jax.tokenizers.var_vqvae import VQVAEConfig
from arvg_jax.train._classifier import classifier_train_step, init_classifier_state
from arvg_jax.train._common import StageHParams, count_params, log
from arvg_jax.train.evaluation import device_desc, evaluate_generation, fid_reference
from arvg_jax.train.loop import (
    batched_apply,
    dataset_record,
    recipe_to_dict,
    run_stamp,
    train_loop,
    with_stage_steps,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyRecipe:
    """Everything that defines a tiny training run (serialised into recipe.json)."""

    image_size: int = 32
    data_seed: int = 0  # training set: shapes.make_dataset(num_train, seed=data_seed)
    num_train: int = 50_000
    eval_seed: int = 1  # held-out set: shapes.make_dataset(num_eval, seed=eval_seed)
    num_eval: int = 6_000
    seed: int = 0  # parameter init and training draws
    vae: VQVAEConfig
    var: VARConfig
    classifier: ClassifierConfig
    vq_loss: VQLossConfig = dataclasses.field(default_factory=VQLossConfig)
    vae_hp: StageHParams
    var_hp: StageHParams
    cls_hp: StageHParams
    cond_drop: float = 0.1  # label dropout to the null class (CFG)
    num_gen: int = 1200  # generated images for the accuracy / FID evaluation
    gen_batch: int = 600
    # Evaluation sampling settings (name, cfg, top_k, top_p); the first one makes samples.png.
    # Each distinct (top_k, top_p) compiles the sampler once more.
    gen_settings: tuple[tuple[str, float, int, float], ...] = (("cfg3", 3.0, 0, 0.0),)
    log_every: int = 200

    @classmethod
    def default(cls, **kw) -> TinyRecipe:
        """The shipped model: 32-px images, 8x8 latent (patch nums 1,2,3,4,6,8; L = 130),
        V 512, Cvae 16; VAR depth 6, width 128, 4 heads."""
        patch_nums = (1, 2, 3, 4, 6, 8)
        base = {
            "vae": VQVAEConfig(
                vocab_size=512,
                z_channels=16,
                ch=32,
                ch_mult=(1, 2, 2),
                num_res_blocks=1,
                patch_nums=patch_nums,
            ),
            "var": VARConfig(
                depth=6,
                embed_dim=128,
                num_heads=4,
                vocab_size=512,
                cvae=16,
                num_classes=shapes.NUM_CLASSES,
                patch_nums=patch_nums,
            ),
            "classifier": ClassifierConfig(num_classes=shapes.NUM_CLASSES),
            "vae_hp": StageHParams(steps=4000, batch=128, lr=1e-3, warmup=200),
            "var_hp": StageHParams(
                steps=6000, batch=256, lr=1e-3, warmup=300, weight_decay=0.05, b2=0.95
            ),
            "cls_hp": StageHParams(steps=1500, batch=256, lr=2e-3, warmup=100, weight_decay=1e-4),
        }
        return cls(**{**base, **kw})

    @classmethod
    def quick(cls, **kw) -> TinyRecipe:
        """CPU smoke test: same code paths, a few hundred images, smaller VAR and VQVAE."""
        patch_nums = (1, 2, 4, 8)
        base = {
            "image_size": 16,
            "num_train": 480,
            "num_eval": 240,
            "vae": VQVAEConfig(
                vocab_size=64,
                z_channels=8,
                ch=32,
                ch_mult=(1, 2),
                num_res_blocks=1,
                patch_nums=patch_nums,
            ),
            "var": VARConfig(
                depth=2,
                embed_dim=32,
                num_heads=2,
                vocab_size=64,
                cvae=8,
                num_classes=shapes.NUM_CLASSES,
                patch_nums=patch_nums,
            ),
            "classifier": ClassifierConfig(
                num_classes=shapes.NUM_CLASSES, widths=(16, 32), feature_dim=32
            ),
            "vae_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "var_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "cls_hp": StageHParams(steps=20, batch=32, lr=2e-3, warmup=2),
            "num_gen": 48,
            "gen_batch": 24,
            "log_every": 5,
        }
        return cls(**{**base, **kw})

    def with_steps(self, vae: int | None, var: int | None, cls_: int | None) -> TinyRecipe:
        """A copy with some stage step counts replaced (None keeps)."""
        return with_stage_steps(self, {"vae_hp": vae, "var_hp": var, "cls_hp": cls_})

    def to_dict(self) -> dict[str, Any]:
        return recipe_to_dict(self, skip=("vae", "var", "classifier"))


class _Run:
    """Mutable bookkeeping of one `train_tiny` call: the meta dict and the output files."""

    def __init__(self, recipe: TinyRecipe, out_dir, time_limits: dict[str, float]):
        self.recipe, self.out = recipe, out_dir
        self.t0 = time.perf_counter()
        self.time_limits = time_limits
        self.meta: dict[str, Any] = {
            "format": "arvg-jax tiny shapes models v1",
            "status": "running",
            "dataset": dataset_record(recipe),
            "var_config": assets.config_to_dict(recipe.var),
            "vae_config": assets.config_to_dict(recipe.vae),
            "classifier_config": recipe.classifier.to_dict(),
            "recipe": recipe.to_dict(),
            **run_stamp(),
            "stages": {},
            "metrics": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save_meta(self) -> None:
        self.meta["wall_time_s"] = round(self.elapsed(), 1)
        assets.write_json(self.out / "recipe.json", self.meta)

    def save_params(self, name: str, params) -> None:
        size = assets.save_params(self.out / f"{name}.npz", jax.device_get(params))
        self.meta.setdefault("file_bytes", {})[f"{name}.npz"] = size


def _train_loop(run: _Run, stage: str, hp: StageHParams, step_fn, state, on_save=None):
    """`train_loop` under the run's log interval and time limit, recording the stage."""
    state, record = train_loop(
        stage,
        hp,
        step_fn,
        state,
        log_every=run.recipe.log_every,
        time_limit=run.time_limits.get(stage, math.inf),
        on_save=on_save,
    )
    run.meta["stages"][stage] = record
    return state


def train_tiny(
    recipe: TinyRecipe,
    out_dir,
    *,
    time_limits: dict[str, float] | None = None,
    stages: tuple[str, ...] = ("classifier", "vae", "var", "eval"),
) -> dict[str, Any]:
    """Trains and evaluates the tiny models, writing the asset files into `out_dir`.

    Args:
        recipe: the run definition.
        out_dir: pathlib.Path destination (created).
        time_limits: optional per-stage wall limits in seconds ("classifier", "vae", "var"); a
            stage that hits its limit stops early (its cosine schedule is then cut short) and the
            step count reached is recorded.
        stages: the stages to run, in order (later stages need the earlier ones).

    Returns:
        The meta dict written to recipe.json.
    """
    import pathlib

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(recipe, out_dir, dict(time_limits or {}))
    meta = run.meta
    root_key = jax.random.key(recipe.seed)
    log(f"device {meta['device']}, jax {jax.__version__}; writing to {out_dir}")

    t = time.perf_counter()
    train_x, train_y = shapes.make_dataset(
        recipe.num_train, seed=recipe.data_seed, size=recipe.image_size
    )
    eval_x, eval_y = shapes.make_dataset(
        recipe.num_eval, seed=recipe.eval_seed, size=recipe.image_size
    )
    meta["stages"]["data"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(f"[data] {recipe.num_train} + {recipe.num_eval} images in {time.perf_counter() - t:.1f}s")
    train_x_dev, train_y_dev = jnp.asarray(train_x), jnp.asarray(train_y)

    # ---- classifier ---------------------------------------------------------------------------
    ccfg, chp = recipe.classifier, recipe.cls_hp
    cls_state = init_classifier_state(ccfg, chp, jax.random.fold_in(root_key, 1), recipe.image_size)
    k_cls = jax.random.fold_in(root_key, 11)
    cls_state = _train_loop(
        run,
        "classifier",
        chp,
        lambda s: classifier_train_step(s, train_x_dev, train_y_dev, k_cls, cfg=ccfg, hp=chp),
        cls_state,
    )
    cls_params = cls_state["params"]
    del cls_state
    eval_logits, eval_feats = classify(cls_params, ccfg, eval_x)
    cls_acc = float(np.mean(eval_logits.argmax(-1) == eval_y))
    n_half = recipe.num_eval // 2
    meta["metrics"]["classifier_eval_accuracy"] = round(cls_acc, 4)
    meta["metrics"]["classifier_params"] = count_params(cls_params)
    # Real-vs-real baseline: half the held-out set against the other half (same sample count as
    # the generated-vs-real comparison when num_gen == num_eval / 2).
    meta["metrics"]["fid_real_half_vs_half"] = round(
        feature_fid(eval_feats[:n_half], eval_feats[n_half:]), 4
    )
    log(f"[classifier] held-out accuracy {cls_acc:.4f}")
    run.save_params("classifier", cls_params)
    run.save_meta()
    if stages == ("classifier",):
        return _finish(run)

    # ---- VQVAE ----------------------------------------------------------------------------------
    vcfg, vhp, lcfg = recipe.vae, recipe.vae_hp, recipe.vq_loss
    vae_state = init_vqvae_state(vcfg, vhp, lcfg, jax.random.fold_in(root_key, 2))
    meta["metrics"]["vae_params"] = count_params(vae_state["params"])
    k_vae = jax.random.fold_in(root_key, 12)
    vae_state = _train_loop(
        run,
        "vae",
        vhp,
        lambda s: vqvae_train_step(s, train_x_dev, k_vae, cfg=vcfg, hp=vhp, loss_cfg=lcfg),
        vae_state,
    )
    vae_params = vae_state["params"]
    del vae_state
    run.save_params("vae", vae_params)
    recon = batched_apply(lambda x: reconstruct(vae_params, vcfg, x), eval_x, 500)
    rec_logits, rec_feats = classify(cls_params, ccfg, recon)
    meta["metrics"]["vae_eval_l1"] = round(float(np.mean(np.abs(recon - eval_x))), 5)
    meta["metrics"]["vae_eval_mse"] = round(float(np.mean(np.square(recon - eval_x))), 5)
    meta["metrics"]["classifier_accuracy_on_vae_recon"] = round(
        float(np.mean(rec_logits.argmax(-1) == eval_y)), 4
    )
    meta["metrics"]["fid_vae_recon_vs_real"] = round(
        feature_fid(rec_feats[:n_half], eval_feats[n_half:]), 4
    )
    log(
        "[vae] held-out L1 {vae_eval_l1}, MSE {vae_eval_mse}, classifier acc on recon "
        "{classifier_accuracy_on_vae_recon}, recon FID {fid_vae_recon_vs_real}".format(
            **meta["metrics"]
        )
    )
    run.save_meta()

    # ---- tokens ---------------------------------------------------------------------------------
    t = time.perf_counter()
    tok_fn = lambda x: tokenize(vae_params, vcfg, x)
    train_tok = batched_apply(tok_fn, train_x, 1000)
    eval_tok = batched_apply(tok_fn, eval_x, 1000)
    bounds = np.cumsum([0] + [p * p for p in vcfg.patch_nums])
    used = [int(np.unique(train_tok[:, a:b]).size) for a, b in itertools.pairwise(bounds)]
    meta["metrics"]["codes_used_per_scale"] = used
    meta["metrics"]["codes_used_total"] = int(np.unique(train_tok).size)
    meta["stages"]["tokenize"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(f"[tokens] codes used per scale {used}, total {meta['metrics']['codes_used_total']}")
    train_x_dev = None  # free device memory before the VAR stage
    if "var" not in stages:
        return _finish(run)

    # ---- VAR ------------------------------------------------------------------------------------
    acfg, ahp = recipe.var, recipe.var_hp
    var_state = init_var_state(acfg, ahp, jax.random.fold_in(root_key, 3))
    meta["metrics"]["var_params"] = count_params(var_state["params"])
    k_var = jax.random.fold_in(root_key, 13)
    tok_dev = jnp.asarray(train_tok)

    def save_var(state, step, last):
        run.save_params("var", state["params"])
        meta["stages"]["var_checkpoint"] = {"step": step, **last}
        run.save_meta()

    var_state = _train_loop(
        run,
        "var",
        ahp,
        lambda s: var_train_step(
            s,
            tok_dev,
            train_y_dev,
            vae_params,
            k_var,
            cfg=acfg,
            vae_cfg=vcfg,
            hp=ahp,
            cond_drop=recipe.cond_drop,
        ),
        var_state,
        on_save=save_var,
    )
    var_params = var_state["params"]
    del var_state
    run.save_params("var", var_params)
    meta["stages"].pop("var_checkpoint", None)
    ev = [
        jax.device_get(
            var_eval_loss(
                var_params,
                vae_params,
                jnp.asarray(eval_tok[s : s + 500]),
                jnp.asarray(eval_y[s : s + 500]),
                cfg=acfg,
                vae_cfg=vcfg,
            )
        )
        for s in range(0, (recipe.num_eval // 500) * 500 or recipe.num_eval, 500)
    ]
    for k in ("loss", "acc", "acc_last"):
        meta["metrics"][f"var_eval_{k}"] = round(float(np.mean([e[k] for e in ev])), 5)
    log(
        "[var] held-out teacher-forced CE {var_eval_loss}, token acc {var_eval_acc}".format(
            **meta["metrics"]
        )
    )
    run.save_meta()
    if "eval" not in stages:
        return _finish(run)

    # ---- generation eval ------------------------------------------------------------------------
    t = time.perf_counter()
    results = evaluate_generation(
        families.get("var"),
        (acfg, var_params, vcfg, vae_params),
        (cls_params, ccfg),
        eval_feats[n_half:],
        settings=_gen_settings(recipe.gen_settings),
        num_gen=recipe.num_gen,
        gen_batch=recipe.gen_batch,
        key=jax.random.fold_in(root_key, 4),
        grid_path=out_dir / "samples.png",
    )
    meta["metrics"]["generation"] = results
    meta["metrics"]["num_gen"] = recipe.num_gen
    meta["metrics"]["fid_reference"] = fid_reference(ccfg.feature_dim, recipe.num_eval - n_half)
    meta["stages"]["eval"] = {"wall_s": round(time.perf_counter() - t, 1)}
    return _finish(run)


def _gen_settings(settings: tuple[tuple[str, float, int, float], ...]) -> tuple:
    """(name, cfg, top_k, top_p) rows -> the (name, sampling dict) pairs `evaluate_generation`
    takes (VAR's sampler without the greedy shortcut, as the tiny recipe evaluates)."""
    return tuple(
        (name, {"cfg": g, "top_k": k, "top_p": p, "greedy": False}) for name, g, k, p in settings
    )


def reevaluate_tiny(
    asset_dir,
    *,
    settings: tuple[tuple[str, float, int, float], ...],
    num_gen: int,
    gen_batch: int = 600,
    seed: int = 0,
) -> dict[str, Any]:
    """Re-runs the generation evaluation of saved tiny assets and records it in recipe.json.

    The held-out set is rebuilt from the recorded seed; results go to
    `metrics["generation"]` (merged by setting name) and `samples.png` is rewritten.
    """
    import pathlib

    asset_dir = pathlib.Path(asset_dir)
    var_cfg, var_p, vae_cfg, vae_p, cls_p, meta = assets.load_tiny(asset_dir)
    ccfg = assets.tiny_classifier_config(meta)
    ds = meta["dataset"]
    eval_x, _ = shapes.make_dataset(ds["eval"]["n"], seed=ds["eval"]["seed"], size=ds["image_size"])
    n_half = ds["eval"]["n"] // 2
    _, feats = classify(cls_p, ccfg, eval_x[n_half:])
    t = time.perf_counter()
    results = evaluate_generation(
        families.get("var"),
        (var_cfg, var_p, vae_cfg, vae_p),
        (cls_p, ccfg),
        feats,
        settings=_gen_settings(settings),
        num_gen=num_gen,
        gen_batch=gen_batch,
        key=jax.random.fold_in(jax.random.key(seed), 4),
        grid_path=asset_dir / "samples.png",
    )
    metrics = meta.setdefault("metrics", {})
    metrics["generation"] = {**metrics.get("generation", {}), **results}
    metrics["num_gen"] = num_gen
    metrics["fid_reference"] = fid_reference(ccfg.feature_dim, ds["eval"]["n"] - n_half)
    meta.setdefault("reevaluations", []).append(
        {
            "device": device_desc(),
            "jax_version": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": [list(x) for x in settings],
            "wall_s": round(time.perf_counter() - t, 1),
        }
    )
    assets.write_json(asset_dir / "recipe.json", meta)
    return meta


def _finish(run: _Run) -> dict[str, Any]:
    run.meta["status"] = "complete"
    run.save_meta()
    log(f"done in {run.elapsed():.0f}s")
    return run.meta
