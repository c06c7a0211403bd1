"""Where the time goes: device-kernel profiles (jax.profiler) and compiled-HLO summaries.

`summarize_trace` reads the `.xplane.pb` that `jax.profiler.trace` wrote, sums the device
kernel time per category and per HLO op, and labels each op with what the compiled HLO says it
is (a cuBLAS / Triton GEMM, int8 or float, a cuDNN attention or convolution, a fusion, a sort).
`hlo_summary` counts the interesting instructions of a compiled module (custom-call targets,
Triton GEMM fusions, int8 transposes).
"""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Any

# "[ROOT] %name = TYPE opcode(" where TYPE is "f32[2,3]{1,0}" or a tuple "(s32[..], s8[0]{0})".
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\(")


def hlo_instructions(text: str) -> dict[str, str]:
    """name -> the instruction's line, for every instruction of a compiled HLO module."""
    out = {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            out[m.group(1)] = line
    return out


def _opcode(line: str | None) -> str:
    m = _INSTR.match(line or "")
    return m.group(3) if m else ""


def _categorize(line: str | None, kernel: str) -> str:
    """A coarse label for one HLO op / kernel (its compiled-HLO line and its kernel name)."""
    k = kernel.lower()
    ln = line or ""
    opcode = _opcode(ln)
    head = ln.split("(", 1)[0]  # "%name = type[...] opcode"
    if opcode in ("while", "conditional", "call") or (
        not ln and re.fullmatch(r"(while|conditional|call)[._]\d+", kernel)
    ):
        return "control flow"
    if "mosaic_gpu" in k:  # the only Pallas Mosaic GPU kernel here: quant._pallas_gpu
        return "GEMM int8 (Pallas fused epilogue)"
    if "fmha" in ln or "sdpa" in k or "fmha" in k or "flash" in k:
        return "attention (cuDNN fused)"
    if (
        "__cudnn$conv" in ln
        or opcode == "convolution"
        or "fprop" in k
        or "conv2d" in k
        or "convolution" in k
    ):
        return "convolution (VQVAE decoder)"
    is_gemm = (
        "__cublas" in ln
        or "__triton_gemm" in ln
        or opcode == "dot"
        or "gemm" in k
        or "xmma" in k
        or "cutlass" in k
        or "matmul" in k
        or k.startswith("nvjet")
    )
    if is_gemm:
        out_type = ln.split("=", 1)[1].strip().lstrip("(")[:4] if "=" in ln else ""
        # An int8 GEMM returns s32 (cuBLAS' s8 workspace is no sign); or the kernel name says.
        int8 = out_type == "s32[" or any(
            t in k for t in ("s8s8", "i8i8", "imma", "_s8_", "int8", "_i8")
        )
        kind = (
            "Triton"
            if "__triton" in ln or "triton" in k or k.startswith("gemm_fusion")
            else "cuBLAS/library"
        )
        return f"GEMM {'int8' if int8 else 'float'} ({kind})"
    # The fused attention prologue kernel (arvg_jax.kernels.attn_prologue_pallas), named by Pallas.
    if "attn_prologue" in k:
        return "attention prologue (q/k norm, KV write)"
    if "adaln_kernel" in k:  # arvg_jax.kernels.adaln_pallas
        return "AdaLN kernel (residual, LN, quantize)"
    # "top_k_top_p_filter": the fused filter kernel (arvg_jax.kernels.sampling_pallas), named by Pallas.
    if "sort" in k or opcode == "sort" or "sort" in head or "topk" in k or "top_k" in k + ln:
        return "sort / top-k (sampling)"
    if (
        "transpose" in k
        or "transpose" in head
        or "memcpy" in k
        or "memset" in k
        or opcode == "copy"
    ):
        return "transpose / copy"
    if "dynamic-update-slice" in head or "dynamic_update_slice" in k:
        return "KV-cache update"
    if "reduce" in k or "reduce" in head:
        return "reduction fusions (norms, softmax, sums)"
    return "elementwise fusions"


_DERIVED = ("XLA Modules", "XLA Ops", "Steps", "Launch", "Source", "TraceMe", "Framework")


def _device_events(pd):
    """(plane/line, event) of device kernels; on a CPU backend, the XLA thunks (hlo_op events)."""
    planes = [p for p in pd.planes if p.name.startswith("/device:")]
    for plane in planes:
        for line in plane.lines:
            if any(s in line.name for s in _DERIVED):
                continue
            for ev in line.events:
                yield f"{plane.name}/{line.name}", ev
    if planes:
        return
    for plane in pd.planes:  # CPU backend: the executor threads' per-op events
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for ev in line.events:
                if "hlo_op" in dict(ev.stats):
                    yield f"{plane.name}/{line.name}", ev


def _kernel_to_instr(kernel: str, instr: dict[str, str]) -> str | None:
    """The HLO line of a fusion kernel ("input_reduce_fusion_6" -> "%input_reduce_fusion.6")."""
    if kernel in instr:
        return instr[kernel]
    m = re.fullmatch(r"(.+)_(\d+)", kernel)
    if m:
        return instr.get(f"{m.group(1)}.{m.group(2)}")
    return None


def _busy_ns(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    return busy


def summarize_trace(
    trace_dir: str, hlo_text: str | None = None, *, top: int = 40, wall_s: float | None = None
) -> dict[str, Any]:
    """Device time of one traced call by category, by kernel and by launch group.

    Kernels are keyed by kernel name: XLA launches most of a compiled VAR sampler through CUDA
    command buffers (a whole scan over blocks is one ``command_buffer_<n>`` hlo_op), so the
    hlo_op of an event names the group, not the op. Fusion kernels are matched back to their
    HLO instruction by name. ``busy_ms`` is the union of kernel intervals, ``span_ms`` first
    start to last end: span - busy is device idle time inside the call.
    """
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        return {"error": f"no .xplane.pb under {trace_dir}"}
    pd = ProfileData.from_file(files[-1])
    instr = hlo_instructions(hlo_text) if hlo_text else {}
    per_kernel: dict[str, dict[str, Any]] = {}
    per_group: dict[str, float] = collections.defaultdict(float)
    lines_seen = collections.Counter()
    intervals = []
    for where, ev in _device_events(pd):
        dur = float(ev.duration_ns)
        stats = dict(ev.stats)
        op = str(stats.get("hlo_op", "") or "")
        kernel = str(ev.name)
        lines_seen[where] += 1
        line = instr.get(op) if op and not op.startswith("command_buffer") else None
        line = line or _kernel_to_instr(kernel, instr)
        cat = _categorize(line, kernel)
        if cat == "control flow":  # CPU: loop events enclose their body's ops
            continue
        rec = per_kernel.setdefault(
            kernel,
            {
                "kernel": kernel,
                "ns": 0.0,
                "count": 0,
                "category": cat,
                "hlo": (line or "").strip()[:240],
                "hlo_op": op,
            },
        )
        rec["ns"] += dur
        rec["count"] += 1
        per_group[op or kernel] += dur
        intervals.append((float(ev.start_ns), float(ev.start_ns) + dur))
    cats: dict[str, float] = collections.defaultdict(float)
    for rec in per_kernel.values():
        cats[rec["category"]] += rec["ns"]
    total = sum(cats.values())
    kernels = sorted(per_kernel.values(), key=lambda r: -r["ns"])
    groups = sorted(per_group.items(), key=lambda kv: -kv[1])
    out = {
        "device_time_ms": total / 1e6,
        "busy_ms": _busy_ns(intervals) / 1e6,
        "span_ms": (max(e for _, e in intervals) - min(s for s, _ in intervals)) / 1e6
        if intervals
        else 0.0,
        "categories_ms": {
            k: round(v / 1e6, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        },
        "top_kernels": [
            {
                "kernel": r["kernel"][:160],
                "category": r["category"],
                "ms": round(r["ns"] / 1e6, 3),
                "count": r["count"],
                "hlo": r["hlo"],
                "hlo_op": r["hlo_op"],
            }
            for r in kernels[:top]
        ],
        "top_launch_groups_ms": {k: round(v / 1e6, 3) for k, v in groups[:24]},
        "lines": dict(lines_seen),
    }
    if wall_s is not None:
        out["wall_ms"] = 1e3 * wall_s
    return out


def _out_type(line: str) -> str:
    """The (first) result type of an instruction line: "s32[128,5760]{1,0}"."""
    m = _INSTR.match(line)
    return m.group(2).lstrip("(") if m else ""


def hlo_summary(text: str) -> dict[str, Any]:
    """Counts of the instructions that decide int8 speed in a compiled (optimized) HLO module."""
    instr = hlo_instructions(text)
    targets = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    triton = [
        ln
        for n, ln in instr.items()
        if '"__triton_gemm"' in ln or (n.startswith("gemm_fusion") and "__triton" in ln)
    ]
    cublas = [ln for ln in instr.values() if "__cublas" in ln]
    s8_cublas = [ln for ln in cublas if _out_type(ln).startswith("s32[")]
    s8_triton = [ln for ln in triton if _out_type(ln).startswith("s32[") or "s8[" in ln]
    s8_transpose = [n for n, ln in instr.items() if "transpose" in n and re.search(r"=\s*s8\[", ln)]
    barriers = sum(
        1
        for n, ln in instr.items()
        if _opcode(ln) == "opt-barrier" or n.startswith("optimization_barrier")
    )
    return {
        "instructions": len(instr),
        "custom_call_targets": dict(targets),
        "triton_gemm_fusions": len(triton),
        "triton_gemm_fusions_with_s8": len(s8_triton),
        "cublas_calls": len(cublas),
        "cublas_calls_with_s8": len(s8_cublas),
        "s8_transposes": len(s8_transpose),
        "opt_barriers": barriers,
        "examples": {
            "s8_cublas": [ln.strip()[:300] for ln in s8_cublas[:3]],
            "s8_triton": [ln.strip()[:300] for ln in s8_triton[:3]],
            "s8_transpose": s8_transpose[:5],
        },
    }
