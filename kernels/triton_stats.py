"""Triton kernels (NVIDIA GPUs) for attention with the statistics of kernels/stats.py: the raw @triton.jit code.

kernels/triton_attention.py calls them from JAX through jax-triton; the tests run them on a CPU under
the Triton interpreter (TRITON_INTERPRET=1). Four kernels, each one program per (block, batch x head):

    attention_stats_fwd   grid (query blocks, B H): online softmax over key blocks with one
                          accumulator per statistic (sum e, sum e (s - m), prefix, patch, distance
                          and patch-centred sums, rescaled by exp(m_old - m_new) like the row sum).
                          Writes the output (B, Nq, H, Dh) and a (B, H, 8, Nq) float32 slab: rows
                          stats.ROW_FIELDS, then row 7 = the key index of the row maximum (first
                          one on ties, exact as float32 below 2^24 keys), which the backward needs
                          for the gradient of max_prob.
    attention_received    grid (key blocks, B H): c_j = sum_i w_i exp(s_ij - lse_i) from the saved lse.
    attention_stats_bwd_dkdv / attention_stats_bwd_dq
                          flash-style backward (grids over key / query blocks, recomputing s):
                          dS_ij = p_ij (dP_ij + A_i + Bt_i t_ij + C_i d_ij + patch_j (E_i + F_i t_ij)),
                          t_ij = s_ij - lse_i, with per-query coefficients (B, H, 8, Nq) rows
                          (lse, A, Bt, C, E, F) that the wrapper builds from the output's and every
                          statistic's cotangent. dQ, dK, dV leave as float32.

Tensors keep the models' strided layout q, k, v (B, N, H, Dh) (q already scaled by Dh^-0.5);
geometry tables are (Bt, N, 4) float32 rows (y, x, is_patch, 0) with Bt = 1 (shared, *_TABLE_STRIDE
= 0) or B. Every size is a constexpr: blocks and the padded head dim DP are powers of two (>= 16,
tl.dot's minimum); tails are masked, so N = 197 or any odd N works. Masked keys get a finite logit
MASK, so exp gives 0 and 0 * (MASK - m) is 0, never NaN; padded queries read lse = FAR (p = 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals read inside @triton.jit code must be constexpr.
MASK = tl.constexpr(-1e30)
FAR = tl.constexpr(1e30)
SLAB_ROWS = 8  # rows of the forward's per-query slab: stats.ROW_FIELDS, then the argmax key
ARGMAX_ROW = 7


@triton.jit
def _load_tokens(ptr, b, h, tokens, N: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    """Rows `tokens` of head h of example b from a (B, N, H, D) tensor as a (len(tokens), DP) block, zero-padded."""
    dims = tl.arange(0, DP)
    offsets = ((b * N + tokens[:, None]) * H + h) * D + dims[None, :]
    return tl.load(ptr + offsets, mask=(tokens[:, None] < N) & (dims[None, :] < D), other=0.0)


@triton.jit
def _store_tokens(ptr, value, b, h, tokens, N: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    dims = tl.arange(0, DP)
    offsets = ((b * N + tokens[:, None]) * H + h) * D + dims[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=(tokens[:, None] < N) & (dims[None, :] < D))


@triton.jit
def _load_geometry(table, b, tokens, N: tl.constexpr, TABLE_STRIDE: tl.constexpr):
    """(y, x, is_patch) of `tokens`; padding tokens read as prefix tokens at the origin."""
    row = table + b * TABLE_STRIDE + tokens * 4
    valid = tokens < N
    return (tl.load(row, mask=valid, other=0.0), tl.load(row + 1, mask=valid, other=0.0),
            tl.load(row + 2, mask=valid, other=0.0))


@triton.jit
def _pair_distance(qy, qx, q_patch, ky, kx, k_patch):
    """d_ij (queries x keys): Euclidean distance between patch tokens, 0 if either is a prefix token."""
    dy = qy[:, None] - ky[None, :]
    dx = qx[:, None] - kx[None, :]
    return tl.sqrt(dy * dy + dx * dx) * (q_patch[:, None] * k_patch[None, :])


@triton.jit
def _logits(q, k, keys, NK: tl.constexpr, PRECISION: tl.constexpr):
    """s = q k^T in float32 with keys past NK masked to MASK."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    return tl.where(keys[None, :] < NK, s, MASK)


@triton.jit
def _per_query(ptr, bh, row, queries, NQ: tl.constexpr, fill):
    """Row `row` of a (B, H, 8, NQ) per-query slab for `queries`; `fill` past NQ."""
    return tl.load(ptr + (bh * 8 + row) * NQ + queries, mask=queries < NQ, other=fill)


@triton.jit
def attention_stats_fwd(Q, K, V, QTABLE, KTABLE, OUT, SLAB,
                        NQ: tl.constexpr, NK: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                        QTABLE_STRIDE: tl.constexpr, KTABLE_STRIDE: tl.constexpr,
                        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q = _load_tokens(Q, b, h, queries, NQ, H, D, DP)
    qy, qx, q_patch = _load_geometry(QTABLE, b, queries, NQ, QTABLE_STRIDE)

    m = tl.full([BLOCK_Q], MASK, tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    centred_sum = tl.zeros([BLOCK_Q], tl.float32)  # sum e (s - m)
    patch_sum = tl.zeros([BLOCK_Q], tl.float32)
    patch_centred_sum = tl.zeros([BLOCK_Q], tl.float32)
    prefix_sum = tl.zeros([BLOCK_Q], tl.float32)
    distance_sum = tl.zeros([BLOCK_Q], tl.float32)
    argmax = tl.zeros([BLOCK_Q], tl.int32)
    acc = tl.zeros([BLOCK_Q, DP], tl.float32)
    for start in range(0, NK, BLOCK_K):
        keys = start + tl.arange(0, BLOCK_K)
        k = _load_tokens(K, b, h, keys, NK, H, D, DP)
        v = _load_tokens(V, b, h, keys, NK, H, D, DP)
        ky, kx, k_patch = _load_geometry(KTABLE, b, keys, NK, KTABLE_STRIDE)
        s = _logits(q, k, keys, NK, PRECISION)

        block_max, block_argmax = tl.max(s, axis=1, return_indices=True)
        argmax = tl.where(block_max > m, start + block_argmax, argmax)  # strict: the first maximum wins
        m_next = tl.maximum(m, block_max)
        shift = m - m_next
        alpha = tl.exp(shift)
        centred = s - m_next[:, None]
        e = tl.exp(centred)
        e_patch = e * k_patch[None, :]
        # The centred sums move to the new maximum: sum e_old (s - m_new) = sum e_old (s - m_old) + l_old shift.
        centred_sum = alpha * (centred_sum + l * shift) + tl.sum(e * centred, axis=1)
        patch_centred_sum = alpha * (patch_centred_sum + patch_sum * shift) + tl.sum(e_patch * centred, axis=1)
        l = alpha * l + tl.sum(e, axis=1)
        patch_sum = alpha * patch_sum + tl.sum(e_patch, axis=1)
        prefix_sum = alpha * prefix_sum + tl.sum(e - e_patch, axis=1)
        distance = _pair_distance(qy, qx, q_patch, ky, kx, k_patch)
        distance_sum = alpha * distance_sum + tl.sum(e * distance, axis=1)
        acc = acc * alpha[:, None] + tl.dot(e.to(v.dtype), v, input_precision=PRECISION)
        m = m_next

    inverse = 1.0 / l
    log_l = tl.log(l)
    _store_tokens(OUT, acc * inverse[:, None], b, h, queries, NQ, H, D, DP)
    patch_mass = patch_sum * inverse
    row = SLAB + bh * 8 * NQ + queries
    valid = queries < NQ
    tl.store(row, m + log_l, mask=valid)  # lse
    tl.store(row + NQ, log_l - centred_sum * inverse, mask=valid)  # entropy
    tl.store(row + 2 * NQ, inverse, mask=valid)  # max_prob = exp(m - lse)
    tl.store(row + 3 * NQ, prefix_sum * inverse, mask=valid)  # prefix_mass
    tl.store(row + 4 * NQ, patch_mass, mask=valid)  # patch_mass
    tl.store(row + 5 * NQ, distance_sum * inverse, mask=valid)  # distance
    tl.store(row + 6 * NQ, patch_mass * log_l - patch_centred_sum * inverse, mask=valid)  # patch_entropy
    tl.store(row + 7 * NQ, argmax.to(tl.float32), mask=valid)


@triton.jit
def attention_received(Q, K, LSE, WEIGHTS, RECEIVED,
                       NQ: tl.constexpr, NK: tl.constexpr, H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """RECEIVED (B, H, NK) float32 = sum_i w_i exp(s_ij - lse_i); LSE and WEIGHTS (B, H, NQ) float32."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    keys = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k = _load_tokens(K, b, h, keys, NK, H, D, DP)
    total = tl.zeros([BLOCK_K], tl.float32)
    for start in range(0, NQ, BLOCK_Q):
        queries = start + tl.arange(0, BLOCK_Q)
        q = _load_tokens(Q, b, h, queries, NQ, H, D, DP)
        lse = tl.load(LSE + bh * NQ + queries, mask=queries < NQ, other=FAR)
        weights = tl.load(WEIGHTS + bh * NQ + queries, mask=queries < NQ, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        total += tl.sum(weights[:, None] * tl.exp(s - lse[:, None]), axis=0)
    tl.store(RECEIVED + bh * NK + keys, total, mask=keys < NK)


@triton.jit
def _score_gradient(q, k, v, do, lse, a, bt, c, e, f, q_geometry, k_geometry, keys,
                    NK: tl.constexpr, PRECISION: tl.constexpr):
    """(p, dS) of a (queries x keys) tile; see the module docstring for dS."""
    qy, qx, q_patch = q_geometry
    ky, kx, k_patch = k_geometry
    t = _logits(q, k, keys, NK, PRECISION) - lse[:, None]
    p = tl.exp(t)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    distance = _pair_distance(qy, qx, q_patch, ky, kx, k_patch)
    coefficient = (dp + a[:, None] + bt[:, None] * t + c[:, None] * distance
                   + k_patch[None, :] * (e[:, None] + f[:, None] * t))
    return p, tl.where(p > 0, p * coefficient, 0.0)  # masked keys: p = 0 and t * coefficient may overflow


@triton.jit
def attention_stats_bwd_dkdv(Q, K, V, DO, COEFFICIENTS, QTABLE, KTABLE, DK, DV,
                             NQ: tl.constexpr, NK: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                             DP: tl.constexpr, QTABLE_STRIDE: tl.constexpr, KTABLE_STRIDE: tl.constexpr,
                             BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """dK = dS^T q_scaled, dV = P^T dO for one key block, looping over query blocks."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    keys = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k = _load_tokens(K, b, h, keys, NK, H, D, DP)
    v = _load_tokens(V, b, h, keys, NK, H, D, DP)
    k_geometry = _load_geometry(KTABLE, b, keys, NK, KTABLE_STRIDE)
    dk = tl.zeros([BLOCK_K, DP], tl.float32)
    dv = tl.zeros([BLOCK_K, DP], tl.float32)
    for start in range(0, NQ, BLOCK_Q):
        queries = start + tl.arange(0, BLOCK_Q)
        q = _load_tokens(Q, b, h, queries, NQ, H, D, DP)
        do = _load_tokens(DO, b, h, queries, NQ, H, D, DP)
        p, ds = _score_gradient(
            q, k, v, do,
            _per_query(COEFFICIENTS, bh, 0, queries, NQ, FAR), _per_query(COEFFICIENTS, bh, 1, queries, NQ, 0.0),
            _per_query(COEFFICIENTS, bh, 2, queries, NQ, 0.0), _per_query(COEFFICIENTS, bh, 3, queries, NQ, 0.0),
            _per_query(COEFFICIENTS, bh, 4, queries, NQ, 0.0), _per_query(COEFFICIENTS, bh, 5, queries, NQ, 0.0),
            _load_geometry(QTABLE, b, queries, NQ, QTABLE_STRIDE), k_geometry, keys, NK, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    _store_tokens(DK, dk, b, h, keys, NK, H, D, DP)
    _store_tokens(DV, dv, b, h, keys, NK, H, D, DP)


@triton.jit
def attention_stats_bwd_dq(Q, K, V, DO, COEFFICIENTS, QTABLE, KTABLE, DQ,
                           NQ: tl.constexpr, NK: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                           DP: tl.constexpr, QTABLE_STRIDE: tl.constexpr, KTABLE_STRIDE: tl.constexpr,
                           BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """dS k for one query block, looping over key blocks (the wrapper applies the Dh^-0.5 scale)."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q = _load_tokens(Q, b, h, queries, NQ, H, D, DP)
    do = _load_tokens(DO, b, h, queries, NQ, H, D, DP)
    lse = _per_query(COEFFICIENTS, bh, 0, queries, NQ, FAR)
    a = _per_query(COEFFICIENTS, bh, 1, queries, NQ, 0.0)
    bt = _per_query(COEFFICIENTS, bh, 2, queries, NQ, 0.0)
    c = _per_query(COEFFICIENTS, bh, 3, queries, NQ, 0.0)
    e = _per_query(COEFFICIENTS, bh, 4, queries, NQ, 0.0)
    f = _per_query(COEFFICIENTS, bh, 5, queries, NQ, 0.0)
    q_geometry = _load_geometry(QTABLE, b, queries, NQ, QTABLE_STRIDE)
    dq = tl.zeros([BLOCK_Q, DP], tl.float32)
    for start in range(0, NK, BLOCK_K):
        keys = start + tl.arange(0, BLOCK_K)
        k = _load_tokens(K, b, h, keys, NK, H, D, DP)
        v = _load_tokens(V, b, h, keys, NK, H, D, DP)
        _, ds = _score_gradient(q, k, v, do, lse, a, bt, c, e, f, q_geometry,
                                _load_geometry(KTABLE, b, keys, NK, KTABLE_STRIDE), keys, NK, PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    _store_tokens(DQ, dq, b, h, queries, NQ, H, D, DP)
