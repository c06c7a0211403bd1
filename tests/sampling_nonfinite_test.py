"""NaN / Inf appearing in the logits while sampling (issue 16, item 3): refused and named by layer.

A finite but huge weight (3e38, so the load-time NaN/Inf check passes) planted in one block's
fc1 overflows at run time. Before, the samplers still returned tokens (an argmax or draw over NaN
gives one) and `arvg generate` exited 0 with a degenerate image; now each family's jitted sampler
returns a per-image "finite" flag, and the command exits 1 with one line naming the images and
the first non-finite layer input of the teacher-forced forward (the calibration stages).
"""

import dataclasses

import numpy as np
import pytest

from arvg_jax import cli, models
from quant import _tree

HUGE = 3e38  # finite: passes `converters.check_finite`, overflows in the first matmul


def _planted(name: str, layer: str) -> models.Model:
    model = models.random_model(name)
    flat = _tree.flatten(model.params)
    flat[f"{layer}/kernel"] = np.full_like(np.asarray(flat[f"{layer}/kernel"]), HUGE)
    return dataclasses.replace(model, params=_tree.unflatten(flat))


@pytest.mark.parametrize(
    "name, layer, named",
    [
        pytest.param(  # ~60 s on CPU; PAR's case runs the same code path
            "var-test",
            "blocks_1/ffn/fc1",
            "blocks_1/ffn/fc2 (stage blocks_1)",
            marks=pytest.mark.slow,
        ),
        ("par-test", "layers_1/feed_forward/w1", "layers_1/feed_forward/w2 (stage layers_1)"),
        pytest.param(  # (about twice PAR's time on CPU)
            "rar-test",
            "blocks_1/mlp/fc1",
            "blocks_1/mlp/fc2 (stage blocks_1)",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_generate_exits_1_naming_the_block(name, layer, named, tmp_path, monkeypatch, capsys):
    model = _planted(name, layer)
    monkeypatch.setattr(models, "random_model", lambda *a, **k: model)
    out = tmp_path / "g.png"
    argv = ["generate", "--model", name, "--random-weights", "--classes", "0,1", "--out", str(out)]
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("arvg generate: image(s) 0, 1: NaN/Inf in the model's logits"), err
    # fc1's output overflows: the first non-finite input is the next layer's, in that block
    assert f"first NaN/Inf in the input of layer {named} on the teacher-forced" in line, line
    assert not out.exists()
