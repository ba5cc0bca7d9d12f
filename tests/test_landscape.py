"""Loss landscapes, the classification objective and fixed batches: directions against NumPy
translations of Li et al.'s and Park & Kim's rules, the objective against float64 NumPy, a quadratic
against its closed form, sharded against single-device runs, and `vitjax landscape` end to end."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import vitjax
from vitjax import parallel
from vitjax.cli import main
from vitjax.curvature import landscape, selection
from vitjax.curvature.batches import fixed_batches
from vitjax.curvature.objective import classification_objective

SCENES = "vitjax_scenes/size64_train40_test40_cue20_seed0"


def flax_params(seed=0) -> dict:
    """A param tree with every kind of tensor the rules distinguish (Flax layouts)."""
    rng = np.random.RandomState(seed)
    shapes = {"conv/kernel": (3, 3, 4, 5), "attn/qkv/kernel": (6, 18), "fc/kernel": (6, 7), "fc/bias": (7,),
              "norm/scale": (6,), "pos_embed": (1, 5, 6), "cls_token": (1, 1, 6), "reg_token": (1, 2, 6),
              "blocks_0/attn/rel_pos_bias": (10, 3), "proj": (6, 4), "bn/mean": (5,), "bn/var": (5,)}
    flat = {tuple(k.split("/")): rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    return traverse_util.unflatten_dict(flat)


def flat(tree) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def test_filter_normalisation_gives_each_flax_slice_its_weight_norm():
    params = flax_params()
    direction, = landscape.directions(jax.random.key(1), params, normalization="filter", num=1)
    d, w = flat(direction), flat(params)
    for j in range(5):  # conv (kh, kw, in, out): one output channel
        assert np.linalg.norm(d["conv/kernel"][..., j]) == pytest.approx(np.linalg.norm(w["conv/kernel"][..., j]), 1e-5)
    for name, units in (("fc/kernel", 7), ("attn/qkv/kernel", 18), ("proj", 4), ("blocks_0/attn/rel_pos_bias", 3)):
        for j in range(units):  # Dense (in, out): one output unit's incoming weights
            assert np.linalg.norm(d[name][:, j]) == pytest.approx(np.linalg.norm(w[name][:, j]), 1e-5)
    for name, tokens in (("pos_embed", 5), ("cls_token", 1), ("reg_token", 2)):
        for n in range(tokens):  # token tables: one token's vector
            assert np.linalg.norm(d[name][0, n]) == pytest.approx(np.linalg.norm(w[name][0, n]), 1e-5)
    for name in ("fc/bias", "norm/scale", "bn/mean", "bn/var"):  # 1-D and running statistics: exactly zero
        assert np.all(d[name] == 0.0)
    # The slices are not all the same size: a per-tensor rescaling would fail the checks above.
    assert np.std([np.linalg.norm(w["fc/kernel"][:, j]) for j in range(7)]) > 0.05


def park_kim_numpy(raw: dict, weights: dict) -> dict:
    """how-do-vits-work's create_bases on PyTorch layouts, in NumPy float64: normalize_filter with
    torch.norm(dim=0), then ignore_bn (< 2 dims -> 0) and ignore_kw(['pos_embed', 'relative_position'])."""
    to_torch = {"conv/kernel": lambda a: a.transpose(3, 2, 0, 1), "attn/qkv/kernel": lambda a: a.T,
                "fc/kernel": lambda a: a.T, "proj": lambda a: a.T}
    from_torch = {"conv/kernel": lambda a: a.transpose(2, 3, 1, 0), "attn/qkv/kernel": lambda a: a.T,
                  "fc/kernel": lambda a: a.T, "proj": lambda a: a.T}
    out = {}
    for name in raw:
        if name.startswith("bn/"):  # running statistics are buffers there: not in the basis at all
            out[name] = np.zeros_like(raw[name])
            continue
        ws = to_torch.get(name, lambda a: a)(weights[name])
        bs = to_torch.get(name, lambda a: a)(raw[name])
        normalized = np.linalg.norm(ws, axis=0, keepdims=True) / (np.linalg.norm(bs, axis=0, keepdims=True) + 1e-7) * bs
        if normalized.ndim < 2 or "pos_embed" in name or "rel_pos" in name:
            normalized = np.zeros_like(normalized)
        out[name] = from_torch.get(name, lambda a: a)(normalized)
    return out


def test_park_kim_normalisation_matches_their_rule_on_the_pytorch_layout():
    params = flax_params()
    rng = np.random.RandomState(3)
    raw = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), params)
    ours = flat(landscape.normalize_direction(raw, params, normalization="park_kim"))
    expected = park_kim_numpy(flat(raw), flat(params))
    for name in expected:
        np.testing.assert_allclose(ours[name], expected[name], rtol=2e-5, atol=1e-7, err_msg=name)
        if name in ("fc/bias", "norm/scale", "pos_embed", "blocks_0/attn/rel_pos_bias", "bn/mean", "bn/var"):
            assert np.all(ours[name] == 0.0), name
    assert np.all(ours["cls_token"] != 0.0)  # 3-D, not a keyword: Park & Kim perturb it


def test_explicit_exclusion_predicate_and_no_normalisation():
    params = flax_params()
    raw = jax.tree.map(lambda x: jnp.ones_like(x), params)
    out = flat(landscape.normalize_direction(raw, params, normalization="none",
                                             exclude=lambda path, leaf: path.startswith("attn")))
    assert np.all(out["attn/qkv/kernel"] == 0.0) and np.all(out["bn/var"] == 0.0)
    assert np.all(out["fc/bias"] == 1.0) and np.all(out["conv/kernel"] == 1.0)
    with pytest.raises(ValueError, match="normalization"):
        landscape.directions(jax.random.key(0), params, normalization="layer")


def quadratic_problem():
    rng = np.random.RandomState(0)
    params = {"w": rng.randn(3, 2).astype(np.float32), "b": rng.randn(2).astype(np.float32)}
    direction = {"w": rng.randn(3, 2).astype(np.float32), "b": rng.randn(2).astype(np.float32)}
    batches = [{"x": rng.randn(n, 3).astype(np.float32), "y": rng.randn(n, 2).astype(np.float32)} for n in (6, 3)]

    def loss_fn(p, batch):  # mean over valid rows of 0.5 |x w + b - y|^2: a quadratic in (w, b)
        residual = batch["x"] @ p["w"] + p["b"] - batch["y"]
        valid = batch["valid"].astype(jnp.float32)
        return jnp.sum(valid * 0.5 * jnp.sum(residual**2, -1)) / valid.sum()

    return params, direction, batches, loss_fn


def test_1d_landscape_of_a_quadratic_is_its_closed_form():
    params, direction, batches, loss_fn = quadratic_problem()
    result = landscape.landscape_1d(loss_fn, params, batches, direction, grid=7, span=2.0, chunk=3)
    # Closed form in float64: residual r(a) = r0 + a r1, loss(a) = mean 0.5 |r0|^2 + a <r0, r1> + a^2/2 |r1|^2.
    x = np.concatenate([b["x"] for b in batches]).astype(np.float64)
    y = np.concatenate([b["y"] for b in batches]).astype(np.float64)
    r0 = x @ params["w"].astype(np.float64) + params["b"] - y
    r1 = x @ direction["w"].astype(np.float64) + direction["b"]
    c0, c1, c2 = (0.5 * (r0**2).sum(1).mean(), (r0 * r1).sum(1).mean(), 0.5 * (r1**2).sum(1).mean())
    alpha = np.linspace(-2, 2, 7)
    np.testing.assert_allclose(result["alpha"], alpha)
    np.testing.assert_allclose(result["loss"], c0 + c1 * alpha + c2 * alpha**2, rtol=1e-5)


def test_sharded_over_eight_devices_equals_one_device():
    assert jax.device_count() == 8
    params, direction, batches, loss_fn = quadratic_problem()
    other = jax.tree.map(lambda a: np.roll(a, 1), direction)
    one = landscape.landscape_2d(loss_fn, params, batches, (direction, other), grid=3,
                                 mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    eight = landscape.landscape_2d(loss_fn, params, batches, (direction, other), grid=3)
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_vit():
    return vitjax.create_model("vit_scenes_patch8_64", key=jax.random.key(0), image_size=16, width=16, depth=1,
                               num_heads=2, mlp_dim=32, num_classes=5)


@pytest.fixture(scope="module")
def tiny_resnet():
    model, params = vitjax.create_model("resnet_scenes_64", key=jax.random.key(1), image_size=16, layers=(1,),
                                        width=4, num_classes=5)
    # Non-trivial running statistics, so eval mode differs from batch statistics.
    rng = np.random.RandomState(0)
    stats = {k: (np.abs(rng.randn(*v.shape)) + 0.5 if k[-1] == "var" else rng.randn(*v.shape)).astype(np.float32)
             for k, v in traverse_util.flatten_dict(params).items() if k[-1] in ("mean", "var")}
    return model, traverse_util.unflatten_dict({**traverse_util.flatten_dict(params), **stats})


def image_batches(sizes=(5, 3), classes=5, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for n in sizes:
        target = rng.dirichlet(np.ones(classes), n).astype(np.float32)
        out.append({"image": rng.randn(n, 16, 16, 3).astype(np.float32), "target": target,
                    "valid": np.arange(n) < n - 1})  # the last row is padding
    return out


def numpy_cross_entropy(logits, target, valid):
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return float((-(target * log_p).sum(-1) * valid).sum() / valid.sum())


def test_objective_nll_and_penalties_equal_numpy(tiny_resnet):
    model, params = tiny_resnet
    batch = image_batches()[0]
    logits = jax.jit(model.apply)({"params": params}, batch["image"]).logits
    weights = [v for k, v in flat(params).items() if not k.endswith(("/mean", "/var"))]
    not_1d = [v for v in weights if v.ndim >= 2]
    nll = numpy_cross_entropy(logits, batch["target"], batch["valid"])
    l2 = jax.jit(classification_objective(model, weight_decay=0.1, penalty="l2").terms)(params, batch)
    assert float(l2["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(l2["penalty"]) == pytest.approx(0.05 * sum((v**2).sum() for v in weights), rel=1e-5)
    park_kim = classification_objective(model, weight_decay=0.1, penalty="park_kim",
                                        exclude=selection.is_one_dimensional)
    assert float(jax.jit(park_kim)(params, batch)) == pytest.approx(
        nll + 0.1 * sum(np.linalg.norm(v) for v in not_1d), rel=1e-5)
    # Integer labels are one-hot targets.
    labels = {"image": batch["image"], "label": np.arange(5) % 5}
    assert float(jax.jit(classification_objective(model))(params, labels)) == pytest.approx(
        numpy_cross_entropy(logits, np.eye(5)[labels["label"]], np.ones(5)), rel=1e-5)


def test_objective_holds_batchnorm_statistics_constant(tiny_resnet):
    model, params = tiny_resnet
    loss_fn = classification_objective(model, weight_decay=0.1, penalty="park_kim")
    grads = flat(jax.jit(jax.grad(loss_fn))(params, image_batches()[0]))
    assert all(np.all(g == 0) for k, g in grads.items() if k.endswith(("/mean", "/var")))
    assert all(np.any(g != 0) for k, g in grads.items() if k.endswith("kernel"))


def test_landscape_origin_is_the_loss_of_the_params(tiny_vit):
    model, params = tiny_vit
    batches = image_batches((5, 3, 4))
    loss_fn = classification_objective(model, weight_decay=0.05, penalty="park_kim")
    bases = landscape.directions(jax.random.key(0), params, normalization="park_kim")
    surface = landscape.landscape_2d(loss_fn, params, batches, bases, grid=3, span=0.5, chunk=4)
    counts = [b["valid"].sum() for b in batches]
    jitted = jax.jit(loss_fn)
    expected = sum(c * float(jitted(params, b)) for c, b in zip(counts, batches)) / sum(counts)
    assert surface["loss"][1, 1] == pytest.approx(expected, rel=1e-5)
    assert surface["loss"].shape == surface["accuracy"].shape == (3, 3)
    assert "Park & Kim" in surface["objective"]
    # Away from the origin the loss changes (the directions are not zero).
    assert np.all(surface["loss"][[0, 2], :] != surface["loss"][1, 1])


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("scenes"))


def test_fixed_batches_are_deterministic_and_differ_across_batches(scenes_dir):
    kwargs = dict(num_batches=2, batch_size=8, data_dir=scenes_dir)
    first = fixed_batches(SCENES, "train", "vit_scenes_patch8_64", seed=0, **kwargs)
    again = fixed_batches(SCENES, "train", "vit_scenes_patch8_64", seed=0, **kwargs)
    for a, b in zip(first, again):
        assert all(np.array_equal(a[k], b[k]) for k in ("image", "target", "valid"))
    assert not np.allclose(first[0]["image"], first[1]["image"])
    assert first[0]["image"].shape == (8, 64, 64, 3) and first[0]["target"].shape == (8, 10)
    np.testing.assert_allclose(first[0]["target"].sum(-1), 1.0, rtol=1e-6)
    assert first[0]["target"].max() < 0.95  # smoothed (0.91 + 0.01) and mixed, never one-hot
    plain = fixed_batches(SCENES, "test", "vit_scenes_patch8_64", num_batches=None, batch_size=16, augment=False,
                          data_dir=scenes_dir)
    assert len(plain) == 3 and plain[-1]["valid"].sum() == 40 - 32
    assert set(np.unique(plain[0]["target"])) == {0.0, 1.0}


def test_landscape_command_writes_a_report(scenes_dir, tmp_path):
    out = tmp_path / "report"
    code = main(["landscape", "--model", "vit_scenes_patch8_64", "--data", f"{SCENES}:train", "--data-dir",
                 scenes_dir, "--grid", "3", "--num-batches", "1", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "metrics.json", "landscape_sections.png", "vit_scenes_patch8_64_landscape_contour.png",
            "vit_scenes_patch8_64_landscape_surface.png"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    surface = metrics["models"]["vit_scenes_patch8_64"]["landscape"]
    assert all(math.isfinite(v) for row in surface["loss"] for v in row)
    assert "cross-entropy" in metrics["objective"]
    assert all(f"src='{n}'" in (out / "index.html").read_text() for n in names if n.endswith(".png"))
