"""Fidelity of a quantized model against its float model, on the same labels and PRNG keys.

Metrics (all float-vs-quantized, never against ground truth):
  * teacher-forced logit KL(float ‖ quantized) per token and top-1 agreement, on the token maps the
    float model generated (block-causal mask, as in the official forward);
  * generated-token agreement: fraction of equal tokens when both sample with the same keys;
  * image PSNR (dB, images in [0, 1]) between the two generations.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Fidelity:
    """None where the family has no such quantity (MAR: continuous tokens, no logits)."""

    name: str
    kl: float | None  # mean per-token KL(float ‖ quantized), nats
    top1: float | None  # teacher-forced top-1 agreement
    token_agreement: float | None  # generated tokens equal
    psnr: float  # dB, generated images
    logit_rel_err: float | None  # ‖Δlogits‖ / ‖logits‖, teacher forced

    def row(self) -> str:
        fmt = lambda v, f: "—" if v is None else f(v)
        return (
            f"| {self.name} | {fmt(self.kl, lambda v: f'{v:.2e}')} | "
            f"{fmt(self.top1, lambda v: f'{100 * v:.1f} %')} | "
            f"{fmt(self.token_agreement, lambda v: f'{100 * v:.1f} %')} | {self.psnr:.2f} | "
            f"{fmt(self.logit_rel_err, lambda v: f'{v:.4f}')} |"
        )


TABLE_HEADER = (
    "| model | logit KL (nats/token) ↓ | top-1 agreement ↑ | generated tokens equal ↑ | "
    "image PSNR (dB) ↑ | logit rel. error ↓ |\n|---|---|---|---|---|---|"
)


def teacher_forced_logits(model, labels, tokens, batch: int = 16) -> np.ndarray | None:
    """float32 logits of `model` on token sequences (its family's teacher-forced forward), or
    None for a family without logits (MAR: its continuous tokens are drawn by a diffusion head)."""
    from arvg_jax.models import teacher_forced_logits as tf_logits

    try:
        return tf_logits(model, labels, tokens, batch=batch)
    except NotImplementedError:
        return None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def compare(name, float_logits, q_logits, float_gen, q_gen) -> Fidelity:
    """float_gen / q_gen: (images [N, H, W, 3] in [0, 1], tokens [N, L] or continuous
    [N, L, D]); logits None (no logits): the logit metrics are None, as is token agreement for
    continuous tokens (exact equality of floats says nothing)."""
    kl = top1 = rel = agree = None
    if float_logits is not None and q_logits is not None:
        lp = jax.nn.log_softmax(jnp.asarray(float_logits), -1)
        lq = jax.nn.log_softmax(jnp.asarray(q_logits), -1)
        kl = float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))
        top1 = float(np.mean(np.argmax(float_logits, -1) == np.argmax(q_logits, -1)))
        rel = float(np.linalg.norm(q_logits - float_logits) / np.linalg.norm(float_logits))
    if not np.issubdtype(np.asarray(float_gen[1]).dtype, np.floating):
        agree = float(np.mean(float_gen[1] == q_gen[1]))
    return Fidelity(name, kl, top1, agree, psnr(float_gen[0], q_gen[0]), rel)
