"""`scripts/calibration_diff.py`: save a calibrated tree's arrays, compare two such files."""

import importlib.util
import pathlib

import numpy as np
import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "calibration_diff.py"


def _script():
    spec = importlib.util.spec_from_file_location("calibration_diff", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_diff_ranks_arrays_by_relative_difference(tmp_path, capsys):
    same = np.arange(6, dtype=np.float32)
    a = {"x/scale": same, "y/scale": np.float32([1.0, 2.0]), "z/qvalue": np.int8([1, 2, 3])}
    b = {"x/scale": same, "y/scale": np.float32([1.0, 4.0]), "z/qvalue": np.int8([1, 2, 4])}
    b["only_b"] = np.zeros(1)
    np.savez(tmp_path / "a.npz", device=np.asarray("gpu"), **a)
    np.savez(tmp_path / "b.npz", device=np.asarray("cpu"), **b)
    assert _script().main(["diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "(gpu)" in out[0] and "(cpu)" in out[0]
    assert "only_b" in out[1]
    assert out[2] == "2 of 3 common arrays differ"
    # y: |2 - 4| / 4 = 0.5 ranks above z: |3 - 4| / 4 = 0.25; x is equal and not listed.
    assert "y/scale" in out[3] and out[3].split()[0] == "0.5"
    assert "z/qvalue" in out[4] and "1 of 3 differ" in out[4]
    assert len(out) == 5


@pytest.mark.slow  # two calibrations of the packaged tiny VAR (~40 s)
def test_save_twice_on_one_batch_gives_the_same_tree(tmp_path, capsys):
    cd = _script()
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    args = ["save", "--model", "var-tiny", "--method", "rtn", "--calib", "8"]
    assert cd.main([*args, "--out", str(first)]) == 0
    assert cd.main([*args, "--batch", str(first), "--out", str(second)]) == 0
    with np.load(first) as f:
        names = f.files
        assert any(n.startswith(cd.BATCH_PREFIX) for n in names)
        assert any(n.endswith("/kernel/qvalue") for n in names)
    capsys.readouterr()
    assert cd.main(["diff", str(first), str(second)]) == 0
    assert "0 of " in capsys.readouterr().out
