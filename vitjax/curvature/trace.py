"""Trace estimators with honest error bars: Hutchinson and Hutch++, stopping on the standard error.

    est = hutchinson(op.matvec, op.params, key, rtol=0.01, max_matvecs=200)
    print(f"trace = {est.mean:.4g} +- {est.sem:.2g} ({est.num_matvecs} HVPs)")

Hutchinson: with Rademacher probes z, z'Hz is an unbiased sample of trace(H) with variance
2(|H|_F^2 - sum_i H_ii^2); the mean of m samples has standard error std/sqrt(m).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021): a sketch Q = orth(H S) of `rank` random vectors
captures the top of the spectrum exactly, trace(Q'HQ), and Hutchinson estimates only the rest,
trace((I-QQ')H(I-QQ')), whose Frobenius norm (hence the variance) is far smaller when a few
eigenvalues dominate. It stays unbiased for any symmetric H.

Both stop when the standard error is at most max(atol, rtol*|mean|) (after `min_probes` samples,
so the sample standard deviation means something) or when `max_matvecs` are spent; `converged`
says which. PyHessian instead stops when the running mean changes by less than 1e-3, which says
nothing about the error (shared/reference/curvature.md §1).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from tqdm import tqdm

from vitjax.curvature import vectors

# Jitted vector kernels: a probe is a handful of small ops, and eager dispatch of each would cost more
# than a tiny operator's matvec.
_rademacher = jax.jit(vectors.rademacher_like)
_dot = jax.jit(vectors.dot)
_norm = jax.jit(vectors.norm)
_axpy = jax.jit(vectors.axpy)


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    mean: float  # the trace estimate
    sem: float  # its standard error (Hutch++: of the stochastic part; the sketch part is exact)
    num_matvecs: int  # operator applications spent, sketch included
    samples: np.ndarray  # the Hutchinson samples (Hutch++: of the deflated remainder)
    converged: bool  # True if the standard-error target was met before max_matvecs
    method: str  # 'hutchinson' or 'hutch++'
    sketch_trace: float = 0.0  # Hutch++: trace(Q'HQ) over the sketch

    def as_metrics(self) -> dict:
        return dataclasses.asdict(self)


def hutchinson(matvec, like, key, *, rtol: float = 1e-2, atol: float = 0.0, min_probes: int = 10,
               max_matvecs: int = 100, progress: bool = False) -> TraceEstimate:
    """Hutchinson's estimate of trace(H) with Rademacher probes (one matvec each)."""
    samples, converged = _sample(matvec, like, key, rtol=rtol, atol=atol, offset=0.0,
                                 min_probes=min_probes, budget=max_matvecs, progress=progress)
    return TraceEstimate(mean=float(samples.mean()), sem=standard_error(samples), num_matvecs=len(samples),
                         samples=samples, converged=converged, method="hutchinson")


def hutchpp(matvec, like, key, *, rank: int | None = None, rtol: float = 1e-2, atol: float = 0.0,
            min_probes: int = 10, max_matvecs: int = 100, progress: bool = False) -> TraceEstimate:
    """Hutch++: an exact trace over a `rank`-vector sketch of H's range (2*rank matvecs; default
    max_matvecs // 3, Meyer et al.'s split) plus Hutchinson on the deflated remainder."""
    rank = max_matvecs // 3 if rank is None else rank
    if rank < 1 or 2 * rank + min_probes > max_matvecs:
        raise ValueError(f"hutchpp: rank {rank} needs 2*rank + min_probes <= max_matvecs ({max_matvecs})")
    sketch_key, probe_key = jax.random.split(key)
    sketch = [matvec(_rademacher(k, like)) for k in jax.random.split(sketch_key, rank)]
    basis = _orthonormal(sketch)
    sketch_trace = sum(float(_dot(q, matvec(q))) for q in basis)

    def deflated(z):  # applied to z; the sample z'(I-QQ')H(I-QQ')z is then w'Hw with w = (I-QQ')z
        return _project_out(z, basis)

    budget = max_matvecs - rank - len(basis)
    samples, converged = _sample(matvec, like, probe_key, rtol=rtol, atol=atol, offset=sketch_trace,
                                 min_probes=min_probes, budget=budget, progress=progress, transform=deflated)
    return TraceEstimate(mean=sketch_trace + float(samples.mean()), sem=standard_error(samples),
                         num_matvecs=rank + len(basis) + len(samples), samples=samples, converged=converged,
                         method="hutch++", sketch_trace=sketch_trace)


def _sample(matvec, like, key, *, rtol, atol, offset, min_probes, budget, progress, transform=None):
    """Rademacher samples w'Hw (w = transform(z)) until the stopping rule or the budget; returns
    (samples, converged). `offset` is added to the mean the relative tolerance refers to."""
    if min_probes < 2:
        raise ValueError("the stopping rule needs min_probes >= 2 (a standard error from one sample is undefined)")
    samples = []
    converged = False
    with tqdm(total=budget, desc="trace", disable=not progress) as bar:
        for probe_key in jax.random.split(key, budget):
            w = _rademacher(probe_key, like)
            w = transform(w) if transform else w
            samples.append(float(_dot(w, matvec(w))))
            bar.update()
            if len(samples) >= min_probes:
                values = np.asarray(samples)
                if not np.isfinite(values).all():
                    raise FloatingPointError("trace: a probe gave a non-finite v'Hv (NaN curvature?)")
                if standard_error(values) <= max(atol, rtol * abs(offset + values.mean())):
                    converged = True
                    break
    return np.asarray(samples, np.float64), converged


def _orthonormal(vecs, drop: float = 1e-10) -> list:
    """An orthonormal basis of span(vecs): Gram-Schmidt applied twice (one pass loses orthogonality
    in floating point), dropping directions that are numerically in the span already."""
    basis = []
    scale = max((float(_norm(v)) for v in vecs), default=0.0)
    for v in vecs:
        for _ in range(2):
            v = _project_out(v, basis)
        length = float(_norm(v))
        if length > drop * scale:
            basis.append(vectors.scale(1.0 / length, v))
    return basis


def _project_out(v, basis):
    for q in basis:
        v = _axpy(-_dot(q, v), q, v)
    return v


def standard_error(samples: np.ndarray):
    """Standard error of the mean over the first axis (a float for 1-D samples; inf from one sample)."""
    samples = np.asarray(samples, np.float64)
    if len(samples) < 2:
        return np.full(samples.shape[1:], np.inf) if samples.ndim > 1 else float("inf")
    sem = np.std(samples, axis=0, ddof=1) / np.sqrt(len(samples))
    return float(sem) if sem.ndim == 0 else sem
