"""A tiny tanh MLP with a cross-entropy loss for the curvature tests, and the worker that the
multi-process test starts: `python curvature_runs.py COORDINATOR PROCESS_ID OUT.npz`.

Params and data come from NumPy seeds, so every process (and the test itself) builds the same ones.
"""

from __future__ import annotations

import sys

import numpy as np

IN, HIDDEN, CLASSES = 4, 6, 3  # 51 parameters: jax.hessian of the whole model is cheap


def mlp_params(seed: int = 0, dtype=np.float64) -> dict:
    rng = np.random.RandomState(seed)
    return {"l1": {"kernel": rng.randn(IN, HIDDEN).astype(dtype), "bias": 0.5 * rng.randn(HIDDEN).astype(dtype)},
            "l2": {"kernel": rng.randn(HIDDEN, CLASSES).astype(dtype), "bias": 0.5 * rng.randn(CLASSES).astype(dtype)}}


def mlp_batches(sizes=(5, 7, 4), seed: int = 1, dtype=np.float64) -> list[dict]:
    rng = np.random.RandomState(seed)
    return [{"x": rng.randn(n, IN).astype(dtype), "label": rng.randint(0, CLASSES, n).astype(np.int32)} for n in sizes]


def mlp_logits(params, x):
    import jax.numpy as jnp

    h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    return h @ params["l2"]["kernel"] + params["l2"]["bias"]


def mlp_loss(params, batch):
    """Mean cross-entropy over the batch's valid examples."""
    import jax.numpy as jnp
    import optax

    nll = optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, batch["x"]), batch["label"])
    valid = batch.get("valid", jnp.ones(nll.shape, bool))
    return jnp.sum(jnp.where(valid, nll, 0)) / jnp.maximum(valid.sum(), 1)


def direction(params, seed: int = 2) -> dict:
    """A fixed random vector shaped like params (NumPy, so identical everywhere)."""
    rng = np.random.RandomState(seed)
    return {k: {n: rng.randn(*a.shape).astype(a.dtype) for n, a in layer.items()} for k, layer in params.items()}


def results(mesh=None) -> dict[str, np.ndarray]:
    """What the single- and multi-process runs must agree on (float32, the multi-host case)."""
    import jax

    from vitjax import parallel
    from vitjax.curvature.eigen import lanczos, power_iteration
    from vitjax.curvature.operator import hessian_operator

    params = mlp_params(dtype=np.float32)
    op = hessian_operator(mlp_loss, params, mlp_batches(sizes=(16, 12), dtype=np.float32), weight_decay=0.01,
                          mesh=mesh)
    hv = parallel.to_host(op.matvec(direction(params)))
    linearized = parallel.to_host(op.linearized().matvec(direction(params)))
    power = power_iteration(op.matvec, op.params, jax.random.PRNGKey(0), max_iter=30, tol=0)
    top = lanczos(op.matvec, op.params, jax.random.PRNGKey(1), num_steps=20, k=2, which="both")
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    return {"hv": flat(hv), "hv_linearized": flat(linearized), "loss": np.array(op.loss()), "grad": flat(parallel.to_host(op.grad())),
            "power": power.values, "lanczos": top.values, "devices": np.array(op.mesh.devices.size), "examples": np.array(op.num_examples)}


def main(coordinator: str, process_id: int, out: str) -> None:
    from vitjax import parallel

    parallel.initialize_distributed(coordinator, 2, process_id)
    values = results()
    if process_id == 0:
        np.savez(out, **values)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
