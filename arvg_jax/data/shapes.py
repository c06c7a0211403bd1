"""Procedural class-conditional "shapes" images: a download-free stand-in for ImageNet.

Every image is a bright foreground pattern (disk, square, triangle, cross, ring, frame, stripes,
checkerboard or a 5x7 bitmap-font digit) over a dark, possibly graded, background, with jittered
colour, position, size, rotation and period. Rasterisation is pure numpy: each class has a signed
distance function (SDF) in image units; every sub-sample of a `supersample` x `supersample` grid
per pixel gets the analytic box-filter coverage `clip(0.5 - sdf / sample_width, 0, 1)`, and the
sub-samples are averaged, so edges are anti-aliased twice over.

Determinism: all random draws come from one `numpy.random.Generator` in a fixed order (labels, then
every per-image parameter for all images), so the output depends on the seed and `n` only, never
on `chunk`.

Dims: N images, S side in pixels, P sub-samples of one image ((S * supersample)^2).
Image coordinates: x right, y down, both in (-1, 1); one pixel is 2 / S wide.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

CLASS_NAMES = (
    "disk",
    "square",
    "triangle",
    "cross",
    "ring",
    "frame",
    "stripes_h",
    "stripes_v",
    "checkerboard",
    "digit_2",
    "digit_4",
    "digit_7",
)
NUM_CLASSES = len(CLASS_NAMES)

# 5x7 bitmap font (rows top to bottom, '#' = ink).
_FONT_5X7 = {
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
}
_GLYPH_TABLE_RES = 8  # SDF table samples per font cell
_GLYPH_MARGIN = 2.0  # font cells of margin around the 5x7 box in the SDF table
_GLYPH_HALF = 0.6  # half-size of one ink cell, in font cells


def _glyph_sdf_table(rows: tuple[str, ...]) -> tuple[np.ndarray, float, float]:
    """Precomputed SDF of a bitmap glyph (union of unit cells), in font-cell units.

    Returns:
        (table [Ty, Tx] float32, origin_u, origin_v): table[j, i] is the SDF at
        u = origin_u + i / res, v = origin_v + j / res; the glyph spans u in [-2.5, 2.5],
        v in [-3.5, 3.5] (v down).
    """
    h, w = len(rows), len(rows[0])
    ou, ov = -w / 2 - _GLYPH_MARGIN, -h / 2 - _GLYPH_MARGIN
    tu = ou + np.arange(int((w + 2 * _GLYPH_MARGIN) * _GLYPH_TABLE_RES) + 1) / _GLYPH_TABLE_RES
    tv = ov + np.arange(int((h + 2 * _GLYPH_MARGIN) * _GLYPH_TABLE_RES) + 1) / _GLYPH_TABLE_RES
    vv, uu = np.meshgrid(tv, tu, indexing="ij")
    best = np.full(uu.shape, np.inf)
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            if ch != "#":
                continue
            # Cells overlap (half-size 0.6 > 0.5) so that strokes join without seams, also
            # across diagonal neighbours.
            cu, cv = c - w / 2 + 0.5, r - h / 2 + 0.5
            best = np.minimum(best, _box_sdf(uu - cu, vv - cv, _GLYPH_HALF, _GLYPH_HALF))
    return best.astype(np.float32), ou, ov


def _box_sdf(u, v, hu, hv):
    """Exact SDF of an axis-aligned box with half-sizes (hu, hv) centred at the origin."""
    qu, qv = np.abs(u) - hu, np.abs(v) - hv
    outside = np.sqrt(np.square(np.maximum(qu, 0)) + np.square(np.maximum(qv, 0)))
    return outside + np.minimum(np.maximum(qu, qv), 0)


_GLYPHS = {k: _glyph_sdf_table(v) for k, v in _FONT_5X7.items()}


def _glyph_sdf(u, v, digit: str):
    """Bilinear lookup of the precomputed glyph SDF at font-cell coordinates (u, v)."""
    table, ou, ov = _GLYPHS[digit]
    ty, tx = table.shape
    fu = np.clip((u - ou) * _GLYPH_TABLE_RES, 0, tx - 1.001)
    fv = np.clip((v - ov) * _GLYPH_TABLE_RES, 0, ty - 1.001)
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    au, av = fu - iu, fv - iv
    t00, t01 = table[iv, iu], table[iv, iu + 1]
    t10, t11 = table[iv + 1, iu], table[iv + 1, iu + 1]
    return (t00 * (1 - au) + t01 * au) * (1 - av) + (t10 * (1 - au) + t11 * au) * av


def _stripes_sdf(t, period, phase):
    """SDF of stripes of width period/2 across the coordinate t (ink where frac is near 0.5)."""
    a = t / period + phase
    a = a - np.floor(a)
    return (np.abs(a - 0.5) - 0.25) * period


def _checker_sdf(u, v, cell, pu, pv):
    au, av = u / cell + pu, v / cell + pv
    parity = (np.floor(au) + np.floor(av)) % 2 == 0
    fu, fv = au - np.floor(au), av - np.floor(av)
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * cell
    return np.where(parity, -edge, edge)


def _class_sdf(name: str, u, v, p: dict[str, np.ndarray]):
    """SDF in image units of class `name` at rotated, centred coordinates (u, v) [n, P]."""
    s = p["scale"]
    if name == "disk":
        return np.sqrt(u * u + v * v) - s
    if name == "square":
        return _box_sdf(u, v, s, s)
    if name == "triangle":
        # Equilateral, circumradius s: max over the three edge normals of n.x - s/2.
        d = -v  # normal pointing up (y is down), the first of three at 120 degrees
        for ang in (2 * np.pi / 3, 4 * np.pi / 3):
            d = np.maximum(d, -(v * np.cos(ang)) + u * np.sin(ang))
        return d - 0.5 * s
    if name == "cross":
        arm = s * p["thick"]
        return np.minimum(_box_sdf(u, v, s, arm), _box_sdf(u, v, arm, s))
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - s) - s * p["thick"] * 0.6
    if name == "frame":
        return np.abs(_box_sdf(u, v, s, s)) - s * p["thick"] * 0.5
    if name == "stripes_h":
        return _stripes_sdf(v, p["period"], p["phase"])
    if name == "stripes_v":
        return _stripes_sdf(u, p["period"], p["phase"])
    if name == "checkerboard":
        return _checker_sdf(u, v, p["period"], p["phase"], p["phase2"])
    if name.startswith("digit_"):
        cell = s / 3.5  # scale = half the glyph height
        return _glyph_sdf(u / cell, v / cell, name[-1]) * cell
    raise ValueError(f"unknown class {name!r}")


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB, all inputs [n] in [0, 1]; returns [n, 3]."""
    i = np.floor(h * 6).astype(np.int32) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        axis=0,
    )  # [6, n, 3]
    return table[i, np.arange(h.shape[0])]


# Per-class jitter: (scale range, rotation half-range in radians, centre jitter half-range).
_SHAPE_JITTER = {
    "disk": ((0.35, 0.6), np.pi, 0.25),
    "square": ((0.3, 0.5), np.pi / 4, 0.25),
    "triangle": ((0.5, 0.75), np.pi, 0.15),
    "cross": ((0.45, 0.7), np.pi / 4, 0.15),
    "ring": ((0.4, 0.65), np.pi, 0.2),
    "frame": ((0.4, 0.6), np.pi / 4, 0.2),
    "stripes_h": ((1.0, 1.0), 0.2, 1.0),
    "stripes_v": ((1.0, 1.0), 0.2, 1.0),
    "checkerboard": ((1.0, 1.0), 0.2, 1.0),
    "digit_2": ((0.6, 0.8), 0.25, 0.1),
    "digit_4": ((0.6, 0.8), 0.25, 0.1),
    "digit_7": ((0.6, 0.8), 0.25, 0.1),
}


def _draw_params(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-image random parameter, drawn for all images in a fixed order."""
    n = labels.shape[0]
    u01 = {
        k: rng.random(n, dtype=np.float64)
        for k in ("scale", "rot", "cx", "cy", "thick", "period", "phase", "phase2", "grad_ang")
    }
    hsv = rng.random((n, 3))
    bg = rng.random((n, 2, 3))
    smin = np.array([_SHAPE_JITTER[CLASS_NAMES[c]][0][0] for c in range(NUM_CLASSES)])[labels]
    smax = np.array([_SHAPE_JITTER[CLASS_NAMES[c]][0][1] for c in range(NUM_CLASSES)])[labels]
    rot = np.array([_SHAPE_JITTER[CLASS_NAMES[c]][1] for c in range(NUM_CLASSES)])[labels]
    jit = np.array([_SHAPE_JITTER[CLASS_NAMES[c]][2] for c in range(NUM_CLASSES)])[labels]
    return {
        "scale": smin + (smax - smin) * u01["scale"],
        "theta": (2 * u01["rot"] - 1) * rot,
        "cx": (2 * u01["cx"] - 1) * jit,
        "cy": (2 * u01["cy"] - 1) * jit,
        "thick": 0.25 + 0.2 * u01["thick"],  # cross arm / ring / frame thickness (of scale)
        "period": 0.35 + 0.25 * u01["period"],  # stripes / checker period in image units
        "phase": u01["phase"],
        "phase2": u01["phase2"],
        "grad_ang": 2 * np.pi * u01["grad_ang"],
        # Bright foreground (HSV s in [0.35, 0.9], v in [0.8, 1]); dark background in [0, 0.22].
        "fg": _hsv_to_rgb(hsv[:, 0], 0.35 + 0.55 * hsv[:, 1], 0.8 + 0.2 * hsv[:, 2]),
        "bg": 0.22 * bg,
    }


def _sample_grid(size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample centres (x, y) [P] in image units, row-major over the supersampled grid."""
    m = size * supersample
    t = ((np.arange(m) + 0.5) / m * 2 - 1).astype(np.float32)
    y, x = np.meshgrid(t, t, indexing="ij")
    return x.ravel(), y.ravel()


def _render_chunk(name: str, p: dict[str, np.ndarray], size: int, supersample: int) -> np.ndarray:
    """Renders n images of one class: [n, S, S, 3] float32 in [0, 1]."""
    n = p["scale"].shape[0]
    gx, gy = _sample_grid(size, supersample)  # [P]
    col = lambda a: np.asarray(a, np.float32)[:, None]  # [n] -> [n, 1]
    dx, dy = gx[None] - col(p["cx"]), gy[None] - col(p["cy"])  # [n, P]
    c, s = col(np.cos(p["theta"])), col(np.sin(p["theta"]))
    u, v = c * dx + s * dy, c * dy - s * dx  # rotate the sample points by -theta
    pc = {k: col(a) for k, a in p.items() if a.ndim == 1}
    sdf = _class_sdf(name, u, v, pc)
    sample_w = np.float32(2.0 / (size * supersample))
    cov = np.clip(np.float32(0.5) - sdf / sample_w, 0.0, 1.0)  # [n, P]
    cov = cov.reshape(n, size, supersample, size, supersample)
    cov = sum(cov[:, :, i, :, j] for i in range(supersample) for j in range(supersample))
    cov = cov * np.float32(1.0 / supersample**2)  # [n, S, S] box-filter average
    # Background: linear gradient between two dark colours along a random direction. It is
    # (near) constant inside a pixel, so it is composited at pixel resolution.
    px, py = _sample_grid(size, 1)
    ga = pc["grad_ang"]
    t = np.clip(0.5 + 0.5 * (px[None] * np.cos(ga) + py[None] * np.sin(ga)), 0, 1)  # [n, S*S]
    t = t.reshape(n, size, size, 1)
    bg = p["bg"].astype(np.float32)[:, :, None, None]  # [n, 2, 1, 1, 3]
    bgc = bg[:, 0] * (1 - t) + bg[:, 1] * t  # [n, S, S, 3]
    fg = p["fg"].astype(np.float32)[:, None, None]  # [n, 1, 1, 3]
    return (bgc + (fg - bgc) * cov[..., None]).astype(np.float32)


def render(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int = 32,
    supersample: int = 2,
    chunk: int = 64,
    workers: int = 1,
) -> np.ndarray:
    """Renders one image per label.

    Args:
        labels: int [N] class ids in [0, NUM_CLASSES).
        rng: the generator every per-image parameter is drawn from (advanced by this call).
        size: image side S in pixels.
        supersample: sub-samples per pixel side (1 = analytic coverage only, 4x faster; its
            bilinear glyph SDF shows faint seams).
        chunk: images rasterised at once (small chunks stay in cache); no effect on output.
        workers: threads (numpy releases the GIL in its loops; pays off on many cores only).
            No effect on output.

    Returns:
        float32 [N, S, S, 3] in [-1, 1].
    """
    labels = np.asarray(labels, np.int64)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES)):
        raise ValueError(f"labels must be [N] ints in [0, {NUM_CLASSES}), got {labels!r}")
    params = _draw_params(rng, labels)
    out = np.empty((labels.shape[0], size, size, 3), np.float32)
    jobs = []
    for k, name in enumerate(CLASS_NAMES):
        idx = np.nonzero(labels == k)[0]
        jobs += [(name, idx[s : s + chunk]) for s in range(0, idx.size, chunk)]

    def work(job):
        name, sel = job
        out[sel] = _render_chunk(name, {a: b[sel] for a, b in params.items()}, size, supersample)

    if workers <= 1:
        for job in jobs:
            work(job)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, jobs))
    return out * 2.0 - 1.0


def make_dataset(
    n: int,
    *,
    seed: int,
    size: int = 32,
    supersample: int = 2,
    chunk: int = 64,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, shuffled, deterministic dataset.

    Args:
        n: number of images (class counts differ by at most one).
        seed: numpy Generator seed; the same (n, seed, size, supersample) gives identical arrays.
        size, supersample, chunk, workers: see `render`.

    Returns:
        (images float32 [N, S, S, 3] in [-1, 1], labels int32 [N]).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
    images = render(labels, rng, size=size, supersample=supersample, chunk=chunk, workers=workers)
    return images, labels
