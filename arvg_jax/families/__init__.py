"""Model families: one folder each under `arvg_jax/families/`, found by discovery.

A family folder's `__init__.py` defines `FAMILY`, an instance of a `Family` subclass: its presets,
configs, converters, parameter init, teacher-forced logits, sampler and quantization plumbing.
Everything outside the family folders (the CLI, the bench, `quant.api` callers, loading, the
reference check) goes through this registry and never names a family; adding one is a folder
(see docs/adding_a_family.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "Family",
    "Preset",
    "SamplingArg",
    "all_families",
    "get",
    "image_keys",
    "model_choices",
    "preset",
    "sampling_arguments",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """A named size of a family (`--model NAME`).

    Attributes:
      name: the CLI name, e.g. "var-d16".
      config: builds the architecture config.
      tokenizer_config: builds the tokenizer config that goes with it.
      description: one line for `arvg models`.
      packaged: trained weights ship inside the package (the tiny zoo): `--model NAME` needs no
        checkpoint files.
    """

    name: str
    config: Callable[[], Any]
    tokenizer_config: Callable[[], Any]
    description: str = ""
    packaged: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingArg:
    """One sampling setting of a family's sampler, as the CLI offers it (`--top-k`).

    Attributes:
      name: keyword of the family's `generate` (e.g. "top_k"); the flag is `--top-k`.
      type: float, int or bool (a bool is a store-true flag).
      default: the official sampler's default.
      help: one line.
      valid: the values the family's sampler accepts (`arvg_jax.argtypes.Range`, `OneOf` or
        `Checked`; None: any of `type`): the CLI refuses others, naming the flag and the range.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    valid: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Family:
    """What the house needs from a model family. Subclasses live in `arvg_jax/families/<name>/`.

    Every method is a pure function of its arguments; params are plain dict pytrees (float leaves,
    or `quant.QArray` / `quant.ActQuant` leaves once quantized).
    """

    name: str = ""  # "var"
    description: str = ""
    config_cls: type = object  # architecture config (official constructor arguments only)
    tokenizer_config_cls: type = object
    checkpoint_help: str = (
        ""  # what --ckpt is, e.g. "official transformer checkpoint (var_d16.pth)"
    )
    tokenizer_help: str = ""  # what --vae is
    # Entries of a wrapped official checkpoint ({"model": ..., "model_ema": ...}) to read, in
    # order, when the user names none (--ckpt-key): the official sampler's choice.
    checkpoint_keys: tuple[str, ...] = ()
    tokenizer_checkpoint_keys: tuple[str, ...] = ()

    # ---- presets and configs ----------------------------------------------------------------------
    def presets(self) -> Mapping[str, Preset]:
        raise NotImplementedError

    def configs_from_official(self, official: dict[str, Any]) -> tuple[Any, Any]:
        """(config, tokenizer config) from the official constructor arguments (a fixture's
        config.json)."""
        raise NotImplementedError

    def num_classes(self, cfg) -> int:
        """Class labels the model takes: [0, num_classes) (the null class excluded)."""
        return int(cfg.num_classes)

    # ---- parameters ---------------------------------------------------------------------------
    def convert(self, state_dict: Mapping[str, np.ndarray], cfg) -> dict:
        """Official transformer state dict -> params (converters/<family>.py)."""
        raise NotImplementedError

    def convert_tokenizer(self, state_dict: Mapping[str, np.ndarray], tok_cfg) -> dict:
        raise NotImplementedError

    def init_params(self, cfg, tok_cfg, seed: int) -> tuple[dict, dict]:
        """Seeded random (params, tokenizer params) at the config's size."""
        raise NotImplementedError

    def load_packaged(self, preset_name: str):
        """(cfg, params, tok_cfg, tok_params, meta) of a packaged (trained) preset: by default
        the family's tiny model in `arvg_jax/assets/tiny/<family>/` (`assets.load_family_tiny`)."""
        if not self.presets()[preset_name].packaged:
            raise NotImplementedError(f"{preset_name}: no packaged weights")
        from arvg_jax import assets

        return assets.load_family_tiny(self)

    # ---- running ------------------------------------------------------------------------------
    def sampling_arguments(self, cfg=None) -> tuple[SamplingArg, ...]:
        """The sampler's settings with the official defaults (CLI flags); `cfg` picks per-size
        defaults where the official sampler has them."""
        raise NotImplementedError

    def sampling_defaults(self, cfg=None) -> dict[str, Any]:
        """The official sampler's defaults, by `generate` keyword."""
        return {a.name: a.default for a in self.sampling_arguments(cfg)}

    def demo_sampling(self) -> dict[str, Any]:
        """The sampling settings of `arvg demo` (default: the official ones)."""
        return self.sampling_defaults()

    def to_uint8(self, images) -> np.ndarray:
        """Generated images (float [B, H, W, 3] in [0, 1]) as the official sampling script's
        uint8 samples (the bytes FID is computed on). Default: round after clipping."""
        from arvg_jax import imageio

        return imageio.to_uint8(images)

    def inference_layout(self, params: dict) -> dict:
        """The layout the sampler runs fastest (same values); never stored."""
        return params

    def generate(self, params, tok_params, cfg, tok_cfg, labels, keys, /, *, options, **sampling):
        """Images for class labels: {"tokens": int32 [B, ...], "images": float32 [B, H, W, 3]
        in [0, 1], "finite": bool [B]}. "finite" is False for an image whose logits (MAR: diffusion
        outputs) held NaN / Inf at some step: its tokens are then meaningless (an argmax or draw
        over NaN still returns a token); the sampler ANDs one reduction per step into it.
        `keys` holds one PRNG key per image (`image_keys`). The leading arguments are
        positional-only, so a sampling setting may share a name with one (VAR's `cfg`)."""
        raise NotImplementedError

    def teacher_forced_logits(
        self, params, tok_params, cfg, tok_cfg, labels, tokens, *, options, batch=16
    ):
        """float32 logits of the model on given token sequences, `batch` rows per call."""
        raise NotImplementedError

    # ---- quantization -------------------------------------------------------------------------
    def quant_adapter(self, cfg, *, coverage: tuple[str, ...] = ()):
        """The `quant.api` adapter (coverage rules, calibration stages, forward functions);
        `coverage` names options of `coverage_options()` to add to the official coverage."""
        raise NotImplementedError(f"{self.name}: quantization is not implemented")

    def coverage_options(self) -> Mapping[str, str]:
        """Optional coverage beyond the official one: {name: what it quantizes}, for
        `arvg quantize --coverage NAME` (none by default)."""
        return {}

    def check_coverage(self, coverage) -> tuple[str, ...]:
        """`coverage` as a tuple, or ValueError naming what this family offers."""
        bad = sorted(set(coverage) - set(self.coverage_options()))
        if bad:
            offered = ", ".join(self.coverage_options()) or "none"
            raise ValueError(
                f"--coverage {', '.join(bad)}: not an option of {self.name} (offered: {offered})"
            )
        return tuple(coverage)

    def calibration_generator(self, params, tok_params, cfg, tok_cfg):
        """A callable `(num_images, seed, progress, **sampling) -> Candidates` for
        `quant.api.prepare_calibration`."""
        raise NotImplementedError(f"{self.name}: calibration generation is not implemented")

    def calibration_batch(self, tok_params, tok_cfg, candidates) -> dict:
        raise NotImplementedError

    def sharding_rules(self, cfg=None) -> tuple:
        """Tensor-parallel rules: (path regex, `PartitionSpec`) pairs, `RULES` of the family's
        `sharding.py` (`arvg_jax.parallel.rules` explains them); () replicates every leaf. With
        `cfg`, also the fused attention layers its `heads(cfg)` declares
        (`arvg_jax.parallel.heads.FusedHeads`): attention then runs head-parallel on a mesh
        with a model axis; without, attention is replicated."""
        try:
            module = importlib.import_module(f"arvg_jax.families.{self.name}.sharding")
        except ModuleNotFoundError as e:
            if e.name != f"arvg_jax.families.{self.name}.sharding":
                raise
            return ()
        fused = module.heads(cfg) if cfg is not None and hasattr(module, "heads") else ()
        return (*module.RULES, *fused)

    def bench_command(self):
        """A module with `add_arguments(parser)` and `run(args)` for `arvg bench`, or None."""
        return

    # ---- reference check ----------------------------------------------------------------------
    def reference_outputs(self, fixture_dir) -> dict[str, np.ndarray]:
        """Every output array of the official-code fixture, computed by the port (CPU, float32)."""
        raise NotImplementedError


@functools.cache
def _registry() -> dict[str, Family]:
    import arvg_jax.families as pkg

    out: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if not hasattr(module, "FAMILY"):
            raise TypeError(f"{module.__name__}: defines no FAMILY (a Family instance, or None)")
        family = module.FAMILY
        if family is None:  # a port in progress: its modules exist, the registry skips it
            continue
        if not isinstance(family, Family):
            raise TypeError(f"{module.__name__}: FAMILY is not a Family instance")
        if family.name in out:
            raise ValueError(f"two families named {family.name!r}")
        out[family.name] = family
    return out


def all_families() -> dict[str, Family]:
    """Every registered family by name."""
    return dict(_registry())


def get(name: str) -> Family:
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(reg)}")
    return reg[name]


def preset(name: str) -> tuple[Family, Preset]:
    """(family, preset) of a `--model` preset name such as "var-d16"."""
    for family in _registry().values():
        presets = family.presets()
        if name in presets:
            return family, presets[name]
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_choices())}")


def model_choices() -> tuple[str, ...]:
    """Every `--model` value: the presets, then each family name (with --config)."""
    reg = _registry()
    return (*(p for f in reg.values() for p in f.presets()), *reg)


def image_keys(seed: int, start: int, count: int):
    """One PRNG key per image: fold_in(PRNGKey(seed), image index), for indices
    [start, start + count). The images of a seed never depend on the batch size or the number of
    devices, only on their index."""
    import jax
    import jax.numpy as jnp

    base = jax.random.PRNGKey(seed)
    idx = jnp.arange(start, start + count, dtype=jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)


def sampling_arguments() -> dict[str, SamplingArg]:
    """The union of every family's sampling settings by name (the CLI's sampling flags)."""
    out: dict[str, SamplingArg] = {}
    for fam in _registry().values():
        for arg in fam.sampling_arguments():
            prev = out.get(arg.name)
            if prev is not None and prev.type is not arg.type:
                raise TypeError(f"sampling setting {arg.name!r}: {prev.type} vs {arg.type}")
            out.setdefault(arg.name, arg)
    return out
