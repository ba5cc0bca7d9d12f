"""The pieces of a ViT block: attention with explicit taps, the MLP variants, and their norms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vitjax.capture import TokenLayout
from vitjax.models.activations import ACTIVATIONS
from vitjax.models.attention_taps import attend

# Weight init for randomly created models (create_model); converted checkpoints overwrite it all.
dense_init = nn.initializers.truncated_normal(0.02)


def accumulate_wide(lhs, rhs, dimension_numbers, precision=None):
    """lax.dot_general that sums in at least float32 and returns the operands' dtype.

    For bfloat16 operands XLA:CPU runs a dot with a float32 result 1.7x as fast as one with a
    bfloat16 result (197 against 116 GFLOP/s on ViT-S's fc1 shape, 2026-11-22), and the float32 sum
    is rounded once at the end; float32 and float64 dots are unchanged. Plain lax ops, so jvp, grad
    and vmap compose as before.
    """
    wide = jnp.promote_types(jnp.result_type(lhs, rhs), jnp.float32)
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=wide)
    return out.astype(jnp.result_type(lhs, rhs))


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel (contracting x's last axis with the kernel's first), summed as accumulate_wide sums."""
    return accumulate_wide(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters ('scale', 'bias') and value, with the two-pass variance.

    Two-pass: the fast E[x^2]-E[x]^2 form loses precision on the high-norm outlier tokens that the
    registers analyses are about. Statistics in float32 whatever the compute dtype. The scale is
    applied to the normalised tokens, (x - mean) rsqrt(var + eps) * scale + bias, where flax
    multiplies rsqrt(var + eps) * scale first: the same value to rounding, but flax's product is a
    token-wide array of its own, and `jax.linearize` of a gradient (the Hessian-vector products of
    vitjax.curvature) kept seven token-wide arrays per flax norm against five for this one.
    """

    epsilon: float
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        centred = x - x.mean(-1, keepdims=True)
        normalised = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.epsilon)
        return (normalised * scale + bias).astype(self.dtype)


def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """BEiT's (N, N) index into its relative position bias table, N = 1 + gh * gw.

    Patch pairs index by their (dy, dx) offset; the last three table rows are the class token
    attending to patches, patches attending to the class token, and class to class.
    """
    gh, gw = grid
    coords = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel_y = rel[0] + gh - 1
    rel_x = rel[1] + gw - 1
    num_rel = (2 * gh - 1) * (2 * gw - 1)
    index = np.zeros((gh * gw + 1, gh * gw + 1), dtype=np.int32)
    index[1:, 1:] = rel_y * (2 * gw - 1) + rel_x
    index[0, 1:] = num_rel
    index[1:, 0] = num_rel + 1
    index[0, 0] = num_rel + 2
    return index


def relative_bias_table_size(grid: tuple[int, int]) -> int:
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


class Attention(nn.Module):
    """Multi-head self-attention that returns the taps it is asked for.

    qkv_bias: 'qkv' (one fused bias), 'qv' (BEiT: q and v biases, k has none) or 'none'.
    rel_pos_grid: the patch grid of a BEiT relative position bias table, or None.
    layout: the token layout, which the attention-statistics taps need (distances, prefix mass).
    """

    num_heads: int
    qkv_bias: str = "qkv"
    rel_pos_grid: tuple[int, int] | None = None
    taps: frozenset[str] = frozenset()
    dtype: jnp.dtype = jnp.float32
    layout: TokenLayout | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch, num_tokens, width = x.shape
        head_dim = width // self.num_heads
        qkv = nn.Dense(
            3 * width, use_bias=self.qkv_bias == "qkv", dtype=self.dtype, kernel_init=dense_init,
            dot_general=accumulate_wide, name="qkv"
        )(x)
        if self.qkv_bias == "qv":
            q_bias = self.param("q_bias", nn.initializers.zeros, (width,))
            v_bias = self.param("v_bias", nn.initializers.zeros, (width,))
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        q, k, v = jnp.moveaxis(qkv.reshape(batch, num_tokens, 3, self.num_heads, head_dim), 2, 0)

        bias = None
        if self.rel_pos_grid is not None:
            table = self.param(
                "rel_pos_bias",
                nn.initializers.zeros,
                (relative_bias_table_size(self.rel_pos_grid), self.num_heads),
            )
            index = relative_position_index(self.rel_pos_grid)
            if index.shape[0] != num_tokens:
                raise ValueError(
                    f"relative position bias is built for {index.shape[0]} tokens "
                    f"(grid {self.rel_pos_grid}), got {num_tokens}; load the model with image_size set"
                )
            bias = jnp.transpose(table[index], (2, 0, 1))
        out, record = attend(q, k, v, bias, self.taps, self.layout)
        out = out.reshape(batch, num_tokens, width)
        out = nn.Dense(width, dtype=self.dtype, kernel_init=dense_init, dot_general=accumulate_wide, name="proj")(out)

        heads_first = lambda t: jnp.transpose(t, (0, 2, 1, 3))  # (B, N, H, Dh) -> (B, H, N, Dh)
        record.update({"q": heads_first(q), "k": heads_first(k), "v": heads_first(v)})
        return out, {name: value for name, value in record.items() if name in self.taps}


class Mlp(nn.Module):
    """fc1 -> activation -> fc2, or fused SwiGLU (DINOv2-g): fc1 gives [x1, x2], fc2(silu(x1) * x2).

    The SwiGLU weights keep the names fc1/fc2 (timm's naming; DINOv2's official w12/w3) so one key
    table serves both kinds.
    """

    hidden: int
    kind: str = "gelu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        fc1 = nn.Dense(
            2 * self.hidden if self.kind == "swiglu" else self.hidden,
            dtype=self.dtype, kernel_init=dense_init, dot_general=accumulate_wide, name="fc1",
        )
        fc2 = nn.Dense(width, dtype=self.dtype, kernel_init=dense_init, dot_general=accumulate_wide, name="fc2")
        if self.kind == "swiglu":
            x1, x2 = jnp.split(fc1(x), 2, axis=-1)
            return fc2(jax.nn.silu(x1) * x2)
        return fc2(ACTIVATIONS[self.kind](fc1(x)))
