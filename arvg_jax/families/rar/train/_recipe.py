"""The tiny RAR recipe: MaskGIT-VQGAN tokenizer, then RAR, on the procedural shapes dataset.

`train_rar_tiny(recipe, out_dir)` writes the `arvg_jax.assets` family layout into `out_dir`:
`tokenizer.npz` (decode params), `model.npz`, `recipe.json` ("model_config", "tokenizer_config",
dataset, recipe, per-stage timings, measured metrics, "status") and `samples.png`, re-saving after
every stage and every minute of RAR training, so an interrupted run leaves usable files. The
generated images are scored with the shared shapes classifier (`assets.load_classifier`).
"""

from __future__ import annotations

import dataclasses
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
from arvg_jax.families.rar import FAMILY
from arvg_jax.families.rar.config import RARConfig, shapes_tokenizer_config
from arvg_jax.families.rar.train import _rar, _tokenizer
from arvg_jax.tokenizers.maskgit_vqgan import MaskGITVQGANConfig
from arvg_jax.train._common import StageHParams, count_params, log
from arvg_jax.train.evaluation import evaluate_generation, fid_reference
from arvg_jax.train.loop import (
    batched_apply,
    dataset_record,
    recipe_to_dict,
    run_stamp,
    train_loop,
    with_stage_steps,
)
from arvg_jax.train.vq import VQLossConfig

STAGES = ("tokenizer", "rar", "eval")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RARTinyRecipe:
    """Everything that defines a tiny RAR run (serialised into recipe.json)."""

    image_size: int = 32
    data_seed: int = 0  # training set: shapes.make_dataset(num_train, seed=data_seed)
    num_train: int = 64_000
    eval_seed: int = 1  # held-out set: shapes.make_dataset(num_eval, seed=eval_seed)
    num_eval: int = 6_000
    seed: int = 0  # parameter init and training draws
    tokenizer: MaskGITVQGANConfig
    model: RARConfig
    vq_loss: VQLossConfig = dataclasses.field(default_factory=VQLossConfig)
    tok_hp: StageHParams
    rar_hp: StageHParams
    cond_drop: float = 0.1  # rar.py class_label_dropout
    num_gen: int = 1200  # generated images per evaluated setting
    gen_batch: int = 600
    # (name, guidance_scale, guidance_scale_pow, randomize_temperature); the first makes
    # samples.png. pow 0 = a constant guidance scale; pow > 0 = rar.py's power-cosine ramp from 1.
    gen_settings: tuple[tuple[str, float, float, float], ...] = (
        ("g3", 3.0, 0.0, 1.0),
        ("g8_pow1.5", 8.0, 1.5, 1.0),
    )
    log_every: int = 250

    @classmethod
    def default(cls, **kw) -> RARTinyRecipe:
        """The shipped model (`rar-tiny`): 32-px images -> 8x8 = 64 MaskGIT-VQGAN tokens (two 2x
        levels; the tiny VAR's last scale is 8x8 too), V 512 (`shapes_tokenizer_config`); RAR
        width 128, depth 6, 4 heads (head dim 32), FFN 384 (`RARConfig.shapes`)."""
        base = {
            "tokenizer": shapes_tokenizer_config(),
            "model": RARConfig.shapes(condition_num_classes=shapes.NUM_CLASSES),
            "tok_hp": StageHParams(steps=3500, batch=128, lr=1e-3, warmup=200),
            "rar_hp": StageHParams(
                steps=14000, batch=256, lr=1e-3, warmup=300, weight_decay=0.05, b2=0.95
            ),
        }
        return cls(**{**base, **kw})

    @classmethod
    def quick(cls, **kw) -> RARTinyRecipe:
        """CPU smoke test: the same code paths and 32-px images (the shared classifier's size),
        a few hundred of them, a narrow tokenizer (V 64) and a 2-layer RAR."""
        base = {
            "num_train": 480,
            "num_eval": 240,
            "tokenizer": MaskGITVQGANConfig(
                channel_mult=(1, 1, 1),
                num_resolutions=3,
                hidden_channels=32,
                num_res_blocks=1,
                resolution=32,
                z_channels=8,
                token_size=8,
                codebook_size=64,
            ),
            "model": RARConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_seq_len=64,
                condition_num_classes=shapes.NUM_CLASSES,
                codebook_size=64,
            ),
            "tok_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "rar_hp": StageHParams(steps=20, batch=16, lr=1e-3, warmup=2),
            "num_gen": 48,
            "gen_batch": 24,
            "gen_settings": (("g3", 3.0, 0.0, 1.0),),
            "log_every": 5,
        }
        return cls(**{**base, **kw})

    def with_steps(self, tok: int | None, rar: int | None) -> RARTinyRecipe:
        """A copy with some stage step counts replaced (None keeps)."""
        return with_stage_steps(self, {"tok_hp": tok, "rar_hp": rar})

    def to_dict(self) -> dict[str, Any]:
        # The configs are recorded as "tokenizer_config" / "model_config".
        return recipe_to_dict(self, skip=("tokenizer", "model"))


def _meta(recipe: RARTinyRecipe) -> dict[str, Any]:
    """recipe.json before training: the `assets.load_family_tiny` keys, dataset and recipe."""
    return {
        "format": "arvg-jax tiny family model v1",
        "family": "rar",
        "status": "running",
        "dataset": dataset_record(recipe),
        "model_config": assets.config_to_dict(recipe.model),
        "tokenizer_config": assets.config_to_dict(recipe.tokenizer),
        "recipe": recipe.to_dict(),
        "training_order": "raster only (no random-order anneal)",
        "classifier": "shared shapes classifier, arvg_jax/assets/tiny/classifier.npz",
        **run_stamp(),
        "stages": {},
        "metrics": {},
    }


class _Run:
    """The files of one `train_rar_tiny` call and its recipe.json meta."""

    def __init__(self, recipe: RARTinyRecipe, out: pathlib.Path, time_limits: dict[str, float]):
        self.recipe, self.out, self.time_limits = recipe, out, time_limits
        self.t0 = time.perf_counter()
        self.meta = _meta(recipe)

    def save_meta(self) -> None:
        self.meta["wall_time_s"] = round(time.perf_counter() - self.t0, 1)
        assets.write_json(self.out / "recipe.json", self.meta)

    def save_params(self, name: str, params) -> None:
        size = assets.save_params(self.out / f"{name}.npz", jax.device_get(params))
        self.meta.setdefault("file_bytes", {})[f"{name}.npz"] = size

    def loop(self, stage: str, hp: StageHParams, step_fn, state, on_save=None):
        """`train_loop` under the stage's wall limit, recorded in meta["stages"]."""
        limit = self.time_limits.get(stage, math.inf)
        state, record = train_loop(
            stage,
            hp,
            step_fn,
            state,
            log_every=self.recipe.log_every,
            time_limit=limit,
            on_save=on_save,
        )
        self.meta["stages"][stage] = record
        return state

    def finish(self) -> dict[str, Any]:
        self.meta["status"] = "complete"
        self.save_meta()
        log(f"done in {time.perf_counter() - self.t0:.0f}s")
        return self.meta


def train_rar_tiny(
    recipe: RARTinyRecipe,
    out_dir,
    *,
    time_limits: dict[str, float] | None = None,
    stages: tuple[str, ...] = STAGES,
    classifier_dir=None,
) -> dict[str, Any]:
    """Trains and evaluates the tiny RAR, writing the asset files into `out_dir`.

    Args:
        recipe: the run definition.
        out_dir: destination directory (created).
        time_limits: optional wall limits in seconds per stage ("tokenizer", "rar"); a stage
            that hits its limit stops early and records the steps reached.
        stages: a prefix of ("tokenizer", "rar", "eval").
        classifier_dir: where the shared classifier lives (default: the packaged one).

    Returns:
        The meta dict written to recipe.json.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(recipe, out, dict(time_limits or {}))
    meta, metrics = run.meta, run.meta["metrics"]
    root_key = jax.random.key(recipe.seed)
    log(f"device {meta['device']}, jax {jax.__version__}; writing to {out}")

    t = time.perf_counter()
    size = recipe.image_size
    train_x, train_y = shapes.make_dataset(recipe.num_train, seed=recipe.data_seed, size=size)
    eval_x, eval_y = shapes.make_dataset(recipe.num_eval, seed=recipe.eval_seed, size=size)
    meta["stages"]["data"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(f"[data] {recipe.num_train} + {recipe.num_eval} images in {time.perf_counter() - t:.1f}s")
    cls_params, ccfg = assets.load_classifier(classifier_dir)
    n_half = recipe.num_eval // 2
    _, eval_feats = classify(cls_params, ccfg, eval_x)

    # ---- tokenizer ------------------------------------------------------------------------------
    tcfg, thp, lcfg = recipe.tokenizer, recipe.tok_hp, recipe.vq_loss
    train_x_dev = jnp.asarray(train_x)
    tok_state = _tokenizer.init_tokenizer_state(tcfg, thp, lcfg, jax.random.fold_in(root_key, 2))
    metrics["tokenizer_params"] = count_params(_tokenizer.decode_params(tok_state["params"]))
    metrics["tokenizer_encoder_params"] = count_params(tok_state["params"]["encoder"])
    k_tok = jax.random.fold_in(root_key, 12)
    tok_state = run.loop(
        "tokenizer",
        thp,
        lambda s: _tokenizer.tokenizer_train_step(
            s, train_x_dev, k_tok, cfg=tcfg, hp=thp, loss_cfg=lcfg
        ),
        tok_state,
    )
    tok_train = tok_state["params"]
    del tok_state
    train_x_dev = None  # free device memory before the RAR stage
    tok_params = _tokenizer.decode_params(tok_train)
    run.save_params("tokenizer", tok_params)
    recon = batched_apply(lambda x: _tokenizer.reconstruct(tok_train, tcfg, x), eval_x, 500)
    rec_logits, rec_feats = classify(cls_params, ccfg, recon)
    metrics["tokenizer_eval_l1"] = round(float(np.mean(np.abs(recon - eval_x))), 5)
    metrics["tokenizer_eval_mse"] = round(float(np.mean(np.square(recon - eval_x))), 5)
    metrics["classifier_accuracy_on_tokenizer_recon"] = round(
        float(np.mean(rec_logits.argmax(-1) == eval_y)), 4
    )
    metrics["fid_tokenizer_recon_vs_real"] = round(
        feature_fid(rec_feats[:n_half], eval_feats[n_half:]), 4
    )
    metrics["fid_real_half_vs_half"] = round(
        feature_fid(eval_feats[:n_half], eval_feats[n_half:]), 4
    )
    log(
        "[tokenizer] held-out L1 {tokenizer_eval_l1} ([-1, 1] scale), MSE {tokenizer_eval_mse}, "
        "classifier acc on recon {classifier_accuracy_on_tokenizer_recon}, recon FID "
        "{fid_tokenizer_recon_vs_real}".format(**metrics)
    )

    t = time.perf_counter()
    tok_fn = lambda x: _tokenizer.tokenize(tok_train, tcfg, x)
    train_tok = batched_apply(tok_fn, train_x, 1000)
    eval_tok = batched_apply(tok_fn, eval_x, 1000)
    metrics["codes_used"] = int(np.unique(train_tok).size)
    meta["stages"]["tokenize"] = {"wall_s": round(time.perf_counter() - t, 1)}
    log(f"[tokens] {metrics['codes_used']} of {tcfg.codebook_size} codes used")
    run.save_meta()
    if "rar" not in stages:
        return run.finish()

    # ---- RAR ------------------------------------------------------------------------------------
    mcfg, mhp = recipe.model, recipe.rar_hp
    rar_state = _rar.init_rar_state(mcfg, mhp, jax.random.fold_in(root_key, 3))
    metrics["model_params"] = count_params(rar_state["params"])
    k_rar = jax.random.fold_in(root_key, 13)
    tok_dev, lab_dev = jnp.asarray(train_tok), jnp.asarray(train_y)

    def save_rar(state, step, last):
        run.save_params("model", state["params"])
        meta["stages"]["rar_checkpoint"] = {"step": step, **last}
        run.save_meta()

    rar_state = run.loop(
        "rar",
        mhp,
        lambda s: _rar.rar_train_step(
            s, tok_dev, lab_dev, k_rar, cfg=mcfg, hp=mhp, cond_drop=recipe.cond_drop
        ),
        rar_state,
        on_save=save_rar,
    )
    params = rar_state["params"]
    del rar_state
    run.save_params("model", params)
    meta["stages"].pop("rar_checkpoint", None)
    ev = [
        jax.device_get(
            _rar.rar_eval_loss(
                params,
                jnp.asarray(eval_tok[s : s + 500]),
                jnp.asarray(eval_y[s : s + 500]),
                cfg=mcfg,
            )
        )
        for s in range(0, max(recipe.num_eval // 500, 1) * 500, 500)
    ]
    for k in ("loss", "acc"):
        metrics[f"rar_eval_{k}"] = round(float(np.mean([e[k] for e in ev])), 5)
    log(
        "[rar] held-out teacher-forced CE {rar_eval_loss}, token acc {rar_eval_acc}".format(
            **metrics
        )
    )
    run.save_meta()
    if "eval" not in stages:
        return run.finish()

    # ---- generation eval ------------------------------------------------------------------------
    t = time.perf_counter()
    metrics["generation"] = _evaluate(
        (mcfg, params, tcfg, tok_params),
        (cls_params, ccfg),
        eval_feats[n_half:],
        recipe.gen_settings,
        num_gen=recipe.num_gen,
        gen_batch=recipe.gen_batch,
        key=jax.random.fold_in(root_key, 4),
        grid_path=out / "samples.png",
    )
    metrics["num_gen"] = recipe.num_gen
    metrics["fid_reference"] = fid_reference(ccfg.feature_dim, recipe.num_eval - n_half)
    meta["stages"]["eval"] = {"wall_s": round(time.perf_counter() - t, 1)}
    return run.finish()


def _evaluate(model, classifier, real_feats, gen_settings, **kw) -> dict[str, Any]:
    """`train.evaluation.evaluate_generation` with (name, guidance, pow, temperature) settings."""
    settings = tuple(
        (name, {"guidance_scale": g, "guidance_scale_pow": g_pow, "randomize_temperature": t})
        for name, g, g_pow, t in gen_settings
    )
    return evaluate_generation(FAMILY, model, classifier, real_feats, settings=settings, **kw)


def reevaluate_rar_tiny(
    asset_dir,
    *,
    settings: tuple[tuple[str, float, float, float], ...],
    num_gen: int,
    gen_batch: int = 600,
    seed: int = 0,
    classifier_dir=None,
) -> dict[str, Any]:
    """Re-runs the generation evaluation of saved rar-tiny assets (no training): results merge
    into recipe.json's metrics["generation"] by setting name; samples.png is rewritten."""
    asset_dir = pathlib.Path(asset_dir)
    cfg, params, tok_cfg, tok_params, meta = assets.load_family_tiny(FAMILY, asset_dir)
    cls_params, ccfg = assets.load_classifier(classifier_dir)
    ds = meta["dataset"]
    n_eval, n_half = ds["eval"]["n"], ds["eval"]["n"] // 2
    eval_x, _ = shapes.make_dataset(n_eval, seed=ds["eval"]["seed"], size=ds["image_size"])
    _, feats = classify(cls_params, ccfg, eval_x[n_half:])
    t = time.perf_counter()
    results = _evaluate(
        (cfg, params, tok_cfg, tok_params),
        (cls_params, ccfg),
        feats,
        settings,
        num_gen=num_gen,
        gen_batch=gen_batch,
        key=jax.random.fold_in(jax.random.key(seed), 4),
        grid_path=asset_dir / "samples.png",
    )
    metrics = meta.setdefault("metrics", {})
    metrics["generation"] = {**metrics.get("generation", {}), **results}
    metrics["num_gen"] = num_gen
    metrics["fid_reference"] = fid_reference(ccfg.feature_dim, n_eval - n_half)
    meta.setdefault("reevaluations", []).append(
        {
            **run_stamp(),
            "settings": [list(x) for x in settings],
            "wall_s": round(time.perf_counter() - t, 1),
        }
    )
    assets.write_json(asset_dir / "recipe.json", meta)
    return meta
