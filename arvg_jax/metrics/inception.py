"""Inception-v3 of the 2015-12-05 TF graph, as the ADM evaluator reads it (pool_3, mixed_6/conv).

Reproduces classify_image_graph_def.pb from `ExpandDims:0` on, the tensor that
openai/guided-diffusion evaluations/evaluator.py feeds, with the module names of the PyTorch
replicas (toshas/torch-fidelity feature_extractor_inceptionv3.py, mseitzer/pytorch-fid
inception.py):
- input uint8 (or float 0..255) NHWC, float32, TF1 legacy bilinear resize to 299 (no antialias),
  then (x - 128) * 0.0078125 (the graph's Sub / Mul; exactly (x - 128) / 128);
- every conv: no bias, inference batch norm (eps 1e-3), ReLU;
- VALID for the stride-2 convs, the 3x3/s2 max pools, Conv2d_2a_3x3 and Conv2d_4a_3x3; SAME
  (symmetric) for every other conv;
- pool branches: 3x3/s1 average that excludes the padding (TF AvgPool SAME), except Mixed_7c
  (TF mixed_10), whose pool branch is a 3x3/s1 max pool (a quirk of the TF graph);
- pool_3 = mean over the final 8x8 map; logits = pool_3 @ fc (+ bias).

TF scopes -> modules: conv, conv_1, conv_2 = Conv2d_1a/2a/2b; conv_3, conv_4 = Conv2d_3b/4a;
mixed, mixed_1, mixed_2 = Mixed_5b/5c/5d; mixed_3 = Mixed_6a; mixed_4..mixed_7 = Mixed_6b..6e;
mixed_8 = Mixed_7a; mixed_9, mixed_10 = Mixed_7b/7c; softmax = fc. The sFID tensor
`mixed_6/conv:0` is the ReLU output of Mixed_6d.branch1x1.

Params: each BasicConv2d holds `kernel` [kh, kw, in, out] (HWIO) and the TF batch-norm names
`gamma`, `beta`, `moving_mean`, `moving_variance` [out]; `fc` holds `kernel` [2048, classes]
and `bias` [classes].

Dims: B batch, H/W image height/width, D = 2048 pool width, K classes, S spatial width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arvg_jax.metrics.tf_resize import resize_bilinear_tf1

HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, kw_only=True)
class InceptionConfig:
    """The 2015-12-05 graph's fixed architecture and the evaluator's readouts.

    Attributes:
        num_classes: width of the softmax layer (1008: 1000 ImageNet classes + 8 unused).
        input_size: side of the square the input is resized to.
        bn_eps: batch-norm epsilon (TF `variance_epsilon`).
        spatial_channels: leading channels of `mixed_6/conv:0` kept for sFID (evaluator.py
            `_create_feature_graph`: `spatial[..., :7]`).
    """

    num_classes: int = 1008
    input_size: int = 299
    bn_eps: float = 1e-3
    spatial_channels: int = 7

    @classmethod
    def adm(cls) -> InceptionConfig:
        """The graph the ADM evaluator loads (the only released size)."""
        return cls()


# --------------------------------------------------------------------------- layers


class BasicConv2d(nn.Module):
    """conv (no bias) -> inference batch norm -> ReLU (torch-fidelity `BasicConv2d`).

    Attributes:
        features: output channels.
        kernel_size: (kh, kw).
        strides: stride of both axes.
        padding: symmetric zero padding (rows, cols); (0, 0) is VALID.
        eps: batch-norm epsilon.
        precision: matmul precision of the conv.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        c = self.features
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], c), jnp.float32
        )
        gamma = self.param("gamma", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("moving_mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("moving_variance", nn.initializers.ones, (c,), jnp.float32)
        ph, pw = self.padding
        y = lax.conv_general_dilated(
            x,
            kernel,
            (self.strides, self.strides),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision,
        )
        # Inference batch norm as a per-channel affine map (torch's CPU kernel and TF's
        # BatchNormWithGlobalNormalization both fold it this way).
        scale = gamma / jnp.sqrt(var + self.eps)
        return jax.nn.relu(y * scale + (beta - mean * scale))


def max_pool_3x3(x: jax.Array, strides: int, padding: int) -> jax.Array:
    """3x3 max pool; padding (stride 1 only) never wins (pads with -inf, as TF SAME)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, strides, strides, 1), pad)


@functools.cache
def _window_counts(h: int, w: int) -> np.ndarray:
    """In-image elements of each 3x3/s1 SAME window, [1, H, W, 1] (read-only)."""
    rows = np.minimum(np.arange(h) + 1, h - 1) - np.maximum(np.arange(h) - 1, 0) + 1
    cols = np.minimum(np.arange(w) + 1, w - 1) - np.maximum(np.arange(w) - 1, 0) + 1
    counts = (rows[:, None] * cols[None, :]).astype(np.float32)[None, :, :, None]
    counts.setflags(write=False)
    return counts


def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    """3x3/s1 average over the in-image elements only (TF AvgPool SAME; torch
    `avg_pool2d(..., padding=1, count_include_pad=False)`)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / jnp.asarray(_window_counts(x.shape[1], x.shape[2]))


# --------------------------------------------------------------------------- blocks


class InceptionA(nn.Module):
    """Mixed_5b-5d (TF mixed .. mixed_2): [1x1, 5x5 tower, 3x3-3x3 tower, avg-pool 1x1]."""

    pool_features: int
    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, eps=self.eps, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (TF mixed_3): 35 -> 17 with [3x3/s2, 1x1-3x3-3x3/s2, max pool 3x3/s2]."""

    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, eps=self.eps, precision=self.precision)
        b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-6e (TF mixed_4 .. mixed_7): factorised 7x7 towers.

    Returns the block output and its `branch1x1` activation (TF `X/conv:0`; Mixed_6d's is the
    sFID tensor `mixed_6/conv:0`).
    """

    channels_7x7: int
    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        conv = functools.partial(BasicConv2d, eps=self.eps, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):
    """Mixed_7a (TF mixed_8): 17 -> 8 with [1x1-3x3/s2, 1x1-1x7-7x1-3x3/s2, max pool 3x3/s2]."""

    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, eps=self.eps, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c (TF mixed_9 / mixed_10): split 1x3 | 3x1 towers.

    Attributes:
        pool: "avg" (Mixed_7b) or "max" (Mixed_7c: the TF graph max-pools in its last block).
    """

    pool: Literal["avg", "max"]
    eps: float = 1e-3
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, eps=self.eps, precision=self.precision)
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = max_pool_3x3(x, 1, 1) if self.pool == "max" else avg_pool_3x3_same(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """`fc` (TF softmax/weights, softmax/biases): returns (pool @ W, pool @ W + b)."""

    num_classes: int
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, pool: jax.Array) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (pool.shape[-1], self.num_classes)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
        unbiased = jnp.dot(pool, kernel, precision=self.precision)  # [B, K]
        return unbiased, unbiased + bias


# --------------------------------------------------------------------------- network


class InceptionV3(nn.Module):
    """The feature graph: images -> {pool, spatial, logits_unbiased, logits}.

    Attributes:
        config: the architecture (`InceptionConfig.adm()`).
        precision: matmul/conv precision (an execution choice; HIGHEST keeps float32 exact).
    """

    config: InceptionConfig
    precision: lax.PrecisionLike = HIGHEST

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """Args:
            images: [B, H, W, 3] uint8, or float with integral values 0..255 (RGB).

        Returns:
            pool [B, 2048] (pool_3), spatial [B, S] (mixed_6/conv, first `spatial_channels`
            channels, flattened NHWC: index (h * 17 + w) * c + ch), logits_unbiased [B, K]
            (what IS uses), logits [B, K] (with fc.bias). All float32.
        """
        cfg = self.config
        kw = {"eps": cfg.bn_eps, "precision": self.precision}
        conv = functools.partial(BasicConv2d, **kw)
        size = cfg.input_size
        x = resize_bilinear_tf1(jnp.asarray(images, jnp.float32), (size, size))
        x = (x - 128.0) * 0.0078125  # graph Sub / Mul; 1/128 is exact in float32
        x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # [B, 147, 147, 64]
        x = max_pool_3x3(x, 2, 0)  # [B, 73, 73, 64]
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)  # [B, 73, 73, 80]
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
        x = max_pool_3x3(x, 2, 0)  # [B, 35, 35, 192]
        x = InceptionA(32, **kw, name="Mixed_5b")(x)  # [B, 35, 35, 256]
        x = InceptionA(64, **kw, name="Mixed_5c")(x)  # [B, 35, 35, 288]
        x = InceptionA(64, **kw, name="Mixed_5d")(x)  # [B, 35, 35, 288]
        x = InceptionB(**kw, name="Mixed_6a")(x)  # [B, 17, 17, 768]
        x, _ = InceptionC(128, **kw, name="Mixed_6b")(x)
        x, _ = InceptionC(160, **kw, name="Mixed_6c")(x)
        x, mixed_6_conv = InceptionC(160, **kw, name="Mixed_6d")(x)  # [B, 17, 17, 192]
        x, _ = InceptionC(192, **kw, name="Mixed_6e")(x)  # [B, 17, 17, 768]
        x = InceptionD(**kw, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
        x = InceptionE("avg", **kw, name="Mixed_7b")(x)  # [B, 8, 8, 2048]
        x = InceptionE("max", **kw, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
        pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]: TF pool_3 (AvgPool 8x8 VALID)
        spatial = mixed_6_conv[..., : cfg.spatial_channels]  # [B, 17, 17, c]
        unbiased, logits = Classifier(cfg.num_classes, self.precision, name="fc")(pool)
        return {
            "pool": pool,
            "spatial": spatial.reshape(spatial.shape[0], -1),  # [B, S], NHWC order
            "logits_unbiased": unbiased,
            "logits": logits,
        }


def init_params(config: InceptionConfig, rng: jax.Array | None = None) -> dict:
    """Random params (for shapes and tests; real weights come from `converters.inception`)."""
    rng = jax.random.key(0) if rng is None else rng
    x = jnp.zeros((1, 75, 75, 3), jnp.uint8)
    return InceptionV3(config).init(rng, x)["params"]


def abstract_params(config: InceptionConfig) -> dict:
    """The param tree as `jax.ShapeDtypeStruct`s (nothing allocated or run)."""
    x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.uint8)
    return jax.eval_shape(InceptionV3(config).init, jax.random.key(0), x)["params"]
