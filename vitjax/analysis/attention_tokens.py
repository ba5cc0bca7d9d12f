"""What every attention analysis shares: reading the 'attn' tap, dropping prefix tokens, valid rows.

The protocols (shared/reference/protocols.md, sections 1 and 5) drop the class token from queries
and keys and renormalise each row over the remaining (patch) keys. vitjax drops ALL prefix tokens
(class, distillation, registers), so a model with registers is measured on the same patch grid as
one without. A row whose whole mass was on prefix tokens has nothing left to renormalise: Teaching
Matters sets it to zero and still counts it in the mean over queries (`renormalise_patch_rows`
with eps=0); cl-vs-mim adds eps to every patch entry first, which turns such a row uniform.

Analyses loop over blocks in Python (unrolled under jit) instead of stacking the tap, so a runner
holds one batch of attention maps and no (L, B, H, N, N) copy of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vitjax.capture import Output, TokenLayout

TAP = "attn"


def attention_blocks(output: Output, analysis: str) -> tuple[int, ...]:
    """Indices of the blocks that recorded attention maps; a clear error for models without any."""
    blocks = output.blocks_with(TAP)
    if not blocks:
        raise ValueError(f"analysis {analysis!r} needs a ViT: it reads the post-softmax attention maps "
                         "(capture tap 'attn'), which this model did not record. ResNets have no attention; "
                         "run it on a ViT with capture='attn'.")
    return blocks


def attention_maps(output: Output, analysis: str) -> list[jax.Array]:
    """The post-softmax maps of every block that recorded them, each (B, H, N, N) in float32."""
    return [output.layers[i][TAP].astype(jnp.float32) for i in attention_blocks(output, analysis)]


def attention_shape(spec: Output, analysis: str) -> tuple[int, int, TokenLayout]:
    """(blocks with attention L, heads H, layout) of an Output spec (`jax.eval_shape` of one)."""
    blocks = attention_blocks(spec, analysis)
    return len(blocks), spec.layers[blocks[0]][TAP].shape[1], spec.layout


def require_class_token(layout: TokenLayout, analysis: str, what: str = "the class token's attention") -> None:
    if layout.num_class == 0:
        raise ValueError(f"analysis {analysis!r} uses {what}, but this model has no class token")


def patch_block(attn: jax.Array, layout: TokenLayout) -> jax.Array:
    """Patch queries x patch keys, (B, H, Q, K): every prefix token dropped from both sides."""
    patches = layout.patch_slice
    return attn[..., patches, patches]


def renormalise(rows: jax.Array, eps: float = 0.0) -> jax.Array:
    """Rows scaled to sum 1 over their last axis.

    eps = 0 (Teaching Matters): rows with no mass stay zero rows. eps > 0 (cl-vs-mim): eps is added
    to every entry first, so such rows become uniform.
    """
    if eps:
        rows = rows + eps
        return rows / rows.sum(-1, keepdims=True)
    total = rows.sum(-1, keepdims=True)
    return jnp.where(total > 0, rows / jnp.where(total > 0, total, 1.0), 0.0)


def renormalise_patch_rows(attn: jax.Array, layout: TokenLayout, eps: float = 0.0) -> jax.Array:
    """Patch-query rows over patch keys, renormalised (B, H, Q, K) (see the module docstring)."""
    return renormalise(patch_block(attn, layout), eps)


def summed_patch_rows(attn: jax.Array, layout: TokenLayout, valid: jax.Array, eps: float = 0.0) -> jax.Array:
    """The renormalised patch rows summed over the valid images, (H, Q, K).

    Equal to `valid_sum(renormalise_patch_rows(attn, layout, eps), valid)`, but each row is scaled
    by its reciprocal patch mass inside the sum, so the (B, H, N, N) block is read once and never
    rewritten: for metrics linear in the rows (AAAM, mean attention distance) this is the whole
    cost. Prefix keys are masked rather than sliced off before the sum over images (XLA on CPU
    runs that fused reduction about twice as fast on the unsliced block); the prefix rows and
    columns of the (H, N, N) sum are dropped at the end.
    """
    patches = layout.patch_slice
    valid = valid.reshape(valid.shape + (1,) * (attn.ndim - 1))
    attn = jnp.where(valid, attn, 0.0)  # padding rows may hold anything, NaN included
    is_patch_key = (jnp.arange(attn.shape[-1]) >= layout.num_prefix).astype(attn.dtype)
    total = (attn * is_patch_key).sum(-1, keepdims=True) + eps * layout.num_patches
    scale = jnp.where(valid & (total > 0), 1.0 / jnp.where(total > 0, total, 1.0), 0.0)  # zero rows stay zero
    summed = (attn * scale).sum(0)[..., patches, patches]
    return summed + eps * scale.sum(0)[..., patches, :] if eps else summed
