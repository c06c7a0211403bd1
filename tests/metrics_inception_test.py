"""ADM Inception-v3 port: TF1 resize and pooling quirks, batching, fixture parity.

The parity test runs the full network on the fixture's image sets (reference/eval/io.npz),
converted from inception.pth, and compares pool_3, the sFID spatial features, both logits and
the evaluator's softmax with tolerances.json.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arvg_jax.metrics import activations
from arvg_jax.metrics import inception as inc
from arvg_jax.metrics.isc import softmax_from_pool
from arvg_jax.metrics.reference import inception_config
from arvg_jax.metrics.tf_resize import legacy_taps, resize_bilinear_tf1
from converters.inception import load_inception


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _resize_loop(x: np.ndarray, p: int, q: int) -> np.ndarray:
    """The legacy kernel written out per pixel, float32 (reference/README.md "Preprocessing")."""
    b, h, w, c = x.shape
    sy, sx = np.float32(h) / np.float32(p), np.float32(w) / np.float32(q)
    out = np.zeros((b, p, q, c), np.float32)
    for i in range(p):
        fy_src = np.float32(np.float32(i) * sy)
        y0 = int(np.floor(fy_src))
        y1, fy = min(y0 + 1, h - 1), np.float32(fy_src - np.float32(y0))
        for j in range(q):
            fx_src = np.float32(np.float32(j) * sx)
            x0 = int(np.floor(fx_src))
            x1, fx = min(x0 + 1, w - 1), np.float32(fx_src - np.float32(x0))
            a, bb, cc, d = x[:, y0, x0], x[:, y0, x1], x[:, y1, x0], x[:, y1, x1]
            top = a + (bb - a) * fx
            bottom = cc + (d - cc) * fx
            out[:, i, j] = top + (bottom - top) * fy
    return out


@pytest.mark.parametrize(("h", "w", "p", "q"), [(7, 11, 13, 5), (17, 13, 7, 19), (5, 5, 5, 5)])
def test_resize_matches_legacy_kernel(h, w, p, q):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, h, w, 3)).astype(np.float32)
    got = np.asarray(resize_bilinear_tf1(jnp.asarray(x), (p, q)))
    np.testing.assert_allclose(got, _resize_loop(x, p, q), rtol=0, atol=2e-5)


def test_resize_has_no_antialiasing():
    # Downsampling 8x reads only the two nearest source pixels per axis: a pixel that no tap
    # touches cannot change the output.
    lo, hi, _ = legacy_taps(64, 8)
    touched = set(lo) | set(hi)
    untouched = next(i for i in range(64) if i not in touched)
    x = np.zeros((1, 64, 64, 1), np.float32)
    y = x.copy()
    y[0, untouched, :, 0] = 255
    np.testing.assert_array_equal(
        resize_bilinear_tf1(jnp.asarray(x), (8, 8)), resize_bilinear_tf1(jnp.asarray(y), (8, 8))
    )
    # Legacy (not half-pixel) centres: output i starts at source i * in / out.
    np.testing.assert_array_equal(lo, np.arange(8) * 8)


def test_avg_pool_excludes_padding():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    want = np.zeros_like(x)
    for i in range(5):
        for j in range(7):
            win = x[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            want[:, i, j] = win.mean(axis=(1, 2))
    np.testing.assert_allclose(inc.avg_pool_3x3_same(jnp.asarray(x)), want, rtol=1e-6)


def test_max_pools():
    rng = np.random.default_rng(2)
    x = -np.abs(rng.normal(size=(1, 7, 9, 2))).astype(np.float32)  # all < 0: padding must not win
    same = np.asarray(inc.max_pool_3x3(jnp.asarray(x), 1, 1))
    for i in range(7):
        for j in range(9):
            win = x[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            np.testing.assert_array_equal(same[:, i, j], win.max(axis=(1, 2)))
    valid = np.asarray(inc.max_pool_3x3(jnp.asarray(x), 2, 0))
    assert valid.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(valid[0, 1, 2], x[0, 2:5, 4:7].max(axis=(0, 1)))


def test_padded_batches_rechunk_and_pad():
    batches = [np.full((n, 2, 2, 3), i, np.uint8) for i, n in enumerate([3, 5, 1])]
    chunks = list(activations._padded_batches(batches, 4))
    assert [valid for _, valid in chunks] == [4, 4, 1]
    assert all(c.shape == (4, 2, 2, 3) for c, _ in chunks)
    rows = np.concatenate([c[:v] for c, v in chunks])[:, 0, 0, 0]
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(chunks[-1][0][1:], 0)
    with pytest.raises(ValueError, match="image size changed"):
        list(activations._padded_batches([batches[0], np.zeros((1, 3, 3, 3), np.uint8)], 4))


def test_param_tree_matches_manifest_size(reference):
    manifest = json.loads(reference("eval", "inception_manifest.json").read_text())
    config = json.loads(reference("eval", "config.json").read_text())
    abstract = inc.abstract_params(inception_config(config))
    leaves = jax.tree.leaves(abstract)
    assert len(leaves) == len(manifest)
    n = sum(int(np.prod(s)) for s, _ in manifest.values())
    assert sum(int(np.prod(x.shape)) for x in leaves) == n


def test_inception_matches_fixture(reference):
    fixture = reference("eval", "io.npz").parent
    config = json.loads((fixture / "config.json").read_text())
    tol = json.loads((fixture / "tolerances.json").read_text())
    inc_cfg = inception_config(config)
    params = load_inception(fixture / config["inception"]["weights"], inc_cfg)
    with np.load(fixture / "io.npz") as io:
        arrays = {k: io[k] for k in io.files}
    for image_set in config["image_sets"]:
        name, images = image_set["name"], arrays[image_set["images"]]
        assert list(images.shape) == image_set["shape"]
        acts = activations.compute_activations(
            params, images, config=inc_cfg, batch_size=config["evaluator"]["batch_size"]
        )
        acts["softmax"] = softmax_from_pool(acts["pool"], np.asarray(params["fc"]["kernel"]))
        for key, got in acts.items():
            want = arrays[f"{name}_{key}"]
            assert got.shape == want.shape and got.dtype == want.dtype, key
            err = _rel(got, want)
            assert err <= tol[f"{name}_{key}"]["tol"], (name, key, err)
        n = inc_cfg.spatial_channels
        side = config["inception"]["spatial_shape_nhwc"][0]
        assert acts["spatial"].shape[1] == side * side * n
