"""The attention computation a block's capture taps need, and the attention taps it returns.

'attn' / 'attn_logits' materialise (B, H, N, N) through kernels/reference.py; the statistics taps
('attn_stats', 'attn_received', 'attn_rows') stream through kernels/dispatch.py without any N x N
array unless a map tap asked for one anyway (then the statistics are read off its logits); with
neither, attention runs on the backend's fastest plain implementation.
"""

from __future__ import annotations

import jax

from vitjax.capture import TokenLayout
from vitjax.kernels import dispatch, reference
from vitjax.kernels.stats import finalize, row_stats, token_geometry

MAP_TAPS = frozenset({"attn", "attn_logits"})
STATS_TAPS = frozenset({"attn_stats", "attn_received", "attn_rows"})


def attend(q, k, v, bias, taps: frozenset[str], layout: TokenLayout | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(out (B, N, H, Dh), the attention taps among `taps`) for q, k, v (B, N, H, Dh)."""
    record = {}
    wants_stats = bool(taps & STATS_TAPS)
    if wants_stats and layout is None:
        raise ValueError(f"capture taps {sorted(taps & STATS_TAPS)} need the model's token layout "
                         "(prefix tokens, grid, patch size); pass layout= to Attention")
    geometry = token_geometry(layout) if wants_stats else None
    stats = None
    if taps & MAP_TAPS:
        out, record["attn"], record["attn_logits"] = reference.attention(q, k, v, bias)
        if wants_stats:
            stats = finalize(row_stats(record["attn_logits"], geometry, geometry))
    elif wants_stats:
        out, stats = dispatch.attention_with_stats(q, k, v, geometry, bias=bias)
    else:
        out = dispatch.attention(q, k, v, bias)
    if "attn_stats" in taps:
        record["attn_stats"] = stats
    if "attn_received" in taps:
        record["attn_received"] = dispatch.attention_received(q, k, stats["lse"], bias=bias)
    if "attn_rows" in taps:
        record["attn_rows"] = dispatch.attention_rows(q, k, stats["lse"], range(layout.num_prefix), bias=bias)
    return out, record
