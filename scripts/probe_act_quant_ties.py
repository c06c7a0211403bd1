"""Where do fused fc1 -> fc2-input codes differ from the XLA path, and which one is right?

On the tie-rich layer of tests/quant_pallas_gpu_test.py (`_act_quant_layer(600, seed=6)`: bf16
activations, next-layer scales 0.04 / 0.03, so y / s often lands exactly on k + 0.5) it compares
the codes of the quantizing epilogue with a true division and with the reciprocal
(`quant._pallas_gpu.EPILOGUE_DIVIDES`), and XLA's unfused path, each against an IEEE float32
reference computed in numpy from each path's bf16 fc1 output (GELU in float64, rounded to float32
then bf16; division; round half to even). Prints the fraction of differing codes and how many of
those sit at an exact tie.

    PYTHONPATH=. python3 scripts/probe_act_quant_ties.py
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax
import jax.numpy as jnp
import numpy as np
from quant_pallas_gpu_test import _act_quant_layer, _gelu_codes_ieee

from quant import _packed
from quant import _pallas_gpu as pg


def main() -> int:
    x, pk, bias, aq, nq, pos = _act_quant_layer(600, seed=6)

    def codes(impl: str) -> np.ndarray:
        f = jax.jit(lambda x: _packed.packed_dense_act_quant(x, pk, bias, aq, pos, nq, impl=impl))
        return np.asarray(f(x)[0], np.int32)

    got = {}
    for divide in (True, False):
        pg.EPILOGUE_DIVIDES = divide
        got["kernel_divide" if divide else "kernel_reciprocal"] = codes("pallas")
    pg.EPILOGUE_DIVIDES = False
    got["xla"] = codes("barrier")
    pre = {
        impl: np.asarray(
            jax.jit(lambda x, i=impl: _packed.packed_dense(x, pk, bias, aq, pos, impl=i))(x).astype(
                jnp.float32
            )
        )
        for impl in ("pallas", "barrier")
    }
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"fc1 bf16 outputs equal (kernel vs XLA): {np.mean(pre['pallas'] == pre['barrier']):.6f}")
    for src, h in pre.items():
        ref, ratio, near_mid = _gelu_codes_ieee(h, nq, pos)
        for name, q in got.items():
            off = q != ref
            tie = np.abs(ratio[off] - np.floor(ratio[off]) - 0.5) < 1e-5
            print(
                f"IEEE reference from the {src} fc1 output vs {name}: {off.mean():.3e} of "
                f"{off.size} codes differ, {int(tie.sum())} of them at exact ties, "
                f"{int((off & near_mid).sum())} near a bf16 midpoint"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
