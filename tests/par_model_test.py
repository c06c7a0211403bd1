"""PAR model structure: param paths, piecewise forward (calibration) = full forward, sown inputs."""

import jax
import jax.numpy as jnp
import numpy as np
from _par_tiny import cfg as _cfg
from _par_tiny import params as _params
from flax import traverse_util

from arvg_jax.families.par.model import PAR, abstract_params


def test_param_paths_are_per_layer_dense_kernels():
    cfg = _cfg("4x")
    flat = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    c, f, v = cfg.dim, cfg.ffn_dim, cfg.vocab_size
    assert flat["layers_1/attention/wqkv/kernel"].shape == (c, 3 * c)
    assert flat["layers_0/feed_forward/w2/kernel"].shape == (f, c)
    assert flat["output/kernel"].shape == (c, v)
    assert flat["cls_embedding/embedding"].shape == (cfg.num_classes + 1, c)
    assert flat["spe_tok_embeddings/embedding"].shape == (cfg.spe_token_num, c)
    assert not any(p.endswith("bias") for p in flat)  # LlamaGen has no biases
    assert len(flat) == 3 + 7 * cfg.n_layer + 2


def test_piecewise_forward_and_sown_inputs():
    cfg, params = _cfg("4x"), _params("4x")
    model = PAR(cfg)
    labels = jnp.array([2, 11])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, cfg.block_size)))
    full = model.apply({"params": params}, labels, tokens)
    x = model.apply({"params": params}, labels, tokens, method=PAR.embed)
    assert x.shape == (2, cfg.seq_len - 1, cfg.dim)
    for i in range(cfg.n_layer):
        x, state = model.apply(
            {"params": params}, x, i=i, method=PAR.apply_layer, mutable=["intermediates"]
        )
        sown = traverse_util.flatten_dict(state["intermediates"], sep="/")
        assert sorted(sown) == [
            f"layers_{i}/{m}/input"
            for m in (
                "attention/wo",
                "attention/wqkv",
                "feed_forward/w1",
                "feed_forward/w2",
                "feed_forward/w3",
            )
        ]
    logits = model.apply({"params": params}, x, method=PAR.head)[:, : cfg.block_size]
    np.testing.assert_allclose(logits, full, rtol=0, atol=1e-5)
    bidir = model.apply({"params": params}, x, i=0, mask="none", method=PAR.apply_layer)
    assert not np.allclose(bidir, model.apply({"params": params}, x, i=0, method=PAR.apply_layer))
    assert jax.tree.leaves(full)[0].dtype == jnp.float32
