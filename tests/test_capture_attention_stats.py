"""End to end: a model asked for attention statistics gives what the protocols compute from its own
materialised attention maps (attention distance in pixels with prefix tokens dropped and rows
renormalised, entropy, attention received, prefix rows), and gradients agree too."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import pixel_distances, xlogx

import vitjax
from vitjax.kernels import rollout

TINY = dict(patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128)
STATS_TAPS = ("attn_stats", "attn_received", "attn_rows")


def apply(model, params, images, capture):
    return jax.jit(model.apply, static_argnames="capture")({"params": params}, images, capture=capture)


@pytest.fixture(scope="module")
def distilled_with_registers():
    """DeiT distilled (class + distillation token) with 2 registers, on a non-square 6 x 5 grid."""
    model, params = vitjax.create_model("deit_tiny_distilled_patch16_224.fb_in1k", key=jax.random.key(0),
                                        image_size=48, num_registers=2, **TINY)
    images = jax.random.normal(jax.random.key(1), (2, 48, 40, 3))
    return model, params, images


def protocol_distance_and_entropy(attn: np.ndarray, layout) -> tuple[np.ndarray, np.ndarray]:
    """From (L, B, H, N, N) maps: per-query mean distance in px over patch keys with prefix queries and
    keys dropped and rows renormalised (all-prefix rows 0), and the entropy over all keys."""
    prefix = layout.num_prefix
    patches = attn[..., prefix:, prefix:]
    mass = patches.sum(-1, keepdims=True)
    renormalised = np.where(mass > 0, patches / np.where(mass > 0, mass, 1.0), 0.0)
    d = pixel_distances(layout)[prefix:, prefix:]
    return (renormalised * d).sum(-1), -xlogx(attn).sum(-1)


def test_statistics_equal_the_analysis_of_materialised_maps(distilled_with_registers):
    model, params, images = distilled_with_registers
    maps = apply(model, params, images, "attn")
    streamed = apply(model, params, images, STATS_TAPS)
    layout = streamed.layout
    assert (layout.num_prefix, layout.grid) == (4, (6, 5))
    attn = np.asarray(maps.stack("attn"), np.float64)
    distance, entropy = protocol_distance_and_entropy(attn, layout)
    s = streamed.stack("attn_stats")
    np.testing.assert_allclose(s["distance_patches"][..., layout.patch_slice], distance, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s["entropy"], entropy, rtol=1e-5, atol=1e-6)
    # the per-head numbers the papers plot: mean over patch queries
    np.testing.assert_allclose(s["distance_patches"][..., layout.patch_slice].mean(-1), distance.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(streamed.stack("attn_received"), attn.sum(-2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.stack("attn_rows"), attn[..., : layout.num_prefix, :], atol=1e-6)
    np.testing.assert_allclose(streamed.pooled, maps.pooled, atol=1e-5)


def test_maps_and_statistics_together_agree_with_statistics_alone(distilled_with_registers):
    model, params, images = distilled_with_registers
    both = apply(model, params, images, ("attn",) + STATS_TAPS)
    alone = apply(model, params, images, vitjax.Capture(frozenset({"attn_stats"}), blocks=(-1,)))
    assert alone.layers[0] == {} and set(alone.layers[1]) == {"attn_stats"}
    for name, value in alone.layers[1]["attn_stats"].items():
        np.testing.assert_allclose(both.layers[1]["attn_stats"][name], value, rtol=1e-5, atol=1e-4, err_msg=name)


def test_gradient_of_a_statistic_equals_the_gradient_through_the_maps(distilled_with_registers):
    model, params, images = distilled_with_registers

    def from_stats(p):
        return model.apply({"params": p}, images, capture="attn_stats").stack("attn_stats")["entropy"].mean()

    def from_maps(p):
        attn = model.apply({"params": p}, images, capture="attn").stack("attn")
        return -jnp.where(attn > 0, attn * jnp.log(jnp.where(attn > 0, attn, 1.0)), 0.0).sum(-1).mean()

    with jax.default_matmul_precision("highest"):
        got, want = jax.jit(jax.grad(from_stats))(params), jax.jit(jax.grad(from_maps))(params)
    scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(want))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale), got, want)


def test_relative_position_bias_models_stream_the_same_statistics():
    """BEiT's bias goes through the chunked kernel's bias path."""
    model, params = vitjax.create_model("beit_base_patch16_224.in22k_ft_in22k_in1k", key=jax.random.key(0),
                                        image_size=32, **dict(TINY, depth=1))
    def randomise(path, x):  # the zero-initialised bias table would test nothing
        return jax.random.normal(jax.random.key(len(path)), x.shape) if "rel_pos_bias" in str(path) else x

    params = jax.tree_util.tree_map_with_path(randomise, params)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    attn = np.asarray(apply(model, params, images, "attn").stack("attn"), np.float64)
    s = apply(model, params, images, "attn_stats").stack("attn_stats")
    np.testing.assert_allclose(s["entropy"], -xlogx(attn).sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["max_prob"], attn.max(-1), rtol=1e-5)


def test_rollout_from_captured_taps_equals_the_product_of_materialised_maps(distilled_with_registers):
    model, params, images = distilled_with_registers
    attn = np.asarray(apply(model, params, images, "attn").stack("attn"), np.float64)
    got = rollout.rollout_from_output(apply(model, params, images, ("q", "k", "attn_stats")), start="class")
    eye = np.eye(attn.shape[-1])
    product = np.broadcast_to(eye, attn.shape[1:2] + eye.shape)
    for block in attn:  # A~_L ... A~_1
        product = (0.5 * eye + 0.5 * block.mean(1)) @ product
    np.testing.assert_allclose(got, product[:, 0], atol=1e-6)
