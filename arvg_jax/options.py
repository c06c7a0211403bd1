"""Execution options: how a model runs (dtype, kernels, layouts), apart from what it is.

A family's config holds what the checkpoint determines (the official constructor arguments);
everything here is a choice of the machine running it: never saved in checkpoints, passed to
samplers and models as a static argument, with every ``"auto"`` resolved once per target platform
(`ExecOptions.resolve`) outside tracing. None of these changes the function computed, only float
rounding and speed.

The target platform defaults to the runtime backend but may be any of cpu / gpu / tpu, so a TPU
program can be built (e.g. `jax.export` with ``platforms=("tpu",)``) on a CPU or GPU host. "auto"
picks a GPU kernel (Triton, Mosaic GPU, cuDNN) only for a GPU target on a GPU host, where its
availability can be checked; an explicitly requested GPU kernel on a cpu / tpu target is refused
by `resolve` (one-line ValueError naming the option and the platform), never run in Pallas
interpret mode unless the testing switch `interpret` asks for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

Dtype = Literal["float32", "bfloat16", "float16"]
Attention = Literal["auto", "xla", "cudnn", "pallas"]
SamplerKV = Literal["prefix", "full", "stacked"]
MatmulOut = Literal["float32", "dtype"]
Kernel = Literal["auto", "xla", "pallas"]
NibbleUnpack = Literal["call", "layer"]
Platform = Literal["cpu", "gpu", "tpu"]

# Fields an older checkpoint config may carry (they lived in VARConfig before 0.2): dropped on read.
FIELDS = (
    "dtype",
    "attention",
    "sampling_filter",
    "sampler_kv",
    "kv_page",
    "matmul_out",
    "attn_prologue",
    "adaln_kernel",
    "scan_unroll",
    "fuse_ffn_quant",
    "nibble_unpack",
)
LEGACY_CONFIG_FIELDS = frozenset(FIELDS) | {"param_dtype"}


def _check(name: str, value: Any, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecOptions:
    """How to run a model; hashable, so it is a static jit argument.

    Attributes:
      dtype: compute dtype of the transformer matmuls and KV cache (params stay float32; norms,
        embeddings, heads and logits run in float32). bfloat16 is the official autocast inference.
      decode_dtype: compute dtype of the tokenizer's decoder (image decoding); float32 is the
        official precision (the VQVAE/VAE decode outside autocast).
      attention: cached-sampling attention: "xla" (einsum + float32 softmax), "cudnn"
        (`jax.nn.dot_product_attention`; 16-bit dtypes and head dims cuDNN takes), "pallas"
        (VAR's stacked cache read in place, `arvg_jax.kernels.stacked_attention_pallas`) or
        "auto" (on GPU in 16-bit: cudnn where the head dim fits; else xla; "pallas" is opt-in
        until measured on a GPU). Teacher forcing always uses xla.
      sampling_filter: the top-k / top-p filter (`arvg_jax.sampling.top_k_top_p_filter`): "sort"
        (the official two sorts), "bisect[:bits[:chunk]]" (sort-free, XLA), "pallas" (one GPU
        kernel) or "auto" (pallas on NVIDIA GPUs, else sort).
      sampler_kv: KV layout of VAR's stacked sampler: "stacked" (the scan writes into the
        layer-stacked cache and attends to the block's written prefix, read in place by the
        "pallas" attention), "prefix" (slices the written prefix, a copy) or "full" (masks the
        unwritten tail).
      kv_page: the "stacked" cache's length is padded to a multiple of it (a multiple of 64,
        the stacked attention kernel's key tile).
      matmul_out: float Dense output precision: "float32" (the official single rounding) or
        "dtype" (16-bit matmul outputs, two roundings).
      attn_prologue: qkv bias + rounding + q/k norm + cache writes as one Pallas kernel
        ("pallas"), separate XLA ops ("xla") or "auto" (pallas on NVIDIA GPUs where it applies).
      adaln_kernel: residual add + LayerNorm + modulation (+ next layer's int8 codes) as one
        Pallas kernel ("pallas"), XLA ("xla", default: no measured gain) or "auto".
      scan_unroll: `lax.scan` unroll factor over stacked blocks.
      fuse_ffn_quant: packed int8 fc1 on the Hopper kernel emits fc2's int8 input codes.
      nibble_unpack: 4-bit weights stored two per byte are expanded once per generate call
        ("call") or at every layer call ("layer").
      qkv_shards: M, the model shards the fused q|k|v columns are laid out over
        (`arvg_jax.nn.attention.split_qkv`): 1 is the official layout; M > 1 reads the
        model-shard-major layout that `arvg_jax.parallel.rules.place` gives a tree on a mesh with
        model=M (head-parallel attention). Set by `arvg_jax.parallel.generate` from the params'
        placement, not by hand; an attention whose heads M does not divide reads the official
        layout. VAR's Pallas attention prologue reads the official layout only ("auto" then
        takes XLA, an explicit "pallas" is refused).
      platform: the platform the program is built for ("cpu", "gpu", "tpu"); None until
        `resolve` sets it (the runtime backend unless asked otherwise).
      interpret: testing switch: Pallas GPU kernels requested explicitly ("pallas") on a non-GPU
        target run in Pallas interpret mode (slow; how the CPU tests check the kernels) instead
        of being refused by `resolve`.
    """

    dtype: Dtype = "float32"
    decode_dtype: Dtype = "float32"
    attention: Attention = "auto"
    sampling_filter: str = "auto"
    sampler_kv: SamplerKV = "stacked"  # in-place KV writes (BENCHMARKS.md, VAR-d30 b64 on H100)
    kv_page: int = 64
    matmul_out: MatmulOut = "float32"
    attn_prologue: Kernel = "auto"  # VAR-d30 b64 on H100: bf16 −18 ms, W8A8 −7 ms (BENCHMARKS.md)
    adaln_kernel: Kernel = "xla"  # "pallas": no measurable gain at VAR-d30 b64 (BENCHMARKS.md)
    scan_unroll: int = 1
    fuse_ffn_quant: bool = True
    nibble_unpack: NibbleUnpack = "call"
    qkv_shards: int = 1
    platform: Platform | None = None
    interpret: bool = False

    def __post_init__(self):
        # Accept any dtype spelling (jnp.bfloat16, "bfloat16", np.dtype) and keep the name.
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        _check("dtype", self.dtype, Dtype)
        _check("decode_dtype", self.decode_dtype, Dtype)
        _check("attention", self.attention, Attention)
        _check("sampler_kv", self.sampler_kv, SamplerKV)
        _check("matmul_out", self.matmul_out, MatmulOut)
        _check("attn_prologue", self.attn_prologue, Kernel)
        _check("adaln_kernel", self.adaln_kernel, Kernel)
        _check("nibble_unpack", self.nibble_unpack, NibbleUnpack)
        if self.platform is not None:
            _check("platform", self.platform, Platform)
        from arvg_jax.sampling import parse_filter_method

        parse_filter_method(self.sampling_filter)  # raises on a bad spec
        if not (isinstance(self.kv_page, int) and self.kv_page >= 64 and self.kv_page % 64 == 0):
            raise ValueError(f"kv_page must be a positive multiple of 64, got {self.kv_page!r}")
        if not (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1):
            raise ValueError(f"scan_unroll must be a positive int, got {self.scan_unroll!r}")
        if not (isinstance(self.qkv_shards, int) and self.qkv_shards >= 1):
            raise ValueError(f"qkv_shards must be a positive int, got {self.qkv_shards!r}")

    @property
    def compute_dtype(self) -> Any:
        """The jnp scalar type of `dtype` (jnp.float32, jnp.bfloat16, ...)."""
        return jnp.dtype(self.dtype).type

    @property
    def decode_compute_dtype(self) -> Any:
        """The jnp scalar type of `decode_dtype`."""
        return jnp.dtype(self.decode_dtype).type

    @property
    def half(self) -> bool:
        return self.dtype in ("bfloat16", "float16")

    def replace(self, **changes) -> ExecOptions:
        return dataclasses.replace(self, **changes)

    @property
    def target(self) -> str:
        """The platform the program is built for: `platform`, else the runtime backend."""
        return self.platform or current_platform()

    @property
    def gpu_here(self) -> bool:
        """Whether the target is a GPU and this process runs on one: only then can "auto" check
        that a GPU kernel is available (elsewhere it takes the portable XLA choice)."""
        return self.target == "gpu" and current_platform() == "gpu"

    @property
    def pallas_interpret(self) -> bool:
        """Whether explicitly requested Pallas GPU kernels run in interpret mode: only with the
        testing switch `interpret`, and only off GPU targets."""
        return self.interpret and self.target != "gpu"

    def resolve(self, platform: str | None = None) -> ExecOptions:
        """This with `platform` set (argument, else the field, else the runtime backend) and
        every "auto" resolved for it where the platform decides (on a GPU host, "auto" kernels
        whose use depends on the model's shapes stay "auto" and are decided when traced).

        Idempotent; cheap (no tracing), so samplers call it on every call.

        Raises:
          ValueError: a kernel was requested that cannot run on the platform (cuDNN attention,
            a Pallas GPU kernel on cpu / tpu without the `interpret` testing switch).
        """
        target = platform or self.platform or current_platform()
        _check("platform", target, Platform)
        out = self.replace(platform=target)
        if target != "gpu":
            if out.attention == "cudnn":
                raise _refuse("attention", "cudnn", target, "cuDNN runs on NVIDIA GPUs only")
            name = _filter_name(out.sampling_filter)
            for field, value in (
                ("attention", out.attention),
                ("sampling_filter", name),
                ("attn_prologue", out.attn_prologue),
                ("adaln_kernel", out.adaln_kernel),
            ):
                if value == "pallas" and not out.interpret:
                    raise _refuse(field, "pallas", target, "a Pallas GPU (Triton) kernel")
        here = out.gpu_here
        changes = {}
        if out.sampling_filter == "auto":
            changes["sampling_filter"] = "pallas" if here and _filter_kernel_available() else "sort"
        if not here:  # "auto" keeps a GPU kernel only where its availability is checked
            for field in ("attention", "attn_prologue", "adaln_kernel"):
                if getattr(out, field) == "auto":
                    changes[field] = "xla"
        return out.replace(**changes) if changes else out


def _filter_kernel_available() -> bool:
    from arvg_jax.kernels import sampling_pallas  # imports Pallas: only on GPU hosts

    return sampling_pallas.available()


def _filter_name(spec: str) -> str:
    from arvg_jax.sampling import parse_filter_method

    return parse_filter_method(spec)[0]


def _refuse(field: str, value: str, platform: str, why: str) -> ValueError:
    portable = "sort" if field == "sampling_filter" else "xla"
    return ValueError(
        f"{field} {value!r} cannot run on platform {platform!r} ({why}); use {portable!r} or 'auto'"
    )


def current_platform() -> str:
    """ "cpu", "gpu" or "tpu": the default backend of this process."""
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def from_legacy_config(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a stored config dict into (architecture fields, execution fields it carried)."""
    arch = {k: v for k, v in d.items() if k not in LEGACY_CONFIG_FIELDS}
    execution = {k: v for k, v in d.items() if k in FIELDS}
    return arch, execution
