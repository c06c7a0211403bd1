"""VAR goldens (`scripts/var_goldens.py`): the family-generic refactor left VAR's outputs unchanged.

`tests/goldens/var.npz` holds what was computed before the refactor (keyed sampling after it: the
one deliberate change): every array's digest, shape and dtype, small arrays whole and samples of
large ones (`scripts/var_goldens.py pack`). On the recording machine (same jax and CPU) every
array must be bit-identical; elsewhere integer samples must be equal and float samples within
1e-6 (another CPU's vector code may round differently).
"""

import pathlib
import runpy

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "goldens" / "var.npz"
_SCRIPT = runpy.run_path(str(REPO / "scripts" / "var_goldens.py"))


def _check(reference, slow: bool):
    import json

    stored = dict(np.load(GOLDEN))
    # The fast part teacher-forces the stored greedy tokens (kept whole in the golden file); the
    # slow part generates them again (a 2-minute CPU compile of the unrolled sampler).
    shape = json.loads(str(stored["_index"]))["tokens_greedy"][1]
    tokens = stored["s/tokens_greedy"].reshape(shape)
    got = _SCRIPT["compute"](reference("var"), slow=slow, tokens=tokens)
    if not slow:  # only the arrays of the fast part
        index = json.loads(str(stored["_index"]))
        stored["_index"] = np.asarray(json.dumps({k: v for k, v in index.items() if k in got}))
    exact = str(stored["_fingerprint"]) == _SCRIPT["fingerprint"]()
    problems = _SCRIPT["compare"](stored, got, exact=exact)
    assert not problems, "\n".join(problems)


def test_fast_goldens_hold(reference):
    _check(reference, slow=False)


@pytest.mark.slow
def test_quantized_goldens_hold(reference):
    _check(reference, slow=True)


def test_cross_machine_comparison_bounds_each_precision():
    """Off the recording machine: integers exact, float32 goldens within 1e-6 of their largest
    magnitude, bf16-model goldens within one bf16 unit roundoff (2^-8) of it."""
    import json

    ref = {
        "tok": np.arange(6, dtype=np.int32),
        "logits_f32": np.linspace(-2, 2, 6, dtype=np.float32),
    }
    ref["logits_bf16"] = ref["logits_f32"].copy()
    stored = {f"s/{k}": v for k, v in ref.items()}
    digest = _SCRIPT["digest"]
    stored["_index"] = np.asarray(
        json.dumps({k: [digest(v), list(v.shape), str(v.dtype)] for k, v in ref.items()})
    )

    def problems(**moved):
        got = {k: v.copy() for k, v in ref.items()}
        for k, (i, delta) in moved.items():
            got[k][i] += delta
        return _SCRIPT["compare"](stored, got, exact=False)

    assert problems() == []
    assert problems(logits_f32=(0, 1e-6)) == []  # 5e-7 of the largest magnitude (2)
    assert problems(logits_bf16=(0, 5e-3)) == []  # 2.5e-3 < 2^-8 of 2
    assert [p.split(":")[0] for p in problems(logits_f32=(0, 1e-5))] == ["logits_f32"]
    assert [p.split(":")[0] for p in problems(logits_bf16=(0, 1e-2))] == ["logits_bf16"]
    assert [p.split(":")[0] for p in problems(tok=(2, 1))] == ["tok"]
