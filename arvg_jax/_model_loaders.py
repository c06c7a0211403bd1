"""Building a `Model`: from official or converted checkpoints, random weights, packaged weights
or a quantized directory.

`load_float` converts official checkpoints (or restores converted ones, `arvg convert`) into a
float `Model`; `random_model` gives seeded random weights at a preset's size; `packaged_model` the
trained weights that ship with the package; `load_quantized` restores a directory written by
`arvg quantize` (params, tokenizer, configs and recipe). `arvg_jax.models` picks one from the
command-line flags (`model_from_args`), `arvg_jax.load` from its arguments.

Why a module of its own: these are the sources of a `Model` (`arvg_jax._model`), built on the
config resolution (`arvg_jax._model_configs`) and the official-checkpoint conversion
(`arvg_jax._model_official`). Import these names from `arvg_jax.models`, which re-exports them
(and where tests patch `random_model`).
"""

from __future__ import annotations

import os
import pathlib

from arvg_jax import families
from arvg_jax._model import Model
from arvg_jax._model_configs import config_from_dict, resolve_configs
from arvg_jax._model_official import convert_tokenizer, convert_transformer
from arvg_jax.families import Family


def load_float(
    model: str | None,
    ckpt: str | os.PathLike,
    vae: str | os.PathLike | None,
    config_path: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    allow_nonfinite: bool = False,
) -> Model:
    """Converts official checkpoints (no torch) into a float `Model`.

    `ckpt` (and `vae`) may also be converted checkpoints (`arvg convert`: a directory or a
    `.safetensors` file of ours): the configs then come from it, `model` may be None (else it must
    name the same model) and `vae` is needed only when it holds no tokenizer.

    Raises:
      CheckpointError: an unreadable file, or NaN / Inf weights (unless `allow_nonfinite`).
      ConversionError: a file that does not fit the model, with a guess of what it is.
      ConvertedCheckpointError: a foreign, truncated or mismatched converted checkpoint.
    """
    from arvg_jax import conversion

    if conversion.is_converted(ckpt):
        return _load_converted(model, ckpt, vae, config_path, key, allow_nonfinite)
    if not pathlib.Path(ckpt).exists():
        raise FileNotFoundError(f"{ckpt}: no such file or directory")
    if model is None:
        raise ValueError(f"{ckpt}: an official checkpoint needs --model (a preset or a family)")
    fam, cfg, tok_cfg = resolve_configs(model, config_path)
    params, _ = convert_transformer(fam, ckpt, cfg, model, key, allow_nonfinite)
    if vae is None:
        raise ValueError(f"--model {model} needs --vae (the tokenizer checkpoint)")
    vae_params = _tokenizer(fam, tok_cfg, vae, model, allow_nonfinite)
    return Model(
        fam.name,
        cfg,
        params,
        tok_cfg,
        vae_params,
        name=model,
        source={"ckpt": str(ckpt), "vae": str(vae), "config": config_path and str(config_path)},
    )


def _tokenizer(fam: Family, tok_cfg, vae, model: str, allow_nonfinite: bool) -> dict:
    """Tokenizer params of `vae`: an official checkpoint, or a converted one of the same config."""
    from arvg_jax import conversion

    if conversion.is_converted(vae):
        tok = conversion.load(vae)
        if tok.vae_params is None:
            raise conversion.ConvertedCheckpointError(f"{vae}: holds no tokenizer params")
        if tok.family != fam.name or tok.vae_cfg != tok_cfg:
            raise conversion.ConvertedCheckpointError(
                f"{vae}: its tokenizer ({tok.family}) does not fit --model {model}"
            )
        return tok.vae_params
    return convert_tokenizer(fam, vae, tok_cfg, model, allow_nonfinite)[0]


def _load_converted(model, ckpt, vae, config_path, key, allow_nonfinite) -> Model:
    """A converted checkpoint as --ckpt: configs from it; --model, if given, must agree."""
    from arvg_jax import conversion

    if config_path is not None:
        raise ValueError(f"{ckpt}: a converted checkpoint holds its config; drop --config")
    if key is not None:
        raise ValueError(f"{ckpt}: --ckpt-key is for wrapped torch checkpoints, not converted ones")
    m = conversion.load(ckpt)
    if model is not None:
        registry = families.all_families()
        if model in registry:
            if model != m.family:
                raise conversion.ConvertedCheckpointError(
                    f"{ckpt}: holds a {m.family} model, not --model {model}"
                )
        else:
            fam, preset = families.preset(model)
            if fam.name != m.family or preset.config() != m.cfg:
                raise conversion.ConvertedCheckpointError(
                    f"{ckpt}: holds {m.name} ({m.family}), whose config is not --model {model}'s"
                )
    if vae is not None:
        m.vae_params = _tokenizer(m.fam, m.vae_cfg, vae, m.name, allow_nonfinite)
        m.source = {**m.source, "vae": str(vae)}
    elif m.vae_params is None:
        raise conversion.ConvertedCheckpointError(
            f"{ckpt}: holds no tokenizer; give --vae (official or converted)"
        )
    return m


def random_model(model: str, seed: int = 0, config_path: str | None = None) -> Model:
    """Seeded random weights at a preset's full size (benchmarks, demos without checkpoints)."""
    fam, cfg, tok_cfg = resolve_configs(model, config_path)
    params, vae_params = fam.init_params(cfg, tok_cfg, seed)
    return Model(
        fam.name,
        cfg,
        params,
        tok_cfg,
        vae_params,
        name=f"{model} (random weights)",
        source={"random_seed": seed},
    )


def packaged_model(model: str) -> Model:
    """A preset whose trained weights ship with the package (e.g. the tiny shapes models)."""
    fam, preset = families.preset(model)
    if not preset.packaged:
        raise ValueError(f"--model {model} has no packaged weights: give --ckpt and --vae")
    cfg, params, tok_cfg, tok_params, _ = fam.load_packaged(model)
    return Model(fam.name, cfg, params, tok_cfg, tok_params, name=model, source={"packaged": model})


def load_quantized(directory: str | os.PathLike) -> Model:
    """Restores a directory written by `arvg quantize` (self-contained: includes the tokenizer)."""
    from quant import checkpoint

    params, vae_params, meta = checkpoint.load(directory)
    try:
        fam = families.get(meta["family"])
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None
    try:
        cfg = config_from_dict(fam.config_cls, meta["model_config"])
        vae_cfg = config_from_dict(fam.tokenizer_config_cls, meta["vae_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory}: model_config / vae_config in its metadata: {e}") from e
    if vae_params is None:
        raise ValueError(f"{directory}: has no tokenizer params (vae/)")
    return Model(
        fam.name,
        cfg,
        params,
        vae_cfg,
        vae_params,
        name=meta.get("name", str(directory)),
        recipe=meta["recipe"],
        source=meta.get("source", {}),
    )
