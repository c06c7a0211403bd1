"""Benchmark reports: markdown tables, the images/s plot and the JSON document."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Atomic write (a partial run leaves the previous complete file, never half of one)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


def probe_doc(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document of a probe script's rows: date, device, jax version and command."""
    import datetime
    import sys

    import jax

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        "rows": rows,
    }


def _mb(n) -> str:
    return "" if n is None else f"{n / 2**20:,.0f}"


def _gb(n) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def _f(v, fmt=".1f") -> str:
    return "" if v is None else format(v, fmt)


def e2e_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | variant | batch | images/s | latency/batch ms (median) | min–max ms | "
        "× bf16 | first call s | param MB | × bf16 bytes | program GB | process peak GB | "
        "retrace |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['model']} | {r['variant']} | {r['batch']} | error: "
                f"{r['error'][:120]} |||||||||"
            )
            continue
        pm = (r.get("program_memory") or {}).get("total_bytes")
        dm = (r.get("device_memory") or {}).get("peak_bytes_in_use")
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch']} | {r['images_per_s']:.2f} | "
            f"{r['latency_ms_median']:.1f} | {r['latency_ms_min']:.1f}–{r['latency_ms_max']:.1f} | "
            f"{_f(r.get('speedup_vs_bf16'), '.2f')} | {r['first_call_s']:.1f} | "
            f"{_mb(r['param_bytes'])} | {_f(r.get('param_bytes_vs_bf16'), '.3f')} | {_gb(pm)} | "
            f"{_gb(dm)} | {'yes' if r['retraced_on_same_shape'] else 'no'} |"
        )
    return "\n".join(lines)


def gemm_table(rows: list[dict[str, Any]]) -> str:
    vs = ["bf16", "int8_qarray", "int8_packed", "int8_barrier", "int8_gemm_only"]
    head = (
        "| layer | M×K×N | "
        + " | ".join(f"{v} µs" for v in vs)
        + " | int8 roofline µs | bf16 roofline µs | barrier × bf16 | barrier % of int8 roofline"
        " | GEMM-only TOP/s |"
    )
    sep = "|---|---|" + "---:|" * (len(vs) + 5)
    lines = [head, sep]
    for r in rows:
        us = r["us"]
        sp = r["speedup_vs_bf16"].get("int8_barrier")
        fr = r["roofline_fraction"].get("int8_barrier")
        tops = r["tops"].get("int8_gemm_only")
        lines.append(
            f"| {r['name']} | {r['M']}×{r['K']}×{r['N']} | "
            + " | ".join(_f(us.get(v)) for v in vs)
            + f" | {r['roofline_int8_us']:.1f} | {r['roofline_bf16_us']:.1f} | {_f(sp, '.2f')} | "
            f"{_f(None if fr is None else 100 * fr, '.0f')} | {_f(tops, '.0f')} |"
        )
    return "\n".join(lines)


def profile_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        prof = r.get("profile")
        if not prof or "categories_ms" not in prof:
            continue
        out.append(
            f"**{r['model']} {r['variant']} batch {r['batch']}**: device kernel time "
            f"{prof['device_time_ms']:.1f} ms (busy {prof.get('busy_ms', 0):.1f} ms, span "
            f"{prof.get('span_ms', 0):.1f} ms) of a {r['latency_ms_median']:.1f} ms batch\n"
        )
        out.append("| category | ms | share |\n|---|---:|---:|")
        tot = prof["device_time_ms"] or 1.0
        for k, v in prof["categories_ms"].items():
            out.append(f"| {k} | {v:.2f} | {100 * v / tot:.0f}% |")
        out.append("")
    return "\n".join(out)


def plot_png(rows: list[dict[str, Any]], path: str | os.PathLike, title: str) -> None:
    from arvg_jax import imageio
    from arvg_jax.plot import line_plot

    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("error") or r.get("images_per_s") is None:
            continue
        series.setdefault(f"{r['model'].replace('var-', '')} {r['variant']}", []).append(
            (float(r["batch"]), float(r["images_per_s"]))
        )
    if not series:
        return
    img = line_plot(series, title=title, xlabel="batch size", ylabel="images/s")
    imageio.write_png(path, img)


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    parts = [
        f"# arvg bench — {meta['date']}",
        "",
        (
            f"* device: {meta['device']} ({meta['backend']}), jax {meta['jax']}, jaxlib "
            f"{meta['jaxlib']}"
        ),
        f"* command: `{meta['command']}`",
        (
            f"* sampling: cfg {meta['settings']['cfg']}, top-k {meta['settings']['top_k']}, top-p "
            f"{meta['settings']['top_p']}; full-size random weights (seed {meta['settings']['seed']})"
        ),
        f"* {meta['notes']}",
        "",
    ]
    if doc.get("rows"):
        parts += ["## End-to-end generation", "", e2e_table(doc["rows"]), ""]
        prof = profile_table(doc["rows"])
        if prof:
            parts += ["## Profiles (device kernel time by category)", "", prof]
    if doc.get("gemm"):
        for g in doc["gemm"]:
            parts += [
                f"## GEMM micro-benchmark: {g['model']} batch {g['batch']}",
                "",
                gemm_table(g["rows"]),
                "",
            ]
    return "\n".join(parts) + "\n"


def combine(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from several runs (rows keep their run's time in ``run``; ratios stay
    within a run, as `arvg bench` computed them)."""
    out = {"meta": dict(docs[0]["meta"]), "rows": [], "gemm": [], "hlo": {}, "runs": []}
    for d in docs:
        m = d["meta"]
        out["runs"].append(
            {
                k: m.get(k)
                for k in (
                    "date",
                    "time",
                    "device",
                    "jax",
                    "jaxlib",
                    "backend",
                    "xla_flags",
                    "command",
                )
            }
        )
        for r in d.get("rows", []):
            r = {**r, "run": m.get("time")}
            if r.get("profile") and "top_kernels" not in r["profile"]:
                # An early trace summary that grouped CUDA command buffers as single ops.
                r["profile_superseded"] = r.pop("profile")
            out["rows"].append(r)
        out["gemm"] += d.get("gemm", [])
        out["hlo"].update(d.get("hlo", {}))
    out["meta"]["command"] = " ; ".join(r["command"] for r in out["runs"])
    return out
