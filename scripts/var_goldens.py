"""VAR goldens: what the family-generic refactor must leave bit-identical on the CPU.

    python scripts/var_goldens.py --out tests/goldens/var.npz          # record
    python scripts/var_goldens.py --check tests/goldens/var.npz        # compare
    python scripts/var_goldens.py --out host                           # this host's recording

Float results are bit-identical only on one CPU and jax build (`fingerprint`), and the quantized
trees only there too (calibration's searches turn an ulp into a neighbouring candidate). So besides
`var.npz` (recorded before the refactor) `tests/goldens/hosts/` holds recordings for other hosts
(`--out host` writes `host_file()`), each made with a commit whose outputs had matched `var.npz`
bit for bit on its recording host: the refactor's guarantee carried to that host.

Computed on the official-code reference VAR (`../shared/reference/var`, depth 2, random weights):
greedy and keyed tokens, teacher-forced logits in float32 and bfloat16, the quantized tree of every
method (RTN, SmoothQuant, PTQ4ARVG at W8A8; PTQ4ARVG at W6A6 and W4A8) with its teacher-forced
logits, and the tokens the packed int8 inference layout generates. `tests/goldens_test.py` runs the
same computation (`compute`) and compares: integer arrays exactly, float arrays bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LABELS = np.array([3, 141, 592, 653], np.int32)
CALIB = 8  # calibration sequences: 4 greedy generations, cond and uncond rows
# Keyed sampling derives image i's key from (seed, i) since the family-generic core (issue 15):
# the one deliberate change to VAR's outputs, recorded under a new name.
KEYED = "tokens_keyed_per_image"
QUANT_RUNS = (
    ("rtn", "w8a8"),
    ("smoothquant", "w8a8"),
    ("ptq4arvg", "w8a8"),
    ("ptq4arvg", "w6a6"),
    ("ptq4arvg", "w4a8"),
)


def _tree_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    """Every array leaf of a param tree (QArray / ActQuant fields included), by path."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
        out[f"{prefix}/{name}"] = np.asarray(leaf)
    return out


def compute(
    var_dir: str | pathlib.Path, *, slow: bool = True, tokens: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The golden arrays of the reference VAR in `var_dir` (CPU, float32 unless named).

    Fast part: teacher-forced logits in float32 and bfloat16 on the greedy tokens (`tokens`, e.g.
    the stored golden ones, or generated here). Slow part (`slow=True`): the greedy generation
    (tokens and images), keyed tokens, the quantized tree of every method and its logits, and the
    packed-int8 generation.
    """
    import jax

    calls = _Calls
    jax.config.update("jax_default_matmul_precision", "highest")
    model = calls.load(var_dir)
    out: dict[str, np.ndarray] = {}
    if slow or tokens is None:
        greedy = calls.generate(model, model.params, LABELS, seed=0, greedy=True)
        out["tokens_greedy"] = greedy["tokens"]
        out["images_greedy"] = greedy["images"]
        tokens = greedy["tokens"]
    out["logits_f32"] = calls.logits(model, model.params, LABELS, tokens, dtype="float32")
    out["logits_bf16"] = calls.logits(model, model.params, LABELS, tokens, dtype="bfloat16")
    if not slow:
        return out
    keyed = calls.generate(model, model.params, LABELS, seed=7, greedy=False)
    out[KEYED] = keyed["tokens"]
    batch = calls.calibration(model, CALIB)
    for method, bits in QUANT_RUNS:
        qparams = calls.quantize(model, batch, method, bits, CALIB)
        tag = f"{method}_{bits}"
        out.update(_tree_arrays(f"tree_{tag}", qparams))
        out[f"logits_{tag}"] = calls.logits(model, qparams, LABELS, tokens, dtype="float32")
        if method == "ptq4arvg":
            gen = calls.generate_inference(model, qparams, LABELS, seed=0, greedy=True)
            out[f"tokens_packed_{tag}"] = gen["tokens"]
    return out


def fingerprint() -> str:
    """What bit-identical float goldens depend on: the jax version and the host CPU."""
    import platform

    import jax

    flags = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = hashlib.sha256(line.encode()).hexdigest()[:12]
                break
    except OSError:
        pass
    return f"jax {jax.__version__} {platform.machine()} cpu-flags {flags}"


class _Calls:
    """The library calls behind the goldens: the one part that follows API changes."""

    @staticmethod
    def load(var_dir):  # arvg_jax.models.load_float
        from arvg_jax.models import load_float

        d = pathlib.Path(var_dir)
        return load_float("var", d / "var.pth", d / "vae.pth", d / "config.json")

    @staticmethod
    def generate(model, params, labels, *, seed, greedy):
        import jax

        from arvg_jax.families.var import sampler as var_sampler

        out = var_sampler.generate(
            params,
            model.vae_params,
            model.cfg,
            model.vae_cfg,
            labels,
            jax.random.PRNGKey(seed),
            cfg=1.5,
            top_k=900,
            top_p=0.96,
            greedy=greedy,
        )
        return {k: np.asarray(v) for k, v in out.items()}

    @staticmethod
    def generate_inference(model, params, labels, *, seed, greedy):
        from arvg_jax.families.var import sampler as var_sampler

        return _Calls.generate(
            model, var_sampler.inference_layout(params), labels, seed=seed, greedy=greedy
        )

    @staticmethod
    def logits(model, params, labels, tokens, *, dtype):
        import jax

        from arvg_jax.families.var.model import VAR
        from arvg_jax.options import ExecOptions
        from arvg_jax.tokenizers import var_vqvae

        opts = ExecOptions(dtype=dtype)
        idx = var_vqvae.split_idx(model.vae_cfg, tokens)
        x = var_vqvae.idx_to_var_input(model.vae_params, model.vae_cfg, idx)
        fn = jax.jit(lambda p, lab, x: VAR(model.cfg, opts).apply({"params": p}, lab, x))
        return np.asarray(fn(params, labels, x))

    @staticmethod
    def calibration(model, calib):
        """A fixed calibration batch: greedy generations of `calib // 2` fixed labels, each
        as a cond and an uncond row (DGC and the sampler's keys play no part, so this pins the
        quantization algorithms alone)."""
        from arvg_jax.families.var.calibration import calibration_batch
        from quant.algorithms.calib_data import Candidates

        labels = (np.arange(calib // 2, dtype=np.int32) * 37) % model.cfg.num_classes
        tokens = _Calls.generate(model, model.params, labels, seed=0, greedy=True)["tokens"]
        cands = Candidates.from_generations(labels, tokens, model.cfg.num_classes, len(labels))
        return calibration_batch(model.vae_params, model.vae_cfg, cands)

    @staticmethod
    def quantize(model, batch, method, bits, calib):
        from arvg_jax.families.var.quant_adapter import VARAdapter
        from quant import api
        from quant.recipes import Recipe

        recipe = Recipe.parse(method, bits, calib=calib)
        adapter = VARAdapter(model.cfg)
        qparams, _ = api.quantize(adapter, model.params, batch, recipe, progress=False)
        return qparams


def digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()[:16]


SMALL = 4096  # arrays up to this many elements are stored whole
SAMPLES = 256  # larger ones: this many evenly spaced elements, plus the digest of all of them


def pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The stored form (a few hundred KB, not the 160 MB of the arrays): every array's digest,
    shape and dtype, the small arrays whole and evenly spaced samples of the large ones."""
    index, out = {}, {}
    for k, a in arrays.items():
        a = np.asarray(a)
        index[k] = [digest(a), list(a.shape), str(a.dtype)]
        flat = a.reshape(-1)
        if flat.size > SMALL:
            flat = flat[np.linspace(0, flat.size - 1, SAMPLES).astype(np.int64)]
        out[f"s/{k}"] = flat
    out["_index"] = np.asarray(json.dumps(index, sort_keys=True))
    out["_fingerprint"] = np.asarray(fingerprint())
    return out


HOSTS = REPO / "tests" / "goldens" / "hosts"


def host_file() -> pathlib.Path:
    """This host's recording: ``hosts/var-<sha256(fingerprint)[:12]>.npz``."""
    return HOSTS / f"var-{hashlib.sha256(fingerprint().encode()).hexdigest()[:12]}.npz"


def host_dependent(name: str) -> bool:
    """Goldens no tolerance can compare across hosts: calibration turns ulp-level differences
    into other candidates (quantized trees, their logits and the tokens generated from them)."""
    if name.startswith(("tree_", "tokens_packed_")):
        return True
    return name.startswith("logits_") and name not in ("logits_f32", "logits_bf16")


def cross_machine_tolerance(name: str) -> float:
    """Relative bound on a float golden computed on another CPU or jax build.

    float32 pipelines: 1e-6 (reduction order and vector width). The bfloat16 model (`*_bf16`)
    rounds every activation to bfloat16, whose unit roundoff is 2^-8: another CPU rounds its
    bf16 matmuls at that level (a Zen 4 EPYC with AVX512-BF16 put logits_bf16 1.9e-4 of the
    largest logit from the goldens recorded without it, measured 2026-12-07), so the bound is one
    unit roundoff of the largest magnitude.
    """
    return 2.0**-8 if name.endswith("_bf16") else 1e-6


def compare(stored: dict[str, np.ndarray], got: dict[str, np.ndarray], *, exact: bool) -> list[str]:
    """Differences, one line each (empty when they agree). `exact` (the recording machine): every
    array's digest must match. Otherwise (another CPU or jax build): shapes and dtypes match,
    integer samples are equal and float samples within `cross_machine_tolerance` of their
    largest magnitude."""
    index = json.loads(str(stored["_index"]))
    problems = []
    for k in sorted(set(index) | set(got)):
        if k not in got:
            problems.append(f"{k}: missing now")
            continue
        if k not in index:
            problems.append(f"{k}: new (not in the goldens)")
            continue
        want_digest, shape, dtype = index[k]
        a = np.asarray(got[k])
        if list(a.shape) != shape or str(a.dtype) != dtype:
            problems.append(f"{k}: {dtype}{tuple(shape)} golden vs {a.dtype}{a.shape} now")
            continue
        if exact:
            if digest(a) != want_digest:
                problems.append(f"{k}: differs ({_sample_diff(stored[f's/{k}'], a)})")
            continue
        want = stored[f"s/{k}"]
        flat = a.reshape(-1)
        if flat.size > SMALL:
            flat = flat[np.linspace(0, flat.size - 1, SAMPLES).astype(np.int64)]
        if a.dtype.kind in "iub":
            if not np.array_equal(flat, want):
                problems.append(f"{k}: {int(np.sum(flat != want))} of {want.size} samples differ")
        else:
            d = np.abs(flat.astype(np.float64) - want.astype(np.float64))
            scale = max(float(np.max(np.abs(want.astype(np.float64)))), 1e-30)
            if d.max() > cross_machine_tolerance(k) * scale:
                problems.append(f"{k}: samples differ by up to {d.max():.3g} (of {scale:.3g})")
    return problems


def _sample_diff(want: np.ndarray, a: np.ndarray) -> str:
    flat = a.reshape(-1)
    if flat.size > SMALL:
        flat = flat[np.linspace(0, flat.size - 1, SAMPLES).astype(np.int64)]
    d = np.abs(flat.astype(np.float64) - want.astype(np.float64))
    return f"max |diff| {d.max():.3g} on the stored samples"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--var-dir", default=str(REPO.parent / "shared" / "reference" / "var"))
    p.add_argument("--fast", action="store_true", help="only the fast part (no quantization)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out")
    g.add_argument("--check")
    args = p.parse_args(argv)
    got = compute(args.var_dir, slow=not args.fast)
    if args.out:
        out = host_file() if args.out == "host" else pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **pack(got))
        print(f"wrote {len(got)} arrays to {out}")
        return 0
    stored = dict(np.load(args.check))
    if args.fast:
        index = json.loads(str(stored["_index"]))
        stored["_index"] = np.asarray(json.dumps({k: v for k, v in index.items() if k in got}))
    exact = str(stored["_fingerprint"]) == fingerprint()
    problems = compare(stored, got, exact=exact)
    what = "bit-identical" if exact else "equal on the stored samples (another machine)"
    print("\n".join(problems) or f"all {len(got)} golden arrays {what}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
