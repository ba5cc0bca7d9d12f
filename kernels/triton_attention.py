"""Attention with statistics on NVIDIA GPUs: the Triton kernels of kernels/triton_stats.py called from
JAX through jax-triton, with a fused flash-style backward and batching rules.

The contract is kernels/stats.py's (kernels/dispatch.py picks this module on CUDA backends):

    attention_with_stats(q, k, v, geometry, *, key_geometry=None) -> (out, finalized statistics)
    attention_received(q, k, lse, weights=None) -> (B, H, Nk)

Why the layers around `jax_triton.triton_call`:
  * triton_call raises under JVP and vmap. Gradients come from a custom_vjp whose backward is two
    Triton kernels (dK/dV over key blocks, dQ over query blocks) carrying the cotangents of the
    output and of every statistic; the one-hot part of d(max_prob) (at the row's argmax key, which
    the forward saves) is a small O(N Dh) XLA gather/scatter. The column pass's gradient is the
    chunked reference's (recomputed, O(N block) memory), as on TPU.
  * Every kernel call is a custom_vmap whose rule folds the vmapped axis into the batch axis, so
    vmap (and vmap of grad) runs one kernel launch, never a Python loop.
Inputs float32 (dots at IEEE precision, not TF32: these are measurements), bfloat16 or float16
(tensor-core dots with float32 accumulation). float64 goes to the chunked reference, since Triton
has no float64 tensor-core path worth a kernel. No attention bias (dispatch routes biased attention
to the chunked reference).

Only CUDA runs these kernels: jax-triton lowers them for the 'cuda' platform and imports only with
a CUDA jaxlib. On a CPU they run under the Triton interpreter in tests (tests/triton_interpreted.py).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vitjax.kernels import chunked, stats
from vitjax.kernels.stats import TokenGeometry

try:
    from vitjax.kernels import triton_stats
except ImportError as error:  # the `triton` package is not installed
    triton_stats, _TRITON_MISSING = None, error
else:
    _TRITON_MISSING = None
try:
    import jax_triton
except ImportError as error:  # not installed, or a jaxlib without CUDA (jax-triton refuses to import then)
    jax_triton, _JAX_TRITON_MISSING = None, error
else:
    _JAX_TRITON_MISSING = None

KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y, where batch x heads goes


class Config(NamedTuple):
    """Static launch parameters (powers of two, at least 16: tl.dot's minimum tile)."""

    block_q: int = 64
    block_k: int = 64
    block_backward: int = 32  # both tiles of the backward kernels (they hold more accumulators)
    num_warps: int = 4
    num_stages: int = 2


def available() -> bool:
    """Whether the kernels can run here: triton and jax-triton installed, with a CUDA jaxlib."""
    return triton_stats is not None and jax_triton is not None


def _launch(kernel, *args, out_shape, grid, num_warps, num_stages, **constants):
    """jax_triton.triton_call (the tests substitute a launcher that runs the Triton interpreter)."""
    if not available():
        raise RuntimeError("the Triton attention kernels need the `triton` and `jax-triton` packages and a CUDA "
                           "jaxlib: pip install 'vitjax[gpu]' (see the README's GPU section). Import failed with: "
                           f"{_TRITON_MISSING or _JAX_TRITON_MISSING}")
    return jax_triton.triton_call(*args, kernel=kernel, out_shape=out_shape, grid=grid, num_warps=num_warps,
                                  num_stages=num_stages, **constants)


def _check_config(config: Config):
    for name, block in zip(("block_q", "block_k", "block_backward"), config[:3]):
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name}={block} must be a power of two and at least 16 (Triton tiles)")


def _sizes(q, k, config: Config, tables=()) -> dict:
    """The constexprs every kernel takes: sizes, padded head dim, dot precision, table strides."""
    batch, num_q, heads, head_dim = q.shape
    if batch * heads > MAX_GRID_Y:
        raise ValueError(f"batch x heads = {batch * heads} exceeds CUDA's grid limit of {MAX_GRID_Y}; split the batch")
    sizes = dict(NQ=num_q, NK=k.shape[1], H=heads, D=head_dim, DP=max(16, 1 << (head_dim - 1).bit_length()),
                 PRECISION="ieee" if q.dtype == jnp.float32 else "tf32")
    for name, table in zip(("QTABLE_STRIDE", "KTABLE_STRIDE"), tables):
        sizes[name] = 0 if table.shape[0] == 1 else table.shape[1] * 4  # a shared table, or one per example
    return sizes


def _fold(x, batched: bool, axis_size: int, batch: int):
    """A vmapped argument (axis_size, batch, ...) as (axis_size * batch, ...); shared tables stay shared."""
    if not batched:
        if x.shape[0] != batch:  # a geometry table (1, N, 4) shared by every example
            return x
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)  # e.g. k, v under a vmap over q only
    x = jnp.broadcast_to(x, (axis_size, batch) + x.shape[2:])
    return x.reshape((axis_size * batch,) + x.shape[2:])


def _batched(call):
    """`call(q, *arrays) -> tuple of arrays with a leading batch axis`, vmappable by folding into that axis."""
    fn = jax.custom_batching.custom_vmap(call)

    @fn.def_vmap
    def rule(axis_size, in_batched, q, *args):
        batch = q.shape[1] if in_batched[0] else q.shape[0]
        folded = [_fold(x, b, axis_size, batch) for x, b in zip((q,) + args, in_batched)]
        outs = fn(*folded)
        return tuple(o.reshape((axis_size, batch) + o.shape[1:]) for o in outs), tuple(True for _ in outs)

    return fn


@functools.cache
def _forward_call(config: Config):
    def call(q_scaled, k, v, q_table, k_table):
        batch, num_q, heads, _ = q_scaled.shape
        return _launch(
            triton_stats.attention_stats_fwd, q_scaled, k, v, q_table, k_table,
            out_shape=(jax.ShapeDtypeStruct(q_scaled.shape[:3] + v.shape[3:], v.dtype),
                       jax.ShapeDtypeStruct((batch, heads, triton_stats.SLAB_ROWS, num_q), jnp.float32)),
            grid=(math.ceil(num_q / config.block_q), batch * heads), num_warps=config.num_warps,
            num_stages=config.num_stages, BLOCK_Q=config.block_q, BLOCK_K=config.block_k,
            **_sizes(q_scaled, k, config, (q_table, k_table)))

    return _batched(call)


@functools.cache
def _backward_call(config: Config):
    def call(q_scaled, k, v, d_out, coefficients, q_table, k_table):
        batch, num_q, heads, _ = q_scaled.shape
        common = dict(num_warps=config.num_warps, num_stages=config.num_stages, BLOCK_Q=config.block_backward,
                      BLOCK_K=config.block_backward, **_sizes(q_scaled, k, config, (q_table, k_table)))
        args = (q_scaled, k, v, d_out, coefficients, q_table, k_table)
        f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
        dk, dv = _launch(triton_stats.attention_stats_bwd_dkdv, *args, out_shape=(f32(k), f32(v)),
                         grid=(math.ceil(k.shape[1] / config.block_backward), batch * heads), **common)
        (dq,) = _launch(triton_stats.attention_stats_bwd_dq, *args, out_shape=(f32(q_scaled),),
                        grid=(math.ceil(num_q / config.block_backward), batch * heads), **common)
        return dq, dk, dv

    return _batched(call)


@functools.cache
def _received_call(config: Config):
    def call(q_scaled, k, lse, weights):
        batch, _, heads, _ = q_scaled.shape
        return (_launch(triton_stats.attention_received, q_scaled, k, lse, weights,
                        out_shape=jax.ShapeDtypeStruct((batch, heads, k.shape[1]), jnp.float32),
                        grid=(math.ceil(k.shape[1] / config.block_k), batch * heads), num_warps=config.num_warps,
                        num_stages=config.num_stages, BLOCK_Q=config.block_q, BLOCK_K=config.block_k,
                        **_sizes(q_scaled, k, config)),)

    return _batched(call)


def _table(geometry: TokenGeometry) -> jax.Array:
    """(1, N, 4) float32 rows (y, x, is_patch, 0): the kernels' geometry table."""
    g = geometry.coords.astype(jnp.float32)
    rows = [g[:, 0], g[:, 1], geometry.is_patch.astype(jnp.float32), jnp.zeros_like(g[:, 0])]
    return jnp.stack(rows, axis=-1)[None]


def forward(q, k, v, query: TokenGeometry, key: TokenGeometry, config: Config = Config()):
    """(out (B, Nq, H, Dh) in v's dtype, raw stats (B, H, Nq), argmax key (B, H, Nq) int32); no gradient."""
    out, slab = _forward_call(config)(chunked.scaled_queries(q), k, v, _table(query), _table(key))
    return out, stats.unpack(slab, q.shape[1]), slab[:, :, triton_stats.ARGMAX_ROW].astype(jnp.int32)


def _coefficients(raw, g_raw, delta) -> jax.Array:
    """Per-query rows (lse, A, Bt, C, E, F, 0, 0) of dS = p (dP + A + Bt t + C d + patch (E + F t)), t = s - lse.

    Each statistic E[f] contributes g p (f - E[f]) to dS (kernels/chunked.py's backward), written
    with t = s - lse rather than s so no large logit cancels against lse in float32.
    """
    r = raw
    g = {name: g_raw[name].astype(jnp.float32) for name in stats.ROW_FIELDS}
    a = (g["lse"] - delta - g["entropy"] * r["entropy"] - g["distance"] * r["distance"]
         + g["prefix_mass"] * (1.0 - r["prefix_mass"]) - g["patch_mass"] * r["patch_mass"]
         + g["patch_entropy"] * (r["patch_mass"] - r["patch_entropy"]) - g["max_prob"] * r["max_prob"])
    e = g["patch_mass"] - g["prefix_mass"] - g["patch_entropy"]
    zeros = jnp.zeros_like(a)
    return jnp.stack([r["lse"], a, -g["entropy"], g["distance"], e, -g["patch_entropy"], zeros, zeros], axis=2)


def _max_prob_one_hot(q_scaled, k, argmax, weight):
    """The argmax part of d(max_prob): dS_ij += weight_i at j = argmax_i, as (dq_unscaled, dk) (B, N, H, Dh)."""
    heads_first = lambda x: jnp.swapaxes(x, 1, 2).astype(jnp.float32)
    k_at_max = jnp.take_along_axis(heads_first(k), argmax[..., None], axis=2)  # (B, H, Nq, Dh)
    scatter = lambda index, update: jnp.zeros(k.shape[1:2] + k.shape[3:], jnp.float32).at[index].add(update)
    dk = jax.vmap(jax.vmap(scatter))(argmax, weight[..., None] * heads_first(q_scaled))
    return jnp.swapaxes(weight[..., None] * k_at_max, 1, 2), jnp.swapaxes(dk, 1, 2)


def _backward(config: Config, residuals, cotangents):
    q, k, v, query, key, out, raw, argmax = residuals
    g_out, g_raw = cotangents
    delta = jnp.einsum("bqhd,bqhd->bhq", g_out.astype(jnp.float32), out.astype(jnp.float32))  # rowsum(dO O)
    q_scaled = chunked.scaled_queries(q)
    dq, dk, dv = _backward_call(config)(q_scaled, k, v, g_out.astype(v.dtype), _coefficients(raw, g_raw, delta),
                                        _table(query), _table(key))
    one_hot_dq, one_hot_dk = _max_prob_one_hot(q_scaled, k, argmax, g_raw["max_prob"].astype(jnp.float32)
                                                * raw["max_prob"])
    dq = (dq + one_hot_dq) * q.shape[-1] ** -0.5
    zeros = lambda g: jax.tree_util.tree_map(jnp.zeros_like, g)
    return dq.astype(q.dtype), (dk + one_hot_dk).astype(k.dtype), dv.astype(v.dtype), zeros(query), zeros(key)


@functools.cache
def _attend(config: Config):
    @jax.custom_vjp
    def attend(q, k, v, query, key):
        return forward(q, k, v, query, key, config)[:2]

    def attend_forward(q, k, v, query, key):
        out, raw, argmax = forward(q, k, v, query, key, config)
        return (out, raw), (q, k, v, query, key, out, raw, argmax)

    attend.defvjp(attend_forward, functools.partial(_backward, config))
    return attend


def attention_with_stats(q, k, v, geometry: TokenGeometry, *, key_geometry: TokenGeometry | None = None,
                         config: Config = Config()) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Like chunked.attention_with_stats (same outputs, statistics and gradients), fused in Triton."""
    key_geometry = geometry if key_geometry is None else key_geometry
    if jnp.dtype(q.dtype) == jnp.float64:
        return chunked.attention_with_stats(q, k, v, geometry, key_geometry=key_geometry)
    if jnp.dtype(q.dtype) not in map(jnp.dtype, KERNEL_DTYPES) or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"the Triton kernels take q, k, v of one dtype among float32, bfloat16, float16; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    _check_config(config)
    out, raw = _attend(config)(q, k, v, geometry, key_geometry)
    return out, stats.finalize(raw)


def attention_received(q, k, lse, weights=None, *, config: Config = Config()) -> jax.Array:
    """sum_i w_i p_ij (B, H, Nk) from the saved lse, by the Triton column pass; weights default to 1."""
    if jnp.dtype(q.dtype) == jnp.float64:
        return chunked.attention_received(q, k, lse, weights)
    _check_config(config)
    batch, num_q, heads, _ = q.shape
    weights = jnp.ones((batch, heads, num_q), jnp.float32) if weights is None else weights

    @jax.custom_vjp
    def received(q, k, lse, weights):
        w = jnp.broadcast_to(weights, (batch, heads, num_q)).astype(jnp.float32)
        return _received_call(config)(chunked.scaled_queries(q), k, lse.astype(jnp.float32), w)[0]

    def received_backward(residuals, cotangent):
        return jax.vjp(chunked.attention_received, *residuals)[1](cotangent)

    received.defvjp(lambda *args: (received(*args), args), received_backward)
    return received(q, k, lse, weights)
