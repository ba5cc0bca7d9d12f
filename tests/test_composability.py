"""A captured forward is a pure function of (params, images): jit, grad, jvp-of-grad, vmap and
sharding all compose with it and agree with the plain call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import vitjax

TINY = dict(image_size=32, patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128, num_classes=5)
CAPTURE = ("tokens", "attn", "q", "k")


@pytest.fixture(scope="module")
def tiny():
    model, params = vitjax.create_model("vit_small_patch16_224", key=jax.random.key(0), **TINY)
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    return model, params, x


def forward(model, params, x):
    return model.apply({"params": params}, x, capture=CAPTURE)


def assert_trees_close(a, b, tol=1e-5):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


def test_jit_equals_eager(tiny):
    model, params, x = tiny
    assert_trees_close(jax.jit(lambda p, x: forward(model, p, x))(params, x), forward(model, params, x))


def test_capture_spec_is_a_static_argument(tiny):
    model, params, x = tiny
    apply = jax.jit(model.apply, static_argnames="capture")
    out = apply({"params": params}, x, capture=vitjax.Capture(frozenset({"attn"}), blocks=(0,)))
    assert set(out.layers[0]) == {"attn"} and out.layers[1] == {}


def test_empty_capture_returns_no_taps(tiny):
    model, params, x = tiny
    out = model.apply({"params": params}, x)
    assert all(layer == {} for layer in out.layers)
    # Only the final outputs are computed and returned: pooled, tokens and logits.
    assert len(jax.tree_util.tree_leaves(out)) == 3


def test_grad_of_captured_attention_is_finite(tiny):
    model, params, x = tiny
    loss = lambda p: forward(model, p, x).layers[1]["attn"][:, :, 0, 1:].sum() + forward(model, p, x).logits.sum()
    grads = jax.grad(loss)(params)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    assert np.abs(grads["blocks_0"]["attn"]["qkv"]["kernel"]).max() > 0


def test_hessian_vector_product_matches_finite_differences():
    """jvp of grad (forward-over-reverse) against a central difference of gradients, in float64."""
    with jax.enable_x64():
        model, params = vitjax.create_model("vit_small_patch16_224", key=jax.random.key(0), dtype="float64",
                                            **dict(TINY, depth=1))
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float64)
        labels = jnp.array([1, 3])

        def loss(p):
            logits = model.apply({"params": p}, x).logits
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        v = treedef.unflatten([jax.random.normal(k, p.shape, jnp.float64) for k, p in zip(keys, leaves)])
        hvp = jax.jvp(jax.grad(loss), (params,), (v,))[1]
        eps = 1e-6  # the central difference's error shrinks as eps**2: about 2e-8 relative here
        shifted = lambda s: jax.grad(loss)(jax.tree_util.tree_map(lambda p, d: p + s * eps * d, params, v))
        finite = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps), shifted(1.0), shifted(-1.0))
        flat = lambda t: np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(t)])
        error = np.abs(flat(hvp) - flat(finite)).max() / np.abs(flat(hvp)).max()
        assert error < 1e-6, f"HVP differs from finite differences by {error:.1e} of its scale"


def test_vmap_over_images(tiny):
    model, params, x = tiny
    single = jax.vmap(lambda image: forward(model, params, image[None]))(x)
    batched = forward(model, params, x)
    np.testing.assert_allclose(single.pooled[:, 0], batched.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single.layers[1]["attn"][:, 0], batched.layers[1]["attn"], rtol=1e-5, atol=1e-6)


def test_vmap_over_a_stack_of_param_sets(tiny):
    model, params, x = tiny
    _, other = vitjax.create_model("vit_small_patch16_224", key=jax.random.key(7), **TINY)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, other)
    both = jax.vmap(lambda p: forward(model, p, x))(stacked)
    for i, p in enumerate((params, other)):
        one = forward(model, p, x)
        np.testing.assert_allclose(both.logits[i], one.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(both.layers[0]["attn"][i], one.layers[0]["attn"], rtol=1e-5, atol=1e-6)


def test_forward_sharded_over_eight_devices_equals_one(tiny):
    """Batch over a 4-way data axis, MLP and qkv kernels split over a 2-way model axis."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py sets it)")
    model, params, x = tiny
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

    def spec(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith(("fc1/kernel", "qkv/kernel")):
            return NamedSharding(mesh, P(None, "model"))
        if name.endswith("fc2/kernel"):
            return NamedSharding(mesh, P("model", None))
        return NamedSharding(mesh, P())

    sharded_params = jax.device_put(params, jax.tree_util.tree_map_with_path(spec, params))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
    out = jax.jit(lambda p, x: forward(model, p, x))(sharded_params, sharded_x)
    assert out.pooled.sharding.spec[0] == "data" or len(out.pooled.sharding.device_set) == 8
    with jax.default_device(jax.devices()[0]):
        reference = jax.jit(lambda p, x: forward(model, p, x))(params, x)
    assert_trees_close(out, reference, tol=1e-5)


def test_param_count_matches_the_traced_model():
    from vitjax.load import build, param_count, param_shapes

    for name in ("deit_small_distilled_patch16_224.fb_in1k", "beit_base_patch16_224.in22k_ft_in22k_in1k",
                 "vit_small_patch14_reg4_dinov2.lvd142m"):
        config = vitjax.model_config(name)
        assert param_count(config) == sum(int(np.prod(s)) for s in param_shapes(build(config)).values())


def test_bfloat16_compute_keeps_float32_params_and_probabilities(tiny):
    model, params, x = tiny
    model16 = vitjax.ViT(vitjax.ViTConfig(**{**vars(model.config), "dtype": "bfloat16"}))
    out16 = model16.apply({"params": params}, x, capture="attn")
    out32 = model.apply({"params": params}, x, capture="attn")
    assert out16.tokens.dtype == jnp.bfloat16 and out16.layers[0]["attn"].dtype == jnp.float32
    np.testing.assert_allclose(out16.layers[0]["attn"].sum(-1), 1.0, rtol=1e-6)
    scale = np.abs(out32.pooled).max()
    assert np.abs(out16.pooled.astype(np.float32) - out32.pooled).max() < 0.05 * scale


def test_bfloat16_matmuls_sum_in_float32_and_compose(tiny):
    """Every dot of a bfloat16 model asks for a float32 sum (XLA:CPU runs those 1.7x as fast as
    bfloat16-result dots, and they round once), and jvp still composes with the model."""
    model, params, x = tiny
    model16 = vitjax.ViT(vitjax.ViTConfig(**{**vars(model.config), "dtype": "bfloat16"}))
    jaxpr = jax.make_jaxpr(lambda p, x: model16.apply({"params": p}, x).pooled)(params, x)

    def equations(jaxpr):  # with those of nested jaxprs: jnp.einsum traces its dot inside a pjit
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    yield from equations(inner)

    dots = [e for e in equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) >= 6 * model.config.depth + 1  # qkv, q.k, p.v, proj, fc1, fc2 per block; patches
    assert all(e.params["preferred_element_type"] == jnp.float32 for e in dots)
    assert all(e.outvars[0].aval.dtype == jnp.float32 for e in dots)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, out_tangent = jax.jvp(lambda p: model16.apply({"params": p}, x).pooled, (params,), (tangent,))
    assert out_tangent.dtype == jnp.bfloat16 and bool(jnp.isfinite(out_tangent.astype(jnp.float32)).all())
