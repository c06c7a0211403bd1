"""Which model `--model` names: the preset / family choices and their configs.

`--model` is a preset (`var-d16`: its config and tokenizer config come with it) or a family name,
which then needs `--config config.json` (the official constructor arguments, converted by the
family's `configs_from_official`). Also the one serialisation of configs for every file we write.

Why a module of its own: every way of building a `Model` (official checkpoints, random weights,
`arvg convert`, the benchmarks) starts from these configs, and resolving them reads no weights.
Import these names from `arvg_jax.models`, which re-exports them.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from arvg_jax import assets, families
from arvg_jax.families import Family

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
            raise ValueError(
                f"--model {model} needs --config config.json (official constructor args)"
            )
        fam = registry[model]
        conf = json.loads(pathlib.Path(config_path).read_text())
        cfg, tok_cfg = fam.configs_from_official(conf)
        return fam, cfg, tok_cfg
    fam, preset = families.preset(model)
    if config_path is not None:
        raise ValueError(f"--config is only for --model {fam.name} (got --model {model})")
    return fam, preset.config(), preset.tokenizer_config()
