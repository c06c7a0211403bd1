"""What do the quantized attention matmuls cost? Teacher-forced logit KL of a quantized packaged
tiny model against float, with its attention-matmul quantizers as calibrated and with some removed.

    # README "Tiny RAR and PAR" (2-core CPU, about 5 min):
    PYTHONPATH=. python scripts/attention_ablation.py --model rar-tiny --calib 128

One PTQ4ARVG calibration per bit width (the float model's generations, DGC-selected, as
`arvg quantize`); the scored tokens are the float model's generations with another seed, 4 per
class (held out: calibration never saw their keys). Each row removes the named operands'
quantizers ("q", "k", "p" = softmax probabilities, "v") from the same quantized tree, so those
operands run in float while everything else stays as calibrated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

DROPS = ("", "p", "v", "qk", "qkpv")


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from arvg_jax import evaluate as ev
    from arvg_jax.commands.generate import generate_images
    from arvg_jax.models import packaged_model, prepare_calibration, quant_adapter
    from quant import _tree, api
    from quant.recipes import Recipe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="rar-tiny", help="a packaged tiny preset")
    p.add_argument("--method", default="ptq4arvg", help="rtn | smoothquant | ptq4arvg")
    p.add_argument("--bits", default="w8a8,w6a6", help="comma-separated")
    p.add_argument("--calib", type=int, default=128, help="calibration sequences")
    p.add_argument("--per-class", type=int, default=4, help="scored images per class")
    p.add_argument("--seed", type=int, default=7, help="seed of the scored generations")
    args = p.parse_args(argv)

    model = packaged_model(args.model)
    sampling = dict(model.fam.demo_sampling())
    classes = [c for c in range(model.num_classes) for _ in range(args.per_class)]
    labels = np.asarray(classes, np.int32)
    n = len(classes)
    _, tokens, _ = generate_images(
        model, classes, seed=args.seed, sampling=sampling, batch=n, progress=False
    )
    ref = ev.teacher_forced_logits(model, labels, tokens, n)
    adapter = quant_adapter(model)
    gen = {k: v for k, v in sampling.items() if k != "greedy"}
    recipe0 = Recipe.parse(args.method, "w8a8", calib=args.calib)
    batch, _ = prepare_calibration(
        model, adapter, recipe0, progress=False, gen_batch=args.calib, **gen
    )

    def kl(params) -> float:
        got = ev.teacher_forced_logits(dataclasses.replace(model, params=params), labels, tokens, n)
        return ev.compare("", ref, got, (np.zeros(1), tokens), (np.zeros(1), tokens)).kl

    def without(params, ops: str):
        drop = tuple(f"/attn_quant/{o}/" for o in ops)
        flat = _tree.flatten(params)
        return _tree.unflatten({k: v for k, v in flat.items() if not any(d in k for d in drop)})

    out = {}
    for bits in filter(None, args.bits.split(",")):
        recipe = Recipe.parse(args.method, bits, calib=args.calib)
        q, _ = api.quantize(adapter, model.params, batch, recipe, progress=False)
        if not any("/attn_quant/" in k for k in _tree.flatten(q)):
            raise SystemExit(f"{args.model}: no quantized attention matmuls to remove")
        row = {(f"float {d}" if d else "as calibrated"): kl(without(q, d)) for d in DROPS}
        out[bits] = row
        print(bits, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
