"""Activation statistics behind PTQ4ARVG: channel outliers, sink tokens, per-scale ranges.

The paper motivates its three parts with three properties of ARVG activations
(`docs/ptq4arvg.md` §0, §2, §3, §7): channel-wise outliers in the inputs of the layers that follow
AdaLN (qkv, fc1: GPS), a first "sink" token with a much larger activation than the rest
(excluded from the statistics, quantized with its own group), and token ranges that differ from
scale to scale (STWQ: one static quantizer per scale). The functions here measure each property
on activations [N, L, C]; `analyse` reads them block by block through a calibration adapter
(`arvg_jax.families.var.quant_adapter.VARAdapter.run_stage`: every Dense layer's input, on the calibration
forward, no attention mask as in the official code).

Dims: N sequences, L tokens (all scales), C channels, S scales.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

LAYER_KINDS = ("qkv", "proj", "fc1", "fc2", "head")  # layers with a token axis
RESIDUAL = "residual"  # the block output (residual stream), not a layer input


def channel_stats(x: np.ndarray, *, skip_tokens: int = 1, top: int = 3) -> dict[str, Any]:
    """Per-channel magnitude of x [N, L, C] (or [M, C]) over every token but the first `skip`.

    The official SmoothQuant/GPS statistics skip the sink token of qkv/fc1 (`x[:, 1:]`), so do we.

    Returns:
        {"absmax": [C] max |x| per channel, "range": [C] max - min per channel,
        "top_channels": the `top` channels of largest absmax (largest first),
        "absmax_top_over_median": max / median of absmax, "range_top_over_median": same for
        range, "absmax_top_over_second": the largest over the second largest channel}.
    """
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[:, skip_tokens:]
    x = x.reshape(-1, x.shape[-1])  # [M, C]
    absmax = np.abs(x).max(axis=0)
    rng = x.max(axis=0) - x.min(axis=0)
    order = np.argsort(absmax)[::-1]
    med_a, med_r = float(np.median(absmax)), float(np.median(rng))
    return {
        "absmax": absmax,
        "range": rng,
        "top_channels": [int(c) for c in order[:top]],
        "absmax_top_over_median": float(absmax[order[0]] / med_a) if med_a > 0 else float("inf"),
        "range_top_over_median": float(rng.max() / med_r) if med_r > 0 else float("inf"),
        "absmax_top_over_second": float(absmax[order[0]] / max(absmax[order[1]], 1e-30))
        if len(order) > 1
        else 1.0,
    }


def token_stats(x: np.ndarray, *, sink_tokens: int = 1) -> dict[str, Any]:
    """Per-position magnitude of x [N, L, C]: is the first position a sink token?

    Returns:
        {"norm": [L] mean over N of the L2 norm over channels, "absmax": [L] max |x| over N and
        C, "sink_norm_ratio": norm of token 0 / median norm of tokens >= sink_tokens,
        "sink_absmax_ratio": absmax of token 0 / max absmax of tokens >= sink_tokens,
        "max_norm_position": the position of the largest mean norm}.
    """
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1).mean(axis=0)  # [L]
    absmax = np.abs(x).max(axis=(0, 2))  # [L]
    rest_n, rest_a = norm[sink_tokens:], absmax[sink_tokens:]
    return {
        "norm": norm,
        "absmax": absmax,
        "sink_norm_ratio": float(norm[0] / np.median(rest_n)),
        "sink_absmax_ratio": float(absmax[0] / rest_a.max()),
        "max_norm_position": int(np.argmax(norm)),
    }


def scale_stats(x: np.ndarray, begin_ends) -> dict[str, Any]:
    """Per-scale range of x [N, L, C]: the spread STWQ gives one static quantizer each.

    Args:
        x: activations of the whole sequence.
        begin_ends: ((begin, end), ...) token span of each scale (`VARConfig.begin_ends`).

    The range is what a static min/max quantizer of the scale would cover, but it also grows
    with the number of values it is taken over (larger scales have more tokens: the extreme of
    more samples); the 99.9th percentile of |x| is nearly free of that effect.

    Returns:
        {"range": [S] max - min over the scale's tokens, all N and C, "absmax": [S],
        "p999": [S] 99.9th percentile of |x|, "max_over_min_range" and "max_over_min_p999":
        largest over smallest value among scales >= 1 (scale 0 is the sink token alone),
        "range_growth": range of the last scale over that of scale 1}.
    """
    x = np.asarray(x, np.float32)
    rngs, absmax, p999 = [], [], []
    for b, e in begin_ends:
        part = x[:, b:e]
        rngs.append(float(part.max() - part.min()))
        absmax.append(float(np.abs(part).max()))
        p999.append(float(np.percentile(np.abs(part), 99.9)))
    rngs_a, p999_a = np.asarray(rngs), np.asarray(p999)
    first = 1 if len(rngs_a) > 1 else 0
    return {
        "range": rngs_a,
        "absmax": np.asarray(absmax),
        "p999": p999_a,
        "max_over_min_range": float(rngs_a[first:].max() / rngs_a[first:].min()),
        "max_over_min_p999": float(p999_a[first:].max() / p999_a[first:].min()),
        "range_growth": float(rngs_a[-1] / rngs_a[1]) if len(rngs_a) > 1 else 1.0,
    }


@dataclasses.dataclass
class Phenomena:
    """Statistics of one model on one calibration batch.

    `layers` maps "blocks_<i>/<kind>" (kind in `kinds` or "residual") and "head" to
    {"channel": channel_stats, "token": token_stats, "scale": scale_stats}.
    """

    name: str
    depth: int
    begin_ends: tuple[tuple[int, int], ...]
    num_sequences: int
    layers: dict[str, dict[str, dict[str, Any]]]

    def get(self, block: int | None, kind: str) -> dict[str, dict[str, Any]]:
        return self.layers["head" if block is None else f"blocks_{block}/{kind}"]

    def summary(self) -> dict[str, Any]:
        """JSON-able scalars (arrays of length <= S kept; per-channel / per-token arrays dropped)."""
        out: dict[str, Any] = {
            "name": self.name,
            "depth": self.depth,
            "num_sequences": self.num_sequences,
            "layers": {},
        }
        for name, st in self.layers.items():
            c, t, s = st["channel"], st["token"], st["scale"]
            out["layers"][name] = {
                "absmax_top_over_median": round(c["absmax_top_over_median"], 3),
                "range_top_over_median": round(c["range_top_over_median"], 3),
                "absmax_top_over_second": round(c["absmax_top_over_second"], 3),
                "top_channels": c["top_channels"],
                "channel_absmax_max": round(float(c["absmax"].max()), 4),
                "channel_absmax_median": round(float(np.median(c["absmax"])), 4),
                "sink_norm_ratio": round(t["sink_norm_ratio"], 3),
                "sink_absmax_ratio": round(t["sink_absmax_ratio"], 3),
                "max_norm_position": t["max_norm_position"],
                "scale_range": [round(float(v), 4) for v in s["range"]],
                "scale_p999": [round(float(v), 4) for v in s["p999"]],
                "scale_max_over_min_range": round(s["max_over_min_range"], 3),
                "scale_max_over_min_p999": round(s["max_over_min_p999"], 3),
                "scale_range_growth": round(s["range_growth"], 3),
            }
        return out


def _all_stats(x, begin_ends, skip_tokens: int) -> dict[str, dict[str, Any]]:
    return {
        "channel": channel_stats(x, skip_tokens=skip_tokens),
        "token": token_stats(x),
        "scale": scale_stats(x, begin_ends),
    }


def analyse(
    adapter,
    params,
    batch,
    *,
    name: str = "",
    kinds: tuple[str, ...] = ("qkv", "fc1", "fc2"),
    residual: bool = True,
) -> Phenomena:
    """Runs the calibration forward stage by stage and measures every selected layer input.

    Args:
        adapter: `arvg_jax.families.var.quant_adapter.VARAdapter` of the model.
        params: float params.
        batch: calibration batch (`{"labels": [N], "x": [N, L - 1, E]}`).
        name: label of the model.
        kinds: layer kinds whose inputs are measured ("qkv", "proj", "fc1", "fc2"; the head's
            input is always measured).
        residual: also measure each block's output (the residual stream).

    Returns:
        `Phenomena`.
    """
    cfg = adapter.cfg
    begin_ends = tuple(tuple(int(v) for v in be) for be in cfg.begin_ends)
    layers: dict[str, dict[str, dict[str, Any]]] = {}
    carry = adapter.start(params, batch)
    for stage in adapter.stages():
        carry_out, inputs = adapter.run_stage(params, stage, carry)
        for lname, x in inputs.items():
            kind = adapter.layer_kind(lname)
            if kind == "head" or kind in kinds:
                skip = adapter.sink_tokens if adapter.sink_excluded(lname) else 0
                layers[
                    "head" if kind == "head" else lname.replace("/attn/", "/").replace("/ffn/", "/")
                ] = _all_stats(np.asarray(x), begin_ends, skip)
        if residual and stage.name != "head":
            layers[f"{stage.name}/{RESIDUAL}"] = _all_stats(
                np.asarray(carry_out[0]), begin_ends, adapter.sink_tokens
            )
        carry = carry_out
    n = int(np.shape(batch["labels"])[0])
    return Phenomena(name, cfg.depth, begin_ends, n, layers)


# ---- figures ------------------------------------------------------------------------------------
def channel_figure(ph: Phenomena, kinds=("qkv", "fc1"), panel_width: int = 420) -> np.ndarray:
    """Per-channel absmax (sink token excluded) of each block's `kinds` inputs: one bar panel per
    (block, kind), rows = blocks, top-3 channels red, median dashed, a shared y axis per kind."""
    from arvg_jax.eval.plots import bar_chart, stack

    panels = []
    y_max = {
        k: max(float(ph.get(i, k)["channel"]["absmax"].max()) for i in range(ph.depth))
        for k in kinds
    }
    for i in range(ph.depth):
        for k in kinds:
            c = ph.get(i, k)["channel"]
            panels.append(
                bar_chart(
                    c["absmax"],
                    highlight=c["top_channels"],
                    hline=float(np.median(c["absmax"])),
                    y_max=y_max[k],
                    width=panel_width,
                    height=110,
                    title=f"block {i} {k} input: top/median {c['absmax_top_over_median']:.1f}",
                )
            )
    return stack(panels, cols=len(kinds))


def token_figure(ph: Phenomena, kinds=("qkv", RESIDUAL), width: int = 640) -> np.ndarray:
    """Per-position mean L2 norm (log y) of each block's `kinds` tensors, one panel per kind;
    grey lines separate the scales."""
    from arvg_jax.eval.plots import line_chart, stack

    bounds = [b for b, _ in ph.begin_ends[1:]]
    panels = []
    for k in kinds:
        series = {f"block {i}": ph.get(i, k)["token"]["norm"] for i in range(ph.depth)}
        ratios = ", ".join(
            f"{ph.get(i, k)['token']['sink_norm_ratio']:.1f}" for i in range(ph.depth)
        )
        label = "block output" if k == RESIDUAL else f"{k} input"
        panels.append(
            line_chart(
                series,
                log_y=True,
                vlines=bounds,
                x_ticks=[0, *bounds],
                width=width,
                height=220,
                title=f"{label}: token norm, token 0 / median = {ratios}",
            )
        )
    return stack(panels)


def scale_figure(ph: Phenomena, kinds=("qkv", "fc1"), width: int = 400) -> np.ndarray:
    """Per scale (x = scale index, 0 = the sink token alone): the range (max - min) of each
    block's `kinds` inputs (top row) and their 99.9th percentile of |x| (bottom row)."""
    from arvg_jax.eval.plots import line_chart, stack

    s = len(ph.begin_ends)
    panels = []
    for stat, what in (("range", "range"), ("p999", "p99.9 of abs")):
        for k in kinds:
            series = {f"block {i}": ph.get(i, k)["scale"][stat] for i in range(ph.depth)}
            panels.append(
                line_chart(
                    series,
                    markers=True,
                    x_ticks=list(range(s)),
                    width=width,
                    height=200,
                    title=f"{k} input: {what} per scale",
                )
            )
    return stack(panels, cols=len(kinds))


# ---- tables -------------------------------------------------------------------------------------
TABLE_COLUMNS = (
    "block",
    "qkv: top/median channel absmax (top channel)",
    "fc1: top/median (top channel)",
    "fc2: top/median",
    "token 0 / median token norm: qkv in, fc1 in, fc2 in, block out",
    "qkv in, scales ≥ 1: largest/smallest range (99.9th pct. of abs)",
)


def markdown_table(ph: Phenomena) -> str:
    """One row per block plus the head: the three phenomena as ratios."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    has = {k: f"blocks_0/{k}" in ph.layers for k in ("qkv", "fc1", "fc2", RESIDUAL)}

    def ch(i, k):
        if not has[k]:
            return "—"
        c = ph.get(i, k)["channel"]
        return f"{c['absmax_top_over_median']:.2f} (#{c['top_channels'][0]})"

    def sink(i, k):
        return f"{ph.get(i, k)['token']['sink_norm_ratio']:.2f}" if has[k] else "—"

    for i in range(ph.depth):
        sc = ph.get(i, "qkv")["scale"] if has["qkv"] else None
        lines.append(
            "| "
            + " | ".join(
                [
                    str(i),
                    ch(i, "qkv"),
                    ch(i, "fc1"),
                    f"{ph.get(i, 'fc2')['channel']['absmax_top_over_median']:.2f}"
                    if has["fc2"]
                    else "—",
                    f"{sink(i, 'qkv')}, {sink(i, 'fc1')}, {sink(i, 'fc2')}, {sink(i, RESIDUAL)}",
                    "—"
                    if sc is None
                    else f"{sc['max_over_min_range']:.2f} ({sc['max_over_min_p999']:.2f})",
                ]
            )
            + " |"
        )
    h = ph.get(None, "head")
    lines.append(
        "| head | " + f"{h['channel']['absmax_top_over_median']:.2f} "
        f"(#{h['channel']['top_channels'][0]}) (head input) | — | — | "
        f"{h['token']['sink_norm_ratio']:.2f} (head input) | "
        f"{h['scale']['max_over_min_range']:.2f} "
        f"({h['scale']['max_over_min_p999']:.2f}) (head input) |"
    )
    return "\n".join(lines)


__all__ = [
    "Phenomena",
    "analyse",
    "channel_figure",
    "channel_stats",
    "markdown_table",
    "scale_figure",
    "scale_stats",
    "token_figure",
    "token_stats",
]
