"""VAR goldens (`scripts/var_goldens.py`): the family-generic refactor left VAR's outputs unchanged.

`tests/goldens/var.npz` was recorded before the refactor (keyed sampling after it: the one
deliberate change). Integer arrays must be equal; float arrays bit-identical on the machine that
recorded them (same jax and CPU), else within 1e-6 relative (another CPU's vector code may round
differently).
"""

import pathlib
import runpy

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "goldens" / "var.npz"
_SCRIPT = runpy.run_path(str(REPO / "scripts" / "var_goldens.py"))


def _check(reference, slow: bool):
    var_dir = reference("var")
    golden = dict(np.load(GOLDEN))
    got = _SCRIPT["compute"](var_dir, slow=slow)
    if not slow:
        golden = {k: v for k, v in golden.items() if k in got}
    same_machine = str(np.load(GOLDEN)["_fingerprint"]) == _SCRIPT["fingerprint"]()
    problems = _SCRIPT["compare"](golden, got, float_rtol=0.0 if same_machine else 1e-6)
    assert not problems, "\n".join(problems)


def test_fast_goldens_hold(reference):
    _check(reference, slow=False)


@pytest.mark.slow
def test_quantized_goldens_hold(reference):
    _check(reference, slow=True)
