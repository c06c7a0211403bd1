"""`arvg evaluate --samples`: the five ADM numbers end to end, reports, and the flag errors."""

import json

import numpy as np
import pytest

from arvg_jax import cli
from arvg_jax.commands import evaluate_samples
from arvg_jax.metrics import adm_npz
from arvg_jax.metrics.evaluator import EvalSettings, evaluate
from converters.inception import load_inception

N = 8  # images per batch file: one Inception call each (one compile serves both files)


def _batch(path, seed, **stats):
    images = np.random.default_rng(seed).integers(0, 256, (N, 11, 13, 3), dtype=np.uint8)
    adm_npz.write_batch(path, images, **stats)
    return path


def test_scores_written_and_equal_to_the_evaluator(reference, tmp_path, capsys):
    weights = reference("eval", "inception.pth")
    samples = _batch(tmp_path / "samples.npz", 0, arr_1=np.arange(N))  # labels beside, as ours
    ref = _batch(tmp_path / "ref.npz", 1)
    out = tmp_path / "eval"
    argv = ["evaluate", "--samples", str(samples), "--reference", str(ref)]
    argv += ["--inception", str(weights), "--is-split-size", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == report["num_reference"] == N
    got = report["metrics"]
    assert sorted(got) == sorted(k for k, _ in evaluate_samples.METRICS)
    want = evaluate(load_inception(weights), ref, samples, settings=EvalSettings(is_split_size=4))
    for k, v in got.items():
        assert v == pytest.approx(want[k], rel=1e-12), k
        assert np.isfinite(v), k
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
