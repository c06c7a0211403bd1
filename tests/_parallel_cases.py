"""Cases on 8 fake CPU devices, run in a fresh interpreter by `parallel_devices_test.py`.

`--xla_force_host_platform_device_count=8` only works if set before jax starts, so each case
runs as `python tests/_parallel_cases.py CASE [ARGS]` (XLA_FLAGS set by the caller); it prints
one JSON line of results and exits 0, or raises.
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py

# Few steps keep the slow samplers (MAR's head, PAR's 256x256 decoder) affordable on CPU.
FAST = {"mar": {"num_iter": 2, "num_sampling_steps": "2", "cfg": 2.0}}


def model(name: str, random_draws: bool = True):
    """(family, cfg, tok_cfg, params, tok_params) of a test preset with random weights.

    `random_draws`: seeded normal draws into the abstract tree (`jax.eval_shape` of the family's
    init: no init compile, ~10x faster for var-test); False: the family's own init.
    """
    from arvg_jax import families

    fam, preset = families.preset(name)
    cfg, tok_cfg = preset.config(), preset.tokenizer_config()
    if random_draws:
        rng = np.random.default_rng(0)
        abstract = jax.eval_shape(lambda: fam.init_params(cfg, tok_cfg, 0))
        params, tok = jax.tree_util.tree_map(
            lambda x: np.float32(0.3) * rng.standard_normal(x.shape, np.float32), abstract
        )
    else:
        params, tok = fam.init_params(cfg, tok_cfg, 0)
    return fam, cfg, tok_cfg, params, tok


def rtn_tree(fam, cfg, tok_cfg, params, tok) -> dict:
    """RTN W8A8 of `params` (weights per output column, activations and the attention matmuls
    per tensor), calibrated on 4 images the float model generates."""
    from quant import api
    from quant.recipes import Recipe

    generate = fam.calibration_generator(params, tok, cfg, tok_cfg)
    cands = generate(4, seed=0, gen_batch=4, progress=False, **FAST.get(fam.name, {}))
    batch = fam.calibration_batch(tok, tok_cfg, cands)
    recipe = Recipe.parse("rtn", "w8a8", calib=4)
    return api.quantize(fam.quant_adapter(cfg), params, batch, recipe, progress=False)[0]


_INSTRUCTION = re.compile(r"%([\w.\-]+) = [a-z0-9]+\[([\d,]*)\]")
_DOT = re.compile(r"\bdot\(%([\w.\-]+), %([\w.\-]+)\)")


def dot_operand_shapes(hlo: str) -> set[tuple[int, ...]]:
    """The shapes of every dot's operands in a compiled (per-device) HLO module's text."""
    shapes = {
        m.group(1): tuple(int(d) for d in m.group(2).split(",") if d)
        for m in _INSTRUCTION.finditer(hlo)
    }
    return {shapes[n] for m in _DOT.finditer(hlo) for n in m.groups() if n in shapes}


def head_facts(fam, cfg, hlo: str, model: int) -> dict:
    """Per fused attention layer: which kernel shards the compiled program's dots read. A layer of
    H heads (G kv heads, head dim K, width C = H K) split over M devices multiplies by its qkv
    kernel [C, (H + 2G) K / M] (PackedKernel codes transposed) and its proj kernel [C / M, C];
    "qkv_whole" says whether any dot still reads a whole qkv kernel."""
    from arvg_jax.parallel import heads

    shapes = dot_operand_shapes(hlo)

    def has(a, b):
        return (a, b) in shapes or (b, a) in shapes

    out = {}
    for layer in heads.split_rules(fam.sharding_rules(cfg))[1]:
        c, m = layer.q_heads * layer.head_dim, layer.shards(model)
        out[layer.qkv] = {
            "shards": m,
            "qkv_local": has(c, layer.columns // m),
            "qkv_whole": has(c, layer.columns),
            "proj_local": has(c // m, c),
        }
    return out


def sampling_case(name: str, specs: str, reference: str = "full", tree: str = "float") -> dict:
    """Tokens and images of sharded runs on each mesh of `specs` (";"-separated) and of the
    one-device run they are compared with: `reference` "full" (one call on the whole batch) or
    "shard" (one call per shard's batch); `tree` "float" or "rtn" (`rtn_tree`). Params are placed
    by the family's rules with its fused attention layers (`sharding_rules(cfg)`), so a model
    axis splits attention heads and MLP columns; for such meshes the compiled program's dot
    shapes are reported (`head_facts`)."""
    from arvg_jax import families
    from arvg_jax.options import ExecOptions
    from arvg_jax.parallel import generate as pgen
    from arvg_jax.parallel import heads, make_mesh, rules

    # MAR's random draws blow up its continuous tokens: its own init is cheap and tame.
    fam, cfg, tok_cfg, params, tok = model(name, random_draws=not name.startswith("mar"))
    if tree == "rtn":
        params = rtn_tree(fam, cfg, tok_cfg, params, tok)
    params = fam.inference_layout(params)
    sampling = {**fam.sampling_defaults(cfg), **FAST.get(fam.name, {})}
    n = 8
    labels = np.arange(n) % fam.num_classes(cfg)
    keys = families.image_keys(0, 0, n)
    opts = ExecOptions()
    refs = {}

    def one_device(batch):
        if batch not in refs:
            outs = [
                fam.generate(
                    params,
                    tok,
                    cfg,
                    tok_cfg,
                    labels[i : i + batch],
                    keys[i : i + batch],
                    options=opts,
                    **sampling,
                )
                for i in range(0, n, batch)
            ]
            refs[batch] = {
                k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in ("tokens", "images")
            }
        return refs[batch]

    out = {}
    for spec in specs.split(";"):
        mesh = make_mesh(spec)
        # XLA:CPU rounds row reductions (LayerNorm) differently for another number of rows, so
        # float outputs of a shard equal the one-device run at the shard's batch bit for bit.
        ref = one_device(n if reference == "full" else n // mesh.shape["data"])
        rules_ = fam.sharding_rules(cfg)
        p = rules.place(params, rules_, mesh)
        tp = rules.replicate(tok, mesh)
        args = (fam, mesh, p, tp, cfg, tok_cfg, labels, keys)
        got = pgen.generate(*args, options=opts, **sampling)
        facts = {}
        if mesh.shape["model"] > 1:
            hlo = pgen.lower(*args, options=opts, **sampling).compile().as_text()
            facts = head_facts(fam, cfg, hlo, mesh.shape["model"])
        sharded = {k: p_specs(v) for k, v in got.items()}
        got = {k: np.asarray(v) for k, v in got.items()}
        out[spec] = {
            "tokens_equal": bool(np.array_equal(got["tokens"], ref["tokens"])),
            "tokens_max_abs_diff": float(np.max(np.abs(got["tokens"] - ref["tokens"]))),
            "tokens_rel_diff": float(  # normwise: max |difference| / max |token|
                np.max(np.abs(got["tokens"] - ref["tokens"])) / np.max(np.abs(ref["tokens"]))
            ),
            "images_max_abs_diff": float(np.max(np.abs(got["images"] - ref["images"]))),
            "distinct_images": len(np.unique(got["tokens"].reshape(n, -1), axis=0)),
            "output_sharding": sharded,
            "qkv_shards": heads.tree_shards(p, heads.split_rules(rules_)[1]),
            "heads": facts,
        }
    return out


def p_specs(x) -> list | None:
    spec = getattr(getattr(x, "sharding", None), "spec", None)
    return None if spec is None else [str(a) for a in spec]


def calibration_case(methods: str) -> dict:
    """var-test quantized from one calibration batch on one device and split over data=8."""
    from arvg_jax.parallel import generate as pgen
    from arvg_jax.parallel import make_mesh, rules
    from quant import _tree, api
    from quant.algorithms.calib_data import Candidates
    from quant.recipes import Recipe

    fam, cfg, tok_cfg, params, tok = model("var-test")
    rng = np.random.default_rng(1)
    n = 8  # images: 16 cond/uncond rows, 2 per device
    labels = rng.integers(0, cfg.num_classes, n)
    tokens = rng.integers(0, cfg.vocab_size, (n, cfg.seq_len))
    cands = Candidates.from_generations(labels, tokens, null_label=cfg.num_classes, gen_batch=n)
    batch = fam.calibration_batch(tok, tok_cfg, cands)
    adapter = fam.quant_adapter(cfg)
    mesh = make_mesh("data=8")
    out = {}
    for method in methods.split(","):
        recipe = Recipe.parse(method, "w8a8", calib=n)
        q1, _ = api.quantize(adapter, params, batch, recipe, progress=False)
        q8, _ = api.quantize(
            adapter,
            rules.replicate(params, mesh),
            pgen.shard_rows(batch, mesh),
            recipe,
            progress=False,
        )
        f1, f8 = _tree.flatten(q1), _tree.flatten(q8)
        ints_equal, float_rel = True, 0.0
        codes, codes_moved, code_step, layers_moved = 0, 0, 0, set()
        for name in f1:
            for a, b in zip(jax.tree.leaves(f1[name]), jax.tree.leaves(f8[name]), strict=True):
                a, b = np.asarray(a), np.asarray(b)
                if np.issubdtype(a.dtype, np.integer):
                    ints_equal &= bool(np.array_equal(a, b))
                    moved = a != b
                    codes, codes_moved = codes + a.size, codes_moved + int(moved.sum())
                    if moved.any():
                        layers_moved.add(name)
                        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
                        code_step = max(code_step, int(d.max()))
                else:
                    den = np.maximum(np.abs(a), np.finfo(np.float32).tiny)
                    float_rel = max(float_rel, float(np.max(np.abs(a - b) / den)))
        out[method] = {
            "same_structure": jax.tree.structure(q1) == jax.tree.structure(q8),
            "identical": all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(jax.tree.leaves(q1), jax.tree.leaves(q8), strict=True)
            ),
            "integer_leaves_equal": ints_equal,
            "integer_codes": codes,
            "integer_codes_moved": codes_moved,
            "integer_max_step": code_step,
            "layers_with_moved_codes": sorted(layers_moved),
            "float_leaves_max_rel_diff": float_rel,
        }
    return out


def checkpoint_case(tmp: str) -> dict:
    """A float and a quantized var-test tree saved from model=2 or data=8, restored onto data=2,
    data=8, one device or model=2: the same leaves, each with the sharding the new mesh gives it.
    Placed by the rules with the fused attention layers: on model=2 the qkv columns lie in the
    head-parallel order, and the checkpoint must hold the official one."""
    from arvg_jax.parallel import checkpoint, heads, make_mesh, rules
    from quant import _qarray

    fam, cfg, _, params, _ = model("var-test")

    # A quantized tree without calibration: each Dense kernel as an 8-bit QArray (per column).
    def quantize(path, x):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if not name.endswith("kernel") or x.ndim != 2:
            return x
        lo, hi = x.min(0, keepdims=True), x.max(0, keepdims=True)
        scale = np.maximum(hi - lo, 1e-6) / 255
        zp = np.round(-lo / scale)
        return _qarray.QArray.quantize(x, scale, zp, 8)

    qparams = jax.tree_util.tree_map_with_path(quantize, params)
    rules_ = fam.sharding_rules(cfg)
    fused = heads.split_rules(rules_)[1]
    out = {}
    cases = (
        ("float", params, "data=4,model=2", "data=2"),
        ("quantized", qparams, "data=4,model=2", "data=1,model=1"),
        ("quantized", qparams, "data=4,model=2", "data=8"),
        ("quantized", qparams, "data=8", "data=4,model=2"),
        ("float", params, "data=8", "data=2"),
    )
    for what, tree, src, dst in cases:
        path = os.path.join(tmp, f"{what}-{src}-{dst}")
        placed = rules.place(tree, rules_, make_mesh(src))
        checkpoint.save(path, placed, rules_)
        mesh = make_mesh(dst)
        back = checkpoint.restore(path, mesh, rules_)
        want = rules.param_shardings(tree, rules_, mesh)
        official = heads.relayout(back, fused, 1)  # a model=2 restore is head-parallel again
        equal = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(official), strict=True)
        )
        placed_right = all(
            a.sharding == s
            for a, s in zip(jax.tree.leaves(back), jax.tree.leaves(want), strict=True)
        )
        model_sharded = sum("model" in str(a.sharding.spec) for a in jax.tree.leaves(placed))
        reordered = sum(  # leaves of the placed tree not in the official order
            not np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(placed), strict=True)
        )
        out[f"{what} {src} -> {dst}"] = {
            "equal": equal,
            "same_structure": jax.tree.structure(tree) == jax.tree.structure(back),
            "placed_by_rules": placed_right,
            "saved_model_sharded_leaves": model_sharded,
            "saved_reordered_leaves": reordered,
            "restored_qkv_shards": heads.tree_shards(back, fused),
        }
    return out


if __name__ == "__main__":
    case, *args = sys.argv[1:]
    assert jax.device_count() == 8, jax.devices()
    fn = {"sampling": sampling_case, "calibration": calibration_case, "checkpoint": checkpoint_case}
    print("RESULT " + json.dumps(fn[case](*args)), flush=True)
