"""Inception Score ("isc", as torch-fidelity names it) as the ADM evaluator computes it.

openai/guided-diffusion evaluations/evaluator.py: `_create_softmax_graph` rebuilds the graph's
`softmax/logits/MatMul` on pool_3 WITHOUT the `softmax/biases` add, then `tf.nn.softmax`
(float32, batches of 512); `compute_inception_score` splits the probabilities into consecutive
chunks of `split_size` rows (the last may be shorter), scores each as
exp(mean_rows Σ_k p (log p - log mean_rows p)) and returns the unweighted mean over chunks.
As there, an underflowed probability gives log 0 = -inf and a NaN score.

Dims: N samples, D = 2048 pool width, K classes.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float32 (exp(x - max) / Σ, as tf.nn.softmax)."""
    x = np.asarray(logits, np.float32)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def softmax_from_pool(
    pool: np.ndarray, fc_kernel: np.ndarray, *, batch_size: int = 512
) -> np.ndarray:
    """The evaluator's softmax graph: softmax(pool @ W) with W = TF softmax/weights [D, K].

    Args:
        pool: [N, D] pool_3 features.
        fc_kernel: [D, K] (`params["fc"]["kernel"]`, i.e. fc.weight.T); no bias.
        batch_size: rows per matmul (`softmax_batch_size`).

    Returns:
        float32 [N, K] probabilities.
    """
    pool = np.asarray(pool, np.float32)
    w = np.asarray(fc_kernel, np.float32)
    out = [softmax(pool[i : i + batch_size] @ w) for i in range(0, len(pool), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, w.shape[1]), np.float32)


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """Mean over consecutive splits of exp(E_x KL(p(y|x) ‖ p(y))) (`compute_inception_score`).

    Args:
        probs: [N, K] class probabilities (float32 keeps the evaluator's arithmetic).
        split_size: rows per split (the evaluator's default is 5000).

    Returns:
        The score as a Python float.
    """
    preds = np.asarray(probs)
    if preds.ndim != 2 or len(preds) == 0:
        raise ValueError(f"probs must be [N >= 1, K], got shape {preds.shape}")
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))
