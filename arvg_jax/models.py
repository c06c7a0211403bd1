"""Loading models for the command line: presets, official checkpoints, quantized directories.

A `Model` bundles everything generation needs (family, configs and params of the transformer and
of its tokenizer) whatever its origin, so `arvg generate`, `quantize`, `evaluate` and `bench`
treat every family, float or quantized, alike. The family comes from the registry
(`arvg_jax.families`); nothing here names one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from arvg_jax import assets, families
from arvg_jax.families import Family


@dataclasses.dataclass
class Model:
    """A generator and its tokenizer. `params` may hold QArray leaves (quantized)."""

    family: str
    cfg: Any
    params: dict[str, Any]
    vae_cfg: Any  # the tokenizer's config
    vae_params: dict[str, Any]  # the tokenizer's params
    name: str
    recipe: dict[str, Any] | None = None  # set for quantized models
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # where it came from

    @property
    def quantized(self) -> bool:
        return self.recipe is not None

    @property
    def fam(self) -> Family:
        return families.get(self.family)

    @property
    def num_classes(self) -> int:
        return self.fam.num_classes(self.cfg)


# One serialisation of configs for every file we write (quantized checkpoints, packaged tiny
# models): architecture fields only. Execution choices (`arvg_jax.options.ExecOptions`) are never
# pinned by a file, and older checkpoints that stored them still load.
config_to_dict = assets.config_to_dict
config_from_dict = assets.config_from_dict


def model_choices() -> tuple[str, ...]:
    return families.model_choices()


def resolve_configs(model: str, config_path: str | os.PathLike | None) -> tuple[Family, Any, Any]:
    """(family, config, tokenizer config) for `--model PRESET` or `--model FAMILY --config
    config.json` (official constructor arguments)."""
    registry = families.all_families()
    if model in registry:
        if config_path is None:
            raise ValueError(f"--model {model} needs --config config.json (official constructor args)")
        fam = registry[model]
        conf = json.loads(pathlib.Path(config_path).read_text())
        cfg, tok_cfg = fam.configs_from_official(conf)
        return fam, cfg, tok_cfg
    fam, preset = families.preset(model)
    if config_path is not None:
        raise ValueError(f"--config is only for --model {fam.name} (got --model {model})")
    return fam, preset.config(), preset.tokenizer_config()


def _convert(convert, path, state_dict, cfg, what: str, model: str):
    """`convert(state_dict, cfg)`, with a short, useful message when the file does not fit: what
    the file looks like (`converters.identify`) and the start of the converter's key report."""
    from converters import ConversionError, identify

    try:
        return convert(state_dict, cfg)
    except ConversionError as e:
        found = identify(state_dict)
        detail = " ".join(str(e).split())
        if len(detail) > 400:
            detail = detail[:400] + " …"
        raise ConversionError(
            f"{path}: does not fit the {what} of --model {model}: {found.hint}; {detail}"
        ) from None


def _read(path, key: str | None, default_keys: tuple[str, ...]):
    """The state dict of `path`: entry `key`, or for a wrapped file without one the first of the
    family's official entries that it holds (e.g. MAR's "model_ema")."""
    import sys

    from converters import CheckpointError, load_state_dict

    if key is not None or not default_keys:
        return load_state_dict(path, key=key)
    try:
        return load_state_dict(path)
    except CheckpointError as e:
        if "wrapped checkpoint" not in str(e):
            raise
        for k in default_keys:
            try:
                sd = load_state_dict(path, key=k)
            except CheckpointError:
                continue
            print(f"{path}: reading entry {k!r} (the official choice; --ckpt-key picks another)",
                  file=sys.stderr)
            return sd
        raise


def load_float(
    model: str,
    ckpt: str | os.PathLike,
    vae: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    allow_nonfinite: bool = False,
) -> Model:
    """Converts official checkpoints (no torch) into a float `Model`.

    Raises:
      CheckpointError: an unreadable file, or NaN / Inf weights (unless `allow_nonfinite`).
      ConversionError: a file that does not fit the model, with a guess of what it is.
    """
    from converters import check_finite

    fam, cfg, tok_cfg = resolve_configs(model, config_path)
    sd = _read(ckpt, key, fam.checkpoint_keys)
    check_finite(sd, ckpt, allow_nonfinite=allow_nonfinite)
    params = _convert(fam.convert, ckpt, sd, cfg, "transformer (--ckpt)", model)
    del sd
    vae_sd = _read(vae, None, fam.tokenizer_checkpoint_keys)
    check_finite(vae_sd, vae, allow_nonfinite=allow_nonfinite)
    vae_params = _convert(fam.convert_tokenizer, vae, vae_sd, tok_cfg, "tokenizer (--vae)", model)
    return Model(
        fam.name,
        cfg,
        params,
        tok_cfg,
        vae_params,
        name=model,
        source={"ckpt": str(ckpt), "vae": str(vae), "config": config_path and str(config_path)},
    )


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
    return Model(
        fam.name, cfg, params, tok_cfg, tok_params, name=model, source={"packaged": model}
    )


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


def add_model_arguments(parser, *, quantized: bool = True) -> None:
    """The shared flags: --model/--ckpt/--vae/--config (float) and --quantized DIR."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=model_choices(),
        metavar="MODEL",
        help="a preset (`arvg models` lists them) or a family name with --config config.json",
    )
    g.add_argument("--ckpt", help="official transformer checkpoint, e.g. var_d16.pth")
    g.add_argument("--vae", help="official tokenizer checkpoint, e.g. vae_ch160v4096z32.pth")
    g.add_argument("--config", help="official constructor arguments as JSON (--model FAMILY)")
    g.add_argument(
        "--ckpt-key", default=None, help="entry of a wrapped checkpoint to use (e.g. model_ema)"
    )
    g.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load checkpoints holding NaN / Inf weights (forensics; refused by default)",
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="seeded random weights at the preset's size instead of --ckpt/--vae",
    )
    if quantized:
        g.add_argument("--quantized", metavar="DIR", help="a directory written by arvg quantize")


def model_from_args(args) -> Model:
    """--quantized DIR, or the float model of --model/--ckpt/--vae/--config."""
    if getattr(args, "quantized", None):
        if args.model or args.ckpt:
            raise ValueError("give either --quantized DIR or --model/--ckpt/--vae, not both")
        return load_quantized(args.quantized)
    return float_model_from_args(args)


def float_model_from_args(args) -> Model:
    """The float model of --model/--ckpt/--vae/--config (or --random-weights, or packaged)."""
    if not args.model:
        raise ValueError("give --model (with --ckpt and --vae) or --quantized DIR")
    if args.random_weights:
        return random_model(args.model, config_path=args.config)
    if not args.ckpt and not args.vae and args.model not in families.all_families():
        _, preset = families.preset(args.model)
        if preset.packaged:
            return packaged_model(args.model)
    if not args.ckpt or not args.vae:
        raise ValueError(f"--model {args.model} needs --ckpt and --vae (or --random-weights)")
    return load_float(
        args.model,
        args.ckpt,
        args.vae,
        args.config,
        key=args.ckpt_key,
        allow_nonfinite=getattr(args, "allow_nonfinite", False),
    )


# ---- what commands do with a Model (the family supplies the how) ------------------------------
def quant_adapter(model: Model):
    """The quantization adapter of the model's family for its config."""
    return model.fam.quant_adapter(model.cfg)


def prepare_calibration(model: Model, adapter, recipe, *, progress: bool = True, **generation):
    """`quant.api.prepare_calibration` with the family's generator bound to this float model."""
    from quant import api

    fam = model.fam
    gen = fam.calibration_generator(model.params, model.vae_params, model.cfg, model.vae_cfg)
    return api.prepare_calibration(
        adapter,
        model.params,
        gen,
        lambda cands: fam.calibration_batch(model.vae_params, model.vae_cfg, cands),
        recipe,
        progress=progress,
        **generation,
    )


def teacher_forced_logits(model: Model, labels, tokens, *, options=None, batch: int = 16):
    """float32 logits of `model` on token sequences (the family's teacher-forced forward)."""
    from arvg_jax.options import ExecOptions

    return model.fam.teacher_forced_logits(
        model.params,
        model.vae_params,
        model.cfg,
        model.vae_cfg,
        labels,
        tokens,
        options=options or ExecOptions(),
        batch=batch,
    )
