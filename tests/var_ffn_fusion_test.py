"""VAR's FFN with packed int8 fc1/fc2 on the fused Hopper kernel: fc1's epilogue produces fc2's
int8 input codes (ExecOptions.fuse_ffn_quant). It must generate what the unfused layers generate."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.families.var import sampler as var_sampler
from arvg_jax.families.var.model import FFN
from arvg_jax.options import ExecOptions
from quant import _packed, _pallas_gpu


@functools.cache
def _quantized(name="var-test", seed=3, **cfg_overrides):
    from arvg_jax.families.var.bench import build
    from arvg_jax.models import random_model

    model = random_model(name, seed=seed)
    if cfg_overrides:
        from arvg_jax.families.var.model import VAR

        cfg = dataclasses.replace(model.cfg, **cfg_overrides)
        x = np.zeros((1, cfg.seq_len - cfg.first_l, cfg.cvae), np.float32)
        params = VAR(cfg).init(jax.random.PRNGKey(seed), np.zeros((1,), np.int32), x)["params"]
        model = dataclasses.replace(model, cfg=cfg, params=params)
    return model, build.quantize_fast(model, [(8, 8)], calib=2, seed=0)[(8, 8)]


def _generate(model, params, fuse, batch=2, platform=None):
    opts = ExecOptions(fuse_ffn_quant=fuse, dtype="bfloat16", platform=platform)
    labels = np.arange(batch, dtype=np.int32) * 3 % model.cfg.num_classes
    return var_sampler.generate(
        params,
        model.vae_params,
        model.cfg,
        model.vae_cfg,
        labels,
        jax.random.PRNGKey(2),
        options=opts,
        greedy=True,
        top_k=0,
        top_p=0.0,
    )


@pytest.mark.slow  # interpret-mode kernels on CPU; run on the GPU with the GPU modules
def test_fused_ffn_path_is_taken_only_for_packed_pallas_layers(monkeypatch):
    model, qtree = _quantized()
    ffn = _packed.pack(qtree, impl="xla")["blocks_0"]["ffn"]
    cfg, bf16 = model.cfg, ExecOptions(dtype="bfloat16")
    probe = FFN(cfg, bf16)
    calls = []
    real = _packed.packed_dense_act_quant
    monkeypatch.setattr(
        _packed, "packed_dense_act_quant", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x = jnp.ones((2, 4, cfg.embed_dim), jnp.bfloat16)
    pos = np.arange(1, 5)
    probe.apply({"params": ffn}, x, positions=pos)  # the portable "xla" impl: unfused
    assert not calls
    pallas = _packed.pack(qtree, impl="pallas")["blocks_0"]["ffn"]
    monkeypatch.setattr(_packed, "_pallas_eligible", lambda *a: False)  # no kernel on CPU
    probe.apply({"params": pallas}, x, positions=pos)
    assert calls
    calls.clear()
    FFN(cfg, bf16.replace(fuse_ffn_quant=False)).apply({"params": pallas}, x, positions=pos)
    FFN(cfg, ExecOptions()).apply({"params": pallas}, x, positions=pos)
    assert not calls


@pytest.mark.slow  # interpret-mode kernels on CPU; run on the GPU with the GPU modules
@pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason=(
        "an exactness check of XLA:CPU's compilation: on an H100 (2026-11-27) it failed, XLA:GPU "
        "fusing and rounding the two paths differently; the GPU comparison (tokens up to "
        "near-ties) is test_fused_ffn_on_the_kernel_matches_unfused_on_gpu"
    ),
)
def test_fused_ffn_generates_the_unfused_tokens_on_cpu(monkeypatch):
    """The fused layer pair's portable path (what it computes where the kernel cannot run) on
    the same codes: bf16 generation, greedy, the same tokens as the unfused layers."""
    model, qtree = _quantized()
    params = var_sampler.stack_blocks(_packed.pack(qtree, impl="pallas"))
    monkeypatch.setattr(_packed, "_pallas_eligible", lambda *a: False)
    # Built for a GPU target (a "pallas" impl is refused for a CPU one): on a CPU host every
    # choice is the portable one and no call takes the kernel, so the program runs here.
    fused = _generate(model, params, True, platform="gpu")
    plain = _generate(model, params, False, platform="gpu")
    np.testing.assert_array_equal(fused["tokens"], plain["tokens"])
    np.testing.assert_allclose(fused["images"], plain["images"], atol=2e-2)


@pytest.mark.skipif(
    not _pallas_gpu.available(), reason=f"fused kernel: {_pallas_gpu.unavailable_reason()}"
)
def test_fused_ffn_on_the_kernel_matches_unfused_on_gpu():
    """A VAR wide enough for the kernel (C 256; rows 2B·l = 1152 at the last scale): fused
    and unfused FFNs generate the same tokens, except where a code moved by one (a float32
    tanh difference, `quant._packed.packed_dense_act_quant`) flips a near-tie."""
    model, qtree = _quantized("var-test", 5, depth=2, embed_dim=256, num_heads=4)
    params = var_sampler.inference_layout(qtree)
    fused = _generate(model, params, True, batch=64)
    plain = _generate(model, params, False, batch=64)
    agree = np.mean(np.asarray(fused["tokens"]) == np.asarray(plain["tokens"]))
    assert agree >= 0.99, agree
