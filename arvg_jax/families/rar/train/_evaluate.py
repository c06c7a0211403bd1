"""Generation evaluation of the tiny RAR: class-balanced samples through `RARFamily.generate`,
scored with the shared shapes classifier (accuracy, per-class accuracy, feature FID), and the
samples.png grid (one row per class).

Stand-in until the generic `arvg_jax.train.evaluation` (branch tiny-mar) lands; then this module
becomes a call to it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from arvg_jax import imageio
from arvg_jax.eval import classify, feature_fid
from arvg_jax.train._common import log


def evaluate_generation(
    model: tuple,
    scorer: tuple,
    *,
    settings: tuple[tuple[str, float, float, float], ...],
    num_gen: int,
    gen_batch: int,
    seed: int,
    grid_path=None,
    grid_cols: int = 10,
) -> dict[str, Any]:
    """Generates `num_gen` images (labels 0..K-1 repeated) per sampling setting and scores them.

    Args:
        model: (RARConfig, params, MaskGITVQGANConfig, tokenizer params).
        scorer: (classifier params, ClassifierConfig, real features [M, F] for the FID).
        settings: (name, guidance_scale, guidance_scale_pow, randomize_temperature) each.
        num_gen: images per setting; gen_batch: images per `generate` call (one compiled shape).
        seed: image i draws with `image_keys(seed, i)` (the same draws for every setting).
        grid_path: the first setting's samples as a PNG grid (class per row), when given.

    Returns:
        {name: {guidance_scale, guidance_scale_pow, randomize_temperature, classifier_accuracy,
        per_class_accuracy, fid_vs_real, device}}.
    """
    import jax

    from arvg_jax.families import image_keys
    from arvg_jax.families.rar import FAMILY
    from arvg_jax.options import ExecOptions

    cfg, params, tok_cfg, tok_params = model
    cls_params, ccfg, real_feats = scorer
    k = FAMILY.num_classes(cfg)
    labels = np.arange(num_gen) % k
    dev = jax.devices()[0]
    results = {}
    for si, (name, g, g_pow, temp) in enumerate(settings):
        t = time.perf_counter()
        imgs = []
        for s in range(0, num_gen, gen_batch):
            lab = labels[s : s + gen_batch]
            n = lab.size
            lab = np.concatenate([lab, np.zeros(gen_batch - n, lab.dtype)])  # one batch shape
            out = FAMILY.generate(
                params,
                tok_params,
                cfg,
                tok_cfg,
                lab,
                image_keys(seed, s, gen_batch),
                options=ExecOptions(),
                guidance_scale=g,
                guidance_scale_pow=g_pow,
                randomize_temperature=temp,
            )
            imgs.append(np.asarray(out["images"])[:n])
        imgs = np.concatenate(imgs)  # [num_gen, H, W, 3] in [0, 1]
        logits, feats = classify(cls_params, ccfg, imgs * 2.0 - 1.0)
        pred = logits.argmax(-1)
        acc = float(np.mean(pred == labels))
        fid = feature_fid(feats, real_feats)
        results[name] = {
            "guidance_scale": g,
            "guidance_scale_pow": g_pow,
            "randomize_temperature": temp,
            "classifier_accuracy": round(acc, 4),
            "per_class_accuracy": [
                round(float(np.mean(pred[labels == c] == c)), 3) for c in range(k)
            ],
            "fid_vs_real": round(fid, 4),
            "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')}",
        }
        log(
            f"[eval] {name} (guidance {g}, pow {g_pow}, temperature {temp}): classifier acc "
            f"{acc:.4f}, FID {fid:.3f} ({time.perf_counter() - t:.0f}s)"
        )
        if si == 0 and grid_path is not None:
            n = min(num_gen // k, grid_cols) * k
            order = np.argsort(labels[:n], kind="stable")
            grid = imageio.make_grid(FAMILY.to_uint8(imgs[:n][order]), ncols=n // k)
            imageio.write_png(grid_path, grid)
            os.chmod(grid_path, 0o644)  # write_png's temp file is 0600; this is package data
    return results
