"""The Pallas TPU kernels on this CPU: TPU-semantics interpret mode against the chunked reference
and float64 materialised attention, shard_map over 8 simulated devices, and lowering for TPU with
jax.export (which applies the Mosaic block-shape rules that interpreters do not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import materialised, statistics
from jax import export
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, PartitionSpec as P

from vitjax.capture import TokenLayout
from vitjax.kernels import chunked, pallas_tpu, stats

# Uninitialised VMEM reads as NaN, so a kernel that reads an accumulator before writing it fails.
TPU_INTERPRET = pltpu.InterpretParams(uninitialized_memory="nan")
CLS_14 = TokenLayout(1, 0, 0, (14, 14), (16, 16))  # N = 197: padded to 256 on both axes
REGISTERS = TokenLayout(1, 0, 4, (9, 11), (14, 14))  # N = 104
DISTILLED_16 = TokenLayout(1, 1, 0, (16, 16), (16, 16))  # N = 258


def qkv(layout, scale=1.0, dtype=jnp.float32, batch=2, heads=2, head_dim=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = (batch, layout.num_tokens, heads, head_dim)
    return [(jax.random.normal(key, shape) * s).astype(dtype) for key, s in zip(keys, (scale, scale, 1.0))]


@pytest.mark.parametrize("layout,dtype,blocks", [
    (CLS_14, jnp.float32, (128, 128)),
    (DISTILLED_16, jnp.bfloat16, (128, 256)),
    (REGISTERS, jnp.float32, (128, 128)),
], ids=["N197-f32", "N258-bf16-kv256", "N104-registers"])
def test_interpreted_kernel_matches_chunked_and_float64(layout, dtype, blocks):
    q, k, v = qkv(layout, 2.0, dtype)
    geometry = stats.token_geometry(layout)
    block_q, block_k = blocks
    out, got = jax.jit(lambda q, k, v: pallas_tpu.attention_with_stats(
        q, k, v, geometry, block_q=block_q, block_k=block_k, interpret=TPU_INTERPRET))(q, k, v)
    ref_out, ref = jax.jit(lambda q, k, v: chunked.attention_with_stats(q, k, v, geometry))(q, k, v)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32),
                               atol=(2e-6 if dtype == jnp.float32 else 1e-2) * np.abs(ref_out).max())
    want = statistics(*materialised(q, k, v)[1:], layout)
    for name in want:
        atol = 3e-3 if name.startswith("distance") else 3e-5
        np.testing.assert_allclose(got[name], ref[name], rtol=3e-5, atol=atol, err_msg=f"{name} vs chunked")
        np.testing.assert_allclose(got[name], want[name], rtol=3e-5, atol=atol, err_msg=f"{name} vs float64")


def test_interpreted_column_pass_matches_chunked():
    q, k, v = qkv(CLS_14, 2.0)
    lse = jax.jit(chunked.attention_with_stats)(q, k, v, stats.token_geometry(CLS_14))[1]["lse"]
    weights = jax.random.uniform(jax.random.key(3), lse.shape)
    kernel = lambda q, k, lse, w: pallas_tpu.attention_received(q, k, lse, w, interpret=TPU_INTERPRET)
    got = jax.jit(kernel)(q, k, lse, weights)
    np.testing.assert_allclose(got, jax.jit(chunked.attention_received)(q, k, lse, weights), rtol=2e-5, atol=1e-6)


def test_gradients_through_the_pallas_forward_equal_the_chunked_ones():
    layout = REGISTERS
    q, k, v = qkv(layout, 1.5, batch=1)
    geometry = stats.token_geometry(layout)

    def loss(attention):
        def scalar(q, k, v):
            out, s = attention(q, k, v)
            return out.sum() + s["entropy"].sum() + s["distance_patches"].sum() / 100
        return jax.jit(jax.grad(scalar, (0, 1, 2)))

    got = loss(lambda q, k, v: pallas_tpu.attention_with_stats(q, k, v, geometry, interpret=True))(q, k, v)
    want = loss(lambda q, k, v: chunked.attention_with_stats(q, k, v, geometry))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


def test_splash_plain_path_matches_reference():
    q, k, v = qkv(CLS_14, 2.0)
    got = jax.jit(lambda q, k, v: pallas_tpu.splash_attention(q, k, v, interpret=True))(q, k, v)
    want, _, _ = materialised(q, k, v)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


def test_shard_map_over_batch_and_heads_equals_one_device():
    layout = REGISTERS
    q, k, v = qkv(layout, 1.5, batch=4)
    geometry = stats.token_geometry(layout)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with_stats, received = pallas_tpu.shard(mesh, batch_axes="data", head_axis="model", interpret=True)
    place = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    tokens = P("data", None, "model", None)
    q, k, v = (place(x, tokens) for x in (q, k, v))
    out, got = jax.jit(with_stats)(q, k, v, geometry)
    ref_out, ref = jax.jit(chunked.attention_with_stats)(q, k, v, geometry)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=3e-5, atol=3e-3, err_msg=name)
    lse = place(ref["lse"], P("data", "model", None))
    np.testing.assert_allclose(jax.jit(received)(q, k, lse), jax.jit(chunked.attention_received)(q, k, ref["lse"]),
                               rtol=2e-5)


def lower_for_tpu(fn, *args):
    return export.export(jax.jit(fn), platforms=["tpu"])(*args).mlir_module()


def test_kernels_lower_for_tpu():
    """ViT-B shapes at N = 197 (padded) and 1025, bf16: forward, column pass, gradient, splash."""
    for layout in (CLS_14, TokenLayout(1, 0, 0, (32, 32), (16, 16))):
        geometry = stats.token_geometry(layout)
        tokens = jax.ShapeDtypeStruct((2, layout.num_tokens, 12, 64), jnp.bfloat16)
        per_query = jax.ShapeDtypeStruct((2, 12, layout.num_tokens), jnp.float32)
        forward = lambda q, k, v: pallas_tpu.attention_with_stats(q, k, v, geometry, block_k=256)
        assert "tpu_custom_call" in lower_for_tpu(forward, tokens, tokens, tokens)
        assert "tpu_custom_call" in lower_for_tpu(lambda q, k, lse: pallas_tpu.attention_received(q, k, lse),
                                                  tokens, tokens, per_query)
        entropy_grad = jax.grad(lambda q, k, v: forward(q, k, v)[1]["entropy"].sum(), (0, 1, 2))
        assert "tpu_custom_call" in lower_for_tpu(entropy_grad, tokens, tokens, tokens)
        assert "tpu_custom_call" in lower_for_tpu(pallas_tpu.splash_attention, tokens, tokens, tokens)


def test_blocks_that_break_tpu_tiling_are_refused():
    q, k, v = qkv(CLS_14)
    with pytest.raises(ValueError, match="multiple of 128"):
        pallas_tpu.attention_with_stats(q, k, v, stats.token_geometry(CLS_14), block_q=100)
