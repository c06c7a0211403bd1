"""Times VAR sampler variants on one device: the top-k / top-p filter and the scan layout.

Each variant is a set of `VARConfig` sampler options (and the stacked or unrolled block layout)
applied to bfloat16 `arvg_jax.families.var.sampler.generate` (CFG 1.5, top-k 900, top-p 0.96, KV cache,
VQVAE decode) on full-size random weights (`arvg_jax.families.var.bench.build.fast_random_model`), timed by
`arvg_jax.families.var.bench.e2e.time_generation`: one warm-up call (trace + compile + run), then the median of
--repeats calls with new labels and key each, ended by block_until_ready. All variants generate the
same tokens (tests/var_sampler_variants_test.py, CPU); on the device each row also reports the
fraction of tokens equal to the baseline's for one fixed batch of labels and key.

XLA reads XLA_FLAGS once, when jax starts: run the script once per flag set (--xla-flags; the
flags are checked in a child process first, so an unknown flag is reported, not a crash).

    # GPU (prints a table; JSON rewritten after every configuration, so a timeout keeps results)
    PYTHONPATH=. python3 scripts/sampler_variants.py --out $OUT/variants.json --time-limit 540
    PYTHONPATH=. python3 scripts/sampler_variants.py --variants baseline,bisect_filter \\
        --xla-flags=--xla_gpu_enable_dynamic_slice_fusion=true --out $OUT/dsf.json
    # CPU smoke test
    PYTHONPATH=. python3 scripts/sampler_variants.py --model var-test --batches 2 --repeats 2 \\
        --variants baseline,bisect_filter --out /tmp/variants.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shlex
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Options every variant starts from: the sampler that BENCHMARKS.md measured.
BASELINE_OPTIONS = {"sampling_filter": "sort", "sampler_kv": "prefix", "scan_unroll": 1}
# name: (block layout, VARConfig options over BASELINE_OPTIONS, what it tests). Layout variants
# keep the baseline's sort filter, so their difference to the baseline is the layout's alone.
VARIANTS = {
    "baseline": ("scan", {}, "sort filter; lax.scan over stacked blocks; sliced KV prefix"),
    "bisect_filter": (
        "scan",
        {"sampling_filter": "bisect"},
        "sort-free top-k/top-p: radix select, 4 bits (15 sums) per pass over V",
    ),
    "bisect_filter_flat": (
        "scan",
        {"sampling_filter": "bisect:4:0"},
        "bisect_filter without the 512-term chunks (each pass reduces V in one level)",
    ),
    "bisect_filter_b1_flat": (
        "scan",
        {"sampling_filter": "bisect:1:0"},
        "1 bit per pass, no chunks: 76 plain single-operand row reductions (XLA's common case)",
    ),
    "bisect_filter_b2": (
        "scan",
        {"sampling_filter": "bisect:2"},
        "the same with 2 bits (3 sums) per pass: twice the passes, a fifth of the sums",
    ),
    "pallas_filter": (
        "scan",
        {"sampling_filter": "pallas"},
        "sort-free top-k/top-p as one Pallas (Triton) kernel: a row per program, in registers",
    ),
    "scan_unroll2": (
        "scan",
        {"scan_unroll": 2},
        "lax.scan(unroll=2): two blocks per loop iteration (still sliced, so still copied)",
    ),
    "kv_full": (
        "scan",
        {"sampler_kv": "full"},
        (
            "attend to the whole cache, tail masked (cuDNN key_value_seq_lengths); in a scan the "
            "block's cache is still a dynamic slice, now of full length: control for "
            "unrolled_kv_full"
        ),
    ),
    "kv_stacked": (
        "scan",
        {"sampler_kv": "stacked"},
        (
            "write the new keys into the layer-stacked cache in place, attend to the block's "
            "prefix (cuDNN on GPU in 16-bit: a copy of the prefix, no write-back)"
        ),
    ),
    "kv_stacked_pallas": (
        "scan",
        {"sampler_kv": "stacked", "attention": "pallas"},
        "kv_stacked with the Pallas kernel reading the block's keys in place (no prefix copy)",
    ),
    "kv_stacked_page128": (
        "scan",
        {"sampler_kv": "stacked", "kv_page": 128},
        "kv_stacked with the cache padded to 128-position pages",
    ),
    "unrolled": (
        "unrolled",
        {},
        "no scan: per-block weights (no weight copies), sliced KV prefix (copied)",
    ),
    "unrolled_kv_full": (
        "unrolled",
        {"sampler_kv": "full"},
        "no scan, no KV slice: no copies at all; paid in compile time",
    ),
}
DEFAULT_VARIANTS = "baseline,bisect_filter_flat,bisect_filter_b1_flat,scan_unroll2"
PROFILE_CATEGORIES = {  # table column -> arvg_jax.families.var.bench.profile category (device ms)
    "sort": "sort / top-k (sampling)",
    "copy": "transpose / copy",
    "reduce": "reduction fusions (norms, softmax, sums)",
    "elementw": "elementwise fusions",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="var-d30", help="preset (random weights), e.g. var-test")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--batches", default="64,1")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds: skip a configuration that would end after it (estimated from the "
        "slowest configuration so far; a first unrolled compile is not predictable)",
    )
    p.add_argument(
        "--profile-batches",
        default="64",
        help="batch sizes also profiled (one traced call: device ms by category); '' for none",
    )
    p.add_argument(
        "--greedy-check",
        action="store_true",
        help="also compile greedy generation and compare its tokens with the baseline's",
    )
    p.add_argument("--out", default="out/sampler_variants.json")
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    args.profile_list = [int(b) for b in args.profile_batches.split(",") if b.strip()]
    return args


def check_xla_flags(flags: str) -> str | None:
    """None if a fresh jax accepts XLA_FLAGS + flags, else the error (XLA aborts on a bad one)."""
    env = dict(os.environ, XLA_FLAGS=_joined_flags(flags))
    code = "import jax; jax.devices()"
    res = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode == 0:
        return None
    return f"rc {res.returncode}: {' '.join(res.stderr.split())[-600:]}"


def _joined_flags(flags: str) -> str:
    return " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f).strip()


class Runner:
    """Builds the model once, then times one (variant, batch) configuration at a time."""

    def __init__(self, args):
        import jax

        from arvg_jax.families.var.bench import build

        self.args, self.jax, self.build = args, jax, build
        t = time.perf_counter()
        self.model = build.fast_random_model(args.model, seed=args.seed)
        jax.block_until_ready(self.model.params)
        self.setup_s = {"random weights": time.perf_counter() - t}
        self.layouts: dict[str, tuple] = {}
        self.reference: dict[tuple, object] = {}  # (batch, greedy) -> baseline tokens

    def layout(self, blocks: str):
        """(params, var_cfg, vae_cfg, ExecOptions) of the bf16 model in a block layout, once."""
        if blocks not in self.layouts:
            t = time.perf_counter()
            variant = self.build.Variant.parse(
                "bfloat16" + ("+unrolled" if blocks != "scan" else "")
            )
            out = self.build.variant_params(self.model, variant, {})
            self.jax.block_until_ready(out[0])
            self.layouts[blocks] = out
            self.setup_s[f"bf16 {blocks} params"] = time.perf_counter() - t
        return self.layouts[blocks]

    def run(self, name: str, batch: int) -> dict:
        import shutil
        import tempfile

        from arvg_jax.families.var.bench import e2e

        blocks, options, about = VARIANTS[name]
        params, var_cfg, vae_cfg, opts = self.layout(blocks)
        opts = opts.replace(**{**BASELINE_OPTIONS, **options})
        row = {"variant": name, "about": about, "blocks": blocks, "batch": batch}
        row["options"] = {k: getattr(opts, k) for k in (*BASELINE_OPTIONS, "attention")}
        prof_dir = tempfile.mkdtemp(prefix="variants-") if batch in self.args.profile_list else None
        try:
            res = e2e.time_generation(
                params,
                self.model.vae_params,
                var_cfg,
                vae_cfg,
                batch,
                opts=opts,
                seed=self.args.seed,
                cfg=self.args.cfg,
                top_k=self.args.top_k,
                top_p=self.args.top_p,
                min_repeats=self.args.repeats,
                max_repeats=self.args.repeats,
                seconds=0.0,
                profile_dir=prof_dir,
                want_hlo=True,
            )
            text = res.pop("_hlo_text", None)
            row.update(res)
            if text:
                row["hlo"] = hlo_stats(text)
            if res.pop("_profile_dir", None):
                row["profile"] = profile_summary(prof_dir, text, row["latency_ms_median"])
            row.update(self.token_agreement(name, params, var_cfg, vae_cfg, opts, batch))
        except Exception as e:  # noqa: BLE001 - record it, go on with the other variants
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        finally:
            if prof_dir:
                shutil.rmtree(prof_dir, ignore_errors=True)
        return row

    def token_agreement(self, name, params, var_cfg, vae_cfg, opts, batch) -> dict:
        """Fraction of tokens equal to the baseline's, same labels and key (sampled; greedy too
        with --greedy-check). The sampled call reuses the timed executable: no compile."""
        import numpy as np

        from arvg_jax.families.var import sampler as var_sampler

        labels = np.arange(batch, dtype=np.int32) % var_cfg.num_classes
        key = self.jax.random.PRNGKey(self.args.seed + 1)
        out = {}
        for greedy in (False, True) if self.args.greedy_check else (False,):
            tokens = np.asarray(
                var_sampler.generate(
                    params,
                    self.model.vae_params,
                    var_cfg,
                    vae_cfg,
                    labels,
                    key,
                    cfg=self.args.cfg,
                    top_k=self.args.top_k,
                    top_p=self.args.top_p,
                    greedy=greedy,
                    options=opts,
                )["tokens"]
            )
            ref = self.reference.setdefault((batch, greedy), tokens) if name == "baseline" else None
            ref = self.reference.get((batch, greedy)) if ref is None else ref
            tag = "greedy" if greedy else "sampled"
            out[f"tokens_equal_baseline_{tag}"] = (
                None if ref is None else float(np.mean(tokens == ref))
            )
        return out


def hlo_stats(text: str) -> dict:
    """Instruction counts of the compiled program that tell the variants apart: copies, slices,
    loops, sorts, custom calls (cuBLAS / cuDNN), dynamic-slice fusions (XLA flag)."""
    import collections

    from arvg_jax.families.var.bench import profile

    instr = profile.hlo_instructions(text)
    ops = collections.Counter(profile._opcode(line) for line in instr.values())
    keep = ("copy", "dynamic-slice", "dynamic-update-slice", "while", "sort", "custom-call")
    out = {op: ops.get(op, 0) for op in keep}
    out["fusion"] = ops.get("fusion", 0)
    out["instructions"] = len(instr)
    out["address_computation_fusions"] = sum("address_computation" in n for n in instr)
    out["custom_call_targets"] = profile.hlo_summary(text)["custom_call_targets"]
    return out


def profile_summary(trace_dir: str, hlo_text: str | None, median_ms: float) -> dict:
    from arvg_jax.families.var.bench import profile

    prof = profile.summarize_trace(trace_dir, hlo_text, top=12, wall_s=median_ms / 1e3)
    prof.pop("lines", None)
    prof.pop("top_launch_groups_ms", None)
    return prof


def meta(args) -> dict:
    import jax

    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "model": args.model,
        "settings": {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed},
        "variants": {v: VARIANTS[v][2] for v in args.variant_list},
    }


def table(rows: list[dict]) -> str:
    """Compact text table; Δ = median minus the baseline's median at the same batch."""
    base = {r["batch"]: r["latency_ms_median"] for r in rows if r["variant"] == "baseline"}
    base = {b: v for b, v in base.items() if v is not None}
    cols = "".join(f" {c:>8s}" for c in PROFILE_CATEGORIES)
    head = (
        f"{'variant':22s} {'batch':>5s} {'median ms':>10s} {'min-max ms':>17s} {'Δ base':>8s} "
        f"{'first s':>8s}{cols} {'tok=base':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "latency_ms_median" not in r:
            why = r.get("error") or r.get("skipped", "")
            lines.append(f"{r['variant']:22s} {r['batch']:5d} {why[:80]}")
            continue
        med, b = r["latency_ms_median"], r["batch"]
        delta = f"{med - base[b]:+8.1f}" if b in base else f"{'':8s}"
        cats = (r.get("profile") or {}).get("categories_ms", {})
        prof = "".join(
            f" {cats.get(c, 0.0):8.1f}" if cats else f" {'':8s}"
            for c in PROFILE_CATEGORIES.values()
        )
        eq = r.get("tokens_equal_baseline_sampled")
        lines.append(
            f"{r['variant']:22s} {b:5d} {med:10.1f} "
            f"{r['latency_ms_min']:8.1f}-{r['latency_ms_max']:8.1f} {delta} "
            f"{r['first_call_s']:8.1f}{prof} {'' if eq is None else f'{eq:8.4f}':>8s}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.xla_flags:
        if "jax" in sys.modules:
            print("--xla-flags: jax is already imported in this process", file=sys.stderr)
            return 2
        error = check_xla_flags(args.xla_flags)
        if error:
            print(f"XLA rejected --xla-flags {args.xla_flags!r}: {error}", file=sys.stderr)
            _write(args.out, {"meta": {"xla_flags": _joined_flags(args.xla_flags)}, "error": error})
            return 2
        os.environ["XLA_FLAGS"] = _joined_flags(args.xla_flags)
    t_start = time.perf_counter()
    doc = {"meta": meta(args), "rows": []}
    runner = Runner(args)
    doc["setup_s"] = runner.setup_s
    for name in args.variant_list:
        for batch in args.batch_list:
            row = _run_or_skip(runner, name, batch, doc["rows"], t_start)
            doc["rows"].append(row)
            _write(args.out, doc)
            _log(row, time.perf_counter() - t_start)
    print(table(doc["rows"]), flush=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in doc["rows"]) else 0


def _run_or_skip(runner: Runner, name: str, batch: int, done: list[dict], t_start: float) -> dict:
    """Runs the configuration unless it would end after --time-limit (estimated from the slowest
    configuration so far: compile + timed calls)."""
    limit = runner.args.time_limit
    costs = [r["first_call_s"] + sum(r["latencies_ms"]) / 1e3 for r in done if "latencies_ms" in r]
    elapsed = time.perf_counter() - t_start
    if limit is not None and elapsed + max(costs, default=0.0) > limit:
        return {"variant": name, "batch": batch, "skipped": f"time limit ({elapsed:.0f}s elapsed)"}
    return runner.run(name, batch)


def _write(path: str, doc: dict) -> None:
    from arvg_jax.families.var.bench import report

    report.write_json(path, doc)


def _log(row: dict, elapsed: float) -> None:
    what = (
        f"{row['latency_ms_median']:.1f} ms (first call {row['first_call_s']:.1f} s)"
        if "latency_ms_median" in row
        else row.get("error") or row.get("skipped")
    )
    print(
        f"[{elapsed:6.0f}s] {row['variant']} b{row['batch']}: {what}", file=sys.stderr, flush=True
    )


if __name__ == "__main__":
    sys.exit(main())
