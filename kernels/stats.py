"""Attention statistics: their definitions, the token geometry they use, and how partial results merge.

Every kernel in this package (the chunked jnp reference, the Pallas TPU kernel, the Triton GPU
kernels) computes exactly what this file defines; `row_stats` is the definition in code, written
for any block of logits whose rows are complete.

The statistics API (what a kernel must return)
----------------------------------------------
Inputs use the models' layout: q, k, v of shape (B, N, H, Dh), logits = (q * Dh**-0.5) @ k^T
(+ bias), softmax over keys. Statistics are float32 (float64 for float64 inputs) whatever the input
dtype, one value per (batch, head, query): arrays of shape (B, H, Nq). A kernel returns
`(out (B, Nq, H, Dh) in v's dtype, stats)` where stats is a dict with the RAW fields:

    lse            log sum_j exp(s_ij), natural log (not base 2)
    entropy        -sum_j p_ij log p_ij
    max_prob       max_j p_ij  (= 1 / sum_j exp(s_ij - max_j s_ij))
    prefix_mass    sum over prefix keys (class, distillation, registers) of p_ij
    patch_mass     sum over patch keys of p_ij (accumulated itself, not 1 - prefix_mass, so rows
                   with all their mass on prefix tokens keep an exact tiny patch mass)
    distance       sum_j p_ij d_ij, d_ij the distance between query i and key j (pixels by default),
                   0 unless both are patches; NOT renormalised (the probing-ViTs convention)
    patch_entropy  -sum over patch keys of p_ij log p_ij (under the full softmax)

`finalize(raw)` adds the derived fields the protocols use (Teaching Matters, Park et al.):

    distance_patches   distance over patch keys with the row renormalised over patch keys:
                       distance / patch_mass; 0 for rows whose mass is all on prefix tokens
    entropy_patches    entropy of the row renormalised over patch keys:
                       patch_entropy / patch_mass + log(patch_mass); 0 for those rows

Per key (a second pass that needs only the saved lse): `received_j = sum_i w_i p_ij`, (B, H, Nk),
with query weights w (default 1: total attention received; one-hot: a row; 1 / (Nq patch_mass_i):
the key marginal of the renormalised rows that NMI needs).

Prefix queries have no position: their distance fields are 0. Average per-query statistics over
`layout.patch_slice` queries, as the protocols drop the class query.

Geometry: `TokenGeometry(coords (N, 2), is_patch (N,))`, built from a model's TokenLayout by
`token_geometry(layout, units)`: row/column patch positions in pixels (cl-vs-mim) or on the unit
square (Teaching Matters), any grid and any prefix layout. Kernels take one geometry for queries
and one for keys (the same for self-attention; different when keys are split).

For kernel writers (the Pallas TPU kernel does exactly this; the Triton kernels should too)
------------------------------------------------------------------------------------------
- Forward signature `forward(q, k, v, bias, query_geometry, key_geometry) -> (out, raw)`; a kernel
  without bias support raises for bias is not None (dispatch then uses the chunked path).
- Online softmax over key blocks: each raw field is one accumulator, rescaled like the row sum l
  by alpha = exp(m_old - m_new). Accumulate centred sums a = sum e (s - m) and
  a_patch = sum_patch e (s - m); when m moves they become alpha (a + l_old (m_old - m_new)) and
  alpha (a_patch + patch_old (m_old - m_new)). At the end: lse = m + log l,
  entropy = log l - a / l, max_prob = 1 / l, masses and distance = sums / l,
  patch_entropy = patch_mass log l - a_patch / l.
- Padded keys: a finite logit (-1e30) so e = 0 and e (s - m) = 0, never NaN; padded keys and
  queries take the geometry of a prefix token (`TokenGeometry.pad`).
- Write statistics as a (B, H, 8, N_padded) float32 slab in ROW_FIELDS order (lane-dense) and
  read it with `unpack(slab, Nq)`; then `finalize`.
- Gradients: wrap the forward with `chunked.with_stats_vjp(forward, block_q)`, which attaches the
  shared flash-style backward (it needs only q, k, v, bias, geometries, out and the raw stats).
- Column pass `received(q, k, lse, weights) -> (B, H, Nk)` with p = exp(s - lse) from the saved lse.
- Check against `chunked.forward` and `chunked.attention_received` (tests/test_pallas_tpu.py shows how).

Merging (why every statistic is an (lse, E[f]) pair)
----------------------------------------------------
Statistics computed over disjoint key sets K_1..K_n (each under its own softmax over K_k) combine
exactly: lse = logsumexp_k lse_k and, with w_k = exp(lse_k - lse),

    linear fields (masses, distance, the attention output):  E[f] = sum_k w_k E_k[f]
    entropy:        H = sum_k w_k (H_k + lse - lse_k)          (-log w_k = lse - lse_k)
    patch_entropy:  G = sum_k w_k (G_k + patch_mass_k (lse - lse_k))
    max_prob:       max_k w_k max_prob_k

`merge` does this for a list of parts (the ViT prefix/patch split: run a kernel on perfectly tiled
patch keys and the 1-5 prefix keys in XLA), `merge_over_axis` for key shards held by the devices of
a mesh axis (sequence-sharded attention) with psum/pmax. Both share one formula.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Order of the raw fields in the (.., 8, N) slabs the Pallas/Triton kernels write (index 7 unused).
ROW_FIELDS = ("lse", "entropy", "max_prob", "prefix_mass", "patch_mass", "distance", "patch_entropy")
DERIVED_FIELDS = ("distance_patches", "entropy_patches")
LINEAR_FIELDS = ("prefix_mass", "patch_mass", "distance")
UNITS = ("pixels", "unit_square")


class TokenGeometry(NamedTuple):
    """Per-token coordinates (N, 2) as (y, x) and a patch flag (N,), 1 for patches, 0 for prefix tokens."""

    coords: jax.Array
    is_patch: jax.Array

    @property
    def num_tokens(self) -> int:
        return self.is_patch.shape[0]

    def slice(self, start: int, stop: int) -> "TokenGeometry":
        return TokenGeometry(self.coords[start:stop], self.is_patch[start:stop])

    def pad(self, num_tokens: int) -> "TokenGeometry":
        """Padded with non-patch tokens at the origin (they add nothing to any statistic)."""
        extra = num_tokens - self.num_tokens
        return TokenGeometry(jnp.pad(self.coords, ((0, extra), (0, 0))), jnp.pad(self.is_patch, (0, extra)))


def token_geometry(layout, units: str = "pixels") -> TokenGeometry:
    """Coordinates of a TokenLayout's tokens: prefix tokens first (no position), then the patch grid.

    units='pixels': patch (row * patch_h, col * patch_w), so distances are patch_size x grid
    distance (cl-vs-mim). units='unit_square': (row / (gh - 1), col / (gw - 1)) (Teaching Matters,
    where distance in pixels = unit distance x (K - 1) x patch for a K x K grid).
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, not {units!r}")
    (gh, gw), (ph, pw) = layout.grid, layout.patch_size
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    if units == "pixels":
        y, x = rows * ph, cols * pw
    else:
        y, x = rows / max(gh - 1, 1), cols / max(gw - 1, 1)
    coords = np.zeros((layout.num_tokens, 2), np.float32)
    coords[layout.num_prefix :] = np.stack([y.ravel(), x.ravel()], axis=1)
    is_patch = np.zeros((layout.num_tokens,), np.float32)
    is_patch[layout.num_prefix :] = 1.0
    return TokenGeometry(jnp.asarray(coords), jnp.asarray(is_patch))


def pair_distance(query: TokenGeometry, key: TokenGeometry, dtype=jnp.float32) -> jax.Array:
    """d_ij (Nq, Nk): Euclidean distance between patch query i and patch key j, 0 if either is a prefix token."""
    delta = query.coords[:, None, :].astype(dtype) - key.coords[None, :, :].astype(dtype)
    both = query.is_patch[:, None].astype(dtype) * key.is_patch[None, :].astype(dtype)
    return jnp.sqrt((delta**2).sum(-1)) * both


def stats_dtype(dtype) -> jnp.dtype:
    """Statistics are at least float32 (float64 inputs keep float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def softmax_parts(logits: jax.Array):
    """(e, m): e = exp(s - m) with m the row max, a stopped gradient (every statistic but max_prob is
    invariant to m, and max_prob takes its max from the logits itself)."""
    m = jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
    return jnp.exp(logits - m), m


def row_stats(logits: jax.Array, query: TokenGeometry, key: TokenGeometry) -> dict[str, jax.Array]:
    """The raw statistics of complete rows of logits (..., Nq, Nk) (the definitions in code)."""
    return stats_and_row_sum(logits, *softmax_parts(logits), query, key)[0]


def stats_and_row_sum(logits, e, m, query: TokenGeometry, key: TokenGeometry):
    """(raw statistics, l = sum_j e_ij (..., Nq)) from logits and their softmax_parts.

    Entropies use centred logits (s - max), so peaked rows with large logits lose no precision
    to lse - E[s] cancellation. The sums over keys are matrix products at HIGHEST precision:
    XLA:CPU runs them several times faster than reductions, and on accelerators they must not
    drop to bf16 passes.
    """
    dtype = logits.dtype
    patch = key.is_patch.astype(dtype)
    ones = jnp.ones_like(patch)
    dot = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST, preferred_element_type=dtype)
    # sum_j e_ij [1, patch_j, 1 - patch_j] and sum_j e_ij (s_ij - m_i) [1, patch_j]
    sums = dot("...qk,kf->...qf", e, jnp.stack([ones, patch, 1.0 - patch], axis=-1))
    centred = jnp.where(e > 0, e * (logits - m), 0.0)  # 0 * -inf (masked keys) is 0, not NaN
    centred_sums = dot("...qk,kf->...qf", centred, jnp.stack([ones, patch], axis=-1))
    distance = dot("...qk,qk->...q", e, pair_distance(query, key, dtype))
    l = sums[..., 0]
    log_l = jnp.log(l)
    lse = m[..., 0] + log_l
    patch_mass = sums[..., 1] / l
    raw = {
        "lse": lse,
        "entropy": log_l - centred_sums[..., 0] / l,
        # exp(max - lse), not 1 / l: m is a stopped gradient and max_prob really depends on the max.
        "max_prob": jnp.exp(logits.max(axis=-1) - lse),
        "prefix_mass": sums[..., 2] / l,
        "patch_mass": patch_mass,
        "distance": distance / l,
        "patch_entropy": patch_mass * log_l - centred_sums[..., 1] / l,
    }
    return raw, l


def renormalise_over_patches(weighted: jax.Array, patch_mass: jax.Array, *, eps: float = 0.0,
                             uniform: jax.Array | None = None, num_patches: int | None = None) -> jax.Array:
    """E'[f] under rows renormalised over patch keys, from weighted = sum_patch p_ij f_ij.

    eps = 0 (Teaching Matters): weighted / patch_mass, and 0 for rows with no patch mass (rows whose
    mass is all on prefix tokens). eps > 0 (Park et al. add 1e-32 to every patch entry before
    renormalising): (weighted + eps uniform) / (patch_mass + eps num_patches), where
    uniform = sum_patch f_ij (for distances: `summed_patch_distance`).
    """
    if eps:
        if uniform is None or num_patches is None:
            raise ValueError("eps > 0 needs uniform (sum of f over patch keys) and num_patches")
        return (weighted + eps * uniform) / (patch_mass + eps * num_patches)
    safe = jnp.where(patch_mass > 0, patch_mass, 1.0)
    return jnp.where(patch_mass > 0, weighted / safe, 0.0)


def summed_patch_distance(geometry: TokenGeometry) -> jax.Array:
    """sum_j d_ij over patch keys, per query (N,): the `uniform` term of an eps-renormalised distance."""
    rows = TokenGeometry(geometry.coords[:, None], geometry.is_patch[:, None])  # one query per map step
    return jax.lax.map(lambda row: pair_distance(row, geometry).sum(-1), rows, batch_size=256)[:, 0]


def finalize(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Raw fields plus the patch-renormalised ones (idempotent)."""
    raw = {name: stats[name] for name in ROW_FIELDS}
    mass = raw["patch_mass"]
    raw["distance_patches"] = renormalise_over_patches(raw["distance"], mass)
    # H' = G / mass + log(mass), and 0 for rows with no patch mass
    log_mass = jnp.log(jnp.where(mass > 0, mass, 1.0))
    raw["entropy_patches"] = renormalise_over_patches(raw["patch_entropy"], mass) + log_mass
    return raw


def _merge(part: dict[str, jax.Array], total: Callable, largest: Callable, out: jax.Array | None):
    """The merge formula, for parts reduced by `total` (a sum) and `largest` (a max)."""
    lse_k = part["lse"]
    top = largest(lse_k)
    lse = top + jnp.log(total(jnp.exp(lse_k - top)))
    w = jnp.exp(lse_k - lse)
    weighted = lambda x: jnp.where(w > 0, w * x, 0.0)  # an empty part (lse_k = -inf, NaN stats) has w = 0
    minus_log_w = lse - lse_k
    merged = {"lse": lse, "max_prob": largest(weighted(part["max_prob"]))}
    merged["entropy"] = total(weighted(part["entropy"] + minus_log_w))
    merged["patch_entropy"] = total(weighted(part["patch_entropy"] + part["patch_mass"] * minus_log_w))
    for name in LINEAR_FIELDS:
        merged[name] = total(weighted(part[name]))
    merged = finalize(merged)
    if out is None:
        return merged
    w_out = jnp.swapaxes(w, -1, -2)[..., None].astype(out.dtype)  # (.., B, H, N) -> (.., B, N, H, 1)
    return total(w_out * out), merged


def merge(parts: Sequence[dict[str, jax.Array]], outputs: Sequence[jax.Array] | None = None):
    """Statistics (and, if given, attention outputs) over the union of disjoint key sets.

    parts[k] holds the statistics of the same queries against key set K_k; outputs[k] the
    attention output (B, Nq, H, Dh) under that part's softmax. Returns stats, or (output, stats).
    """
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[{n: p[n] for n in ROW_FIELDS} for p in parts])
    out = None if outputs is None else jnp.stack([o.astype(stats_dtype(o.dtype)) for o in outputs])
    result = _merge(stacked, lambda x: x.sum(0), lambda x: x.max(0), out)
    if outputs is None:
        return result
    return result[0].astype(outputs[0].dtype), result[1]


def merge_over_axis(part: dict[str, jax.Array], axis_name, output: jax.Array | None = None):
    """`merge` across the devices of a mesh axis, each holding one key shard (inside shard_map)."""
    raw = {n: part[n] for n in ROW_FIELDS}
    total = lambda x: jax.lax.psum(x, axis_name)
    largest = lambda x: jax.lax.pmax(x, axis_name)
    if output is None:
        return _merge(raw, total, largest, None)
    out, merged = _merge(raw, total, largest, output.astype(stats_dtype(output.dtype)))
    return out.astype(output.dtype), merged


def unpack(slab: jax.Array, num_queries: int) -> dict[str, jax.Array]:
    """A kernel's (B, H, 8, N_padded) slab -> the raw fields (B, H, num_queries)."""
    return {name: slab[..., i, :num_queries] for i, name in enumerate(ROW_FIELDS)}
