"""Where NaN / Inf first appears in a model, for images whose sampling went non-finite.

The jitted samplers only flag an image (`Family.generate`'s "finite": one reduction per step).
Naming the layer is a second, rare pass: the family's teacher-forced forward on the failing
images' labels and tokens, stage by stage, with every Dense input checked. That is the
calibration machinery (`quant._calibrate.collect`: the adapter's stages, the layer inputs sown in
"intermediates", `check_finite` in forward order), not a second mechanism.
"""

from __future__ import annotations

from typing import Any


def locate(model, labels, tokens) -> str:
    """Names the first non-finite layer input of `model`'s teacher-forced forward.

    Args:
      model: an `arvg_jax.models.Model` (float or quantized; the params as stored, not the
        sampler's inference layout).
      labels: int [N] class labels of the failing images.
      tokens: [N, ...] their sampled tokens (`Family.generate`'s "tokens").

    Returns:
      One phrase for a one-line message, e.g. "first NaN/Inf in the input of layer
      blocks_1/ffn/fc2 (stage blocks_1) on the teacher-forced forward".
    """
    import numpy as np

    from quant._calibrate import NonFiniteError, collect

    if not np.issubdtype(np.asarray(tokens).dtype, np.integer):  # MAR: continuous tokens
        return f"the layer was not located ({model.family}'s tokens are continuous: no replay)"
    try:
        adapter = model.quant_adapter()
        batch = model.calibration_batch(labels, tokens)
        collect(adapter, model.params, batch, _nothing, progress=False)
    except NonFiniteError as e:
        if e.layer:
            where = f"the input of layer {e.layer} (stage {e.stage})"
        elif e.stage:
            where = f"the output of stage {e.stage}"
        else:
            where = "the embeddings (the inputs of the first stage)"
        return f"first NaN/Inf in {where} on the teacher-forced forward"
    # No adapter, or tokens its calibration batch cannot take: a diagnostic only, so the message
    # says so instead of failing.
    except (NotImplementedError, ValueError, TypeError, AttributeError, KeyError) as e:
        return f"the layer was not located ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return "the teacher-forced forward stays finite on these tokens (the sampler's path overflows)"


def _nothing(name: str, x: Any, layer: Any) -> None:
    """A `collect` reducer that keeps nothing: only the finiteness checks matter."""
