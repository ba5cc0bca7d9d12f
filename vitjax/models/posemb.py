"""Position-embedding resampling that reproduces each source's PyTorch interpolation exactly.

Checkpoints are evaluated at other resolutions by resampling their learned position
embeddings, and every source does it with a different `F.interpolate` call (size- or
scale-based, antialiased or not). A generic resampler breaks parity with the reference
model (jax.image.resize 'bicubic' is off by ~0.4 on a unit-variance 14->16 grid: another
cubic, other borders), so this module re-derives torch's aten CPU kernels
(UpSampleKernel.cpp / UpSample.h) in NumPy: each axis becomes a dense (new x old) matrix
built at trace time, and the grid is resampled with one einsum.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Resample:
    """How a source resamples its grid of position embeddings to another grid.

    mode:      'bicubic' or 'bilinear' (PyTorch semantics, align_corners=False)
    antialias: PyTorch's antialias=True path (PIL-style separable filter)
    offset:    None: size-based (`F.interpolate(size=new)`); a float: DINO-style
               `F.interpolate(scale_factor=(new + offset) / old)`
    """

    mode: str = "bicubic"
    antialias: bool = False
    offset: float | None = None


def _kernel(mode: str, a: float):
    """Interpolation kernel of |distance|: triangle, or Keys cubic with parameter `a`."""
    if mode == "bilinear":
        return lambda x: np.maximum(0.0, 1.0 - np.abs(x))

    def cubic(x):
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return np.where(x < 1, near, np.where(x < 2, far, 0.0))

    return cubic


def _axis_matrix(n_in: int, n_out: int, method: Resample, cdt) -> np.ndarray:
    """(n_out, n_in) float64 matrix equal to torch's 1-D resampling of one axis.

    Coordinates are computed in `cdt`, the dtype torch does its index arithmetic in
    (float32 for float32 inputs): which input samples a tap reaches, and at what
    fractional distance, must match torch, so that is emulated step by step (including
    its float/double promotions); the kernel weights themselves are then float64.
    """
    if method.offset is None:
        scale = cdt(n_in) / cdt(n_out)
    else:  # torch maps with the given factor, not in/out sizes, and floors the size
        factor = (n_out + method.offset) / n_in
        if math.floor(n_in * factor) != n_out:
            raise ValueError(
                f"offset {method.offset}: scale_factor {factor} maps {n_in} to "
                f"{math.floor(n_in * factor)}, not the requested {n_out}")
        scale = cdt(1.0 / factor)
    if n_in == n_out and (method.antialias or method.mode == "bilinear"):
        return np.eye(n_in)  # these torch kernels copy an unchanged axis even if scale != 1
    taps = 4 if method.mode == "bicubic" else 2
    rows = np.arange(n_out)
    f64 = np.float64
    if method.antialias:
        # PIL's ImagingResample: the kernel (a = -0.5) is stretched by the scale when
        # downsampling, clipped to the image, and renormalised to sum to one.
        kernel = _kernel(method.mode, -0.5)
        support = cdt(taps * 0.5 * max(float(scale), 1.0))
        invscale = f64(cdt(1.0 / float(scale) if scale >= 1.0 else 1.0))
        center = (float(scale) * (rows + 0.5)).astype(cdt)
        max_taps = math.ceil(support) * 2 + 1
        xmin = np.maximum(((center - support).astype(f64) + 0.5).astype(np.int64), 0)
        xmax = np.minimum(((center + support).astype(f64) + 0.5).astype(np.int64), n_in)
        xsize = np.clip(xmax - xmin, 0, max_taps)
        cols = xmin[:, None] + np.arange(max_taps)
        arg = ((cols.astype(cdt) - center[:, None]).astype(f64) + 0.5) * invscale
        w = np.where(np.arange(max_taps) < xsize[:, None], kernel(arg.astype(cdt).astype(f64)), 0.0)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total != 0, total, 1.0)
    else:
        # OpenCV-style: fixed taps around the source coordinate, borders replicated.
        kernel = _kernel(method.mode, -0.75)
        src = scale * (rows.astype(cdt) + cdt(0.5)) - cdt(0.5)
        if method.mode == "bilinear":
            src = np.maximum(src, cdt(0))
        # torch floors with floorf, i.e. after rounding the coordinate to float32
        idx = np.minimum(np.floor(src.astype(np.float32)), n_in - 1).astype(np.int64)
        lam = np.clip(src - idx.astype(cdt), 0, 1).astype(f64)
        offsets = np.arange(taps) - (taps // 2 - 1)
        w = kernel(offsets - lam[:, None])
        cols = idx[:, None] + offsets
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.broadcast_to(rows[:, None], cols.shape), np.clip(cols, 0, n_in - 1)), w)
    return mat


def resample_grid(grid, new_size, method: Resample) -> jax.Array:
    """Resample a (..., gh, gw, D) grid to (..., nh, nw, D) like torch's F.interpolate.

    Shapes are static, so the matrices are NumPy constants at trace time (jit-safe);
    the contraction runs at HIGHEST precision so accelerators do not drop to bf16/tf32.
    """
    if method.mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unsupported resample mode {method.mode!r}")
    x = jnp.asarray(grid)
    (gh, gw), (nh, nw) = x.shape[-3:-1], tuple(new_size)
    if method.offset is None and (gh, gw) == (nh, nw):
        return x
    cdt = np.float64 if x.dtype == jnp.float64 else np.float32
    compute = jnp.promote_types(x.dtype, jnp.float32)
    mh = jnp.asarray(_axis_matrix(gh, nh, method, cdt), compute)
    mw = jnp.asarray(_axis_matrix(gw, nw, method, cdt), compute)
    out = jnp.einsum("ph,qw,...hwd->...pqd", mh, mw, x.astype(compute),
                     precision=jax.lax.Precision.HIGHEST)
    return out.astype(x.dtype)


def resample_posemb(posemb, num_prefix: int, old_grid, new_grid, method: Resample) -> jax.Array:
    """Resample a (1, num_prefix + gh*gw, D) embedding; prefix (cls/register) rows pass through."""
    posemb = jnp.asarray(posemb)
    (gh, gw), (nh, nw) = tuple(old_grid), tuple(new_grid)
    batch, length, dim = posemb.shape
    if length != num_prefix + gh * gw:
        raise ValueError(f"posemb length {length} != {num_prefix} + {gh}*{gw}")
    grid = posemb[:, num_prefix:].reshape(batch, gh, gw, dim)
    grid = resample_grid(grid, (nh, nw), method).reshape(batch, nh * nw, dim)
    return jnp.concatenate([posemb[:, :num_prefix], grid], axis=1)


def _beit_coords(src: int, dst: int) -> np.ndarray:
    """BEiT's source offsets: a geometric progression whose ratio q (found by bisection)
    stretches the src//2 old offsets to cover the dst//2 new ones; rounded to float32
    as `torch.tensor` does in timm."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis, np.float32)


def _linear_matrix(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation over uneven `points`, clamped outside them: the
    per-axis weights of timm's RegularGridInterpolator (distances in float32 like it)."""
    n = len(points)
    right = np.minimum(np.searchsorted(points, queries, side="left"), n - 1)
    left = np.clip(right - 1, 0, n - 1)
    dl = np.maximum(queries - points[left], 0).astype(np.float64)
    dr = np.maximum(points[right] - queries, 0).astype(np.float64)
    both_zero = (dl == 0) & (dr == 0)
    dl, dr = np.where(both_zero, 1.0, dl), np.where(both_zero, 1.0, dr)
    mat = np.zeros((len(queries), n))
    rows = np.arange(len(queries))
    np.add.at(mat, (rows, left), dr / (dl + dr))
    np.add.at(mat, (rows, right), dl / (dl + dr))
    return mat


def resize_rel_pos_bias_table(table, old_grid, new_grid) -> np.ndarray:
    """Resize a BEiT ((2gh-1)(2gw-1)+3, heads) relative-position table like timm does.

    timm (layers/pos_embed_rel.py, without TIMM_USE_SCIPY_INTERP) does not use
    F.interpolate here: it places the old offsets on a geometric progression, the new
    ones on integers, and interpolates piecewise-linearly per head in float32. The last
    3 rows (cls->token, token->cls, cls->cls) are kept.
    """
    table = np.asarray(table)
    src = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    dst = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if src == dst:
        return table
    body, extra = table[:-3].astype(np.float32), table[-3:]
    body = body.reshape(src[0], src[1], table.shape[1])
    my, mx = (_linear_matrix(_beit_coords(s, d), np.arange(-(d // 2), d // 2 + 1, dtype=np.float32))
              for s, d in zip(src, dst))
    out = np.einsum("ph,qw,hwc->pqc", my, mx, body).reshape(dst[0] * dst[1], -1)
    return np.concatenate([out.astype(table.dtype), extra], axis=0)
