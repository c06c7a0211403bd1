"""Recomputes every output array of the quantization-primitive fixture ``quant/cases.npz``.

The fixture (``shared/reference/README.md``, "Quantization primitives") fed its inputs to the
official PTQ4ARVG classes with one calibration batch, so every calibrated quantity went through
the official EMA once (``ema_update``: ``0.1·new + 0.9·new`` in float32, not bit-identical to new).
Only the arrays listed in ``inputs.json`` are read; everything else is computed here.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from quant._quantizers import (
    ema_update,
    fake_quant_log2,
    fake_quant_uniform,
    fit_log2,
    fit_uniform_per_channel,
    fit_uniform_per_row,
    fit_uniform_per_tensor,
    fit_uniform_token_groups,
    group_table,
)
from quant.algorithms.dgc_core import mahalanobis_distances
from quant.algorithms.gps_core import calculate_scales_hessian
from quant.algorithms.shift_core import calculate_sym_shift
from quant.algorithms.smoothquant_core import (
    act_absmax_per_channel,
    smoothquant_scales,
    weight_absmax_per_in_channel,
)

__all__ = ["compute_quant_cases", "run_quant_reference", "var_scale_group_sizes"]

_F32 = np.float32
# VAR's scales: token 0 (1x1, the sink) and then one group per scale (STWQ for qkv/fc1 inputs).
_VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def var_scale_group_sizes(num_tokens: int) -> tuple[int, ...]:
    """Token-group sizes of VAR's per-scale STWQ for a sequence of ``num_tokens``: the squares of
    the longest prefix of VAR's patch_nums (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) that sums to it."""
    sizes, total = [], 0
    for p in _VAR_PATCH_NUMS:
        sizes.append(p * p)
        total += p * p
        if total == num_tokens:
            return tuple(sizes)
    raise ValueError(f"{num_tokens} tokens is not a prefix of VAR's scales {_VAR_PATCH_NUMS}")


def _ema(*arrays):
    return tuple(ema_update(None, a) for a in arrays)


def _uniform(x, bits, fit):
    delta, zp = _ema(*fit(x, bits))
    return delta, zp, fake_quant_uniform(x, delta, zp, bits)


def compute_quant_cases(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All output arrays of ``cases.npz`` from its input arrays (names as in the fixture)."""
    out: dict[str, np.ndarray] = {}
    for name, x in inputs.items():
        if m := re.fullmatch(r"uq_tensor_b(\d)_x", name):
            b = int(m[1])
            d, z, xh = _uniform(x, b, fit_uniform_per_tensor)
            out.update({f"uq_tensor_b{b}_delta": d, f"uq_tensor_b{b}_zp": z})
            out[f"uq_tensor_b{b}_xhat"] = xh
        elif m := re.fullmatch(r"uq_rows_b(\d)_w", name):
            b = int(m[1])
            d, z, wh = _uniform(x, b, fit_uniform_per_row)
            out.update({f"uq_rows_b{b}_delta": d, f"uq_rows_b{b}_zp": z})
            out[f"uq_rows_b{b}_what"] = wh
        elif m := re.fullmatch(r"uq_chan_b(\d)_x", name):
            b = int(m[1])
            d, z, xh = _uniform(x, b, fit_uniform_per_channel)
            out.update({f"uq_chan_b{b}_delta": d, f"uq_chan_b{b}_zp": z})
            out[f"uq_chan_b{b}_xhat"] = xh
        elif m := re.fullmatch(r"tok_b(\d)_x", name):
            b = int(m[1])
            t = x.shape[1]
            for kind, sizes in (("scale", var_scale_group_sizes(t)), ("sink", (1, t - 1))):
                d, z = _ema(*fit_uniform_token_groups(x, b, sizes))
                g = group_table(sizes)
                xh = fake_quant_uniform(x, d[g][None, :, None], z[g][None, :, None], b)
                out.update({f"tok_{kind}_b{b}_delta": d, f"tok_{kind}_b{b}_zp": z})
                out[f"tok_{kind}_b{b}_xhat"] = xh
        elif m := re.fullmatch(r"gps_b(\d)_x", name):
            b = int(m[1])
            w = inputs[f"gps_b{b}_w"]  # torch layout [O, C]
            kernel = w.T  # Flax layout [C, O]
            # The fixture records SmoothModule.calculate_scales(_hessian) outputs directly (no
            # SmoothModule EMA), while both quantizers went through their forward (EMA once).
            sq = smoothquant_scales(act_absmax_per_channel(x), weight_absmax_per_in_channel(kernel))
            a_delta, a_zp = _ema(*fit_uniform_per_channel(x, b))
            w_delta, w_zp = _ema(*fit_uniform_per_row(w, b))
            kernel_hat = fake_quant_uniform(w, w_delta, w_zp, b).T
            scales = calculate_scales_hessian(x, kernel, a_delta, a_zp, kernel_hat, b)
            ratio, shift, t_delta, t_zp = calculate_sym_shift(a_delta, a_zp, b)
            out.update(
                {
                    f"gps_b{b}_sq_scales": sq,
                    f"gps_b{b}_act_delta": a_delta.reshape(-1),
                    f"gps_b{b}_act_zp": a_zp.reshape(-1),
                    f"gps_b{b}_scales": scales,
                    f"gps_b{b}_shift_ratio": ratio,
                    f"gps_b{b}_shift": shift,
                    f"gps_b{b}_shift_target_delta": t_delta,
                    f"gps_b{b}_shift_target_zp": t_zp,
                }
            )
        elif m := re.fullmatch(r"log2_b(\d)_p", name):
            b = int(m[1])
            (d,) = _ema(fit_log2(x, b))
            out[f"log2_b{b}_delta"] = d
            out[f"log2_b{b}_phat"] = fake_quant_log2(x, d, b)
        elif m := re.fullmatch(r"(dgc_n\d+_d\d+)_features", name):
            out[f"{m[1]}_dist"] = mahalanobis_distances(x).astype(_F32)
        elif not re.fullmatch(r"gps_b\d_w", name):
            raise ValueError(f"unknown input array {name!r} in quant/cases.npz")
    return {k: np.asarray(v, _F32) for k, v in out.items()}


def compare_quant_cases(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[str]:
    """One line per reference output: max relative error, #mismatching elements."""
    lines = []
    for k in sorted(ref):
        if k not in ours:
            lines.append(f"{k:32s} MISSING")
            continue
        a, r = np.asarray(ours[k], np.float64), np.asarray(ref[k], np.float64)
        if a.shape != r.shape:
            lines.append(f"{k:32s} SHAPE {a.shape} vs {r.shape}")
            continue
        rel = np.max(np.abs(a - r) / np.maximum(np.abs(r), 1e-30)) if r.size else 0.0
        lines.append(f"{k:32s} max_rel {rel:9.2e}  mismatches {int(np.sum(a != r)):6d}/{r.size}")
    return lines


def run_quant_reference(fixture_dir, out_path) -> dict[str, np.ndarray]:
    """Reads the fixture's inputs, writes every other array of ``cases.npz`` to ``out_path``.

    Args:
      fixture_dir: folder holding ``cases.npz`` and ``inputs.json``.
      out_path: the ``.npz`` to write (same names, shapes and dtypes as the fixture's outputs).

    Returns:
      The computed arrays. Prints a comparison when the fixture holds the reference outputs.
    """
    fixture_dir = pathlib.Path(fixture_dir)
    names = json.loads((fixture_dir / "inputs.json").read_text())
    with np.load(fixture_dir / "cases.npz") as z:
        inputs = {n: z[n] for n in names}
        ref = {k: z[k] for k in z.files if k not in names}
    ours = compute_quant_cases(inputs)
    np.savez(out_path, **ours)
    if ref:
        print("\n".join(compare_quant_cases(ours, ref)))
    return ours
