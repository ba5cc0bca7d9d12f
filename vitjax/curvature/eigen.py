"""Eigen-solvers on a symmetric operator given as `matvec(v) -> Hv` over pytree vectors.

- `power_iteration`: PyHessian's `eigenvalues()` semantics (Gaussian start, stop when the Rayleigh
  quotient changes by less than `tol` relatively, deflation by orthogonalising against the earlier
  eigenvectors at every step). It finds the largest |lambda|, so values can be negative
  (`order='magnitude'`).
- `lanczos`: Lanczos with full reorthogonalisation (classical Gram-Schmidt, two passes, against every
  earlier basis vector, so no ghost copies of converged eigenvalues), breakdown detection (beta ~ 0:
  an invariant subspace was found and the run stops there), the tridiagonal matrix solved in float64
  on the host, and each returned Ritz pair checked with one more product: residual |Hy - theta y|.
- `lanczos_tridiagonal`: the same recurrence returning only T's diagonals (for quadrature, SLQ).

Vectors stay pytrees shaped (and sharded) like `like`; the Lanczos basis is one stacked pytree with a
leading axis of `num_steps` (memory: num_steps copies of the parameters). The iteration is a Python
loop of jitted steps: each step needs the host anyway (convergence and breakdown tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from vitjax.curvature import vectors
from vitjax.curvature.operator import CurvatureError

WHICH = ("LA", "SA", "both", "LM")


@dataclasses.dataclass(frozen=True, eq=False)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    values: float64 (k,), in the order the solver promises (`order`): 'magnitude' is decreasing
      |lambda|; 'algebraic' is decreasing lambda ('LA', 'both') or increasing lambda ('SA').
    vectors: list of k unit pytrees. residuals: |H y - lambda y| for each returned pair.
    iterations: (k,) products spent on each pair (power iteration) or Lanczos steps run.
    converged: (k,) bool. breakdown: Lanczos stopped early on an invariant subspace (exact pairs).
    """

    values: np.ndarray
    vectors: list
    residuals: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    order: str
    breakdown: bool = False


# --- jitted vector kernels --------------------------------------------------------------------------


def _flat_dot(basis, w) -> jax.Array:
    """<q_i, w> for every row i of the stacked basis, (m,) accumulated in float32 or wider."""
    def leaf(q, x):
        acc = jnp.result_type(jnp.float32, x.dtype)
        return jnp.tensordot(q.reshape(q.shape[0], -1).astype(acc), x.reshape(-1).astype(acc), axes=1)

    return sum(jax.tree.leaves(jax.tree.map(leaf, basis, w)))


def _combine(coeffs, basis):
    """sum_i coeffs_i q_i as a single vector."""
    return jax.tree.map(lambda q: jnp.tensordot(coeffs.astype(q.dtype), q, axes=1), basis)


@jax.jit
def _project_out(basis, w):
    """w minus its components along the (orthonormal or zero) rows of `basis`: classical Gram-Schmidt
    applied twice, which keeps the basis orthogonal to working precision (Kahan's "twice is enough")."""
    for _ in range(2):
        w = vectors.sub(w, _combine(_flat_dot(basis, w), basis))
    return w


def _with_row(basis, i, v):
    """The basis with row i replaced by v (an index past the last row changes nothing)."""
    return jax.tree.map(lambda q, x: q.at[i].set(x.astype(q.dtype), mode="drop"), basis, v)


_set_row = jax.jit(_with_row, donate_argnums=0)


@partial(jax.jit, static_argnums=1)
def _zero_basis(like, rows: int):
    return jax.tree.map(lambda x: jnp.zeros((rows,) + x.shape, x.dtype), like)


_normal = jax.jit(vectors.normal_like)


@jax.jit
def _deflate(found, v):
    """v made orthogonal to the rows of `found` and normalised."""
    return vectors.normalize(_project_out(found, v))[0]


@jax.jit
def _rayleigh(hv, v):
    """(v'Hv, |Hv - (v'Hv) v|) for a unit v."""
    rho = vectors.dot(hv, v)
    return rho, vectors.norm(vectors.axpy(-rho, v, hv))


@partial(jax.jit, static_argnums=1)
def _lanczos_start(v, rows: int):
    """The first Lanczos vector (v normalised), a zero previous vector, and the basis holding q in row 0."""
    q = vectors.normalize(v)[0]
    basis = jax.tree.map(lambda x: jnp.zeros((rows,) + x.shape, x.dtype).at[0].set(x), q)
    return q, vectors.zeros_like(q), basis


@partial(jax.jit, donate_argnums=0)
def _lanczos_step(basis, j, hq, q, q_prev, beta_prev):
    """One three-term step, full reorthogonalisation, and the next vector stored in row j + 1
    (dropped past the last row). Returns (basis, next q, alpha, beta, |Hq|)."""
    alpha = vectors.dot(hq, q)
    w = vectors.axpy(-beta_prev, q_prev, vectors.axpy(-alpha, q, hq))
    w = _project_out(basis, w)
    beta = vectors.norm(w)
    q_next = vectors.scale(1.0 / beta, w)
    return _with_row(basis, j + 1, q_next), q_next, alpha, beta, vectors.norm(hq)


class _Placement:
    """Puts vectors (and stacked bases) where `like` lives, so every jitted step sees the same input
    shardings whichever function produced its inputs (a new sharding would mean a new compilation)."""

    def __init__(self, like):
        self.vector = jax.tree.map(lambda x: getattr(x, "sharding", None), like)
        self.stacked = jax.tree.map(self._stacked, self.vector)

    @staticmethod
    def _stacked(sharding):
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, P(None, *sharding.spec))
        return sharding

    def __call__(self, v, stacked: bool = False):
        where = self.stacked if stacked else self.vector
        if any(s is None for s in jax.tree.leaves(where, is_leaf=lambda s: s is None)):
            return v
        return jax.device_put(v, where)


def _finite(value: float, what: str, step: int) -> float:
    if not np.isfinite(value):
        raise CurvatureError(f"NaN curvature: {what} is {value} at step {step} "
                             "(the Hessian-vector product is not finite)")
    return value


# --- power iteration ----------------------------------------------------------------------------


def power_iteration(matvec: Callable, like: Any, key: jax.Array, *, k: int = 1, max_iter: int = 100,
                    tol: float = 1e-3, progress: bool = False) -> EigenResult:
    """The k eigenvalues of largest |lambda| by power iteration with deflation (PyHessian's semantics).

    Each eigenpair starts from a Gaussian vector and stops when |rho_i - rho_{i-1}| / (|rho_{i-1}| + 1e-6)
    < tol for the Rayleigh quotients rho (tol=0 runs max_iter products). The returned vector y is the
    last one multiplied, so its value is y'Hy and its residual |Hy - (y'Hy) y| costs no extra product.
    """
    if k < 1 or max_iter < 1:
        raise ValueError(f"k and max_iter must be positive, got k={k}, max_iter={max_iter}")
    place = _Placement(like)
    found = place(_zero_basis(like, k), stacked=True)
    values, residuals, iterations, converged, eigvecs = [], [], [], [], []
    bar = tqdm(total=k * max_iter, desc="power iteration", disable=not progress)
    for j, start_key in enumerate(jax.random.split(key, k)):
        v, rho, done, i = _normal(start_key, like), None, False, 0
        for i in range(1, max_iter + 1):
            v = _deflate(found, place(v))
            hv = place(matvec(v))
            new, residual = _rayleigh(hv, v)
            new = _finite(float(new), "the Rayleigh quotient", i)
            bar.update()
            done = rho is not None and abs(new - rho) / (abs(rho) + 1e-6) < tol
            rho = new
            if done or i == max_iter:
                break
            v = hv
        bar.update(max_iter - i)
        values.append(rho)
        residuals.append(float(residual))
        iterations.append(i)
        converged.append(done)
        eigvecs.append(v)
        found = place(_set_row(found, j, v), stacked=True)
    bar.close()
    return EigenResult(np.array(values, np.float64), eigvecs, np.array(residuals), np.array(iterations),
                       np.array(converged, bool), "magnitude")


# --- Lanczos ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    alphas: np.ndarray  # (m,)
    betas: np.ndarray  # (m,): betas[:-1] are T's off-diagonal, betas[-1] the residual coefficient
    basis: Any  # stacked (num_steps, ...) with the first m rows filled
    breakdown: bool


def _run_lanczos(matvec, like, key, num_steps: int, start=None, progress: bool = False) -> _Run:
    num_steps = min(num_steps, vectors.size(like))
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    place = _Placement(like)
    q, q_prev, basis = _lanczos_start(place(_normal(key, like) if start is None else start), num_steps)
    q, q_prev, basis = place(q), place(q_prev), place(basis, stacked=True)
    beta = 0.0
    tol = 100 * float(jnp.finfo(jax.tree.leaves(like)[0].dtype).eps)
    alphas, betas, scale, breakdown = [], [], 0.0, False
    for j in tqdm(range(num_steps), desc="Lanczos", disable=not progress):
        basis, q_next, alpha, beta, hq_norm = _lanczos_step(basis, j, place(matvec(q)), q, q_prev, beta)
        beta = float(beta)  # a Python float, like the first step's 0.0: one compilation
        basis, q_next = place(basis, stacked=True), place(q_next)
        alphas.append(_finite(float(alpha), "alpha", j))
        scale = max(scale, _finite(float(hq_norm), "|Hq|", j))
        betas.append(_finite(beta, "beta", j))
        if betas[-1] <= tol * scale:  # the Krylov space is invariant: T's eigenpairs are exact
            breakdown = True
            break
        q_prev, q = q, q_next
    return _Run(np.array(alphas, np.float64), np.array(betas, np.float64), basis, breakdown)


def lanczos_tridiagonal(matvec: Callable, like: Any, key: jax.Array, num_steps: int, *, start=None,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(alphas (m,), betas (m-1,), m): the Lanczos tridiagonal T in float64 after m <= num_steps
    steps (fewer on breakdown), from a Gaussian start drawn with `key` or from `start` (normalised
    here; e.g. a Rademacher probe for SLQ). T's eigenvalues are the quadrature nodes; the squared
    first components of its eigenvectors the weights."""
    run = _run_lanczos(matvec, like, key, num_steps, start, progress)
    return run.alphas, run.betas[:-1], len(run.alphas)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices into the ascending Ritz values `theta`, in the promised output order."""
    n = len(theta)
    if which == "LA":
        return np.arange(n)[::-1][:k]
    if which == "SA":
        return np.arange(n)[:k]
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")[:k]
    return np.array(sorted(set(range(n)[-k:]) | set(range(n)[:k]), reverse=True))  # both


def lanczos(matvec: Callable, like: Any, key: jax.Array, *, num_steps: int, k: int = 1, which: str = "LA",
            tol: float = 1e-3, start=None, progress: bool = False) -> EigenResult:
    """k extreme eigenpairs by Lanczos with full reorthogonalisation.

    which: 'LA' largest algebraic (decreasing), 'SA' smallest (increasing), 'both' the k largest and
    the k smallest (decreasing), 'LM' largest |lambda| (decreasing |lambda|). Residuals are measured
    with one extra product per returned vector; a pair has converged when its residual is at most
    tol * max|theta| (the operator's norm estimate). Fewer than k pairs come back when the run broke
    down on a smaller invariant subspace.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    run = _run_lanczos(matvec, like, key, num_steps, start, progress)
    theta, s = scipy.linalg.eigh_tridiagonal(run.alphas, run.betas[:-1])
    chosen = _select(theta, k, which)
    ritz = _combine_rows(jnp.asarray(s[:, chosen].T), run.basis, len(run.alphas))
    eigvecs, residuals = [], []
    for i, index in enumerate(chosen):
        y = jax.tree.map(lambda r: r[i], ritz)
        residuals.append(float(_rayleigh(matvec(y), y)[1]))
        eigvecs.append(y)
    residuals = np.array(residuals)
    norm = max(np.abs(theta).max(), np.finfo(np.float64).tiny)
    return EigenResult(theta[chosen], eigvecs, residuals, np.full(len(chosen), len(run.alphas)),
                       residuals <= tol * norm, "magnitude" if which == "LM" else "algebraic", run.breakdown)


@partial(jax.jit, static_argnums=2)
def _combine_rows(coeffs, basis, m: int):
    """Ritz vectors: (k, m) coefficients times the first m basis rows, as a stacked (k, ...) pytree."""
    return jax.tree.map(lambda q: jnp.tensordot(coeffs.astype(q.dtype), q[:m], axes=1), basis)
