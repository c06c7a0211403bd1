"""``run_quant_reference`` writes every output array of quant/cases.npz, computed from its inputs."""

import json

import numpy as np

import quant

# Arrays computed with float32 reductions in a different order than torch's (≤ 2 ulps), and the
# DGC distances the reference took through a float32 pinv: relative tolerances. Everything else
# (Δ, z, x̂, shifts, log-√2) is bit-identical.
_RTOL = {"_sq_scales": 2e-7, "_scales": 3e-7, "dgc_n128_d64_dist": 1e-5, "dgc_n128_d256_dist": 1e-6}


def test_reference_runner_writes_every_output(reference, tmp_path, capsys):
    fixture = reference("quant", "cases.npz").parent
    out = tmp_path / "ours.npz"
    ours = quant.run_quant_reference(fixture, out)
    inputs = set(json.loads((fixture / "inputs.json").read_text()))
    with np.load(fixture / "cases.npz") as ref, np.load(out) as written:
        expected = sorted(set(ref.files) - inputs)
        assert sorted(written.files) == expected == sorted(ours)
        for k in expected:
            got, want = written[k], ref[k]
            assert got.shape == want.shape and got.dtype == want.dtype, k
            rtol = next((v for s, v in _RTOL.items() if k.endswith(s) or k == s), None)
            if rtol is None:
                np.testing.assert_array_equal(got, want, err_msg=k)
            else:
                np.testing.assert_allclose(got, want, rtol=rtol, err_msg=k)
    summary = capsys.readouterr().out
    assert "uq_tensor_b8_xhat" in summary and "mismatches" in summary


def test_var_scale_group_sizes():
    from quant._reference import var_scale_group_sizes

    assert var_scale_group_sizes(680) == (1, 4, 9, 16, 25, 36, 64, 100, 169, 256)
    assert var_scale_group_sizes(14) == (1, 4, 9)
