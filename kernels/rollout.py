"""Attention rollout (Abnar & Zuidema, 2020) for chosen queries with O(N) memory per layer.

Rollout multiplies the head-averaged attention of every block, each mixed with the identity for
the residual stream: R = A~_L ... A~_1 with A~ = r I + (1 - r) mean_h A_h (r = 0.5 as published).
Its rows for chosen queries (the class token) need only vector-matrix products, run from the last
block to the first: x <- r x + (1 - r) sum_h x A_h / H, and x A_h is the column pass
(attention received with query weights x), which rebuilds p from q, k and the saved lse. So no
N x N matrix is ever held, at any resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from vitjax.kernels import dispatch


def rollout(qs: Sequence[jax.Array], ks: Sequence[jax.Array], lses: Sequence[jax.Array], start: jax.Array, *,
            biases: Sequence[jax.Array | None] | None = None, residual: float = 0.5) -> jax.Array:
    """start^T A~_L ... A~_1 (B, N) for per-block queries and keys (B, H, N, Dh), first block first.

    qs, ks are laid out as the 'q' and 'k' capture taps record them, lses as attn_stats['lse']
    (B, H, N); start (B, N) weights the last block's queries (one-hot: one token's rollout row).
    biases: per-block attention bias for models that have one (BEiT's relative position bias).
    The result keeps start's total mass (rows of A~ sum to 1).
    """
    if not len(qs) == len(ks) == len(lses):
        raise ValueError(f"rollout needs q, k and lse for every block, got {len(qs)}, {len(ks)}, {len(lses)}")
    biases = [None] * len(qs) if biases is None else list(biases)
    x = start
    for q, k, lse, bias in reversed(list(zip(qs, ks, lses, biases))):
        heads = q.shape[1]
        weights = jnp.broadcast_to(x[:, None, :] / heads, lse.shape)
        mixed = dispatch.attention_received(jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), lse, weights, bias=bias)
        x = residual * x + (1.0 - residual) * mixed.sum(axis=1)
    return x


def rollout_from_output(out, start: str | jax.Array = "class", *, residual: float = 0.5) -> jax.Array:
    """Rollout from a forward that captured 'q', 'k' and 'attn_stats' on every block.

    start: 'class' (the class token's row: the usual rollout map), 'patches' (the mean over patch
    queries) or a (B, N) array of query weights. Returns (B, N) over all tokens; the patch part is
    `result[:, out.layout.patch_slice]`. Not for models with a relative position bias (BEiT): the
    Output does not carry the bias, so call `rollout(..., biases=...)` for them.
    """
    needed = ("q", "k", "attn_stats")
    missing = [tap for tap in needed if len(out.blocks_with(tap)) != len(out.layers)]
    if missing:
        raise ValueError(f"rollout needs taps {needed} on every block; capture them with "
                         f"capture={needed!r} (missing on some blocks: {missing})")
    layout = out.layout
    batch = out.tokens.shape[0]
    if isinstance(start, str):
        weights = jnp.zeros((layout.num_tokens,), jnp.float32)
        if start == "class":
            if not layout.num_class:
                raise ValueError("this model has no class token; pass start='patches' or an array")
            weights = weights.at[0].set(1.0)
        elif start == "patches":
            weights = weights.at[layout.patch_slice].set(1.0 / layout.num_patches)
        else:
            raise ValueError(f"start must be 'class', 'patches' or an array, not {start!r}")
        start = jnp.broadcast_to(weights, (batch, layout.num_tokens))
    layers = out.layers
    return rollout([layer["q"] for layer in layers], [layer["k"] for layer in layers],
                   [layer["attn_stats"]["lse"] for layer in layers], start, residual=residual)
