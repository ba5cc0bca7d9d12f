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


def summed_patch_rows(attn: jax.Array, layout: TokenLayout, valid: jax.Array,
                      eps: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """The renormalised patch rows summed over the valid images (H, Q, K), and how many valid patch
    rows had no patch mass at all (H,) (they stay zero rows under eps = 0, turn uniform under eps > 0).

    The rows equal `valid_sum(renormalise_patch_rows(attn, layout, eps), valid)`. For metrics linear
    in the rows (AAAM, mean attention distance) this sum is the whole cost, so each row is scaled by
    its reciprocal patch mass inside the sum and the maps are read at memory speed (see
    `_image_sums`). Prefix keys are masked rather than sliced off; the prefix rows and columns are
    dropped at the end. Analyses that call this with the same arguments in one jitted step share
    the work (XLA merges identical computations).
    """
    is_patch_key = (jnp.arange(attn.shape[-1]) >= layout.num_prefix).astype(attn.dtype)

    def image_terms(image, counted):
        """Scaled rows, zero-mass patch-row counts and (eps > 0) row scales of one image (H, N, N),
        or of a batch (B, H, N, N) with `counted` (B,)."""
        counted = counted.reshape(counted.shape + (1,) * (image.ndim - 1 - counted.ndim))  # one per row
        image = jnp.where(counted[..., None], image, 0.0)  # padding images may hold anything, NaN included
        # The patch mass of each row as a matrix-vector product with the 0/1 patch-key vector: XLA:CPU
        # runs it at memory speed, where the masked row sum ran 1.7x slower (and a sliced one 9x).
        # HIGHEST keeps TPUs and GPUs from rounding the maps to bfloat16 or TF32 in this product.
        mass = jnp.dot(image, is_patch_key, precision=jax.lax.Precision.HIGHEST)
        total = mass + eps * layout.num_patches if eps else mass
        scale = jnp.where(counted & (total > 0), 1.0 / jnp.where(total > 0, total, 1.0), 0.0)  # zero rows stay zero
        no_mass = ((counted & (mass == 0)) * is_patch_key).sum(-1)
        return (image * scale[..., None], no_mass, scale) if eps else (image * scale[..., None], no_mass)

    rows, empty, *scales = _image_sums(image_terms, attn, valid)
    patches = layout.patch_slice
    rows = rows[..., patches, patches]
    return (rows + eps * scales[0][..., patches, None] if eps else rows), empty


def _image_sums(terms, attn: jax.Array, valid: jax.Array):
    """The sums over the batch of `terms(image, valid)`, a tuple of arrays.

    On one device, a loop over images: each image's (H, N, N) block is read once from memory and
    again from cache, where XLA:CPU's reduction over the leading (batch) axis strides across
    images and ran 4x slower (and loop steps of 2 or 4 images ran 1.4x-1.9x slower than one).
    With the batch sharded over devices, the batched terms are summed over axis 0 instead, which
    XLA splits into per-device partial sums and one all-reduce (the loop would gather every
    device's maps).
    """
    if jax.device_count() > 1:
        return tuple(term.sum(0) for term in terms(attn, valid))
    # Zeros to start from: computing the first image outside the loop instead cost 25% more.
    zeros = tuple(jnp.zeros(x.shape, x.dtype) for x in jax.eval_shape(terms, attn[0], valid[0]))
    return jax.lax.fori_loop(0, attn.shape[0], lambda i, sums: tuple(
        total + term for total, term in zip(sums, terms(attn[i], valid[i]))), zeros)
