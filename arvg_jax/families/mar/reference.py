"""Recomputes every output array of the MAR reference fixture (`reference/mar/io.npz`).

The fixture's checkpoints are converted with our converters (no torch), the port runs on the CPU
in float32, and the official orders and noise draws (fixture inputs) are injected. The official
per-step arrays use compact rows (B n_k per CFG half); the sampler uses padded rows (B n_max), so
the noise is scattered into, and the recorded rows gathered from, that layout here.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from arvg_jax.families.mar import diffloss, sampler
from arvg_jax.families.mar.config import MARConfig
from arvg_jax.families.mar.model import MAR
from arvg_jax.tokenizers import kl16_vae

_SCHED_KEYS = (
    "timestep_map",
    "betas",
    "alphas_cumprod",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)


def _inputs(fixture: pathlib.Path) -> dict[str, np.ndarray]:
    names = json.loads((fixture / "inputs.json").read_text())
    data = np.load(fixture / "io.npz")
    missing = [n for n in names if n not in data.files]
    if missing:
        raise ValueError(f"{fixture / 'io.npz'}: missing input arrays {missing}")
    return {n: data[n] for n in names}


def _pad_rows(a: np.ndarray, halves: int, b: int, n: int, n_max: int) -> np.ndarray:
    """[..., halves B n, D] compact rows -> [..., halves B n_max, D] (zeros in the padding)."""
    lead, d = a.shape[:-2], a.shape[-1]
    a = a.reshape(*lead, halves, b, n, d)
    pad = [(0, 0)] * (len(lead) + 2) + [(0, n_max - n), (0, 0)]
    return np.pad(a, pad).reshape(*lead, halves * b * n_max, d)


def _unpad_rows(a: np.ndarray, halves: int, b: int, n: int) -> np.ndarray:
    """[halves B n_max, C] padded rows -> [halves B n, C]."""
    return a.reshape(halves, b, -1, a.shape[-1])[:, :, :n].reshape(halves * b * n, a.shape[-1])


def _schedule_arrays(prefix: str, steps: str) -> dict[str, np.ndarray]:
    s = diffloss.make_schedule(steps)
    return {f"{prefix}_{k}": np.asarray(getattr(s, k)) for k in _SCHED_KEYS}


def _generation(prefix, inp, settings, gen, cfg, params):
    """The `g{cfg,nocfg}_*` outputs of one `sample_tokens` run (images aside), and its tokens."""
    num_iter = int(gen["num_iter"])
    ms = sampler.mask_schedule(cfg.seq_len, num_iter)
    b = inp[f"{prefix}_labels"].shape[0]
    use_cfg = float(settings["cfg"]) != 1.0
    halves = 2 if use_cfg else 1
    noise0 = np.stack(
        [
            _pad_rows(inp[f"{prefix}_k{k}_noise0"], 1, b, n, ms.n_max)
            for k, n in enumerate(ms.counts)
        ]
    )
    noise = np.stack(
        [
            _pad_rows(inp[f"{prefix}_k{k}_noise"], halves, b, n, ms.n_max)
            for k, n in enumerate(ms.counts)
        ]
    )
    tokens, rec = sampler.sample_tokens(
        params,
        jnp.asarray(inp[f"{prefix}_labels"]),
        jax.random.key(0),  # unused: orders and noise are injected
        cfg=cfg,
        num_iter=num_iter,
        cfg_scale=float(settings["cfg"]),
        cfg_schedule=gen["cfg_schedule"],
        temperature=float(settings["temperature"]),
        num_sampling_steps=str(gen["num_sampling_steps"]),
        orders=jnp.asarray(inp[f"{prefix}_orders"]),
        noise0=jnp.asarray(noise0),
        noise=jnp.asarray(noise),
        record=True,
    )
    rec = jax.tree.map(np.asarray, rec)
    out = {
        f"{prefix}_mask": rec["mask"].astype(bool),
        f"{prefix}_pred_mask": rec["pred_mask"].astype(bool),
        f"{prefix}_tokens": rec["tokens"].astype(np.float32),
        f"{prefix}_cfg_iter": rec["cfg_iter"].astype(np.float32),
    }
    for k, n in enumerate(ms.counts):
        out[f"{prefix}_k{k}_z"] = _unpad_rows(rec["z"][k], halves, b, n)
        out[f"{prefix}_k{k}_sample"] = _unpad_rows(rec["sample"][k], halves, b, n)
    out[f"{prefix}_latents"] = np.asarray(sampler.unpatchify(tokens, cfg), np.float32)
    return out, tokens


def run_reference(fixture_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Every output array of `fixture_dir/io.npz`, computed by the port (CPU, float32).

    Args:
        fixture_dir: a MAR fixture folder (config.json, inputs.json, io.npz, mar.pth, kl16.ckpt).

    Returns:
        name -> array with the fixture's names, shapes and dtypes.
    """
    from converters.kl16_vae import load_kl16
    from converters.mar import load_mar

    fixture_dir = pathlib.Path(fixture_dir)
    config = json.loads((fixture_dir / "config.json").read_text())
    cfg = MARConfig.from_fixture(config["mar"])
    vae_cfg = kl16_vae.KL16Config.from_fixture(config["vae"])
    token_scale = float(config["token_scale"])
    io = config["io"]
    inp = _inputs(fixture_dir)
    # Every io.npz output was computed with model_ema (config.json "weights").
    params = load_mar(fixture_dir / "mar.pth", cfg, weights="model_ema")
    vae_params = load_kl16(fixture_dir / "kl16.ckpt", vae_cfg)
    out: dict[str, np.ndarray] = {}

    with jax.default_matmul_precision("highest"):
        # Teacher-forced encoder + decoder, batched as sample_tokens does under CFG.
        labels, mask = inp["fwd_labels"], inp["fwd_mask"]
        b = labels.shape[0]
        tokens2 = np.concatenate([inp["fwd_tokens"]] * 2)
        mask2 = np.concatenate([mask] * 2)
        labels2 = np.concatenate([labels] * 2)
        drop2 = np.repeat([False, True], b)
        model = MAR(cfg)

        @jax.jit
        def forward(p, tokens, mask, labels, drop):
            cvec = model.apply({"params": p}, labels, drop, method=MAR.class_vectors)
            enc = model.apply({"params": p}, tokens, mask, cvec, method=MAR.encode)
            return enc, model.apply({"params": p}, enc, mask, method=MAR.decode)

        enc, z = forward(params["transformer"], tokens2, mask2, labels2, drop2)
        enc = np.asarray(enc)
        keep = np.concatenate([np.ones((2 * b, cfg.buffer_size), bool), mask2 == 0], axis=1)
        # The official encoder output holds the kept rows only, in ascending position order.
        out["fwd_enc_out"] = np.stack([enc[i][keep[i]] for i in range(2 * b)]).astype(np.float32)
        out["fwd_z"] = np.asarray(z, np.float32)

        head = {"width": cfg.diffloss_w, "depth": cfg.diffloss_d}
        x, t, c = inp["head_x"], inp["head_t"], inp["head_c"]
        net = jax.jit(functools.partial(diffloss.head_apply, **head))
        net_cfg = jax.jit(functools.partial(diffloss.head_apply_cfg, **head))
        out["head_out"] = np.asarray(net(params["diffloss"], x, t, c))
        out["head_cfg_out"] = np.asarray(
            net_cfg(params["diffloss"], x, t, c, inp["head_cfg_scale"])
        )

        steps = str(io.get("ds_num_sampling_steps", cfg.num_sampling_steps))
        ds_sample = jax.jit(
            functools.partial(
                diffloss.sample,
                schedule=diffloss.make_schedule(steps),
                return_trajectory=True,
                **head,
            )
        )
        for prefix, scale in (("ds_nocfg", None), ("ds_cfg", inp["ds_cfg_scale"])):
            res, traj = ds_sample(
                params["diffloss"],
                inp[f"{prefix}_z"],
                inp[f"{prefix}_noise0"],
                inp[f"{prefix}_noise"],
                inp[f"{prefix}_temperature"],
                scale,
            )
            out[f"{prefix}_out"] = np.asarray(res, np.float32)
            out[f"{prefix}_traj"] = np.asarray(traj, np.float32)
        out.update(_schedule_arrays("sched", steps))
        gen = io["gen"]
        out.update(_schedule_arrays("gsched", str(gen["num_sampling_steps"])))

        gen_tokens = []
        for prefix in ("gcfg", "gnocfg"):
            arrays, tokens = _generation(prefix, inp, gen[prefix], gen, cfg, params)
            out.update(arrays)
            gen_tokens.append(tokens)

        # One decoder call for the generated images (`vae.decode(tokens / 0.2325)`) and the
        # fixed-grid check (images are independent along the batch; one compile instead of 3).
        latents = [jnp.transpose(sampler.unpatchify(t, cfg), (0, 2, 3, 1)) for t in gen_tokens]
        latents.append(jnp.transpose(jnp.asarray(inp["vae_tokens"]), (0, 2, 3, 1)))
        vae_z = jnp.concatenate(latents) / token_scale
        img, mid = kl16_vae.decode_with_mid(vae_params, vae_z, cfg=vae_cfg)
        img = np.asarray(jnp.transpose(img, (0, 3, 1, 2)), np.float32)
        mid = np.asarray(jnp.transpose(mid, (0, 3, 1, 2)), np.float32)
        n0, n1 = gen_tokens[0].shape[0], gen_tokens[1].shape[0]
        out["gcfg_img"], out["gnocfg_img"] = img[:n0], img[n0 : n0 + n1]
        out["vae_mid"], out["vae_img"] = mid[n0 + n1 :], img[n0 + n1 :]
    return out
