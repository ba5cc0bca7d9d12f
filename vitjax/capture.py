"""What a forward pass records (a static, hashable spec) and the Output it returns.

Capture is explicit: a block computes and returns exactly the taps the spec names, so an
unrequested tap costs nothing and there are no hooks or global state. The spec is a frozen
dataclass, which makes it a legal static argument under `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
import jax
import jax.numpy as jnp
from flax import struct

# Every tap a ViT block can return, with its shape (B batch, N tokens, D width, H heads, Dh head dim):
TAPS = {
    "tokens": "block output tokens, before the final norm (B, N, D)",
    "norm1": "output of the block's first LayerNorm, the attention input (B, N, D)",
    "norm2": "output of the block's second LayerNorm, the MLP input (B, N, D)",
    "attn": "post-softmax attention probabilities per head (B, H, N, N)",
    "attn_logits": "pre-softmax attention logits per head, relative position bias included (B, H, N, N)",
    "q": "queries per head, before scaling (B, H, N, Dh)",
    "k": "keys per head (B, H, N, Dh)",
    "v": "values per head (B, H, N, Dh)",
    "attn_branch": "attention branch output added to the residual, after layer scale (B, N, D)",
    "mlp_branch": "MLP branch output added to the residual, after layer scale (B, N, D)",
    # Streamed without an N x N array (vitjax.kernels); definitions in kernels/stats.py.
    "attn_stats": "per-query attention statistics per head, a dict of float32 (B, H, N): lse, entropy, "
    "max_prob, prefix_mass, patch_mass, distance (pixels, patch keys, not renormalised), distance_patches "
    "and entropy_patches (rows renormalised over patch keys), patch_entropy",
    "attn_received": "attention each key receives, summed over all queries, per head (B, H, N)",
    "attn_rows": "full attention rows of the prefix tokens (class, distillation, registers) per head (B, H, P, N)",
    # Not a block output: the model's input embeddings, the same array in every block that records it.
    "patch_embed": "input patch embeddings, the patch projection before position embeddings (B, gh*gw, D)",
}


@dataclasses.dataclass(frozen=True)
class Capture:
    """Which taps to record, and for which blocks (None: every block; negative indices count back)."""

    taps: frozenset[str] = frozenset()
    blocks: tuple[int, ...] | None = None

    def __post_init__(self):
        unknown = sorted(set(self.taps) - set(TAPS))
        if unknown:
            raise ValueError(f"unknown capture tap(s) {unknown}; known taps: {sorted(TAPS)}")
        object.__setattr__(self, "taps", frozenset(self.taps))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))

    def for_block(self, index: int, depth: int) -> frozenset[str]:
        """The taps block `index` of a `depth`-block model must return."""
        if not self.taps:
            return frozenset()
        if self.blocks is None:
            return self.taps
        wanted = set()
        for b in self.blocks:
            if not -depth <= b < depth:
                raise ValueError(f"capture asks for block {b}, but the model has {depth} blocks")
            wanted.add(b % depth)
        return self.taps if index in wanted else frozenset()


CaptureLike = Capture | str | Iterable[str] | None


def as_capture(spec: CaptureLike) -> Capture:
    """Accepts a Capture, None (nothing), one tap name, or an iterable of tap names."""
    if isinstance(spec, Capture):
        return spec
    if spec is None:
        return Capture()
    if isinstance(spec, str):
        return Capture(frozenset({spec}))
    return Capture(frozenset(spec))


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in the sequence: [class][distillation][registers][patches]."""

    num_class: int
    num_dist: int
    num_registers: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]

    @property
    def num_prefix(self) -> int:
        return self.num_class + self.num_dist + self.num_registers

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def kinds(self) -> tuple[str, ...]:
        """One name per token position: 'class', 'dist', 'register' or 'patch'."""
        return (
            ("class",) * self.num_class
            + ("dist",) * self.num_dist
            + ("register",) * self.num_registers
            + ("patch",) * self.num_patches
        )

    @property
    def patch_slice(self) -> slice:
        return slice(self.num_prefix, self.num_tokens)

    @property
    def register_slice(self) -> slice:
        start = self.num_class + self.num_dist
        return slice(start, start + self.num_registers)

    def patches(self, tokens: jax.Array) -> jax.Array:
        """Patch tokens of a (..., N, D) array as a (..., gh, gw, D) grid."""
        grid = tokens[..., self.patch_slice, :]
        return grid.reshape(*grid.shape[:-2], *self.grid, grid.shape[-1])


@struct.dataclass
class Output:
    """What a forward pass returns; a pytree, so it passes through jit, vmap and grad.

    pooled:    the image feature before any projection or classifier head (B, D)
    tokens:    the final normalised tokens (B, N, D); for models without a final norm, the last
               block's output
    embedding: the projected embedding where the source has a projection (CLIP), else None
    logits:    classifier logits where the model has a head, else None
    layers:    one dict of taps per block (empty dicts for blocks nothing was asked of)
    layout:    the token layout (static)
    """

    pooled: jax.Array
    tokens: jax.Array
    embedding: jax.Array | None
    logits: jax.Array | None
    layers: tuple[dict[str, jax.Array], ...]
    layout: TokenLayout = struct.field(pytree_node=False)

    def stack(self, tap: str) -> jax.Array:
        """One tap stacked over the blocks that recorded it: (L, ...) (a dict of them for attn_stats)."""
        found = [layer[tap] for layer in self.layers if tap in layer]
        if not found:
            raise KeyError(f"no block recorded {tap!r}; pass capture={tap!r} to apply()")
        return jax.tree_util.tree_map(lambda *blocks: jnp.stack(blocks), *found)

    def blocks_with(self, tap: str) -> tuple[int, ...]:
        """Indices of the blocks that recorded `tap`, in the order `stack` uses."""
        return tuple(i for i, layer in enumerate(self.layers) if tap in layer)
