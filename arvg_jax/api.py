"""`arvg_jax.load`: any model source -> a `Model` with `generate` and teacher-forced `logits`."""

from __future__ import annotations

import os
import pathlib

__all__ = ["load"]


def load(
    path_or_preset: str | os.PathLike,
    *,
    ckpt: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    ckpt_key: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
    allow_nonfinite: bool = False,
):
    """Loads a model from wherever it is.

    Args:
      path_or_preset: a converted directory or `.safetensors` file (`arvg convert`), a quantized
        directory (`arvg quantize`), a preset name ("var-d16", "var-tiny", ...) or a family name
        with `config` (official constructor arguments as JSON).
      ckpt, vae: official checkpoints (or converted ones) for a preset / family name.
      ckpt_key: entry of a wrapped checkpoint (e.g. "model_ema").
      random_weights: seeded (`seed`) random weights at the preset's size instead of files.

    Returns:
      An `arvg_jax.models.Model`: `.cfg`, `.params`, `.vae_cfg`, `.vae_params`,
      `.generate(key_or_seed, labels, **sampling)`, `.logits(labels, tokens)`.

    Example::

        import arvg_jax
        model = arvg_jax.load("var-tiny")              # packaged trained weights
        images = model.generate(0, [0, 1, 2])["images"]
    """
    from arvg_jax import conversion, families, models

    p = pathlib.Path(path_or_preset)
    name = os.fspath(path_or_preset)
    if name not in families.model_choices() and (p.exists() or os.sep in name):
        if ckpt is not None or random_weights:
            raise ValueError(f"{p}: a path holds its own weights; drop ckpt= / random_weights=")
        if p.is_dir() and (p / "arvg.json").is_file():
            return models.load_quantized(p)
        if conversion.is_converted(p):
            return models.load_float(None, p, vae, config, allow_nonfinite=allow_nonfinite)
        raise ValueError(
            f"{p}: not a converted or quantized checkpoint; for an official one use "
            f"load(PRESET, ckpt={name!r}, vae=...)"
        )
    if random_weights:
        return models.random_model(name, seed=seed, config_path=config)
    if ckpt is None:
        if name in families.all_families():
            raise ValueError(f"{name}: a family name needs ckpt= (and config=), or random_weights")
        return models.packaged_model(name)
    return models.load_float(name, ckpt, vae, config, key=ckpt_key, allow_nonfinite=allow_nonfinite)
