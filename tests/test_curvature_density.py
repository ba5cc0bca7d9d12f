"""Spectral density (SLQ), trace estimators, Park & Kim's max-eigenvalue spectra, the trainer's
spectra callback and `vitjax curvature`, against NumPy float64 oracles: matrices with known spectra,
exact traces, and the exact Hessian of a tiny model (jax.hessian, eigh)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.curvature import trace as trace_lib
from vitjax.curvature.density import slq

N = 60


def _matrix_operator(matrix: np.ndarray):
    """H as a matvec on a dict-of-two-leaves pytree (so the solvers see a real pytree), float64."""
    split = matrix.shape[0] // 3
    like = {"a": jnp.zeros(split, jnp.float64), "b": jnp.zeros((matrix.shape[0] - split,), jnp.float64)}
    h = jnp.asarray(matrix)

    @jax.jit
    def matvec(v):
        out = h @ jnp.concatenate([v["a"], v["b"]])
        return {"a": out[:split], "b": out[split:]}

    return matvec, like


def _known_spectrum(rng, eigenvalues):
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * eigenvalues) @ q.T


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_slq_density_integrates_to_one_and_its_moments_are_the_spectrum_moments(x64):
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([rng.uniform(-1.0, 2.0, N - 3), [5.0, 8.0, 12.0]])  # a bulk and outliers
    matrix = _known_spectrum(rng, eigenvalues)
    matvec, like = _matrix_operator(matrix)
    density = slq(matvec, like, jax.random.key(0), num_probes=40, num_steps=10)

    assert density.dim == N and density.sigma > 0
    assert math.isclose(np.trapezoid(density.density, density.grid), 1.0, rel_tol=1e-6)
    np.testing.assert_allclose(density.weights.sum(1), 1.0, rtol=1e-12)
    # Ritz values lie inside the spectrum, and the extreme ones converge to its ends.
    assert density.nodes.min() >= eigenvalues.min() - 1e-9 and density.nodes.max() <= eigenvalues.max() + 1e-9
    assert abs(density.nodes.max() - 12.0) < 1e-8
    for k in (1, 2, 3):
        exact = np.trace(np.linalg.matrix_power(matrix, k)) / N
        mean, sem = density.moments(k)
        assert 0 < sem < abs(exact) and abs(mean - exact) < 3 * sem, (k, mean, exact, sem)


def test_slq_moments_are_exact_per_probe_on_a_diagonal_matrix(x64):
    """With unit Rademacher probes v, v'Dv = trace(D)/n exactly for diagonal D, and m-point Gauss
    quadrature integrates polynomials of degree < 2m exactly: every probe gives trace(D^k)/n."""
    eigenvalues = np.linspace(-2.0, 6.0, N)
    matvec, like = _matrix_operator(np.diag(eigenvalues))
    density = slq(matvec, like, jax.random.key(1), num_probes=3, num_steps=4)
    for k in (1, 2, 3):
        per_probe = np.sum(density.weights * density.nodes ** k, axis=1)
        np.testing.assert_allclose(per_probe, np.mean(eigenvalues ** k), rtol=1e-10)


def test_slq_reports_the_kernel_width_it_was_given(x64):
    matvec, like = _matrix_operator(np.diag(np.linspace(0.0, 1.0, N)))
    density = slq(matvec, like, jax.random.key(2), num_probes=2, num_steps=10, sigma=0.05)
    assert density.sigma == 0.05
    peak = density.grid[np.argmax(density.density)]
    assert -0.1 < peak < 1.1


def test_hutchinson_lies_within_three_standard_errors_of_the_trace(x64):
    rng = np.random.default_rng(3)
    matrix = _known_spectrum(rng, rng.uniform(-1.0, 3.0, N))
    matvec, like = _matrix_operator(matrix)
    estimate = trace_lib.hutchinson(matvec, like, jax.random.key(0), rtol=0.0, atol=0.0, max_matvecs=50)
    exact = np.trace(matrix)
    assert estimate.num_matvecs == 50 and not estimate.converged
    assert abs(estimate.mean - exact) < 3 * estimate.sem
    # The standard error is that of the samples (the oracle: NumPy on the samples themselves).
    assert math.isclose(estimate.sem, np.std(estimate.samples, ddof=1) / np.sqrt(50), rel_tol=1e-12)
    # and matches the theoretical Rademacher variance 2(|H|_F^2 - sum H_ii^2) within sampling error
    predicted = np.sqrt(2 * (np.sum(matrix ** 2) - np.sum(np.diag(matrix) ** 2)) / 50)
    assert 0.5 < estimate.sem / predicted < 1.5


def test_hutchpp_is_unbiased_and_beats_hutchinson_on_a_low_rank_dominated_matrix(x64):
    rng = np.random.default_rng(4)
    eigenvalues = np.concatenate([[100.0, 80.0, 60.0, 50.0, 40.0], rng.uniform(0.0, 0.1, N - 5)])
    matrix = _known_spectrum(rng, eigenvalues)
    matvec, like = _matrix_operator(matrix)
    exact = np.trace(matrix)
    plus = trace_lib.hutchpp(matvec, like, jax.random.key(0), rank=8, rtol=0.0, max_matvecs=36)
    plain = trace_lib.hutchinson(matvec, like, jax.random.key(0), rtol=0.0, max_matvecs=36)
    assert plus.num_matvecs == 36 and plain.num_matvecs == 36
    assert abs(plus.mean - exact) < 3 * plus.sem and abs(plain.mean - exact) < 3 * plain.sem
    assert plus.sem < plain.sem / 10 and abs(plus.mean - exact) < abs(plain.mean - exact)
    assert abs(plus.sketch_trace - eigenvalues[:5].sum()) < 1.0  # the sketch caught the outliers


def test_the_stopping_rule_stops_on_the_standard_error(x64):
    rng = np.random.default_rng(5)
    matrix = _known_spectrum(rng, rng.uniform(1.0, 2.0, N)) + 5 * np.eye(N)  # mostly diagonal: small variance
    matvec, like = _matrix_operator(matrix)
    estimate = trace_lib.hutchinson(matvec, like, jax.random.key(0), rtol=0.01, max_matvecs=500)
    assert estimate.converged and 10 <= estimate.num_matvecs < 500
    assert estimate.sem <= 0.01 * abs(estimate.mean)
    shorter = np.asarray(estimate.samples[:-1])  # one probe earlier the rule did not hold yet
    if len(shorter) >= 10:
        assert trace_lib.standard_error(shorter) > 0.01 * abs(shorter.mean())
    absolute = trace_lib.hutchinson(matvec, like, jax.random.key(0), rtol=0.0, atol=1e9, max_matvecs=500)
    assert absolute.converged and absolute.num_matvecs == 10  # min_probes


# ----------------------------------------------------------------------------- Park & Kim spectra


class TinyMLP:
    """A two-layer tanh classifier with the vitjax Output interface (just logits)."""

    class config:  # noqa: N801 - the objective reads model.config only for ResNets
        num_classes = 3

    def apply(self, variables, images):
        p = variables["params"]
        hidden = jnp.tanh(images.reshape(images.shape[0], -1) @ p["w1"] + p["b1"])
        return type("Output", (), {"logits": hidden @ p["w2"] + p["b2"]})


def _tiny_problem(num_batches=2, batch=8):
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.standard_normal((4, 5)) * 0.8), "b1": jnp.asarray(rng.standard_normal(5) * 0.1),
              "w2": jnp.asarray(rng.standard_normal((5, 3)) * 0.8), "b2": jnp.zeros(3)}
    batches = []
    for _ in range(num_batches):
        labels = rng.integers(0, 3, batch)
        target = 0.9 * np.eye(3)[labels] + 0.1 / 3
        batches.append({"image": rng.standard_normal((batch, 2, 2, 1)), "target": target,
                        "valid": np.ones(batch, bool)})
    return TinyMLP(), params, batches


def _exact_hessian(params, batch, weight_decay):
    """float64 Hessian of NLL + wd/2|w|^2 by jax.hessian on the flattened parameters (the oracle)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(vector):
        p = unravel(vector)
        logits = jnp.tanh(batch["image"].reshape(len(batch["image"]), -1) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        nll = -jnp.mean(jnp.sum(batch["target"] * jax.nn.log_softmax(logits), -1))
        return nll + 0.5 * weight_decay * jnp.sum(vector ** 2)

    return np.asarray(jax.hessian(loss)(flat))


@pytest.mark.parametrize("linearize", [False, True])
def test_max_eigenvalue_spectra_equal_eigh_top_magnitudes_per_batch(x64, linearize):
    import jax.flatten_util  # noqa: F401

    from vitjax.curvature.spectra import max_eigenvalue_spectra

    model, params, batches = _tiny_problem()
    k, weight_decay = 2, 0.01
    result = max_eigenvalue_spectra(model, params, batches, k=k, max_iter=300, tol=1e-9,
                                    weight_decay=weight_decay, progress=False, linearize=linearize)
    assert result["eigenvalues"].shape == (len(batches), k)
    for index, batch in enumerate(batches):
        exact = np.linalg.eigvalsh(_exact_hessian(params, batch, weight_decay))
        top = exact[np.argsort(-np.abs(exact))[:k]]  # PyHessian's order: largest |lambda| first
        values, residuals = result["eigenvalues"][index], result["residuals"][index]
        # A Rayleigh quotient lies within its residual of an eigenvalue: here, the right one.
        assert np.all(residuals < 1e-3 * abs(top[0])), residuals
        assert np.all(np.abs(values - top) <= residuals + 1e-9), (values, top, residuals)
    assert math.isclose(np.trapezoid(result["density"], result["grid"]), 1.0, rel_tol=1e-3)
    assert np.all(result["residuals"] >= 0) and "cross-entropy" in result["objective"]


def test_the_trainer_callback_records_spectra_at_the_right_steps(tmp_path):
    from vitjax.curvature.spectra import SpectraCallback
    from vitjax.train import config as run_config
    from vitjax.train import train
    from vitjax.train.config import build_model

    config = run_config.load("tests/configs/tiny_synthetic.py", {"total_steps": 5, "eval_every": 0,
                                                                 "checkpoint_every": 0, "log_every": 5})
    model = build_model(config.model)
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((8, 32, 32, 3)).astype(np.float32),
             "target": np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)], "valid": np.ones(8, bool)}
    callback = SpectraCallback(model, [batch], every=2, k=1, max_iter=5, path=str(tmp_path / "spectra.jsonl"))
    train(config, str(tmp_path / "run"), progress=False, callbacks=[callback])
    assert [record["step"] for record in callback.history] == [2, 4]
    lines = [json.loads(line) for line in (tmp_path / "spectra.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4] and all(np.isfinite(line["eigenvalues"][0][0]) for line in lines)
    assert callback.history[0]["eigenvalues"][0, 0] != callback.history[1]["eigenvalues"][0, 0]  # params moved


# ----------------------------------------------------------------------------- the command


def _tiny_checkpoint(tmp_path, name: str, **overrides) -> str:
    """A small random-weight version of an embedded model, saved as `vitjax convert` saves (the
    overrides travel with it), so the command runs its real path in seconds of compute."""
    import vitjax
    from vitjax.convert import orbax_io

    _, params = vitjax.create_model(name, key=jax.random.key(0), **overrides)
    directory = tmp_path / name
    orbax_io.save(directory, params, {"name": name, "overrides": overrides, "source": "test"})
    return f"{name}:{directory}"


def test_vitjax_curvature_writes_every_file_with_finite_metrics(tmp_path):
    from vitjax.cli import main

    vit = _tiny_checkpoint(tmp_path, "vit_scenes_patch8_64", depth=1, width=16, num_heads=1, mlp_dim=32)
    out = tmp_path / "report"
    # One batch of 8 (the device count divides it): the spectra and the density/trace operators share code.
    # One model keeps this test short (its cost is compiling); the ResNet operator (BatchNorm
    # statistics held constant) is covered in test_curvature_core.py.
    code = main(["curvature", "--model", vit,
                 "--data", "vitjax_scenes/size64_train40_test40_cue20_seed0:train",
                 "--data-dir", str(tmp_path / "data"), "--num-batches", "1", "--batch-size", "8", "--top-k", "2",
                 "--max-iter", "4", "--density", "--slq-probes", "2", "--slq-steps", "3", "--trace",
                 "--trace-max-matvecs", "3", "--linearize", "--out", str(out)])
    assert code == 0
    for name in ("metrics.json", "index.html", "max_eigenvalue_spectra.png", "slq_density.png", "trace.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["vit_scenes_patch8_64:vit_scenes_patch8_64"]
    assert metrics["settings"]["linearize"] is True  # the operators kept their linearizations
    for model in metrics["models"].values():
        eigenvalues = np.asarray(model["spectra"]["eigenvalues"], float)
        assert eigenvalues.shape == (1, 2) and np.isfinite(eigenvalues).all()
        assert np.isfinite(model["density"]["density"]).all() and np.isfinite(model["trace"]["mean"])
        assert model["trace"]["num_matvecs"] == 3 and model["density"]["nodes"] and model["dim"] > 0
    html = (out / "index.html").read_text()
    assert "max_eigenvalue_spectra.png" in html and "cross-entropy" in html
