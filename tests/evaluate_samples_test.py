"""`arvg sample` + `arvg evaluate --samples` end to end (the five ADM numbers), reports, flag errors.

The Inception weights file is written by the test (tests/_inception_file.py: random weights in
the published torch-fidelity / pytorch-fid layouts, torch.save format with shared storages and
offsets), so these tests need neither the reference fixture nor torch.
"""

import json

import jax
import numpy as np
import pytest
from _inception_file import write_random_inception

import arvg_jax
from arvg_jax import cli, imageio
from arvg_jax.commands import evaluate_samples, generate
from arvg_jax.data import shapes
from arvg_jax.metrics import adm_npz
from arvg_jax.metrics.evaluator import EvalSettings, evaluate
from converters.inception import load_inception

N = 4  # images per batch file: one Inception call each (one compile serves both files)


def _batch(path, seed, **stats):
    images = np.random.default_rng(seed).integers(0, 256, (N, 11, 13, 3), dtype=np.uint8)
    adm_npz.write_batch(path, images, **stats)
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random-weight Inception in torch-fidelity's layout, written here (no fixture, no torch)."""
    folder = tmp_path_factory.mktemp("inception")
    return write_random_inception(folder / evaluate_samples.INCEPTION_FILES[0][1], seed=0)


def test_the_written_inception_file_loads_in_both_layouts(inception_file, tmp_path):
    other = write_random_inception(
        tmp_path / evaluate_samples.INCEPTION_FILES[1][1], 0, "pytorch-fid"
    )
    want, got = load_inception(inception_file), load_inception(other)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sample_then_evaluate_end_to_end(inception_file, tmp_path, capsys):
    """`arvg sample` on the packaged tiny model, then `arvg evaluate` with the written Inception:
    the images are the library's `generate`, the numbers the library's `evaluate`."""
    samples = tmp_path / "samples.npz"
    argv = ["sample", "--model", "var-tiny", "--num-images", str(N), "--per-class", "1"]
    argv += ["--shard-size", "3", "--batch", "2", "--seed", "5", "--quiet", "--out", str(samples)]
    assert cli.main(argv) == 0
    model = arvg_jax.load("var-tiny")
    with np.load(samples) as z:
        images, labels = z["arr_0"], z["arr_1"]
    np.testing.assert_array_equal(labels, np.arange(N))
    # (at the run's batch size: the decoder's float rounding may differ by batch size)
    want, _, _ = generate.generate_images(
        model, np.arange(N), seed=5, sampling=model.sampling_defaults(), batch=2, progress=False
    )
    np.testing.assert_array_equal(images, model.fam.to_uint8(want))

    # The reference batch: images of the dataset the tiny model was trained on.
    rendered = shapes.render(np.arange(N) + 3, np.random.default_rng(1), size=images.shape[1])
    ref = tmp_path / "ref.npz"
    adm_npz.write_batch(ref, imageio.to_uint8((rendered + 1) / 2))
    out = tmp_path / "eval"
    argv = ["evaluate", "--samples", str(samples), "--reference", str(ref)]
    argv += ["--inception", str(inception_file), "--is-split-size", "2", "--out", str(out)]
    capsys.readouterr()
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == report["num_reference"] == N
    got = report["metrics"]
    assert sorted(got) == sorted(k for k, _ in evaluate_samples.METRICS)
    settings = EvalSettings(is_split_size=2)
    want = evaluate(load_inception(inception_file), ref, samples, settings=settings)
    for k, v in got.items():
        assert v == pytest.approx(want[k], rel=1e-12), k
        assert np.isfinite(v), k
    assert got["fid"] > 0 and got["inception_score"] >= 1
    md = (out / "report.md").read_text()
    assert md.strip() in printed
    for _, label in evaluate_samples.METRICS:
        assert f"| {label} |" in md
    assert not list(out.glob(".tmp-*"))


def test_missing_inception_names_the_files_and_downloads_nothing(tmp_path, capsys):
    samples, ref = _batch(tmp_path / "s.npz", 0), _batch(tmp_path / "r.npz", 1)
    argv = ["evaluate", "--samples", str(samples), "--reference", str(ref)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for _, name, url in evaluate_samples.INCEPTION_FILES:
        assert name in err and url in err
    assert "weights-inception-2015-12-05-6726825d.pth" in err
    assert "pt_inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "s.eval").exists()


def test_mode_errors(tmp_path, capsys):
    samples = _batch(tmp_path / "s.npz", 0)
    assert cli.main(["evaluate", "--samples", str(samples)]) == 2
    assert "--reference" in capsys.readouterr().err
    assert cli.main(["evaluate", "--out", str(tmp_path)]) == 2  # neither mode
    err = capsys.readouterr().err
    assert "--quantized" in err and "--samples" in err
    argv = ["evaluate", "--samples", str(samples), "--reference", str(tmp_path / "absent.npz")]
    assert cli.main([*argv, "--inception", str(samples)]) == 2
    assert "absent.npz: no such file" in capsys.readouterr().err
