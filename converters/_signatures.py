"""What each supported checkpoint looks like: a few distinctive keys and the shapes that size it.

Derived from the full-size key/shape manifests of the official releases
(`shared/reference/manifests/*.json`, `eval/inception_manifest.json`) and the official model code
they come from (VAR `models/var.py` + `models/vqvae.py`, RAR `modeling/rar.py` + MaskGIT-VQGAN,
PAR `autoregressive/models/gpt.py` + LlamaGen `tokenizer/vq_model.py`, MAR `models/mar.py` +
`models/vae.py`, torch-fidelity / pytorch-fid Inception-v3). Keys are written with every block
index as `*`. Each signature's `keys` are present in the release AND in the small random-weight
fixtures (shallower stacks), and no other signature's `keys` are all present in either.

A size fact is `(name, key, axis)` (a shape entry) or `(name, stack)` (how many numbered blocks
`stack.<i>.` has); presets list the facts of each released size.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Signature:
    """One kind of checkpoint.

    Attributes:
        family: "var", "rar", "par", "mar", "llamagen" or "eval".
        component: "transformer", "tokenizer" or "inception".
        what: How to name it in a sentence ("a VAR VQVAE tokenizer").
        use: What to do with it ("pass it as --vae").
        keys: Keys (indices as `*`) that must all be present.
        absent: Keys (indices as `*`) that must not be present.
        facts: The size facts: `(name, key, axis)` or `(name, stack)`.
        presets: Released sizes: preset name -> the facts it has.
    """

    family: str
    component: str
    what: str
    use: str
    keys: tuple[str, ...]
    absent: tuple[str, ...] = ()
    facts: tuple[tuple, ...] = ()
    presets: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


_CKPT = "pass it as --ckpt"
_VAE = "pass it as --vae"

SIGNATURES: tuple[Signature, ...] = (
    Signature(  # VAR models/var.py; width = 64 * depth (build_vae_var)
        "var",
        "transformer",
        "a VAR transformer",
        _CKPT,
        keys=("pos_start", "lvl_embed.weight", "word_embed.weight"),
        facts=(("depth", "blocks"), ("width", "pos_start", 2)),
        presets={f"var-d{d}": {"depth": d, "width": 64 * d} for d in (16, 20, 24, 30, 36)},
    ),
    Signature(  # RAR modeling/rar.py (hidden_size, num_hidden_layers of configs/training)
        "rar",
        "transformer",
        "a RAR transformer",
        _CKPT,
        keys=("target_aware_pos_embed", "timesteps_embeddings", "lm_head.weight"),
        facts=(("depth", "blocks"), ("width", "pos_embed", 2)),
        presets={
            "rar-b": {"depth": 24, "width": 768},
            "rar-l": {"depth": 24, "width": 1024},
            "rar-xl": {"depth": 32, "width": 1280},
            "rar-xxl": {"depth": 40, "width": 1408},
        },
    ),
    Signature(  # PAR autoregressive/models/gpt.py: GPT_XL/XXL/3B; spe_token_num 3 (4x), 15 (16x)
        "par",
        "transformer",
        "a PAR transformer",
        _CKPT,
        keys=("spe_tok_embeddings.special_embeddings.weight", "tok_embeddings.weight"),
        facts=(
            ("depth", "layers"),
            ("width", "tok_embeddings.weight", 1),
            ("special", "spe_tok_embeddings.special_embeddings.weight", 0),
        ),
        presets={
            "par-xl-4x": {"depth": 36, "width": 1280, "special": 3},
            "par-xxl-4x": {"depth": 48, "width": 1536, "special": 3},
            "par-3b-4x": {"depth": 24, "width": 3200, "special": 3},
            "par-3b-16x": {"depth": 24, "width": 3200, "special": 15},
        },
    ),
    Signature(  # LlamaGen's own c2i GPT: PAR's backbone without the special tokens
        "llamagen",
        "transformer",
        "a LlamaGen GPT",
        "it is not PAR (no spe_tok_embeddings); arvg runs PAR, LlamaGen's GPT with special tokens",
        keys=("tok_embeddings.weight", "cls_embedding.embedding_table.weight"),
        absent=("spe_tok_embeddings.special_embeddings.weight",),
        facts=(("depth", "layers"), ("width", "tok_embeddings.weight", 1)),
    ),
    Signature(  # MAR models/mar.py: mar_base/large/huge
        "mar",
        "transformer",
        "a MAR transformer",
        _CKPT,
        keys=("fake_latent", "z_proj.weight", "diffusion_pos_embed_learned"),
        facts=(("depth", "encoder_blocks"), ("width", "fake_latent", 1)),
        presets={
            "mar-base": {"depth": 12, "width": 768},
            "mar-large": {"depth": 16, "width": 1024},
            "mar-huge": {"depth": 20, "width": 1280},
        },
    ),
    Signature(  # VAR models/vqvae.py + quant.py (VectorQuantizer2 with quant_resi)
        "var",
        "tokenizer",
        "a VAR VQVAE tokenizer",
        _VAE,
        keys=("quantize.ema_vocab_hit_SV", "quantize.embedding.weight", "encoder.conv_in.weight"),
        facts=(
            ("ch", "encoder.conv_in.weight", 0),
            ("vocab", "quantize.embedding.weight", 0),
            ("z", "quantize.embedding.weight", 1),
        ),
        presets={"vae_ch160v4096z32": {"ch": 160, "vocab": 4096, "z": 32}},
    ),
    Signature(  # RAR's tokenizer (modeling/maskgit.py, from MaskGIT's VQGAN)
        "rar",
        "tokenizer",
        "a MaskGIT-VQGAN tokenizer",
        _VAE,
        keys=("decoder.up.*.upsample_conv.weight", "quantize.embedding.weight"),
        facts=(
            ("ch", "encoder.conv_in.weight", 0),
            ("vocab", "quantize.embedding.weight", 0),
            ("z", "quantize.embedding.weight", 1),
        ),
        presets={"maskgit-vqgan": {"ch": 128, "vocab": 1024, "z": 256}},
    ),
    Signature(  # LlamaGen tokenizer/tokenizer_image/vq_model.py: VQ-16 = 5 levels (ch_mult)
        "par",
        "tokenizer",
        "a LlamaGen VQ tokenizer",
        _VAE,
        keys=("encoder.conv_blocks.*.res.*.conv1.weight", "quantize.embedding.weight"),
        facts=(
            ("levels", "encoder.conv_blocks"),
            ("vocab", "quantize.embedding.weight", 0),
            ("z", "quantize.embedding.weight", 1),
        ),
        presets={
            "vq-16": {"levels": 5, "vocab": 16384, "z": 8},
            "vq-8": {"levels": 4, "vocab": 16384, "z": 8},
        },
    ),
    Signature(  # MAR models/vae.py AutoencoderKL (LDM layout, separate q/k/v attention)
        "mar",
        "tokenizer",
        "a KL-16 VAE tokenizer",
        _VAE,
        keys=("encoder.mid.attn_1.q.weight", "post_quant_conv.weight", "quant_conv.weight"),
        absent=("quantize.embedding.weight",),
        facts=(("ch", "encoder.conv_in.weight", 0), ("z", "post_quant_conv.weight", 0)),
        presets={"kl16": {"ch": 128, "z": 16}},
    ),
    Signature(  # Inception-v3 with the 2015-12-05 TF graph's 1008-way softmax
        "eval",
        "inception",
        "the FID/IS Inception-v3 network",
        "it is the evaluator's network, not a generator or tokenizer",
        keys=("Mixed_7c.branch_pool.conv.weight", "Conv2d_1a_3x3.conv.weight", "fc.weight"),
        facts=(("classes", "fc.weight", 0),),
        presets={"inception-2015-12-05": {"classes": 1008}},
    ),
    Signature(  # pytorch-fid's InceptionV3 module itself: blocks of Sequentials, no fc
        "eval",
        "inception",
        "pytorch-fid's InceptionV3 module state (blocks.*, no fc)",
        "it is the evaluator's network in pytorch-fid's module layout; save the underlying "
        "Inception3 (pt_inception-2015-12-05) instead",
        keys=("blocks.*.*.conv.weight", "blocks.*.*.branch_pool.conv.weight"),
    ),
)
