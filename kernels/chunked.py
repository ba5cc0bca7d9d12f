"""Chunked attention with statistics in plain jnp: the CPU path, and the oracle for the fused kernels.

Queries go through `lax.map` in blocks of about `block_q`; each block sees all keys at once, so its
rows are complete and the statistics are exactly `stats.row_stats` of that block. Peak memory is
O(B H block_q N) instead of O(B H N^2). A custom_vjp with a flash-style backward (a scan over
query blocks that recomputes each block's logits from q, k and the saved lse, and accumulates dK
and dV) keeps training through it at the same memory, and carries gradients of every statistic
(so a loss on entropy or attention distance trains too). `with_stats_vjp` attaches that backward
to any forward kernel with the same contract (the Pallas TPU and Triton GPU kernels use it).

Layouts as in kernels/reference.py: q, k, v (B, N, H, Dh); bias broadcastable to (B, H, Nq, Nk);
statistics (B, H, Nq) in float32 (float64 for float64 inputs), see kernels/stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.kernels.stats import (ROW_FIELDS, TokenGeometry, finalize, pair_distance, softmax_parts, stats_and_row_sum,
                                  stats_dtype)

# A kernel forward: (q, k, v, bias, query_geometry, key_geometry) -> (out, raw stats dict).
Forward = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def even_blocks(n: int, target: int) -> tuple[int, int]:
    """(num_blocks, block) with blocks of at most `target` that waste the least padding (197 -> 2 x 99)."""
    num = max(1, math.ceil(n / target))
    return num, math.ceil(n / num)


def scaled_queries(q: jax.Array) -> jax.Array:
    """q / sqrt(Dh) in q's dtype, exactly as reference.attention scales it."""
    return q * q.shape[-1] ** -0.5


def as_4d_bias(bias: jax.Array | None) -> jax.Array | None:
    """A bias of rank 2-4 as (Bb, Hb, Nq, Nk) with Bb, Hb in {1, B}, {1, H} (no copy)."""
    if bias is None:
        return None
    if not 2 <= bias.ndim <= 4:
        raise ValueError(f"attention bias must have rank 2 to 4 (.., Nq, Nk), got shape {bias.shape}")
    return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def logits(q_scaled: jax.Array, k: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    s = jnp.einsum("bqhd,bkhd->bhqk", q_scaled, k, preferred_element_type=dtype)
    return s if bias is None else s + bias.astype(dtype)


def _query_blocks(x: jax.Array, axis: int, num: int, block: int) -> jax.Array:
    """Pad `axis` to num * block and move the block index to the front: (num, ..., block, ...)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, num * block - x.shape[axis])
    x = jnp.pad(x, pad)
    x = x.reshape(x.shape[:axis] + (num, block) + x.shape[axis + 1 :])
    return jnp.moveaxis(x, axis, 0)


def _unblock(x: jax.Array, axis: int, n: int) -> jax.Array:
    """Inverse of _query_blocks for a result whose block axis sits at `axis` (after the leading num)."""
    x = jnp.moveaxis(x, 0, axis)
    x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])
    return jax.lax.slice_in_dim(x, 0, n, axis=axis)


def forward(q, k, v, bias, query: TokenGeometry, key: TokenGeometry, block_q: int = 128):
    """(out (B, Nq, H, Dh) in v's dtype, raw stats) by query blocks; no custom gradient."""
    f = stats_dtype(q.dtype)
    num_q = q.shape[1]
    num, block = even_blocks(num_q, block_q)
    bias = as_4d_bias(bias)
    padded = query.pad(num * block)
    xs = (
        _query_blocks(scaled_queries(q), 1, num, block),
        padded.coords.reshape(num, block, 2),
        padded.is_patch.reshape(num, block),
        None if bias is None else _query_blocks(bias, 2, num, block),
    )

    def one(x):
        q_blk, coords, is_patch, bias_blk = x
        s = logits(q_blk, k, bias_blk, f)
        e, m = softmax_parts(s)
        raw, l = stats_and_row_sum(s, e, m, TokenGeometry(coords, is_patch), key)
        out = jnp.einsum("bhqk,bkhd->bqhd", e.astype(v.dtype), v, preferred_element_type=f)
        return (out / jnp.swapaxes(l, 1, 2)[..., None]).astype(v.dtype), raw

    outs, raw = jax.lax.map(one, xs)
    return _unblock(outs, 1, num_q), {name: _unblock(x, 2, num_q) for name, x in raw.items()}


def _backward(block_q: int, residuals, cotangents):
    """Flash-style backward through the output and every raw statistic, by query blocks."""
    q, k, v, bias, query, key, out, raw = residuals
    g_out, g_raw = cotangents
    f = stats_dtype(q.dtype)
    num_q, num_k = q.shape[1], k.shape[1]
    num, block = even_blocks(num_q, block_q)
    bias4 = as_4d_bias(bias)
    delta = jnp.einsum("bqhd,bqhd->bhq", g_out.astype(f), out.astype(f))  # rowsum(dO * O)
    padded = query.pad(num * block)
    xs = (
        _query_blocks(scaled_queries(q), 1, num, block),
        _query_blocks(g_out, 1, num, block),
        _query_blocks(delta, 2, num, block),
        {name: _query_blocks(raw[name], 2, num, block) for name in ROW_FIELDS},
        {name: _query_blocks(g_raw[name].astype(f), 2, num, block) for name in ROW_FIELDS},
        padded.coords.reshape(num, block, 2),
        padded.is_patch.reshape(num, block),
        None if bias4 is None else _query_blocks(bias4, 2, num, block),
    )
    k_f, v_f = k.astype(f), v.astype(f)
    key_patch = key.is_patch.astype(f)

    def step(carry, x):
        dk, dv = carry
        q_blk, go, dl, r, g, coords, is_patch, bias_blk = x
        col = lambda a: a[..., None]
        s = logits(q_blk, k, bias_blk, f)
        lse = col(r["lse"])
        p = jnp.exp(s - lse)
        dp = jnp.einsum("bqhd,bkhd->bhqk", go.astype(f), v_f)
        d = pair_distance(TokenGeometry(coords, is_patch), key, f)
        # d(stat)/d(s_ij) = p_ij (f_ij - E[f]) for every expectation E[f]; see kernels/stats.py.
        coefficient = (
            dp - col(dl) + col(g["lse"])
            - col(g["entropy"]) * (s - (lse - col(r["entropy"])))
            + col(g["distance"]) * (d - col(r["distance"]))
            + col(g["prefix_mass"]) * ((1.0 - key_patch) - col(r["prefix_mass"]))
            + col(g["patch_mass"]) * (key_patch - col(r["patch_mass"]))
            + col(g["patch_entropy"])
            * (key_patch * (lse - s) - col(r["patch_entropy"]) + col(r["patch_mass"]) - key_patch)
        )
        ds = jnp.where(p > 0, p * coefficient, 0.0)
        is_max = jnp.arange(num_k) == jnp.argmax(s, axis=-1)[..., None]
        ds = ds + col(g["max_prob"] * r["max_prob"]) * (is_max - p)
        dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k_f) * q.shape[-1] ** -0.5
        dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds, q_blk.astype(f))
        dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p, go.astype(f))
        dbias = None
        if bias_blk is not None:
            summed = tuple(i for i in (0, 1) if bias_blk.shape[i] == 1)
            dbias = ds.sum(axis=summed, keepdims=True)
        return (dk, dv), (dq, dbias)

    zeros = jnp.zeros(k.shape, f), jnp.zeros(v.shape, f)
    (dk, dv), (dq, dbias) = jax.lax.scan(step, zeros, xs)
    dq = _unblock(dq, 1, num_q)
    if bias is not None:
        dbias = _unblock(dbias, 2, num_q).reshape(bias.shape).astype(bias.dtype)
    zero_geometry = lambda g: jax.tree_util.tree_map(jnp.zeros_like, g)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias,
            zero_geometry(query), zero_geometry(key))


def with_stats_vjp(kernel_forward: Forward, block_q: int = 128):
    """`kernel_forward` with the chunked flash-style backward attached as its custom_vjp.

    The backward needs only the residuals (q, k, v, bias, geometries, out, raw stats), so any
    forward that meets the statistics contract trains through this one.
    """

    @jax.custom_vjp
    def attend(q, k, v, bias, query, key):
        return kernel_forward(q, k, v, bias, query, key)

    def attend_forward(q, k, v, bias, query, key):
        out, raw = kernel_forward(q, k, v, bias, query, key)
        return (out, raw), (q, k, v, bias, query, key, out, raw)

    attend.defvjp(attend_forward, lambda residuals, cotangents: _backward(block_q, residuals, cotangents))
    return attend


def attention_with_stats(q, k, v, geometry: TokenGeometry, *, key_geometry: TokenGeometry | None = None,
                         bias=None, block_q: int = 128):
    """Attention output and statistics without an N x N array; differentiable, vmap- and jit-safe.

    Returns (out (B, Nq, H, Dh) in v's dtype, stats): the raw fields and derived fields of
    kernels/stats.py, each (B, H, Nq). `key_geometry` defaults to `geometry` (self-attention).
    """
    key_geometry = geometry if key_geometry is None else key_geometry
    kernel = lambda *args: forward(*args, block_q=block_q)
    out, raw = with_stats_vjp(kernel, block_q)(q, k, v, bias, geometry, key_geometry)
    return out, finalize(raw)


def attention_received(q, k, lse, weights=None, *, bias=None, block_k: int = 512):
    """Attention each key receives, sum_i w_i p_ij (B, H, Nk), from the saved lse (B, H, Nq).

    Key blocks go through lax.map (O(B H Nq block_k) memory); p_ij = exp(s_ij - lse_i) is exact.
    weights: (B, H, Nq) or anything broadcastable to it; None means 1 for every query. Each block
    is rematerialised under autodiff, so gradients keep the same memory.
    """
    f = stats_dtype(q.dtype)
    batch, num_q, heads, _ = q.shape
    num_k = k.shape[1]
    w = jnp.ones((batch, heads, num_q), f) if weights is None else weights
    w = jnp.broadcast_to(w, (batch, heads, num_q)).astype(f)
    num, block = even_blocks(num_k, block_k)
    bias4 = as_4d_bias(bias)
    xs = (_query_blocks(k, 1, num, block), None if bias4 is None else _query_blocks(bias4, 3, num, block))
    q_scaled = scaled_queries(q)

    @jax.checkpoint
    def one(x):
        k_blk, bias_blk = x
        p = jnp.exp(logits(q_scaled, k_blk, bias_blk, f) - lse[..., None].astype(f))
        return jnp.einsum("bhq,bhqk->bhk", w, p)

    return _unblock(jax.lax.map(one, xs), 2, num_k)


def attention_rows(q, k, lse, rows: Sequence[int], *, bias=None):
    """Full attention rows of the chosen queries (B, H, len(rows), Nk), exactly exp(s_rows - lse_rows)."""
    rows = np.asarray(rows, dtype=np.int32)
    bias4 = as_4d_bias(bias)
    s = logits(scaled_queries(q[:, rows]), k, None if bias4 is None else bias4[:, :, rows], stats_dtype(q.dtype))
    return jnp.exp(s - lse[:, :, rows, None])
