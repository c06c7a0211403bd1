"""The arvg commands end to end on the var-test preset (seeded random weights, no files needed)."""

import json

import numpy as np
import pytest

from arvg_jax import imageio
from arvg_jax.cli import main

TINY = ["--model", "var-test", "--random-weights"]


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-ptq4arvg-w6a6"
    rc = main(
        [
            "quantize",
            *TINY,
            "--method",
            "ptq4arvg",
            "--bits",
            "w6a6",
            "--calib",
            "4",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    return out


def test_quantize_writes_a_self_contained_directory(quantized_dir):
    meta = json.loads((quantized_dir / "arvg.json").read_text())
    assert meta["recipe"]["method"] == "ptq4arvg" and meta["recipe"]["w_bits"] == 6
    groups = meta["summary"]["groups_by_kind"]
    assert groups["qkv"] == [3] and groups["fc1"] == [3]  # one group per scale: (1, 2, 3)
    assert groups["proj"] == [2] and groups["fc2"] == [2] and groups["head"] == [1]
    assert (quantized_dir / "vae").is_dir()


def test_quantize_refuses_to_overwrite(quantized_dir, capsys):
    rc = main(
        [
            "quantize",
            *TINY,
            "--method",
            "rtn",
            "--bits",
            "w8a8",
            "--calib",
            "2",
            "--out",
            str(quantized_dir),
            "--quiet",
        ]
    )
    assert rc == 2 and "exists" in capsys.readouterr().err


def test_generate_from_quantized(quantized_dir, tmp_path):
    png = tmp_path / "g.png"
    rc = main(
        [
            "generate",
            "--quantized",
            str(quantized_dir),
            "--classes",
            "1,2,3",
            "--seed",
            "0",
            "--out",
            str(png),
            "--save-tokens",
            str(tmp_path / "t.npz"),
        ]
    )
    assert rc == 0
    img = imageio.decode_png(png.read_bytes())
    assert img.ndim == 3 and img.shape[2] == 3
    tokens = np.load(tmp_path / "t.npz")["tokens"]
    assert tokens.shape == (3, 1 + 4 + 9)


def test_generate_rejects_bad_classes(quantized_dir, tmp_path, capsys):
    rc = main(
        [
            "generate",
            "--quantized",
            str(quantized_dir),
            "--classes",
            "1,99",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2 and "outside" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # default coverage: `arvg demo` (CI command 1) and evaluate_samples_test
def test_evaluate_table(quantized_dir, tmp_path, capsys, reference):
    from arvg_jax.metrics import adm_npz
    from arvg_jax.metrics.evaluator import EvalSettings, evaluate
    from converters.inception import load_inception

    weights = reference("eval", "inception.pth")
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    adm_npz.write_batch(ref, rng.integers(0, 256, (5, 17, 17, 3), dtype=np.uint8))
    out = tmp_path / "eval"
    argv = ["evaluate", *TINY, "--quantized", str(quantized_dir), "--classes", "0,5"]
    argv += ["--per-class", "2", "--out", str(out)]
    argv += ["--reference", str(ref), "--inception", str(weights), "--is-split-size", "2"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "| ptq4arvg W6A6 |" in report
    assert (out / "grid.png").exists()
    # The five ADM numbers of each model's images, kept as batch files beside the report.
    (n, *_), _ = adm_npz.array_shape(out / "samples_1.npz")
    assert n == 4  # two classes, two images each
    want = evaluate(
        load_inception(weights), ref, out / "samples_1.npz", settings=EvalSettings(is_split_size=2)
    )
    row = next(r for r in report.splitlines() if r.startswith("| ptq4arvg W6A6 (samples_1.npz)"))
    got = [float(v) for v in row.strip("| ").split(" | ")[1:]]
    keys = ("inception_score", "fid", "sfid", "precision", "recall")
    np.testing.assert_allclose(got, [want[k] for k in keys], rtol=1e-4, atol=1e-4)
    # Incomplete score flags are refused before anything runs.
    assert (
        main(
            [
                "evaluate",
                *TINY,
                "--quantized",
                str(quantized_dir),
                "--out",
                str(out),
                "--reference",
                str(ref),
            ]
        )
        == 2
    )
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_inspect_quantized_dir(quantized_dir, capsys):
    assert main(["inspect", str(quantized_dir)]) == 0
    out = capsys.readouterr().out
    assert "QArray int6" in out and "ActQuant a6" in out
