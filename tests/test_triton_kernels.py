"""The Triton GPU kernels on this CPU: under the Triton interpreter against float64 materialised attention
(every statistic, the output, the column pass, gradients through the fused backward, vmap), and
lowered for CUDA with jax.export (Triton compiles them to PTX for sm_80 and sm_90 on the way).

The interpreter runs in a subprocess (tests/triton_interpreted.py): TRITON_INTERPRET=1 has to be set
before the kernels are decorated and must not leak into the other tests of this pytest process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import materialised
from filelock import FileLock
from triton_interpreted import CASES, VMAP_CASE, Case

from vitjax.capture import TokenLayout
from vitjax.kernels import reference, stats

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package (pip install 'vitjax[gpu]')")
HERE = os.path.dirname(__file__)


def run_script(script: str, *args: str, env: dict | None = None):
    """Runs tests/<script> in a fresh CPU-only process; its output is shown if it fails."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    done = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """The interpreted run's arrays, made once per session: pytest-xdist workers share the
    session directory above their own temporary roots, and the lock makes the second one wait."""
    session = tmp_path_factory.getbasetemp()
    path = (session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session) / "triton_interpreted.npz"
    with FileLock(f"{path}.lock"):
        if not path.exists():
            run_script("triton_interpreted.py", str(path), env={"TRITON_INTERPRET": "1"})
    with np.load(path) as saved:
        return dict(saved)


def case_arrays(results: dict, case: Case) -> dict:
    prefix = f"{case.name}/"
    return {name[len(prefix):]: value for name, value in results.items() if name.startswith(prefix)}


def geometries(case: Case):
    layout = TokenLayout(*case.layout)
    geometry = stats.token_geometry(layout)
    if case.patch_keys_only:
        return layout, geometry, geometry.slice(layout.num_prefix, layout.num_tokens)
    return layout, geometry, geometry


def oracle_statistics(q, k, v, query, key):
    """Every statistic in float64 from materialised logits, by kernels/stats.py's definitions."""
    out, probs, logits = materialised(q, k, v)
    with jax.enable_x64():
        s = jax.jit(lambda s: stats.finalize(stats.row_stats(s, query, key)))(jnp.asarray(logits))
        return out, probs, {name: np.asarray(value) for name, value in s.items()}


def oracle_gradients(q, k, v, query, key, weights):
    """jax.grad in float64 of the materialised loss the interpreted run differentiated."""
    def loss(q, k, v):
        out, _, logits = reference.attention(q, k, v)
        s = stats.finalize(stats.row_stats(logits, query, key))
        return (out * weights["out"]).sum() + sum((s[n] * weights[n]).sum() for n in s)

    with jax.enable_x64():
        up = lambda x: jnp.asarray(np.asarray(x, np.float64))
        weights = {n: up(w) for n, w in weights.items()}
        return [np.asarray(g) for g in jax.jit(jax.grad(loss, (0, 1, 2)))(up(q), up(k), up(v))]


def tolerance(case: Case, exact: float, half: float) -> float:
    return half if case.dtype in ("bfloat16", "float16") else exact


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_output_and_every_statistic_match_float64(interpreted, case):
    got = case_arrays(interpreted, case)
    _, query, key = geometries(case)
    want_out, _, want = oracle_statistics(got["q"], got["k"], got["v"], query, key)
    for name, value in want.items():
        atol = 2e-3 if name.startswith("distance") else 2e-5  # pixels
        np.testing.assert_allclose(got[f"stat_{name}"], value, rtol=2e-5, atol=atol, err_msg=name)
    # 16-bit: the probabilities are rounded to q's dtype before the P V product, as in every flash kernel
    np.testing.assert_allclose(got["out"], want_out, atol=tolerance(case, 2e-6, 8e-3) * np.abs(want_out).max())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_column_pass_matches_float64(interpreted, case):
    got = case_arrays(interpreted, case)
    _, probs, _ = oracle_statistics(got["q"], got["k"], got["v"], *geometries(case)[1:])
    np.testing.assert_allclose(got["received"], probs.sum(-2), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got["received_weighted"], np.einsum("bhq,bhqk->bhk", got["weight_received"], probs),
                               rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_backward_matches_float64_autodiff(interpreted, case):
    """Through the output and every statistic (max_prob's one-hot part included)."""
    got = case_arrays(interpreted, case)
    weights = {name[len("weight_"):]: value for name, value in got.items() if name.startswith("weight_")}
    want = oracle_gradients(got["q"], got["k"], got["v"], *geometries(case)[1:], weights)
    for name, w in zip(("dq", "dk", "dv"), want):
        # 16-bit: dS and P enter the backward's dots in q's dtype, as in every flash backward
        np.testing.assert_allclose(got[name], w, atol=tolerance(case, 3e-5, 2e-2) * np.abs(w).max(), err_msg=name)


def test_vmap_folds_into_the_batch_and_equals_each_problem(interpreted):
    """The custom_vmap rules: a vmapped forward, gradient and column pass, and a vmap over q alone
    (k and v broadcast), against the float64 oracle of the stacked problems (as one batch: the
    oracle is per example, and the loss weights are shared by the problems)."""
    got = case_arrays(interpreted, VMAP_CASE)
    _, query, key = geometries(VMAP_CASE)
    weights = {name[len("weight_"):]: value for name, value in got.items() if name.startswith("weight_")}
    as_batch = lambda x: x.reshape((-1,) + x.shape[2:])  # (2, 1, ...) -> (2, ...)
    q, k, v = (as_batch(got[n]) for n in "qkv")
    want_out, probs, want = oracle_statistics(q, k, v, query, key)
    np.testing.assert_allclose(as_batch(got["out"]), want_out, atol=2e-6)
    np.testing.assert_allclose(as_batch(got["entropy"]), want["entropy"], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(as_batch(got["distance"]), want["distance"], rtol=2e-5, atol=2e-3)
    np.testing.assert_allclose(as_batch(got["received"]), probs.sum(-2), rtol=2e-5, atol=1e-6)
    for name, w in zip(("dq", "dk", "dv"), oracle_gradients(q, k, v, query, key, weights)):
        np.testing.assert_allclose(as_batch(got[name]), w, atol=3e-5 * np.abs(w).max(), err_msg=name)
    shared = lambda x: np.broadcast_to(x[:1], x.shape)  # k, v of the first problem for both
    want_out, _, want = oracle_statistics(q, shared(k), shared(v), query, key)
    np.testing.assert_allclose(as_batch(got["out_q_only"]), want_out, atol=2e-6)
    np.testing.assert_allclose(as_batch(got["entropy_q_only"]), want["entropy"], rtol=2e-5, atol=2e-5)


def cuda_plugin_dir() -> str | None:
    """Where jaxlib's CUDA Triton bindings are: this environment ('') or $VITJAX_CUDA_PLUGIN_DIR."""
    if any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)):
        return ""
    return os.environ.get("VITJAX_CUDA_PLUGIN_DIR")


@pytest.mark.skipif(cuda_plugin_dir() is None, reason=(
    "lowering through jax-triton needs jaxlib's CUDA Triton bindings, which a CPU-only jaxlib lacks (jax-triton "
    "refuses to import): pip install --no-deps --target DIR jax-cuda12-plugin==0.10.2 and set "
    "VITJAX_CUDA_PLUGIN_DIR=DIR (not into this environment: `import jax` would then log CUDA-driver warnings)"))
def test_kernels_lower_for_cuda_and_compile_to_ptx(tmp_path):
    """jax.export for platforms=['cuda'] of forward, fused backward, column pass and vmap, float32 and bf16.

    jax-triton compiles each kernel with Triton's CUDA backend while lowering, so this catches what the
    interpreter does not check (layouts, tl.dot shapes, shared memory): each kernel must reach PTX, fit
    in an H100's 227 KiB of shared memory, and (bf16) use tensor-core MMA instructions.
    """
    plugin = cuda_plugin_dir()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [plugin, os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "lowered.json"
    run_script("triton_lowered.py", str(out), str(tmp_path / "dump"), env=env)
    report = json.loads(out.read_text())
    for name, calls in report["custom_calls"].items():
        # forward, dK/dV, dQ, column pass: one launch each, also under vmap (folded into the batch)
        assert calls == 4, f"{name}: {calls} triton_kernel_call ops, expected 4"
    kernels = report["kernels"]
    expected = {"attention_stats_fwd", "attention_stats_bwd_dkdv", "attention_stats_bwd_dq", "attention_received"}
    for sm in (80, 90):
        for dtype in ("float32", "bfloat16"):
            assert {k["name"] for k in kernels if (k["sm"], k["dtype"]) == (sm, dtype)} == expected, (sm, dtype)
    for kernel in kernels:
        assert kernel["shared_bytes"] <= 227 * 1024, kernel
        if kernel["dtype"] == "bfloat16":
            assert kernel["tensor_core"], f"{kernel['name']} (sm_{kernel['sm']}) has no mma/wgmma in its PTX"
