"""The chunked attention-statistics reference against float64 materialised attention: every statistic,
the merge rule, gradients through the custom_vjp, the column pass, chosen rows and rollout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import materialised, pixel_distances, statistics
from jax.sharding import NamedSharding, PartitionSpec as P

from vitjax.capture import TokenLayout
from vitjax.kernels import chunked, dispatch, reference, rollout, stats

CLS_14 = TokenLayout(1, 0, 0, (14, 14), (16, 16))  # N = 197
CLS_16 = TokenLayout(1, 0, 0, (16, 16), (16, 16))  # N = 257
CLS_32 = TokenLayout(1, 0, 0, (32, 32), (16, 16))  # N = 1025
DISTILLED = TokenLayout(1, 1, 0, (6, 7), (16, 16))  # N = 44, non-square grid
REGISTERS = TokenLayout(1, 0, 4, (9, 11), (14, 14))  # N = 104, DINOv2-style
NO_PREFIX = TokenLayout(0, 0, 0, (3, 5), (8, 8))  # N = 15, SelfPatch-style
FLAT, PEAKED = 0.5, 3.0  # input scales: logits of standard deviation about 0.25 and 9
# jitted once per test session: eager op-by-op dispatch costs more than the computations here
streamed = jax.jit(chunked.attention_with_stats, static_argnames="block_q")
received = jax.jit(chunked.attention_received, static_argnames="block_k")


def qkv(layout, scale, dtype=jnp.float32, batch=2, heads=3, head_dim=16, seed=0):
    """Random q, k, v (B, N, H, Dh); `scale` multiplies q and k, one value or one per example."""
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = (batch, layout.num_tokens, heads, head_dim)
    per_example = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (batch,))[:, None, None, None]
    return [(jax.random.normal(key, shape) * s).astype(dtype) for key, s in zip(keys, (per_example, per_example, 1.0))]


def assert_stats_close(got: dict, want: dict, *, rtol=2e-5, distance_atol=2e-3):
    for name, value in want.items():
        atol = distance_atol if name.startswith("distance") else 2e-5
        np.testing.assert_allclose(np.asarray(got[name], np.float64), value, rtol=rtol, atol=atol, err_msg=name)


CASES = [(layout, dtype) for layout in (CLS_14, CLS_16, CLS_32) for dtype in (jnp.float32, jnp.bfloat16)] + [
    (DISTILLED, jnp.float32), (REGISTERS, jnp.float32), (REGISTERS, jnp.bfloat16), (NO_PREFIX, jnp.float32)]


@pytest.mark.parametrize("layout,dtype", CASES, ids=[f"N{c[0].num_tokens}-{jnp.dtype(c[1]).name}" for c in CASES])
def test_every_statistic_matches_materialised_float64(layout, dtype):
    """Example 0 has flat logits, example 1 peaked ones."""
    q, k, v = qkv(layout, (FLAT, PEAKED), dtype, heads=3 if layout.num_tokens < 300 else 2)
    geometry = stats.token_geometry(layout)
    out, got = streamed(q, k, v, geometry, block_q=64)
    want_out, probs, logits = materialised(q, k, v)
    assert out.dtype == dtype and all(value.dtype == jnp.float32 for value in got.values())
    assert_stats_close(got, statistics(probs, logits, layout))
    out_tol = 2e-6 if dtype == jnp.float32 else 8e-3  # bf16 output rounding
    np.testing.assert_allclose(np.asarray(out, np.float64), want_out, atol=out_tol * np.abs(want_out).max())


def test_statistics_are_in_their_ranges():
    q, k, v = qkv(REGISTERS, FLAT)
    _, s = streamed(q, k, v, stats.token_geometry(REGISTERS))
    n = REGISTERS.num_tokens
    assert (s["entropy"] >= 0).all() and (s["entropy"] <= np.log(n) + 1e-5).all()
    assert (s["entropy_patches"] <= np.log(REGISTERS.num_patches) + 1e-5).all()
    np.testing.assert_allclose(s["prefix_mass"] + s["patch_mass"], 1.0, atol=1e-6)
    assert (s["max_prob"] >= 1.0 / n).all() and (s["max_prob"] <= 1.0).all()
    assert (s["distance"][..., : REGISTERS.num_prefix] == 0).all()  # prefix queries have no position


def prefix_heavy(layout, gap: float, seed=3):
    """Inputs whose rows put nearly all (or, in float32, all) mass on the prefix tokens: logit gap `gap`."""
    q, k, v = qkv(layout, 0.3, seed=seed)
    direction = jnp.zeros(q.shape[-1]).at[0].set(1.0)
    q = q + 4.0 * direction
    k = k.at[:, : layout.num_prefix].add(gap * direction)  # logits to prefix keys grow by 4 * gap / 4
    return q, k, v


def test_rows_with_almost_all_mass_on_prefix_tokens_keep_exact_renormalised_values():
    """Patch mass about 1e-13: 1 - prefix_mass would be pure rounding, the accumulated sum is exact."""
    q, k, v = prefix_heavy(REGISTERS, gap=30.0)
    _, got = streamed(q, k, v, stats.token_geometry(REGISTERS))
    want = statistics(*materialised(q, k, v)[1:], REGISTERS)
    patch_queries = REGISTERS.patch_slice
    assert want["patch_mass"][..., patch_queries].max() < 1e-8
    for name in ("patch_mass", "distance_patches", "entropy_patches"):
        np.testing.assert_allclose(got[name][..., patch_queries], want[name][..., patch_queries],
                                   rtol=1e-4, atol=1e-3 if name == "distance_patches" else 1e-5, err_msg=name)


def test_rows_with_all_mass_on_prefix_tokens_give_zero_not_nan():
    """A gap of 200 underflows every patch probability in float32: the protocols set such rows to 0."""
    q, k, v = prefix_heavy(CLS_14, gap=200.0)
    _, got = streamed(q, k, v, stats.token_geometry(CLS_14))
    rows = np.asarray(got["patch_mass"][..., CLS_14.patch_slice])
    assert (rows == 0).all()
    for name in ("distance_patches", "entropy_patches", "distance", "patch_entropy"):
        assert (np.asarray(got[name]) == 0).all(), name
    np.testing.assert_allclose(got["prefix_mass"], 1.0, atol=1e-6)


def test_unit_square_distances_are_pixel_distances_over_patch_span():
    """Teaching Matters' unit square = pixels / ((K - 1) * patch) on a K x K grid."""
    q, k, v = qkv(CLS_14, FLAT)
    _, px = streamed(q, k, v, stats.token_geometry(CLS_14))
    _, unit = streamed(q, k, v, stats.token_geometry(CLS_14, units="unit_square"))
    np.testing.assert_allclose(unit["distance_patches"], px["distance_patches"] / (13 * 16), rtol=1e-5)


def test_epsilon_renormalisation_matches_adding_epsilon_to_every_entry():
    """Park et al. add eps to A (prefix dropped) and renormalise; the O(N) formula is exact.
    A logit gap of 73 puts patch probabilities near eps = 1e-32, where the eps matters."""
    q, k, v = prefix_heavy(CLS_14, gap=73.0)
    geometry = stats.token_geometry(CLS_14)
    _, got = streamed(q, k, v, geometry)
    _, probs, _ = materialised(q, k, v)
    probs = probs.astype(np.float32).astype(np.float64)  # float32 underflow, as the original runs
    eps, d = 1e-32, pixel_distances(CLS_14)
    shifted = probs[..., 1:] + eps
    want = (shifted / shifted.sum(-1, keepdims=True) * d[:, 1:]).sum(-1)
    with jax.enable_x64():
        uniform = stats.summed_patch_distance(geometry)
        renormalised = stats.renormalise_over_patches(jnp.asarray(got["distance"], jnp.float64),
                                                      jnp.asarray(got["patch_mass"], jnp.float64), eps=eps,
                                                      uniform=uniform, num_patches=CLS_14.num_patches)
    np.testing.assert_allclose(renormalised, want, rtol=1e-5)


def test_merge_across_key_blocks_equals_unsplit():
    """Prefix keys apart from patch keys (the ViT split), and patch keys cut at an odd point."""
    layout = REGISTERS
    q, k, v = qkv(layout, PEAKED)
    geometry = stats.token_geometry(layout)
    forward = jax.jit(chunked.forward)
    whole_out, whole = forward(q, k, v, None, geometry, geometry)
    cuts = [0, layout.num_prefix, layout.num_prefix + 37, layout.num_tokens]
    parts = [forward(q, k[:, a:b], v[:, a:b], None, geometry, geometry.slice(a, b))
             for a, b in zip(cuts, cuts[1:])]
    out, merged = stats.merge([p[1] for p in parts], [p[0] for p in parts])
    np.testing.assert_allclose(out, whole_out, atol=1e-5)
    for name, value in stats.finalize(whole).items():
        np.testing.assert_allclose(merged[name], value, rtol=2e-5, atol=2e-5, err_msg=name)


def test_merge_over_a_mesh_axis_of_key_shards_equals_unsplit():
    """Sequence-sharded attention: 4 devices each hold a quarter of the keys; psum/pmax merge."""
    layout = DISTILLED  # 44 tokens: 11 keys per device
    q, k, v = qkv(layout, PEAKED)
    geometry = stats.token_geometry(layout)
    whole_out, whole = jax.jit(chunked.forward)(q, k, v, None, geometry, geometry)
    mesh = jax.make_mesh((4,), ("kv",), devices=jax.devices()[:4])

    def shard(q, k, v, key_coords, key_patch):
        out, part = chunked.forward(q, k, v, None, geometry, stats.TokenGeometry(key_coords, key_patch))
        return stats.merge_over_axis(part, "kv", out)

    keys = P(None, "kv")
    specs = (P(), keys, keys, P("kv"), P("kv"))
    args = [jax.device_put(x, NamedSharding(mesh, spec))
            for x, spec in zip((q, k, v, geometry.coords, geometry.is_patch), specs)]
    out, merged = jax.jit(jax.shard_map(shard, mesh=mesh, in_specs=specs, out_specs=P()))(*args)
    np.testing.assert_allclose(out, whole_out, atol=1e-5)
    for name, value in stats.finalize(whole).items():
        np.testing.assert_allclose(merged[name], value, rtol=2e-5, atol=2e-5, err_msg=name)


def materialised_loss(layout, weights, out_weight):
    """A scalar of the output and every statistic, through reference.attention and autodiff."""
    geometry = stats.token_geometry(layout)

    def loss(q, k, v, bias):
        out, _, logits = reference.attention(q, k, v, bias)
        s = stats.finalize(stats.row_stats(logits, geometry, geometry))
        return (out * out_weight).sum() + sum((s[n] * w).sum() for n, w in weights.items())

    return loss


def chunked_loss(layout, weights, out_weight, block_q=16):
    def loss(q, k, v, bias):
        out, s = chunked.attention_with_stats(q, k, v, stats.token_geometry(layout), bias=bias, block_q=block_q)
        return (out * out_weight).sum() + sum((s[n] * w).sum() for n, w in weights.items())

    return loss


def test_gradients_through_the_custom_vjp_match_materialised_autodiff():
    """Through the output, every statistic and a per-head bias (the no-bias path: test_capture_attention_stats)."""
    layout = DISTILLED
    q, k, v = qkv(layout, 1.5)
    key = jax.random.key(7)
    names = stats.ROW_FIELDS + stats.DERIVED_FIELDS
    weights = {n: jax.random.normal(jax.random.fold_in(key, i), (2, 3, layout.num_tokens)) for i, n in enumerate(names)}
    out_weight = jax.random.normal(jax.random.fold_in(key, 99), q.shape)
    bias = jax.random.normal(jax.random.fold_in(key, 100), (3, layout.num_tokens, layout.num_tokens))
    argnums = (0, 1, 2, 3)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(jax.grad(chunked_loss(layout, weights, out_weight), argnums))(q, k, v, bias)
        want = jax.jit(jax.grad(materialised_loss(layout, weights, out_weight), argnums))(q, k, v, bias)
    for name, a, b in zip("qkvb", got, want):
        np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max(), err_msg=f"d/d{name}")


def test_bfloat16_gradients_are_bfloat16_and_near_float32():
    layout = DISTILLED
    q, k, v = qkv(layout, 1.0, jnp.bfloat16)
    geometry = stats.token_geometry(layout)
    loss = lambda q, k, v: chunked.attention_with_stats(q, k, v, geometry)[1]["entropy_patches"].sum()
    gradient = jax.jit(jax.grad(loss, (0, 1, 2)))
    got, want = gradient(q, k, v), gradient(*(x.astype(jnp.float32) for x in (q, k, v)))
    for a, b in zip(got, want):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=2e-2 * np.abs(b).max())


def test_vmap_and_jit_equal_the_plain_call():
    layout = DISTILLED
    stacked = [jnp.stack([a, b]) for a, b in zip(qkv(layout, 1.0, seed=1), qkv(layout, 1.0, seed=2))]
    geometry = stats.token_geometry(layout)
    call = jax.jit(lambda q, k, v: chunked.attention_with_stats(q, k, v, geometry, block_q=16))
    mapped = jax.jit(jax.vmap(call))(*stacked)
    for i in range(2):
        single = call(*(x[i] for x in stacked))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5), mapped, single)
    grads = jax.vmap(jax.grad(lambda q, k, v: call(q, k, v)[1]["distance_patches"].sum()))(*stacked)
    assert np.isfinite(grads).all()


def test_received_rows_and_their_gradients_match_materialised():
    layout = REGISTERS
    q, k, v = qkv(layout, 1.5)
    geometry = stats.token_geometry(layout)
    _, s = streamed(q, k, v, geometry)
    _, probs, _ = materialised(q, k, v)
    weights = jax.random.uniform(jax.random.key(5), (2, 3, layout.num_tokens))
    np.testing.assert_allclose(received(q, k, s["lse"], block_k=32), probs.sum(-2), rtol=2e-5)
    np.testing.assert_allclose(received(q, k, s["lse"], weights, block_k=32),
                               np.einsum("bhq,bhqk->bhk", weights, probs), rtol=2e-5)
    rows = chunked.attention_rows(q, k, s["lse"], range(layout.num_prefix))
    np.testing.assert_allclose(rows, probs[:, :, : layout.num_prefix], atol=1e-6)

    def received_loss(received):  # the column pass's own gradient, for a given lse
        return lambda q, k: (received(q, k)[..., layout.register_slice] ** 2).sum()

    lse = s["lse"]
    scaled = lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q * 0.25, k)
    with jax.default_matmul_precision("highest"):
        column_pass = lambda q, k: chunked.attention_received(q, k, lse, weights, block_k=32)
        got = jax.jit(jax.grad(received_loss(column_pass), (0, 1)))(q, k)
        want = jax.jit(jax.grad(received_loss(lambda q, k: jnp.einsum(
            "bhq,bhqk->bhk", weights, jnp.exp(scaled(q, k) - lse[..., None]))), (0, 1)))(q, k)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=2e-5 * np.abs(b).max())


def test_rollout_matches_the_materialised_matrix_product():
    layout, depth = DISTILLED, 3
    layers = [qkv(layout, 1.2, seed=10 + i) for i in range(depth)]
    geometry = stats.token_geometry(layout)
    lse = jax.jit(lambda q, k, v: chunked.attention_with_stats(q, k, v, geometry)[1]["lse"])
    lses = [lse(q, k, v) for q, k, v in layers]
    start = jnp.zeros((2, layout.num_tokens)).at[:, 0].set(1.0)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    got = jax.jit(rollout.rollout)([heads_first(q) for q, _, _ in layers], [heads_first(k) for _, k, _ in layers],
                                   lses, start)
    eye = np.eye(layout.num_tokens)
    product = np.broadcast_to(eye, (2,) + eye.shape)
    for q, k, v in layers:  # R = A~_L ... A~_1: each later block multiplies from the left
        mixed = 0.5 * eye + 0.5 * materialised(q, k, v)[1].mean(1)
        product = mixed @ product
    np.testing.assert_allclose(got, product[:, 0], atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_dispatch_names_the_implementation_for_each_backend():
    choose = dispatch.implementation
    assert choose(statistics=False, backend="cpu") == "xla"
    assert choose(statistics=False, backend="gpu", dtype=jnp.bfloat16, head_dim=64) == "cudnn"
    assert choose(statistics=False, backend="gpu", dtype=jnp.float32, head_dim=64) == "xla"
    assert choose(statistics=False, backend="gpu", dtype=jnp.bfloat16, head_dim=64, bias=True) == "xla"
    assert choose(statistics=False, backend="gpu", dtype=jnp.bfloat16, head_dim=100) == "xla"
    assert choose(statistics=True, backend="cpu") == "chunked"
    assert choose(statistics=True, backend="gpu") in ("triton", "chunked")
    # 8 devices here: Pallas kernels only under a mesh that splits the batch evenly
    assert choose(statistics=False, backend="tpu", batch=8) == "xla"
    assert choose(statistics=True, backend="tpu", batch=8) == "chunked"
    with jax.set_mesh(jax.make_mesh((4, 2), ("data", "fsdp"))):
        assert choose(statistics=False, backend="tpu", batch=8) == "splash"
        assert choose(statistics=True, backend="tpu", batch=8) == "pallas_tpu"
        assert choose(statistics=True, backend="tpu", batch=8, bias=True) == "chunked"
        assert choose(statistics=False, backend="tpu", batch=6) == "xla"


def test_dispatch_runs_kernels_per_device_under_a_mesh():
    """The shard_map plumbing the TPU kernels go through, with the chunked kernels standing in
    (they share the contract): per-device results equal the single call."""
    layout = DISTILLED
    q, k, v = qkv(layout, 1.5, batch=8)
    geometry = stats.token_geometry(layout)
    with_stats = lambda q, k, v, g, kg: chunked.attention_with_stats(q, k, v, g, key_geometry=kg)
    want_out, want = jax.jit(with_stats)(q, k, v, geometry, geometry)
    with jax.set_mesh(jax.make_mesh((4, 2), ("data", "fsdp"))):
        run = lambda q, k, v: dispatch._on_tpu(with_stats, "out_and_stats", q, k, v, geometry, geometry)
        out, got = jax.jit(run)(q, k, v)
        per_key = jax.jit(lambda q, k, lse: dispatch._on_tpu(chunked.attention_received, "per_key", q, k, lse, lse))(
            q, k, want["lse"])
    np.testing.assert_allclose(out, want_out, atol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
    np.testing.assert_allclose(per_key, received(q, k, want["lse"], want["lse"]), rtol=1e-5)


def test_dispatch_on_this_cpu_equals_reference():
    q, k, v = qkv(CLS_14, FLAT)
    np.testing.assert_array_equal(dispatch.attention(q, k, v), reference.attention(q, k, v)[0])
