"""Pallas (Mosaic TPU) kernels: attention with statistics in one streaming pass, and the attention
each key receives in a second pass; splash attention for the plain path; shard_map for pods.

`attention_with_stats` (kernel K1): grid (B, H, query blocks, key blocks), the key axis sequential.
Each statistic of kernels/stats.py is one more accumulator of the online softmax, rescaled like the
row sum by exp(m_old - m_new): sum e, sum e (s - m), and the prefix, patch, distance and
patch-entropy sums (the centred ones also shift by m_old - m_new). Accumulators live in VMEM as
(block_q, 128) lane-broadcast tiles (the layout of jax's TPU flash attention). Statistics leave the
kernel as a lane-dense (B, H, 8, N) slab (stats.ROW_FIELDS order). Padded keys get a finite
logit of -1e30, so e = 0 and e * (s - m) = 0, never NaN. Gradients use the chunked flash-style
backward (`chunked.with_stats_vjp`): a fused TPU backward kernel is not written.

`attention_received` (K2): grid (B, H, key blocks, query blocks), the query axis sequential:
p = exp(s - lse) from the saved lse, c_j += sum_i w_i p_ij.

Layout on the way in is the models' (B, N, H, Dh); the kernels use (B, H, N, Dh). Blocks must be
multiples of 128 (TPU tiles; the per-query tables put queries on lanes). No bias argument: biased
attention (BEiT's relative position bias) goes through the chunked path (see dispatch.py).
Tested on CPU in interpret mode and lowered for TPU with jax.export; never run on a TPU here.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from vitjax.kernels import chunked, stats
from vitjax.kernels.stats import ROW_FIELDS, TokenGeometry

LANES = 128
MASK = -1e30  # finite: exp(MASK - m) is 0 and 0 * (MASK - m) is 0
FAR = 1e30  # lse of padded queries in the column pass: exp(s - FAR) is 0
SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _round_up(n: int, block: int) -> int:
    return math.ceil(n / block) * block


def _check_block(name: str, block: int):
    if block % LANES:
        raise ValueError(f"{name}={block} must be a multiple of {LANES} for TPU tiles")


def _heads_first(x: jax.Array, length: int) -> jax.Array:
    """(B, N, H, D) -> (B, H, length, D), zero-padded along N."""
    return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, length - x.shape[1]), (0, 0)))


def _table(geometry: TokenGeometry, length: int) -> jax.Array:
    """(8, length) float32 rows y, x, is_patch (then zeros): tokens on lanes, padding is a prefix token."""
    g = geometry.pad(length)
    rows = [g.coords[:, 0], g.coords[:, 1], g.is_patch]
    return jnp.concatenate([jnp.stack(rows).astype(jnp.float32), jnp.zeros((5, length), jnp.float32)])


def _lanes(x: jax.Array, n: int) -> jax.Array:
    """A (rows, 128) lane-broadcast tile as (rows, n)."""
    if n <= LANES:
        return x[:, :n]
    if n % LANES:
        raise ValueError(f"width {n} must be at most {LANES} or a multiple of it")
    return jnp.tile(x, (1, n // LANES))


def _stats_kernel(q_ref, k_ref, v_ref, qtab_ref, ktab_ref, o_ref, slab_ref,
                  m_acc, l_acc, centred_acc, prefix_acc, patch_acc, dist_acc, patch_centred_acc, out_acc,
                  *, num_keys: int, num_key_blocks: int):
    block_q, head_dim = q_ref.shape
    block_k = k_ref.shape[0]
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _start():
        m_acc[...] = jnp.full(m_acc.shape, MASK, jnp.float32)
        for acc in (l_acc, centred_acc, prefix_acc, patch_acc, dist_acc, patch_centred_acc, out_acc):
            acc[...] = jnp.zeros(acc.shape, jnp.float32)

    s = jax.lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if num_keys % block_k:  # static: only the last key block holds padding
        key_index = j * block_k + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(key_index < num_keys, s, MASK)
    column = lambda r: jnp.expand_dims(qtab_ref[r], -1)  # (block_q, 1)
    key_row = lambda r: ktab_ref[r : r + 1, :]  # (1, block_k)
    key_patch = key_row(2)
    distance = jnp.sqrt((column(0) - key_row(0)) ** 2 + (column(1) - key_row(1)) ** 2) * (column(2) * key_patch)

    m_prev, l_prev, patch_prev = m_acc[...], l_acc[...], patch_acc[...]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1)[:, None])  # (block_q, 128)
    shift = m_prev - m_next
    alpha = jnp.exp(shift)
    centred = s - _lanes(m_next, block_k)
    e = jnp.exp(centred)
    e_patch = e * key_patch
    row_sum = lambda x: jnp.sum(x, axis=1)[:, None]
    l_acc[...] = alpha * l_prev + row_sum(e)
    centred_acc[...] = alpha * (centred_acc[...] + l_prev * shift) + row_sum(e * centred)
    patch_acc[...] = alpha * patch_prev + row_sum(e_patch)
    patch_centred_acc[...] = alpha * (patch_centred_acc[...] + patch_prev * shift) + row_sum(e_patch * centred)
    prefix_acc[...] = alpha * prefix_acc[...] + row_sum(e - e_patch)
    dist_acc[...] = alpha * dist_acc[...] + row_sum(e * distance)
    v = v_ref[...]
    pv = jnp.dot(e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out_acc[...] = _lanes(alpha, head_dim) * out_acc[...] + pv
    m_acc[...] = m_next

    @pl.when(j == num_key_blocks - 1)
    def _finish():
        l = l_acc[...]
        inverse, log_l = 1.0 / l, jnp.log(l)
        o_ref[...] = (out_acc[...] * _lanes(inverse, head_dim)).astype(o_ref.dtype)
        patch_mass = patch_acc[...] * inverse
        fields = {
            "lse": m_acc[...] + log_l,
            "entropy": log_l - centred_acc[...] * inverse,
            "max_prob": inverse,
            "prefix_mass": prefix_acc[...] * inverse,
            "patch_mass": patch_mass,
            "distance": dist_acc[...] * inverse,
            "patch_entropy": patch_mass * log_l - patch_centred_acc[...] * inverse,
        }
        lane = jax.lax.broadcasted_iota(jnp.int32, (block_q, LANES), 1)
        slab = jnp.zeros((block_q, LANES), jnp.float32)
        for index, name in enumerate(ROW_FIELDS):
            slab = jnp.where(lane == index, fields[name], slab)
        slab_ref[...] = slab.T[:8, :]  # queries onto lanes: (8, block_q)


def forward(q, k, v, bias, query: TokenGeometry, key: TokenGeometry, *, block_q: int = 128,
            block_k: int = 128, interpret=False):
    """(out (B, Nq, H, Dh), raw stats (B, H, Nq)) from kernel K1; `interpret` as pallas_call takes it."""
    if bias is not None:
        raise ValueError("the Pallas TPU kernel takes no attention bias; "
                         "use vitjax.kernels.chunked for biased attention")
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    batch, num_q, heads, head_dim = q.shape
    num_k = k.shape[1]
    q_len, k_len = _round_up(num_q, block_q), _round_up(num_k, block_k)
    grid = (batch, heads, q_len // block_q, k_len // block_k)
    kernel = functools.partial(_stats_kernel, num_keys=num_k, num_key_blocks=grid[3])
    q_block = pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i, j: (b, h, i, 0))
    k_block = pl.BlockSpec((None, None, block_k, head_dim), lambda b, h, i, j: (b, h, j, 0))
    out, slab = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[q_block, k_block, k_block,
                  pl.BlockSpec((8, block_q), lambda b, h, i, j: (0, i)),
                  pl.BlockSpec((8, block_k), lambda b, h, i, j: (0, j))],
        out_specs=[q_block, pl.BlockSpec((None, None, 8, block_q), lambda b, h, i, j: (b, h, 0, i))],
        out_shape=[jax.ShapeDtypeStruct((batch, heads, q_len, head_dim), v.dtype),
                   jax.ShapeDtypeStruct((batch, heads, 8, q_len), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((block_q, LANES), jnp.float32)] * 7 + [pltpu.VMEM((block_q, head_dim), jnp.float32)],
        compiler_params=SEMANTICS,
        interpret=interpret,
        name="attention_with_stats",
    )(_heads_first(chunked.scaled_queries(q), q_len), _heads_first(k, k_len), _heads_first(v, k_len),
      _table(query, q_len), _table(key, k_len))
    return jnp.swapaxes(out, 1, 2)[:, :num_q], stats.unpack(slab, num_q)


def attention_with_stats(q, k, v, geometry: TokenGeometry, *, key_geometry: TokenGeometry | None = None,
                         block_q: int = 128, block_k: int = 128, interpret=False):
    """Like chunked.attention_with_stats (same outputs and gradients), with the forward in Pallas."""
    key_geometry = geometry if key_geometry is None else key_geometry
    kernel = functools.partial(forward, block_q=block_q, block_k=block_k, interpret=interpret)
    out, raw = chunked.with_stats_vjp(kernel, block_q)(q, k, v, None, geometry, key_geometry)
    return out, stats.finalize(raw)


def _received_kernel(q_ref, k_ref, query_ref, o_ref):
    @pl.when(pl.program_id(3) == 0)
    def _start():
        o_ref[...] = jnp.zeros(o_ref.shape, jnp.float32)

    s = jax.lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    lse = jnp.expand_dims(query_ref[0], -1)
    weight = jnp.expand_dims(query_ref[1], -1)
    o_ref[...] += jnp.sum(weight * jnp.exp(s - lse), axis=0, keepdims=True)


def received_forward(q, k, lse, weights=None, *, block_q: int = 128, block_k: int = 128, interpret=False):
    """sum_i w_i p_ij (B, H, Nk) from kernel K2 (no gradient; `attention_received` adds one)."""
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    batch, num_q, heads, head_dim = q.shape
    num_k = k.shape[1]
    q_len, k_len = _round_up(num_q, block_q), _round_up(num_k, block_k)
    w = jnp.ones((batch, heads, num_q), jnp.float32) if weights is None else weights
    w = jnp.broadcast_to(w, (batch, heads, num_q))
    pad = ((0, 0), (0, 0), (0, q_len - num_q))
    per_query = jnp.concatenate([
        jnp.pad(lse.astype(jnp.float32), pad, constant_values=FAR)[:, :, None],
        jnp.pad(w.astype(jnp.float32), pad)[:, :, None],
        jnp.zeros((batch, heads, 6, q_len), jnp.float32),
    ], axis=2)
    grid = (batch, heads, k_len // block_k, q_len // block_q)
    received = pl.pallas_call(
        _received_kernel,
        grid=grid,
        in_specs=[pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, j, i: (b, h, i, 0)),
                  pl.BlockSpec((None, None, block_k, head_dim), lambda b, h, j, i: (b, h, j, 0)),
                  pl.BlockSpec((None, None, 8, block_q), lambda b, h, j, i: (b, h, 0, i))],
        out_specs=pl.BlockSpec((None, None, 1, block_k), lambda b, h, j, i: (b, h, 0, j)),
        out_shape=jax.ShapeDtypeStruct((batch, heads, 1, k_len), jnp.float32),
        compiler_params=SEMANTICS,
        interpret=interpret,
        name="attention_received",
    )(_heads_first(chunked.scaled_queries(q), q_len), _heads_first(k, k_len), per_query)
    return received[:, :, 0, :num_k]


def attention_received(q, k, lse, weights=None, *, block_q: int = 128, block_k: int = 128, interpret=False):
    """Kernel K2 forward; its gradient is the chunked column pass's (recomputed, O(N block) memory)."""

    @jax.custom_vjp
    def received(q, k, lse, weights):
        return received_forward(q, k, lse, weights, block_q=block_q, block_k=block_k, interpret=interpret)

    def received_fwd(q, k, lse, weights):
        return received(q, k, lse, weights), (q, k, lse, weights)

    def received_bwd(residuals, cotangent):
        _, pullback = jax.vjp(lambda *args: chunked.attention_received(*args), *residuals)
        return pullback(cotangent)

    received.defvjp(received_fwd, received_bwd)
    if weights is None:
        weights = jnp.ones(lse.shape, jnp.float32)
    return received(q, k, lse, weights)


def splash_attention(q, k, v, *, block: int = 512, interpret=False):
    """Plain attention output through jax's splash attention kernel (TPU), (B, N, H, Dh).

    Splash needs sequence lengths that are multiples of its blocks: the sequence is padded to a
    multiple of 128 and padding is fenced off with segment ids (padded tokens form their own
    segment). Its backward is splash's own fused kernel.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, num, heads, head_dim = q.shape
    length = _round_up(num, LANES)
    block = max(b for b in range(LANES, min(block, length) + 1, LANES) if length % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.FullMask((length, length))] * heads)
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)
    segment = (jnp.arange(length) < num).astype(jnp.int32)
    segments = splash.SegmentIds(q=segment, kv=segment)
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=segments))(
        _heads_first(chunked.scaled_queries(q), length), _heads_first(k, length), _heads_first(v, length))
    return jnp.swapaxes(out, 1, 2)[:, :num]


def run_sharded(fn, mesh, in_specs, out_specs, *args):
    """fn under shard_map on `mesh` (a Mesh or the AbstractMesh of jax.set_mesh), inputs placed first.

    Pallas kernels are opaque to XLA's partitioner, which would gather whole arrays onto every
    device; under shard_map each device runs the kernel on its own slice. Explicit-axis meshes
    (jax.make_mesh's default) need the inputs resharded to the specs before the call.
    """
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        args = jax.tree_util.tree_map(lambda spec, x: jax.reshard(x, NamedSharding(mesh, spec)), in_specs, args,
                                      is_leaf=lambda x: isinstance(x, P))
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)


def shard(mesh, *, batch_axes=None, head_axis=None, **kernel_options):
    """attention_with_stats and attention_received that run per device under shard_map (for pods).

    Returns (attention_with_stats(q, k, v, geometry, key_geometry=None), attention_received(q, k,
    lse, weights=None)) for global arrays laid out as (B, N, H, Dh) with B split over `batch_axes`
    and H over `head_axis`; kernel_options (blocks, interpret) go to the kernels.
    """
    tokens = P(batch_axes, None, head_axis, None)
    per_query = P(batch_axes, head_axis, None)

    def with_stats(q, k, v, geometry, key_geometry=None):
        key_geometry = geometry if key_geometry is None else key_geometry
        run = lambda q, k, v, g, kg: attention_with_stats(q, k, v, g, key_geometry=kg, **kernel_options)
        return run_sharded(run, mesh, (tokens, tokens, tokens, P(), P()), (tokens, per_query), q, k, v, geometry,
                           key_geometry)

    def received(q, k, lse, weights=None):
        weights = jnp.ones(lse.shape, jnp.float32) if weights is None else jnp.broadcast_to(weights, lse.shape)
        run = lambda q, k, lse, w: attention_received(q, k, lse, w, **kernel_options)
        return run_sharded(run, mesh, (tokens, tokens, per_query, per_query), per_query, q, k, lse, weights)

    return with_stats, received
