"""The `Model` type (a generator and its tokenizer) and what commands do with a `Model`.

A `Model` bundles everything generation needs (family, configs and params of the transformer and
of its tokenizer) whatever its origin (`arvg_jax.models` builds them: presets, official or
converted checkpoints, quantized directories), so `arvg generate`, `quantize`, `evaluate` and
`bench` treat every family, float or quantized, alike: the family from the registry
(`arvg_jax.families`) supplies the how, and nothing here names one.

Why a module of its own: the type and its uses need nothing of the loading code, which needs the
type; keeping them apart keeps `arvg_jax.models` (the loading and the command-line flags) free of
import cycles. Import these names from `arvg_jax.models`, which re-exports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from arvg_jax import families
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

    def __repr__(self) -> str:
        # The default dataclass repr would print every weight (notebooks echo it).
        import numpy as np

        from quant import _tree

        n = sum(int(np.prod(getattr(v, "shape", ()))) for v in _tree.flatten(self.params).values())
        kind = (
            f"{self.recipe['method']} w{self.recipe['w_bits']}a{self.recipe['a_bits']}"
            if self.recipe
            else "float"
        )
        return f"Model({self.name!r}, family={self.family!r}, {kind}, {n:,} parameters)"

    @property
    def fam(self) -> Family:
        return families.get(self.family)

    @property
    def num_classes(self) -> int:
        return self.fam.num_classes(self.cfg)

    # ---- the public Python API (`arvg_jax.load` returns a Model) ------------------------------
    def sampling_defaults(self) -> dict[str, Any]:
        """The official sampler's settings for this model (what `generate` uses unless given)."""
        return self.fam.sampling_defaults(self.cfg)

    def generate(self, key_or_seed, labels, *, options=None, **sampling) -> dict[str, Any]:
        """Images for class labels: ``{"tokens": int32 [B, ...], "images": float32 [B, H, W, 3]}``.

        Image i draws with ``fold_in(key, i)`` (an int seed means ``PRNGKey(seed)``), as
        ``arvg generate --seed``. Unset sampling settings take the official defaults
        (`sampling_defaults`); `options` is an `ExecOptions` (default float32).

        Example::

            import arvg_jax
            model = arvg_jax.load("var-test", random_weights=True)
            out = model.generate(0, [1, 2], top_k=0, top_p=0.0)
            out["images"].shape  # (2, 32, 32, 3)
        """
        import jax
        import jax.numpy as jnp
        import numpy as np

        from arvg_jax.options import ExecOptions

        labels = np.asarray(labels, np.int32).reshape(-1)
        if isinstance(key_or_seed, (int, np.integer)):
            key = jax.random.PRNGKey(int(key_or_seed))
        else:
            key = key_or_seed
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
            jnp.arange(labels.shape[0], dtype=jnp.uint32)
        )
        unknown = set(sampling) - set(self.sampling_defaults())
        if unknown:
            raise TypeError(
                f"{self.family} sampling takes {sorted(self.sampling_defaults())}; "
                f"got unknown {sorted(unknown)}"
            )
        settings = {**self.sampling_defaults(), **sampling}
        return self.fam.generate(
            self.fam.inference_layout(self.params),
            self.vae_params,
            self.cfg,
            self.vae_cfg,
            labels,
            keys,
            options=options or ExecOptions(),
            **settings,
        )

    def logits(self, labels, tokens, *, options=None, batch: int = 16):
        """Teacher-forced float32 logits of the model on given token sequences.

        Example::

            import arvg_jax
            model = arvg_jax.load("var-test", random_weights=True)
            tokens = model.generate(0, [1, 2], greedy=True)["tokens"]
            logits = model.logits([1, 2], tokens)  # [2, L, vocab]
        """
        return teacher_forced_logits(self, labels, tokens, options=options, batch=batch)

    def quant_adapter(self, coverage: tuple[str, ...] = ()):
        """The family's quantization adapter for this config (`quant.quantize`'s `adapter`);
        `coverage`: options of `self.fam.coverage_options()` (e.g. MAR's "diffusion_head")."""
        return self.fam.quant_adapter(self.cfg, coverage=tuple(coverage))

    def calibration_batch(self, labels, tokens) -> dict[str, Any]:
        """Calibration inputs for `quant.quantize` from class labels and their token sequences
        (e.g. images generated by `generate`): each image gives a cond and an uncond row."""
        import numpy as np

        from quant.algorithms.calib_data import Candidates

        labels = np.asarray(labels, np.int32).reshape(-1)
        cands = Candidates.from_generations(
            labels, np.asarray(tokens), null_label=self.num_classes, gen_batch=len(labels)
        )
        return self.fam.calibration_batch(self.vae_params, self.vae_cfg, cands)

    def with_params(self, params: dict[str, Any], recipe: dict[str, Any] | None = None) -> Model:
        """The same model with other params (e.g. `quant.quantize`'s output) and recipe."""
        return dataclasses.replace(self, params=params, recipe=recipe)


# ---- what commands do with a Model (the family supplies the how) ------------------------------
def quant_adapter(model: Model, coverage: tuple[str, ...] = ()):
    """The quantization adapter of the model's family for its config (+ optional `coverage`)."""
    return model.fam.quant_adapter(model.cfg, coverage=tuple(coverage))


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
