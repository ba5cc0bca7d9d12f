"""The loss operator and the eigen-solvers against exact float64 oracles: jax.hessian of a tiny model
(flattened with ravel_pytree), numpy.linalg.eigh, matrices with a known spectrum; bad input; and
sharded runs (8 simulated devices, 2 processes x 4 devices) against one device."""

from __future__ import annotations

import operator
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

from curvature_runs import direction, mlp_batches, mlp_loss, mlp_params, results
from train_runs import environment, free_port

import vitjax
from vitjax import parallel
from vitjax.curvature.eigen import lanczos, lanczos_tridiagonal, power_iteration
from vitjax.curvature.losses import ClassificationLoss
from vitjax.curvature.operator import (CurvatureError, _distinct, determinism_probe, hessian_operator,
                                      symmetry_probe)

ONE = parallel.make_mesh(devices=jax.devices()[:1])


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(jax.tree.map(np.asarray, tree))[0])


def exact_hessian(loss_fn, params, batch):
    """jax.hessian of the loss as a function of the flattened params."""
    vector, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: loss_fn(unravel(f), batch))(vector))


def concatenated(batches: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


# --- the operator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, linearize", [("fwd_rev", False), ("rev_rev", False), ("fwd_rev", True)])
def test_hvp_loss_and_grad_equal_exact_hessian_float64(x64, mode, linearize):
    """Three batches of 5, 7 and 4 examples (padded to 7 rows), weighted by size, equal one
    concatenated batch of 16 through jax.hessian; also from a stored linearization."""
    params, batches = mlp_params(), mlp_batches()
    op = hessian_operator(mlp_loss, params, batches, mode=mode, mesh=ONE, linearize=linearize)
    assert (op.linearization is not None) == linearize
    assert op.batches["x"].shape == (3, 7, 4) and op.num_examples == 16
    whole = concatenated(batches)
    hessian = exact_hessian(mlp_loss, params, whole)
    v = direction(params)
    assert relative(flat(op.matvec(v)), hessian @ flat(v)) < 1e-10
    assert abs(op.loss() - float(mlp_loss(params, whole))) < 1e-12
    assert relative(flat(op.grad()), flat(jax.grad(mlp_loss)(params, whole))) < 1e-10
    assert op.dim == hessian.shape[0] == 51


def test_batches_weighted_by_size_equal_one_concatenated_batch(x64):
    params, batches = mlp_params(), mlp_batches(sizes=(3, 9, 6))
    v = direction(params)
    split = hessian_operator(mlp_loss, params, batches, mesh=ONE)
    whole = hessian_operator(mlp_loss, params, [concatenated(batches)], mesh=ONE)
    assert relative(flat(split.matvec(v)), flat(whole.matvec(v))) < 1e-12
    unweighted = np.mean([flat(hessian_operator(mlp_loss, params, [b], mesh=ONE, check=False).matvec(v))
                          for b in batches], axis=0)
    assert relative(unweighted, flat(whole.matvec(v))) > 1e-3  # equal weights would be a different operator


def test_weight_decay_adds_exactly_lambda(x64):
    params, batches, lam = mlp_params(), mlp_batches(), 0.37
    v = direction(params)
    plain = hessian_operator(mlp_loss, params, batches, mesh=ONE)
    decayed = hessian_operator(mlp_loss, params, batches, mesh=ONE, weight_decay=lam)
    np.testing.assert_allclose(flat(decayed.matvec(v)) - flat(plain.matvec(v)), lam * flat(v), rtol=0, atol=1e-12)
    np.testing.assert_allclose(decayed.loss() - plain.loss(), lam / 2 * np.sum(flat(params) ** 2), rtol=1e-12)
    np.testing.assert_allclose(flat(decayed.grad()) - flat(plain.grad()), lam * flat(params), atol=1e-12)


def test_linearized_operator_keeps_weight_decay_and_products_of_new_vectors(x64):
    params, batches, lam = mlp_params(), mlp_batches(), 0.37
    plain = hessian_operator(mlp_loss, params, batches, mesh=ONE, weight_decay=lam)
    kept = plain.linearized()
    assert kept.linearized() is kept
    for seed in range(3):  # the stored residuals serve any vector
        v = direction(params, seed=seed)
        assert relative(flat(kept.matvec(v)), flat(plain.matvec(v))) < 1e-12
    loss, grad, hv = kept.products(v)
    assert abs(float(loss) - plain.loss()) < 1e-12 and relative(flat(grad), flat(plain.grad())) < 1e-12
    with pytest.raises(ValueError, match="forward-over-reverse"):
        hessian_operator(mlp_loss, params, batches, mesh=ONE, mode="rev_rev").linearized()


def test_distinct_drops_only_bit_identical_residuals():
    one_hot = np.eye(8, dtype=np.float32)
    leaves = [jnp.asarray(one_hot[0]), jnp.asarray(one_hot[0].copy()),
              jnp.asarray(one_hot[7]),  # the same two fingerprint sums as one_hot[0], other values
              jnp.zeros(8), -jnp.zeros(8),  # equal as numbers, not as bits
              jnp.full(3, jnp.nan), jnp.full(3, jnp.nan), jnp.arange(3)]
    kept, index = _distinct(leaves)
    assert index == (0, 0, 1, 2, 3, 4, 4, 5)
    for leaf, i in zip(leaves, index):
        np.testing.assert_array_equal(np.asarray(kept[i]), np.asarray(leaf))
        assert np.array_equal(np.signbit(kept[i]), np.signbit(leaf))


def test_linearized_vit_stores_repeated_residuals_once():
    """A ViT's linearized gradient repeats values (GELU's slope, for one: once for the forward
    pass's tangent, once for the backward's); the operator keeps each once and its products still
    equal the plain operator's."""
    model, params = vitjax.create_model("vit_tiny_patch16_224", key=jax.random.key(0), image_size=16, patch_size=8,
                                        depth=2, width=16, num_heads=2, mlp_dim=32, num_classes=3)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
                "label": rng.integers(0, 3, 4).astype(np.int32)}]
    plain = hessian_operator(ClassificationLoss(model), params, batches, mesh=ONE)
    kept = plain.linearized()
    stored, index = kept.linearization[2:]
    assert len(stored) < len(index) and sorted(set(index)) == list(range(len(stored)))
    v = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    assert relative(flat(kept.matvec(v)), flat(plain.matvec(v))) < 1e-5


def test_float32_hvp_within_1e4_of_float64_hessian():
    params, batches = mlp_params(dtype=np.float32), mlp_batches(dtype=np.float32)
    v = direction(params)
    hv = flat(hessian_operator(mlp_loss, params, batches, mesh=ONE).matvec(v))
    assert hv.dtype == np.float32
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: x.astype(np.float64), params)
        b64 = {k: (x.astype(np.float64) if x.dtype == np.float32 else x) for k, x in concatenated(batches).items()}
        expected = exact_hessian(mlp_loss, p64, b64) @ flat(v).astype(np.float64)
    assert relative(hv, expected) < 1e-4


def test_wrt_differentiates_a_subset_and_holds_the_rest_constant(x64):
    """Only the first layer's kernel: the operator is the exact Hessian of the loss as a function of
    those 24 numbers, with the rest of the params held constant."""
    params, batches = mlp_params(), mlp_batches()
    op = hessian_operator(mlp_loss, params, batches, mesh=ONE, wrt=lambda path: path == ("l1", "kernel"))
    assert op.params["l2"] == {"kernel": None, "bias": None} and op.params["l1"]["bias"] is None and op.dim == 24

    def of_kernel(kernel):
        return mlp_loss({**params, "l1": {**params["l1"], "kernel": kernel}}, concatenated(batches))

    hessian = np.asarray(jax.hessian(of_kernel)(params["l1"]["kernel"])).reshape(24, 24)
    v = np.random.RandomState(1).randn(4, 6)
    hv = op.matvec(jax.tree.map(lambda _: v, op.params))
    assert relative(flat(hv), hessian @ v.ravel()) < 1e-10
    # The same subset as a boolean mask tree.
    mask = jax.tree.map(lambda _: False, params)
    mask["l1"]["kernel"] = True
    assert hessian_operator(mlp_loss, params, batches, mesh=ONE, wrt=mask, check=False).dim == 24


def test_statistics_mask_keeps_running_statistics_constant():
    from vitjax.models.resnet import statistics_mask

    params = {"bn": {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32),
                     "mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}}
    loss = lambda p, b: jnp.mean(((b["x"] - p["bn"]["mean"]) / jnp.sqrt(p["bn"]["var"]) * p["bn"]["scale"]
                                  + p["bn"]["bias"]) ** 2)
    batch = {"x": np.random.RandomState(0).randn(8, 3).astype(np.float32)}
    op = hessian_operator(loss, params, [batch], mesh=ONE, wrt=jax.tree.map(operator.not_, statistics_mask(params)))
    assert set(op.params["bn"]) == {"scale", "bias", "mean", "var"} and op.params["bn"]["mean"] is None
    assert op.dim == 6 and op.constants["bn"]["scale"] is None


# --- eigen-solvers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_spectrum():
    """(operator, exact eigenvalues) of the MLP loss in float64, on one device."""
    with jax.enable_x64(True):
        params, batches = mlp_params(), mlp_batches()
        op = hessian_operator(mlp_loss, params, batches, mesh=ONE, weight_decay=1e-2)
        hessian = exact_hessian(mlp_loss, params, concatenated(batches)) + 1e-2 * np.eye(op.dim)
        yield op, np.linalg.eigh(hessian)


def test_power_iteration_finds_largest_magnitude_with_deflation(x64, mlp_spectrum):
    op, (values, vecs) = mlp_spectrum
    result = power_iteration(op.matvec, op.params, jax.random.PRNGKey(0), k=2, max_iter=1000, tol=1e-12)
    by_magnitude = values[np.argsort(-np.abs(values))]
    assert by_magnitude[0] < 0  # this model's dominant curvature is negative: |lambda| order shows it
    np.testing.assert_allclose(result.values, by_magnitude[:2], rtol=1e-8)
    assert result.order == "magnitude" and result.converged.all() and (result.residuals < 1e-3).all()
    assert abs(flat(result.vectors[0]) @ vecs[:, np.argmax(np.abs(values))]) == pytest.approx(1, abs=1e-6)


def test_power_iteration_stops_on_the_relative_change(x64, mlp_spectrum):
    op, _ = mlp_spectrum
    loose = power_iteration(op.matvec, op.params, jax.random.PRNGKey(0), max_iter=1000, tol=1e-2)
    fixed = power_iteration(op.matvec, op.params, jax.random.PRNGKey(0), max_iter=7, tol=0)
    assert loose.converged[0] and loose.iterations[0] < 100
    assert not fixed.converged[0] and fixed.iterations[0] == 7


@pytest.mark.parametrize("which, pick", [
    ("LA", lambda w: w[::-1][:3]), ("SA", lambda w: w[:3]), ("both", lambda w: np.r_[w[::-1][:2], w[:2][::-1]]),
    ("LM", lambda w: w[np.argsort(-np.abs(w))][:3]),
])
def test_lanczos_matches_eigh(x64, mlp_spectrum, which, pick):
    op, (values, _) = mlp_spectrum
    k = 2 if which == "both" else 3
    result = lanczos(op.matvec, op.params, jax.random.PRNGKey(1), num_steps=60, k=k, which=which)
    np.testing.assert_allclose(result.values, pick(values), rtol=1e-9)
    assert result.converged.all() and (result.residuals < 1e-8).all()
    assert result.order == ("magnitude" if which == "LM" else "algebraic")
    gram = np.array([[flat(a) @ flat(b) for b in result.vectors] for a in result.vectors])
    np.testing.assert_allclose(gram, np.eye(len(result.vectors)), atol=1e-10)


def matrix_operator(spectrum: np.ndarray, seed: int = 0):
    """matvec of Q diag(spectrum) Q' with a random orthogonal Q, on 1-D jax arrays."""
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(len(spectrum), len(spectrum)))
    a = jnp.asarray((q * spectrum) @ q.T)
    return jax.jit(lambda v: a @ v), jnp.zeros(len(spectrum))


def test_lanczos_finds_each_eigenvalue_once(x64):
    """n = 100, 80 steps: the top eigenvalues converge early; without reorthogonalisation they would
    reappear as ghost copies. Each converged Ritz value must match exactly one eigenvalue."""
    spectrum = np.r_[10.0, 8.0, 6.0, 5.0, np.linspace(-1, 1, 96)]
    matvec, like = matrix_operator(spectrum)
    alphas, betas, steps = lanczos_tridiagonal(matvec, like, jax.random.PRNGKey(0), 80)
    assert steps == 80 and alphas.dtype == betas.dtype == np.float64 and betas.shape == (79,)
    ritz = scipy.linalg.eigh_tridiagonal(alphas, betas, eigvals_only=True)
    for value in (10.0, 8.0, 6.0, 5.0):
        assert np.sum(np.abs(ritz - value) < 1e-6) == 1, (value, ritz[-8:])
    assert ritz.max() < 10 + 1e-9 and ritz.min() > -1 - 1e-9  # Ritz values interlace within the spectrum
    top = lanczos(matvec, like, jax.random.PRNGKey(0), num_steps=80, k=4)
    np.testing.assert_allclose(top.values, [10, 8, 6, 5], rtol=1e-12)
    assert not top.breakdown


def test_lanczos_breaks_down_on_a_low_rank_matrix(x64):
    """Rank 5 in n = 50: the Krylov space is invariant after at most 6 steps (5 eigenvectors and the
    start vector's null-space part); the run stops there with exact eigenpairs."""
    matvec, like = matrix_operator(np.r_[4.0, 3.0, -2.0, 1.5, 0.5, np.zeros(45)])
    result = lanczos(matvec, like, jax.random.PRNGKey(0), num_steps=30, k=6, which="LA")
    assert result.breakdown and result.iterations[0] <= 6
    np.testing.assert_allclose(result.values[:4], [4.0, 3.0, 1.5, 0.5], rtol=1e-12)
    assert (result.residuals < 1e-12).all() and result.converged.all()
    assert lanczos_tridiagonal(matvec, like, jax.random.PRNGKey(0), 30)[2] == result.iterations[0]


# --- probes and bad input -------------------------------------------------------------------------


class Fake:
    """An operator-like object (params + matvec) for probing the probes."""

    def __init__(self, matvec, n=20):
        self.matvec, self.params = matvec, jnp.zeros(n)


def test_probes_accept_a_good_operator_and_reject_bad_ones():
    op = hessian_operator(mlp_loss, mlp_params(dtype=np.float32), mlp_batches(dtype=np.float32), mesh=ONE)
    assert symmetry_probe(op, jax.random.PRNGKey(0)) < 1e-6
    assert determinism_probe(op, jax.random.PRNGKey(0)) == 0
    skew = jnp.asarray(np.random.RandomState(0).randn(20, 20))
    assert symmetry_probe(Fake(lambda v: skew @ v), jax.random.PRNGKey(0)) > 1e-2
    noisy = np.random.RandomState(0)
    assert determinism_probe(Fake(lambda v: v + 1e-2 * noisy.randn(20)), jax.random.PRNGKey(0)) > 1e-3


def test_non_scalar_loss_is_reported():
    per_example = lambda p, b: jnp.sum((b["x"] @ p["l1"]["kernel"]) ** 2, axis=1)
    with pytest.raises(CurvatureError, match="scalar.*\\(5,\\)"):
        hessian_operator(per_example, mlp_params(dtype=np.float32), mlp_batches(dtype=np.float32), mesh=ONE)


def test_non_deterministic_batch_source_is_reported():
    rng = np.random.RandomState(0)

    def unseeded():  # re-draws its "augmentation" on every pass, as an unseeded loader would
        return [{"x": b["x"] + 0.1 * rng.randn(*b["x"].shape).astype(np.float32), "label": b["label"]}
                for b in mlp_batches(dtype=np.float32)]

    with pytest.raises(CurvatureError, match="batch source is not deterministic"):
        hessian_operator(mlp_loss, mlp_params(dtype=np.float32), unseeded, mesh=ONE)
    seeded = lambda: mlp_batches(dtype=np.float32)
    assert hessian_operator(mlp_loss, mlp_params(dtype=np.float32), seeded, mesh=ONE).num_examples == 16


def test_nan_curvature_loss_and_ignored_padding_are_reported():
    params, batches = mlp_params(dtype=np.float32), mlp_batches(dtype=np.float32)
    params["l1"]["bias"][0] = 0.0
    # |b|^1.5 has a finite gradient at 0 but an infinite second derivative.
    kinked = lambda p, b: mlp_loss(p, b) + jnp.sum(jnp.abs(p["l1"]["bias"]) ** 1.5)
    with pytest.raises(CurvatureError, match="NaN curvature.*l1/bias"):
        hessian_operator(kinked, params, batches, mesh=ONE)
    with pytest.raises(CurvatureError, match="loss is nan"):
        hessian_operator(lambda p, b: mlp_loss(p, b) * jnp.nan, params, batches, mesh=ONE)
    ignores_valid = lambda p, b: mlp_loss(p, {k: v for k, v in b.items() if k != "valid"})
    with pytest.raises(CurvatureError, match="ignores batch\\['valid'\\]"):
        hessian_operator(ignores_valid, params, batches, mesh=ONE)
    with pytest.raises(CurvatureError, match="NaN curvature"):
        lanczos(lambda v: v * jnp.nan, jnp.ones(5), jax.random.PRNGKey(0), num_steps=3)


# --- sharding -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_device():
    return results(ONE)


def test_eight_devices_equal_one(one_device):
    """Batch split 8 ways (4 data x 2 fsdp) and params sharded FSDP-style, against one device."""
    eight, one = results(parallel.make_mesh(fsdp=2)), one_device
    assert eight["devices"] == 8 and one["devices"] == 1 and eight["examples"] == one["examples"] == 28
    for name in ("hv", "hv_linearized", "loss", "grad", "power", "lanczos"):
        np.testing.assert_allclose(eight[name], one[name], rtol=2e-5, err_msg=name)


def test_two_processes_equal_one_device(tmp_path, one_device):
    port, out = free_port(), tmp_path / "two.npz"
    script = [sys.executable, __file__.replace("test_curvature_core.py", "curvature_runs.py"), f"localhost:{port}"]
    processes = [subprocess.Popen([*script, str(i), str(out)], env=environment(4), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in processes:
        output = p.communicate(timeout=300)[0]
        assert p.returncode == 0, output
    two, one = dict(np.load(out)), one_device
    assert two["devices"] == 8 and two["examples"] == 28  # each example counted once, not once per process
    for name in ("hv", "hv_linearized", "loss", "grad", "power", "lanczos"):
        np.testing.assert_allclose(two[name], one[name], rtol=2e-5, err_msg=name)
