"""Benchmark variants of one model: float32, bfloat16 and quantized (WxAy) parameter trees.

Everything here is built for speed measurements, which depend only on shapes and dtypes, never on
the values of weights or quantizer scales:

  * ``fast_random_model``: full-size random weights drawn leaf by leaf on the device from the
    abstract param tree (no compile of the model's init forward, which costs minutes at d30);
    scales follow the initialisers (fan-in normal kernels, zero biases, unit norm scales).
  * ``quantize_fast``: weights RTN, asymmetric per output channel with the min-max range
    (``QArray``, int8 containers for every bit width); activations static ``ActQuant`` fitted
    (min-max, per token group) on a short *synthetic* batch of standard-normal layer inputs, in
    the STWQ group layout of PTQ4ARVG: ``qkv``/``fc1`` one group per VAR scale (10 groups),
    ``proj``/``fc2`` sink token vs the rest (2 groups), ``ada_lin`` and ``head`` per tensor.
    ``quantize_calibrated`` instead runs one float forward of a synthetic calibration batch and
    the official percentile-MSE activation search (slower; same shapes and dtypes).

Every layer PTQ4ARVG quantizes is quantized (`arvg_jax.families.var.quant_adapter.VARAdapter`): all block linears,
``head_nm/ada_lin`` and ``head``; ``word_embed`` stays float, as in the official code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.options import ExecOptions

PRECISIONS = ("float32", "bfloat16", "w8a8", "w6a6", "w4a8")  # w4a8: weights two codes per byte
INT8_IMPLS = (
    "auto",
    "qarray",
    "xla",
    "barrier",
    "pallas",
    "pallas_ws",
    "pallas_pp",
)  # qarray: QArray [I, O], unpacked
ATTENTIONS = ("auto", "xla", "cudnn", "pallas")  # ExecOptions.attention
BLOCKS = ("scan", "unrolled")  # var_sampler.stack_blocks layout, or one unrolled copy per block
KV_MODES = ("auto", "stacked", "prefix", "full")  # ExecOptions.sampler_kv ("auto": its default)
FILTERS = ("auto", "sort", "bisect", "pallas")  # ExecOptions.sampling_filter
KERNEL_CHOICES = ("auto", "xla", "pallas")  # ExecOptions.attn_prologue / adaln_kernel
UNPACK_MODES = ("call", "layer")  # ExecOptions.nibble_unpack


def _is_page(n: int) -> bool:
    return n > 0 and n % 64 == 0  # ExecOptions.kv_page


@dataclasses.dataclass(frozen=True)
class Variant:
    """A benchmark variant:
    ``precision[+int8-IMPL][+attn-IMPL][+kv-MODE][+kvpage-N][+filter-METHOD][+prologue-IMPL]
    [+adaln-IMPL][+unpack-MODE][+gemm-bf16out][+ffn-unfused][+scan|+unrolled]``,
    e.g. ``w8a8+int8-qarray+unrolled`` or ``w8a8+kv-prefix+ffn-unfused+filter-sort`` (the sampler
    before the in-place KV cache, the fused fc1 quantization and the fused top-k / top-p kernel,
    for A/B rows in one run)."""

    spec: str
    precision: str
    int8_impl: str = "auto"
    attention: str = "auto"
    blocks: str = "scan"
    kv: str = "auto"
    ffn_fused: bool = True
    filter: str = "auto"
    kv_page: int = 0  # 0: VARConfig's default
    matmul_out: str = "float32"  # ExecOptions.matmul_out ("dtype": +gemm-bf16out)
    prologue: str = ""  # ExecOptions.attn_prologue ("": its default)
    adaln: str = ""  # ExecOptions.adaln_kernel ("": its default)
    unpack: str = ""  # ExecOptions.nibble_unpack ("": its default)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        base, *opts = spec.strip().split("+")
        if base not in PRECISIONS:
            raise ValueError(f"unknown precision {base!r} in {spec!r}; choose from {PRECISIONS}")
        kw: dict = {}
        for o in opts:
            if o.startswith("int8-") and o[5:] in INT8_IMPLS:
                kw["int8_impl"] = o[5:]
            elif o.startswith("attn-") and o[5:] in ATTENTIONS:
                kw["attention"] = o[5:]
            elif o.startswith("kv-") and o[3:] in KV_MODES:
                kw["kv"] = o[3:]
            elif o.startswith("kvpage-") and o[7:].isdigit() and _is_page(int(o[7:])):
                kw["kv_page"] = int(o[7:])
            elif o.startswith("filter-") and o[7:] in FILTERS:
                kw["filter"] = o[7:]
            elif o.startswith("prologue-") and o[9:] in KERNEL_CHOICES:
                kw["prologue"] = o[9:]
            elif o.startswith("adaln-") and o[6:] in KERNEL_CHOICES:
                kw["adaln"] = o[6:]
            elif o.startswith("unpack-") and o[7:] in UNPACK_MODES:
                kw["unpack"] = o[7:]
            elif o == "gemm-bf16out":
                kw["matmul_out"] = "dtype"
            elif o == "ffn-unfused":
                kw["ffn_fused"] = False
            elif o in BLOCKS:
                kw["blocks"] = o
            else:
                choices = (
                    f"int8-{{{','.join(INT8_IMPLS)}}}, attn-{{{','.join(ATTENTIONS)}}}, "
                    f"kv-{{{','.join(KV_MODES)}}}, kvpage-<multiple of 64>, "
                    f"filter-{{{','.join(FILTERS)}}}, prologue-{{{','.join(KERNEL_CHOICES)}}}, "
                    f"adaln-{{{','.join(KERNEL_CHOICES)}}}, unpack-{{{','.join(UNPACK_MODES)}}}, "
                    f"gemm-bf16out, ffn-unfused, "
                    f"{' or '.join(BLOCKS)}"
                )
                raise ValueError(f"unknown option {o!r} in {spec!r} ({choices})")
        if ("int8_impl" in kw or "ffn_fused" in kw) and base in ("float32", "bfloat16"):
            raise ValueError(f"{spec!r}: int8-* and ffn-unfused apply to quantized precisions only")
        return cls(spec=spec.strip(), precision=base, **kw)

    @property
    def bits(self) -> tuple[int, int] | None:
        if self.precision.startswith("w"):
            return int(self.precision[1]), int(self.precision[3])
        return None

    @property
    def dtype(self):
        """Compute dtype of the VAR blocks and the VQVAE decoder."""
        return jnp.float32 if self.precision == "float32" else jnp.bfloat16


def param_bytes(tree: Any) -> int:
    """Bytes of every array leaf (QArray / PackedKernel / ActQuant fields included)."""
    return int(
        sum(
            np.dtype(x.dtype).itemsize * int(np.prod(x.shape))
            for x in jax.tree_util.tree_leaves(tree)
        )
    )


def abstract_param_bytes(name: str, precisions) -> dict[str, int]:
    """`param_bytes` of a VAR preset's bench trees per precision, from shapes alone.

    Traces the float init, `quantize_fast`'s weight quantizer and `quant._packed.pack` with
    `jax.eval_shape` (activation quantizers are tiny and built concretely), so even VAR-d30
    costs no weights and no memory. Equal to `param_bytes` of the trees the bench builds
    (tests/bench_test.py checks it on the tiny model).
    """
    from arvg_jax.families.var.model import VAR
    from arvg_jax.families.var.quant_adapter import VARAdapter
    from arvg_jax.models import resolve_configs
    from quant import _packed, _tree

    _, cfg, _ = resolve_configs(name, None)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    x = jax.ShapeDtypeStruct((1, cfg.seq_len - cfg.first_l, cfg.cvae), jnp.float32)
    abstract = jax.eval_shape(
        lambda k, l, x: VAR(cfg).init(k, l, x)["params"], jax.random.PRNGKey(0), labels, x
    )
    adapter = VARAdapter(cfg)
    tables = _layer_tables(adapter)
    out = {}
    for spec in precisions:
        variant = Variant.parse(spec)
        if variant.bits is None:
            tree = (
                abstract
                if variant.precision == "float32"
                else jax.eval_shape(to_bfloat16, abstract)
            )
            out[spec] = param_bytes(tree)
            continue
        w, a = variant.bits
        flat = _tree.flatten(abstract)
        for layer in adapter.quantized_layers():
            flat[f"{layer}/kernel"] = jax.eval_shape(
                functools.partial(_rtn_minmax, bits=w), flat[f"{layer}/kernel"]
            )
            table = tables.get(adapter.layer_kind(layer))
            if table is None:
                table = np.zeros((1,), np.int32)
            groups = int(np.max(table)) + 1
            lo, hi = -np.ones(groups, np.float32), np.ones(groups, np.float32)
            flat[f"{layer}/input_quant"] = _act_quant_minmax(lo, hi, a, table)
        tree = jax.eval_shape(_packed.pack, _tree.unflatten(flat))
        out[spec] = param_bytes(tree)
    return out


def to_bfloat16(params: Any) -> Any:
    """Float leaves -> bfloat16 storage (the model casts to its compute dtype where it reads)."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


@functools.partial(jax.jit, static_argnames=("bits",))
def _rtn_minmax(kernel, bits: int):
    """Per-output-column asymmetric min-max quantization of a [I, O] kernel (on the device)."""
    from quant import quantize_weight

    return quantize_weight(kernel, bits, method="minmax")


def _random_leaf(key, path: str, leaf):
    shape, dtype = leaf.shape, leaf.dtype
    name = path.split("/")[-1]
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.zeros(shape, dtype)
    if name == "bias" or name.startswith("shift") or name == "pos_start":
        return jnp.zeros(shape, dtype)
    if name == "scale" and len(shape) == 1:  # norm scales
        return jnp.ones(shape, dtype)
    if name == "scale_mul":  # attention temperature: log(4), the official init
        return jnp.full(shape, np.log(4.0), dtype)
    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        return jax.random.normal(key, shape, dtype) * (fan_in**-0.5)
    return jax.random.normal(key, shape, dtype) * 0.02  # embeddings, codebook, ada_gss


def random_params(abstract: Any, seed: int) -> Any:
    """Random arrays for an abstract param tree (ShapeDtypeStruct leaves), drawn on the device."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(abstract, sep="/")
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    out = {p: _random_leaf(k, p, leaf) for k, (p, leaf) in zip(keys, sorted(flat.items()))}
    return traverse_util.unflatten_dict(out, sep="/")


def fast_random_model(name: str, seed: int = 0):
    """`arvg_jax.models.random_model` without compiling the init forward (see module doc)."""
    from arvg_jax.families.var.model import VAR
    from arvg_jax.models import Model, resolve_configs
    from arvg_jax.tokenizers import var_vqvae

    _, cfg, vae_cfg = resolve_configs(name, None)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    x = jax.ShapeDtypeStruct((1, cfg.seq_len - cfg.first_l, cfg.cvae), jnp.float32)
    abstract = jax.eval_shape(
        lambda k, l, x: VAR(cfg).init(k, l, x)["params"], jax.random.PRNGKey(0), labels, x
    )
    params = random_params(abstract, seed)
    vae_params = random_params(var_vqvae.abstract_params(vae_cfg), seed + 1)
    return Model(
        "var",
        cfg,
        params,
        vae_cfg,
        vae_params,
        name=f"{name} (random weights)",
        source={"random_seed": seed, "init": "arvg_jax.families.var.bench.build.fast_random_model"},
    )


@functools.partial(jax.jit, static_argnames=("shape", "num_groups"))
def _synthetic_group_ranges(key, group_of_position, shape, num_groups):
    """Per-group (min, max) of a standard-normal synthetic batch [N, T, C] (T = table size)."""
    x = jax.random.normal(key, shape, jnp.float32)
    per_pos_lo = jnp.min(x, axis=(0, 2))
    per_pos_hi = jnp.max(x, axis=(0, 2))
    lo = jax.ops.segment_min(per_pos_lo, group_of_position, num_segments=num_groups)
    hi = jax.ops.segment_max(per_pos_hi, group_of_position, num_segments=num_groups)
    return lo, hi


def _act_quant_minmax(lo, hi, bits: int, table):
    from quant._qarray import ActQuant

    lo = np.minimum(np.asarray(lo, np.float32), 0)
    hi = np.maximum(np.asarray(hi, np.float32), 0)
    delta = np.maximum((hi - lo) / np.float32(2**bits - 1), np.float32(1e-8)).astype(np.float32)
    zp = np.round(-lo / delta).astype(np.float32)
    return ActQuant.from_official(delta, zp, bits, group_of_position=table)


def calibration_batch(model, n: int, seed: int) -> dict[str, Any]:
    """Synthetic calibration inputs: random labels and random token maps through the VQVAE."""
    from arvg_jax.families.var.quant_adapter import tokens_to_batch

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, model.cfg.num_classes, size=n).astype(np.int32)
    tokens = rng.integers(0, model.cfg.vocab_size, size=(n, model.cfg.seq_len)).astype(np.int32)
    return tokens_to_batch(model.vae_params, model.vae_cfg, labels, tokens)


def _layer_tables(adapter):
    """Layer kind -> STWQ token-group table (None = per tensor)."""
    scale, sink = adapter.group_table("scale"), adapter.group_table("sink")
    return {"qkv": scale, "fc1": scale, "proj": sink, "fc2": sink}


def quantize_fast(model, bit_pairs, *, calib: int = 2, seed: int = 0) -> dict[tuple, dict]:
    """Quantized param trees (QArray kernels + ActQuant) for each (w_bits, a_bits) pair, from
    min-max fits on synthetic standard-normal layer inputs (module doc); no model forward."""
    from arvg_jax.families.var.quant_adapter import VARAdapter
    from quant import _tree

    adapter = VARAdapter(model.cfg)
    tables = _layer_tables(adapter)
    flat = _tree.flatten(model.params)
    key = jax.random.PRNGKey(seed)
    ranges = {}
    trees = {(w, a): dict(flat) for w, a in bit_pairs}
    for li, name in enumerate(adapter.quantized_layers()):
        kernel = flat[f"{name}/kernel"]
        table = tables.get(adapter.layer_kind(name))
        if table is None:
            table = np.zeros((1,), np.int32)
        t = int(table.shape[0])
        groups = int(table.max()) + 1
        shape = (calib, t, int(kernel.shape[0]))
        if (shape, groups) not in ranges:
            ranges[(shape, groups)] = _synthetic_group_ranges(
                jax.random.fold_in(key, li), jnp.asarray(table), shape, groups
            )
        lo, hi = ranges[(shape, groups)]
        for w, a in bit_pairs:
            trees[(w, a)][f"{name}/kernel"] = _rtn_minmax(kernel, w)
            trees[(w, a)][f"{name}/input_quant"] = _act_quant_minmax(lo, hi, a, table)
    return {k: _tree.unflatten(v) for k, v in trees.items()}


def quantize_calibrated(model, bit_pairs, *, calib: int = 2, seed: int = 0) -> dict[tuple, dict]:
    """Like `quantize_fast`, but the activation quantizers use the official percentile-MSE
    search on the layer inputs of one float forward of ``calib`` synthetic sequences."""
    from arvg_jax.families.var.quant_adapter import VARAdapter
    from quant import _tree
    from quant._calibrate import collect
    from quant._quantizers import fit_act_quant

    adapter = VARAdapter(model.cfg)
    tables = {"scale": adapter.group_table("scale"), "sink": adapter.group_table("sink")}
    layout = {"qkv": "scale", "fc1": "scale", "proj": "sink", "fc2": "sink"}
    a_bits = sorted({a for _, a in bit_pairs})

    def fit(name, x, layer):
        x = jnp.asarray(x, jnp.float32)
        groups = layout.get(adapter.layer_kind(name))
        out = {}
        for a in a_bits:
            if groups is None:
                out[a] = fit_act_quant(x, a)
            else:
                out[a] = fit_act_quant(x, a, group_of_position=tables[groups])
        return out

    batch = calibration_batch(model, calib, seed)
    covered = set(adapter.quantized_layers())
    act = collect(adapter, model.params, batch, fit, layers=covered.__contains__, progress=False)
    flat = _tree.flatten(model.params)
    trees = {}
    for w, a in bit_pairs:
        new = dict(flat)
        for name in adapter.quantized_layers():
            new[f"{name}/kernel"] = _rtn_minmax(flat[f"{name}/kernel"], w)
            new[f"{name}/input_quant"] = act[name][a]
        trees[(w, a)] = _tree.unflatten(new)
    return trees


def variant_params(model, variant: Variant, quantized: dict[tuple, dict]):
    """(params, var_cfg, vae_cfg, ExecOptions) of a variant; ``quantized`` from
    ``quantize_fast``."""
    from arvg_jax.families.var import sampler as var_sampler
    from quant import _packed

    opts = ExecOptions(
        dtype=variant.dtype,
        attention=variant.attention,
        fuse_ffn_quant=variant.ffn_fused,
        sampling_filter=variant.filter,
    )
    changes = {
        "sampler_kv": variant.kv if variant.kv != "auto" else None,
        "matmul_out": variant.matmul_out if variant.matmul_out != "float32" else None,
        "kv_page": variant.kv_page or None,
        "attn_prologue": variant.prologue or None,
        "adaln_kernel": variant.adaln or None,
        "nibble_unpack": variant.unpack or None,
        "decode_dtype": jnp.dtype(variant.dtype).name,
    }
    opts = opts.replace(**{k: v for k, v in changes.items() if v is not None})
    var_cfg = model.cfg
    vae_cfg = model.vae_cfg
    if variant.precision == "float32":
        params = model.params
    elif variant.precision == "bfloat16":
        params = to_bfloat16(model.params)
    elif variant.int8_impl == "qarray":
        params = quantized[variant.bits]
    else:
        params = _packed.pack(quantized[variant.bits], impl=variant.int8_impl)
    if variant.blocks == "scan":
        params = var_sampler.stack_blocks(params)
    return params, var_cfg, vae_cfg, opts
