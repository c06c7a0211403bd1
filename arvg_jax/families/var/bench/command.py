"""`arvg bench`: generation throughput, latency, compile time and memory; GEMM micro-benchmarks.

    arvg bench --model var-d16 --model var-d30 --precisions float32,bfloat16,w8a8,w6a6 \
        --batches 1,16,64 --out-dir out/bench
    arvg bench --model var-d30 --gemm --no-e2e --gemm-batches 64 --out-dir out/gemm

Models are full-size with seeded random weights (`arvg_jax.models.random_model`). Quantized
variants are built without calibration data (RTN min-max weights; static activation quantizers in
PTQ4ARVG's STWQ layout fitted on a short synthetic batch, `arvg_jax.families.var.bench.build`): speed depends
only on shapes and dtypes, never on the calibration values. A variant is
``precision[+int8-IMPL][+attn-IMPL][+kv-MODE][+kvpage-N][+filter-METHOD][+prologue-IMPL]
[+adaln-IMPL][+unpack-MODE][+gemm-bf16out][+ffn-unfused][+scan|+unrolled]``:
precision float32 | bfloat16 | w8a8 | w6a6 | w4a8; int8 IMPL auto | qarray | xla | barrier | pallas
| pallas_ws | pallas_pp (`quant._packed`); attention auto | xla | cudnn | pallas; KV cache mode auto | stacked | prefix | full
(`ExecOptions.sampler_kv`); kvpage-N positions per page of the stacked cache (`ExecOptions.kv_page`,
a multiple of 64); top-k / top-p filter auto | sort | bisect | pallas
(`ExecOptions.sampling_filter`); attention prologue auto | xla | pallas
(`ExecOptions.attn_prologue`); norm kernel adaln auto | xla | pallas (`ExecOptions.adaln_kernel`);
W4A8 nibble unpacking unpack call | layer (`ExecOptions.nibble_unpack`);
gemm-bf16out gives the float blocks' matmuls bf16 outputs
(`ExecOptions.matmul_out`); ffn-unfused turns off fc1's quantizing epilogue
(`ExecOptions.fuse_ffn_quant`).

Writes DIR/bench.json (after every configuration, so an interrupted run keeps what it measured),
DIR/bench.md (tables) and DIR/bench.png (images/s vs batch size).
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile
import time

NOTES = (
    "speed does not depend on weight or calibration values, only on shapes and dtypes; "
    "latency = wall time of one `generate` call (VAR sampling with CFG, top-k/top-p, VQVAE "
    "decode) ended by block_until_ready; first call = trace + compile + run; "
    "program GB = XLA memory plan of the compiled generate (arguments + outputs + temps); "
    "process peak = allocator peak since the process started (monotonic)."
)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.replace(" ", "").split(",") if t]


def add_arguments(parser) -> None:
    from arvg_jax import argtypes as at
    from arvg_jax.families.var import FAMILY

    parser.add_argument(
        "--model",
        action="append",
        choices=sorted(FAMILY.presets()),
        help="preset with random weights (repeatable; default var-d16)",
    )
    parser.add_argument(
        "--precisions",
        default="float32,bfloat16,w8a8,w6a6",
        help="comma-separated variants, precision[+int8-IMPL][+attn-IMPL]",
    )
    parser.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
    parser.add_argument(
        "--repeats", type=at.POSITIVE_INT, default=5, help="most timed calls per config"
    )
    parser.add_argument("--min-repeats", type=at.POSITIVE_INT, default=3, help="fewest timed calls")
    parser.add_argument(
        "--config-seconds",
        type=at.POSITIVE,
        default=20.0,
        help="stop timing a config after this long once --min-repeats are done",
    )
    parser.add_argument(
        "--time-limit",
        type=at.POSITIVE,
        default=None,
        help="skip the remaining configs once this many seconds have passed",
    )
    parser.add_argument("--cfg", type=at.NON_NEGATIVE, default=1.5, help="CFG scale")
    parser.add_argument(
        "--top-k", type=at.NON_NEGATIVE_INT, default=900, help="top-k filter, 0 disables"
    )
    parser.add_argument(
        "--top-p", type=at.PROBABILITY, default=0.96, help="top-p filter, 0 disables"
    )
    parser.add_argument("--seed", type=at.SEED, default=0, help="seed of the random weights")
    parser.add_argument(
        "--calib",
        type=at.POSITIVE_INT,
        default=2,
        help="synthetic calibration sequences for the activation quantizers",
    )
    parser.add_argument("--out-dir", default="out/bench")
    parser.add_argument("--no-e2e", action="store_true", help="skip end-to-end generation")
    parser.add_argument("--gemm", action="store_true", help="run the GEMM micro-benchmark")
    parser.add_argument(
        "--gemm-batches", default=None, help="batches of the GEMM shapes (default: --batches)"
    )
    parser.add_argument(
        "--gemm-scales",
        default="-1,7",
        help="scale indices of the GEMM shapes (default: last and 10x10)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="trace one extra call per config and sum device time by category",
    )
    parser.add_argument(
        "--profile-batches", default=None, help="profile only these batch sizes (default: all)"
    )
    parser.add_argument(
        "--hlo",
        action="store_true",
        help="summarise the compiled HLO of every config (int8 GEMM kernels, "
        "Triton fusions, transposes) and keep the first --hlo-keep modules' text",
    )
    parser.add_argument(
        "--plan",
        default=None,
        help="explicit run order MODEL:VARIANT:BATCH,... (overrides --model, "
        "--precisions and --batches for the end-to-end part)",
    )
    parser.add_argument(
        "--profile-match",
        default=None,
        help="profile only configs whose MODEL:VARIANT:BATCH matches this regex",
    )
    parser.add_argument(
        "--hlo-keep",
        type=at.NON_NEGATIVE_INT,
        default=2,
        help="keep the full HLO text of this many configs (hlo.tar.gz)",
    )
    parser.add_argument(
        "--init",
        choices=["fast", "flax"],
        default="fast",
        help="random weights: fast (leaf by leaf) or flax (model.init; slow)",
    )
    parser.add_argument(
        "--act-fit",
        choices=["minmax", "calibrated"],
        default="minmax",
        help="activation quantizers: min-max on synthetic inputs, or the "
        "percentile-MSE search on a synthetic calibration forward",
    )
    parser.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: combine these bench.json files into one "
        "bench.json / bench.md / bench.png in --out-dir",
    )
    parser.add_argument("--title", default=None, help="plot title")
    parser.add_argument("--quiet", action="store_true")


def _plan(args, build) -> list[tuple[str, object, int]]:
    """[(model, Variant, batch)] in run order: --plan, else models x precisions x batches."""
    if args.plan:
        out = []
        for item in args.plan.split(","):
            parts = item.strip().split(":")
            if len(parts) != 3:
                raise ValueError(f"--plan item {item!r}: expected MODEL:VARIANT:BATCH")
            out.append((parts[0], build.Variant.parse(parts[1]), int(parts[2])))
        return out
    variants = [build.Variant.parse(v) for v in args.precisions.split(",") if v.strip()]
    return [
        (m, v, b)
        for m in (args.model or ["var-d16"])
        for v in variants
        for b in _ints(args.batches)
    ]


def run(args) -> int:
    import re

    import jax

    from arvg_jax import atomic
    from arvg_jax.families.var.bench import build, e2e, gemm, profile, report
    from arvg_jax.families.var.model import attn_prologue_impl
    from arvg_jax.models import resolve_configs

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.from_json:
        return _render(args, report)
    try:
        plan = [] if args.no_e2e else _plan(args, build)
        for m, _, _ in plan:
            resolve_configs(m, None)
        gemm_models = args.model or sorted({m for m, _, _ in plan}) or ["var-d16"]
        gemm_batches = _ints(args.gemm_batches or args.batches)
        gemm_scales = _ints(args.gemm_scales)
        profile_batches = set(_ints(args.profile_batches)) if args.profile_batches else None
        profile_re = re.compile(args.profile_match) if args.profile_match else None
        atomic.check_output_dir(args.out_dir)  # before any work: new, empty or arvg's own
    except (ValueError, FileExistsError) as e:
        print(f"arvg bench: {e}", file=sys.stderr)
        return 2
    out_dir = args.out_dir
    atomic.output_dir(out_dir)  # with the .arvg marker, so --overwrite may replace it later
    dev = jax.devices()[0]
    doc = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "jax": jax.__version__,
            "jaxlib": _jaxlib_version(),
            "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "command": _command_line(args),
            "settings": {
                "cfg": args.cfg,
                "top_k": args.top_k,
                "top_p": args.top_p,
                "seed": args.seed,
                "calib": args.calib,
                "repeats": args.repeats,
                "min_repeats": args.min_repeats,
            },
            "notes": NOTES,
        },
        "rows": [],
        "gemm": [],
        "hlo": {},
        "setup_s": {},
    }
    json_path = os.path.join(out_dir, "bench.json")
    t_start = time.perf_counter()
    title = args.title or f"images/s vs batch ({doc['meta']['device']})"

    def over_limit() -> bool:
        return args.time_limit is not None and time.perf_counter() - t_start > args.time_limit

    def flush():
        _finish_ratios(doc["rows"])
        report.write_json(json_path, doc)
        with open(os.path.join(out_dir, "bench.md"), "w") as f:
            f.write(report.markdown(doc))
        report.plot_png(doc["rows"], os.path.join(out_dir, "bench.png"), title)

    if args.gemm:
        for model_name in gemm_models:
            _, cfg, _ = resolve_configs(model_name, None)
            for b in gemm_batches:
                if over_limit():
                    break
                shapes = gemm.gemm_shapes(cfg, b, gemm_scales)
                rows = gemm.run_gemm(shapes, log=log)
                doc["gemm"].append({"model": model_name, "batch": b, "rows": rows})
                flush()

    models: dict[str, object] = {}
    quantized: dict[str, dict] = {}
    current: dict[str, object] = {}  # the params of the last (model, variant)
    hlo_texts: dict[str, str] = {}
    for model_name, variant, b in plan:
        if over_limit():
            log("time limit reached: skipping the remaining configs")
            break
        if model_name not in models:
            t = time.perf_counter()
            models[model_name] = (
                build.fast_random_model(model_name, seed=args.seed)
                if args.init == "fast"
                else __import__("arvg_jax.models", fromlist=["x"]).random_model(
                    model_name, seed=args.seed
                )
            )
            jax.block_until_ready(models[model_name].params)
            doc["setup_s"][f"{model_name} random weights"] = time.perf_counter() - t
            log(f"{model_name}: random weights in {time.perf_counter() - t:.1f}s")
        model = models[model_name]
        if variant.bits and variant.bits not in quantized.setdefault(model_name, {}):
            pairs = sorted(
                {v.bits for m, v, _ in plan if m == model_name and v.bits}
                - set(quantized[model_name])
            )
            t = time.perf_counter()
            quantize = (
                build.quantize_fast if args.act_fit == "minmax" else build.quantize_calibrated
            )
            quantized[model_name].update(quantize(model, pairs, calib=args.calib, seed=args.seed))
            jax.block_until_ready(quantized[model_name])
            doc["setup_s"][f"{model_name} quantize {pairs}"] = time.perf_counter() - t
            log(f"{model_name}: quantized {pairs} in {time.perf_counter() - t:.1f}s")
        key = (model_name, variant.spec)
        if current.get("key") != key:
            current.clear()
            params, var_cfg, vae_cfg, opts = build.variant_params(
                model, variant, quantized.get(model_name, {})
            )
            current.update(
                key=key,
                params=params,
                var_cfg=var_cfg,
                opts=opts,
                vae_cfg=vae_cfg,
                bytes=build.param_bytes(params),
                bf16_bytes=build.param_bytes(build.to_bfloat16(model.params)),
            )
        row = {
            "model": model_name,
            "variant": variant.spec,
            "precision": variant.precision,
            "int8_impl": variant.int8_impl,
            "attention": variant.attention,
            "sampler_kv": current["opts"].sampler_kv,
            "ffn_fused": variant.ffn_fused,
            "sampling_filter": current["opts"].sampling_filter,
            "kv_page": current["opts"].kv_page,
            "matmul_out": current["opts"].matmul_out,
            "attn_prologue": attn_prologue_impl(current["var_cfg"], current["opts"]),
            "adaln_kernel": current["opts"].adaln_kernel,
            "nibble_unpack": current["opts"].nibble_unpack,
            "blocks": variant.blocks,
            "batch": b,
            "param_bytes": current["bytes"],
            "param_bytes_vs_bf16": current["bytes"] / current["bf16_bytes"],
            "vae_param_bytes": build.param_bytes(model.vae_params),
        }
        tag = f"{model_name}:{variant.spec}:{b}"
        want_prof = (
            args.profile
            and (profile_batches is None or b in profile_batches)
            and (profile_re is None or profile_re.search(tag) is not None)
        )
        prof_dir = tempfile.mkdtemp(prefix="arvg-bench-trace-") if want_prof else None
        try:
            res = e2e.time_generation(
                current["params"],
                model.vae_params,
                current["var_cfg"],
                current["vae_cfg"],
                b,
                opts=current["opts"],
                seed=args.seed,
                cfg=args.cfg,
                top_k=args.top_k,
                top_p=args.top_p,
                min_repeats=args.min_repeats,
                max_repeats=args.repeats,
                seconds=args.config_seconds,
                profile_dir=prof_dir,
                want_hlo=args.hlo or want_prof,
            )
            text = res.pop("_hlo_text", None)
            res.pop("_profile_dir", None)
            row.update(res)
            if want_prof and "profile_error" not in row:
                try:
                    row["profile"] = profile.summarize_trace(
                        prof_dir, text, wall_s=row["latency_ms_median"] / 1e3
                    )
                except Exception as e:  # noqa: BLE001
                    row["profile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if args.hlo and text:
                doc["hlo"][tag] = profile.hlo_summary(text)
                if len(hlo_texts) < args.hlo_keep:
                    hlo_texts[tag] = text
        except Exception as e:  # noqa: BLE001 - record it, go on with the others
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        finally:
            if prof_dir:
                shutil.rmtree(prof_dir, ignore_errors=True)
        doc["rows"].append(row)
        flush()
        if row.get("error"):
            log(f"{tag}: ERROR {row['error'][:300]}")
        else:
            log(
                f"{model_name} {variant.spec:24s} b{b:3d}: {row['images_per_s']:8.2f} img/s "
                f"{row['latency_ms_median']:9.1f} ms  first {row['first_call_s']:.1f}s  "
                f"params {current['bytes'] / 2**20:,.0f} MB  "
                f"t={time.perf_counter() - t_start:.0f}s"
            )
    current.clear()
    flush()
    if hlo_texts:
        _write_hlo(os.path.join(out_dir, "hlo.tar.gz"), hlo_texts)
    log(f"wrote {json_path}, bench.md, bench.png in {time.perf_counter() - t_start:.0f}s")
    return 1 if any(r.get("error") for r in doc["rows"]) else 0


def _render(args, report) -> int:
    import json
    import pathlib

    docs = [json.loads(pathlib.Path(p).read_text()) for p in args.from_json]
    doc = report.combine(docs)
    try:
        from arvg_jax import atomic

        atomic.output_dir(args.out_dir)  # with the .arvg marker, as `run` writes it
    except FileExistsError as e:
        print(f"arvg bench: {e}", file=sys.stderr)
        return 2
    report.write_json(os.path.join(args.out_dir, "bench.json"), doc)
    with open(os.path.join(args.out_dir, "bench.md"), "w") as f:
        f.write(report.markdown(doc))
    title = args.title or f"images/s vs batch ({doc['meta']['device']})"
    report.plot_png(doc["rows"], os.path.join(args.out_dir, "bench.png"), title)
    return 0


def _command_line(args) -> str:
    """The equivalent explicit command (every option, defaults included)."""
    parts = ["arvg bench"]
    for k, v in vars(args).items():
        if k.startswith("_") or k == "command" or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, list):
            parts += [f"{flag} {x}" for x in v]
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def _finish_ratios(rows) -> None:
    """Speed-up over the bfloat16 row of the same model and batch (same run)."""
    ref = {
        (r["model"], r["batch"]): r.get("images_per_s")
        for r in rows
        if r.get("variant") == "bfloat16" and not r.get("error")
    }
    for r in rows:
        base = ref.get((r["model"], r["batch"]))
        r["speedup_vs_bf16"] = r["images_per_s"] / base if base and r.get("images_per_s") else None


def _write_hlo(path: str, texts: dict[str, str]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for tag, text in texts.items():
            data = text.encode()
            info = tarfile.TarInfo(tag.replace(" ", "_").replace("+", "_") + ".hlo.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
