"""Float vs RTN / SmoothQuant / PTQ4ARVG at several bit widths, scored by a classifier and vs float.

`compare` quantizes one float VAR with every (method, bit width) from ONE shared generated
calibration set, generates the same class-balanced labels with the same PRNG keys from the float
and every quantized model, and scores each model twice:

* against real data, with a classifier: class accuracy (with its binomial standard error) and the
  Fréchet distance of classifier features to real images (`arvg_jax.eval.feature_fid`);
* against the float model (`arvg_jax.evaluate`): teacher-forced logit KL and top-1 agreement on
  the float model's token maps, generated-token agreement and image PSNR.

A second float run with other PRNG keys ("float, other keys") measures the sampling noise of the
classifier metrics: differences smaller than float-vs-float are not evidence.

`tiny_setup` builds the inputs for the packaged tiny shapes models (`arvg_jax.assets.load_tiny`).
`write_outputs` and the markdown table live in `arvg_jax.eval._compare_report` (re-exported).

Dims: N generated images per model, K classes, L tokens, V vocabulary, F classifier feature width.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from arvg_jax.eval._compare_report import (  # noqa: F401  (re-exported)
    COLUMNS,
    code_version,
    machine_description,
    markdown_table,
    write_outputs,
)
from quant.recipes import BITS, METHODS, Recipe

METHOD_NAMES = {"rtn": "RTN", "smoothquant": "SmoothQuant", "ptq4arvg": "PTQ4ARVG"}
FLOAT, FLOAT_NOISE = "float", "float, other keys"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareSettings:
    """What `compare` runs (hashable, JSON-able)."""

    methods: tuple[str, ...] = METHODS  # rtn | smoothquant | ptq4arvg
    bits: tuple[str, ...] = BITS  # w8a8 | w6a6 | w4a8
    per_class: int = 50  # generated images per class and model
    calib: int = 128  # calibration sequences, one set shared by every quantized model
    dgc: str = "shrinkage"  # calibration selection (quant.recipes.Recipe.dgc)
    calib_seed: int = 42  # labels and keys of the calibration generations (official 42)
    calib_cfg: float | None = None  # VAR/MAR's "cfg" of the calibration generations (None: same)
    # Sampling: the family's `demo_sampling()`, then `sampling` (name, value) overrides in the
    # family's own setting names (e.g. ("cfg", 3.0) for VAR, ("guidance_scale", 3.0) for RAR).
    sampling: tuple[tuple[str, Any], ...] = ()
    seed: int = 0  # PRNG seed of the compared generations (same keys for every model)
    noise_seed: int | None = 1  # float model again with this seed (None: skip the noise row)
    num_real: int = 3000  # real images for the FID reference
    real_seed: int = 12345  # their `make_dataset` seed (held out: training used 0, eval 1)
    batch: int = 200  # cap on images per generate / teacher-forced call
    figure_per_class: int = 1  # samples per class in the side-by-side figure
    # Coverage options of the family for every quantized model (`Family.coverage_options`, e.g.
    # MAR's "diffusion_head"); empty = the official coverage.
    coverage: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "sampling", tuple(tuple(kv) for kv in self.sampling))
        object.__setattr__(self, "coverage", tuple(sorted(set(self.coverage))))
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
        for b in self.bits:
            Recipe.parse(self.methods[0] if self.methods else "rtn", b)  # validates the string
        if self.per_class < 1 or self.calib < 1:
            raise ValueError(f"per_class ({self.per_class}) and calib ({self.calib}) must be >= 1")

    def recipe(self, method: str, bits: str) -> Recipe:
        return Recipe.parse(
            method,
            bits,
            calib=self.calib,
            seed=self.calib_seed,
            dgc=self.dgc,
            coverage=self.coverage,
        )

    def row_name(self, method: str, bits: str) -> str:
        """e.g. "PTQ4ARVG W6A6", or "PTQ4ARVG W6A6 + diffusion_head" with a coverage option."""
        extra = "".join(f" + {c}" for c in self.coverage)
        return f"{METHOD_NAMES[method]} {bits.upper()}{extra}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def sampling_for(self, fam, cfg=None) -> dict[str, Any]:
        """The generation settings for a model of family `fam` (see the field comments)."""
        out = dict(fam.demo_sampling())
        names = {a.name for a in fam.sampling_arguments(cfg)}
        unknown = sorted(set(dict(self.sampling)) - names)
        if unknown:
            raise ValueError(f"sampling settings {unknown}: {fam.name} has {sorted(names)}")
        out.update(dict(self.sampling))
        return out


@dataclasses.dataclass
class Scorer:
    """A classifier of the generated domain and the features of real images (FID reference)."""

    params: dict
    cfg: Any  # arvg_jax.eval.ClassifierConfig
    real_features: np.ndarray  # float32 [R, F]

    @classmethod
    def from_real(cls, params, cfg, real_images: np.ndarray) -> Scorer:
        """real_images: float [R, H, W, 3] in [-1, 1] (the `make_dataset` range)."""
        from arvg_jax.eval import classify

        _, feats = classify(params, cfg, real_images)
        return cls(params, cfg, feats)

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Class accuracy (± binomial standard error), per-class accuracy and feature FID.

        Args:
            images: float [N, H, W, 3] in [0, 1] (the sampler's range).
            labels: int [N] the classes they were generated for.
        """
        from arvg_jax.eval import classify, feature_fid

        logits, feats = classify(self.params, self.cfg, np.asarray(images) * 2.0 - 1.0)
        labels = np.asarray(labels)
        hit = np.argmax(logits, -1) == labels
        acc = float(hit.mean())
        k = int(self.cfg.num_classes)
        per_class = [
            float(hit[labels == c].mean()) if np.any(labels == c) else None for c in range(k)
        ]
        fid = feature_fid(feats, self.real_features) if len(feats) >= 2 else float("nan")
        return {
            "accuracy": acc,
            "accuracy_se": math.sqrt(acc * (1 - acc) / max(len(hit), 1)),
            "per_class_accuracy": per_class,
            "fid": fid,
        }


@dataclasses.dataclass
class Row:
    """One model of the comparison; fidelity fields are None for the float rows."""

    name: str
    method: str  # "float" or a quant method
    bits: str | None
    accuracy: float
    accuracy_se: float
    per_class_accuracy: list
    fid: float
    kl: float | None = None  # mean per-token KL(float ‖ model), nats, teacher forced
    top1: float | None = None  # teacher-forced top-1 agreement with float
    token_agreement: float | None = None  # generated tokens equal to float's (same keys)
    psnr: float | None = None  # dB vs the float images
    logit_rel_err: float | None = None
    quantize_s: float | None = None  # wall time of api.quantize
    generate_s: float | None = None  # wall time of the generations (compile included)


@dataclasses.dataclass
class Comparison:
    settings: CompareSettings
    rows: list[Row]
    calibration: dict[str, Any]  # api.prepare_calibration info (+ generation settings)
    meta: dict[str, Any]  # model, date, machine, wall time
    images: dict[str, np.ndarray]  # name -> float [K * figure_per_class, H, W, 3] in [0, 1]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "meta": self.meta,
            "calibration": self.calibration,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def markdown_table(self) -> str:
        return markdown_table(self.rows)

    def figure(self, zoom: int = 2, step: int = 4) -> np.ndarray:
        """uint8 side-by-side grid: one row per model (labelled), `figure_per_class` per class.

        Colours are rounded to multiples of `step` (4: 6 bits per channel, invisible at this
        size): the generated images carry low-amplitude noise that zlib cannot compress, and
        this keeps the docs figure under 300 KB.
        """
        from arvg_jax import imageio
        from arvg_jax.eval.plots import label_rows

        names = list(self.images)
        rows = [imageio.to_uint8(self.images[n]) for n in names]
        if step > 1:
            rows = [(r // step * step + step // 2).astype(np.uint8) for r in rows]
        pad = 2
        grid = imageio.make_grid(np.concatenate(rows), ncols=rows[0].shape[0], pad=pad)
        grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
        row_h = (rows[0].shape[1] + pad) * zoom
        return label_rows(grid, [n.lower() for n in names], row_h, top=pad * zoom, margin=130)


def _batch_size(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (one compiled batch shape, no padding)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def compare(
    model,
    scorer: Scorer,
    settings: CompareSettings = CompareSettings(),
    *,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    on_row: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Runs the comparison.

    Args:
        model: the float `arvg_jax.models.Model` (any family).
        scorer: classifier + real features (`Scorer.from_real`).
        settings: methods, bit widths, sample counts, sampling and calibration settings.
        log: called with one line per finished step (None: silent).
        progress: progress bars of the library calls.
        on_row: called with the partial `Comparison` after every row (e.g. to save it).

    Returns:
        A `Comparison`: rows "float", "float, other keys" (when `noise_seed` is set), then for
        each bit width each method, e.g. "PTQ4ARVG W6A6".
    """
    from arvg_jax import evaluate as ev
    from arvg_jax.commands.generate import generate_images as _generate_images
    from arvg_jax.models import prepare_calibration, quant_adapter
    from quant import api

    def generate_images(m, classes, **kw):
        # `_generate_images` samples with `var_sampler.inference_layout` (stacked blocks, packed
        # int8 kernels); teacher forcing keeps the per-block layout of `m`.
        return _generate_images(m, classes, **kw)

    s = settings
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    k = model.num_classes
    classes = [c for c in range(k) for _ in range(s.per_class)]
    labels = np.asarray(classes, np.int32)
    b = _batch_size(len(classes), s.batch)
    fig_idx = np.asarray(
        [c * s.per_class + j for c in range(k) for j in range(min(s.figure_per_class, s.per_class))]
    )
    gen_kw = {
        "sampling": s.sampling_for(model.fam, model.cfg),
        "batch": b,
        "progress": progress,
    }
    meta = {
        "model": model.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "code": code_version(),
        "images_per_model": len(classes),
        "sampling": gen_kw["sampling"],
        "real_images": int(scorer.real_features.shape[0]),
    }
    result = Comparison(s, [], {}, meta, {})

    def add(row: Row, images: np.ndarray) -> None:
        result.rows.append(row)
        if row.name != FLOAT_NOISE:
            result.images[row.name] = images[fig_idx]
        result.meta["wall_s"] = round(time.perf_counter() - t_start, 1)
        kl = "" if row.kl is None else f", KL {row.kl:.4f}, tokens equal {row.token_agreement:.3f}"
        say(
            f"{row.name}: accuracy {row.accuracy:.4f}, FID {row.fid:.3f}{kl} "
            f"(t = {result.meta['wall_s']:.0f} s)"
        )
        if on_row is not None:
            on_row(result)

    t = time.perf_counter()
    f_img, f_tok, _ = generate_images(model, classes, seed=s.seed, **gen_kw)
    gen_s = time.perf_counter() - t
    f_logits = ev.teacher_forced_logits(model, labels, f_tok, b)
    add(Row(FLOAT, "float", None, **scorer.score(f_img, labels), generate_s=round(gen_s, 1)), f_img)
    if s.noise_seed is not None:
        t = time.perf_counter()
        n_img, n_tok, _ = generate_images(model, classes, seed=s.noise_seed, **gen_kw)
        gen_s = time.perf_counter() - t
        # No logits compared; token agreement is None for continuous tokens (MAR).
        noise = ev.compare(FLOAT_NOISE, None, None, (f_img, f_tok), (n_img, n_tok))
        add(
            Row(
                FLOAT_NOISE,
                "float",
                None,
                **scorer.score(n_img, labels),
                token_agreement=noise.token_agreement,
                psnr=noise.psnr,
                generate_s=round(gen_s, 1),
            ),
            n_img,
        )
        del n_img, n_tok

    # One calibration set for every method and bit width (DGC picks `calib` of 2 x calib).
    adapter = quant_adapter(model, s.coverage)
    # The calibration generations use the same settings (guidance `calib_cfg` where set).
    calib_gen = {k: v for k, v in gen_kw["sampling"].items() if k != "greedy"}
    if s.calib_cfg is not None and "cfg" in calib_gen:
        calib_gen["cfg"] = s.calib_cfg
    calib_gen["gen_batch"] = _batch_size(s.calib, s.batch)
    t = time.perf_counter()
    batch, info = prepare_calibration(
        model,
        adapter,
        s.recipe(s.methods[0] if s.methods else "rtn", s.bits[0] if s.bits else "w8a8"),
        progress=progress,
        **calib_gen,
    )
    result.calibration = {
        **info,
        "generation": calib_gen,
        "wall_s": round(time.perf_counter() - t, 1),
    }
    say(
        f"calibration: {len(info['indices'])} of {info['num_candidates']} candidates "
        f"(DGC {info['dgc']}), cond fraction {info['cond_fraction']:.3f}"
    )

    for bits in s.bits:
        for method in s.methods:
            recipe = s.recipe(method, bits)
            name = s.row_name(method, bits)
            t = time.perf_counter()
            qparams, _ = api.quantize(adapter, model.params, batch, recipe, progress=progress)
            q_s = time.perf_counter() - t
            qm = dataclasses.replace(model, params=qparams, recipe=recipe.to_dict(), name=name)
            t = time.perf_counter()
            q_img, q_tok, _ = generate_images(qm, classes, seed=s.seed, **gen_kw)
            gen_s = time.perf_counter() - t
            q_logits = ev.teacher_forced_logits(qm, labels, f_tok, b)
            fidelity = ev.compare(name, f_logits, q_logits, (f_img, f_tok), (q_img, q_tok))
            del q_logits
            add(
                Row(
                    name,
                    method,
                    bits,
                    **scorer.score(q_img, labels),
                    kl=fidelity.kl,
                    top1=fidelity.top1,
                    token_agreement=fidelity.token_agreement,
                    psnr=fidelity.psnr,
                    logit_rel_err=fidelity.logit_rel_err,
                    quantize_s=round(q_s, 1),
                    generate_s=round(gen_s, 1),
                ),
                q_img,
            )
    return result


def tiny_setup(settings: CompareSettings = CompareSettings(), model_name: str = "var-tiny"):
    """(float `Model`, `Scorer`, description) for a packaged tiny shapes model (`model_name`).

    The FID reference is `make_dataset(num_real, seed=real_seed)` (held out: the models were
    trained on seed 0 and evaluated on seed 1).
    """
    from arvg_jax import assets
    from arvg_jax.data import make_dataset
    from arvg_jax.models import packaged_model

    model = packaged_model(model_name)
    meta = assets.read_tiny_meta()  # the shared dataset and classifier
    real, _ = make_dataset(
        settings.num_real, seed=settings.real_seed, size=meta["dataset"]["image_size"]
    )
    scorer = Scorer.from_real(*assets.load_classifier(), real)
    arch = ", ".join(f"{k} {v}" for k, v in assets.config_to_dict(model.cfg).items())
    desc = f"{model_name}: {model.fam.presets()[model_name].description} ({arch})"
    return model, scorer, desc


__all__ = [
    "CompareSettings",
    "Comparison",
    "Row",
    "Scorer",
    "compare",
    "markdown_table",
    "tiny_setup",
    "write_outputs",
]
