"""Park & Kim's Hessian max-eigenvalue spectra ("How Do Vision Transformers Work?", ICLR'22, Fig. 1c
and 4): the top-k Hessian eigenvalues of each of many training mini-batches, pooled into one density.

Their code was never released; issue #12 of how-do-vits-work describes it: PyHessian (patched to
take the training transform and a weight decay) on each mini-batch of augmented training data,
top-5 eigenvalues by power iteration, all pooled into a histogram/KDE. The protocol here, stated:

- one Hessian per mini-batch (`fixed_batches`: augmented training images, deterministic in seed and
  batch index), so mini-batch noise is part of the spectrum, as in the paper;
- objective NLL (soft targets: mixup/cutmix/label smoothing as the batch carries them) + (wd/2)|w|^2
  over the differentiated parameters, whose Hessian is H_NLL + wd*I; BatchNorm in eval mode (running
  statistics, never differentiated: PyHessian differentiates `model.parameters()`, not buffers);
- PyHessian's `eigenvalues()` defaults: power iteration, max_iter 100, relative tol 1e-3, deflation
  against the earlier eigenvectors, so the k values are the k largest |lambda|: negative values
  appear, which is the paper's ViT finding. Residuals |Hv - lambda v| are kept per eigenpair.

    result = max_eigenvalue_spectra(model, params, batches, k=5)
    result['eigenvalues']        # (num_batches, k), |lambda| order within a batch
    result['grid'], result['density']   # pooled KDE of all num_batches * k values

The same during training: `SpectraCallback` is called by `vitjax.train.train(..., callbacks=[cb])`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from tqdm import tqdm

from vitjax.curvature import selection
from vitjax.curvature.trace import standard_error

GRID_POINTS = 512


def trainable_mask(params):
    """True for the parameters the Hessian is taken over: all but BatchNorm running statistics."""
    return jax.tree.map(lambda statistic: not statistic, selection.tree_where(selection.is_statistic, params))


def max_eigenvalue_spectra(model, params, batches, *, k: int = 5, max_iter: int = 100, tol: float = 1e-3,
                           weight_decay: float = 0.0, key=None, mesh=None, progress: bool = True,
                           linearize: bool = False) -> dict:
    """Top-k |lambda| of the Hessian of each batch's objective, and their pooled density.

    `batches`: a list of batch dicts (e.g. `fixed_batches(...)`); one power iteration per batch.
    Returns float64 arrays: eigenvalues, residuals (num_batches, k); iterations, converged,
    loss (num_batches,); pooled grid, density (Gaussian KDE, its bandwidth as kde_sigma), histogram
    counts and edges; and the objective as text. `linearize`: each batch's operator keeps its
    linearization (`HessianOperator.linearized`), as PyHessian keeps its graph: faster products for
    about 1.6x a gradient's peak memory held per batch (ViT-S).
    """
    from vitjax.curvature.eigen import power_iteration
    from vitjax.curvature.objective import classification_objective
    from vitjax.curvature.operator import hessian_operator

    if not batches:
        raise ValueError("max_eigenvalue_spectra needs at least one batch")
    key = jax.random.key(0) if key is None else key
    # The penalty (wd/2)|w|^2 over the differentiated parameters: its Hessian is exactly wd*I.
    loss_fn = classification_objective(model, weight_decay=weight_decay)
    wrt = trainable_mask(params)
    values, residuals, iterations, converged, losses = [], [], [], [], []
    for index, batch in enumerate(tqdm(batches, desc="max-eigenvalue spectra", disable=not progress)):
        # The operator's probes (finite, deterministic products) run once: every batch shares the code.
        operator = hessian_operator(loss_fn, params, [batch], wrt=wrt, mesh=mesh, check=index == 0,
                                    linearize=linearize)
        result = power_iteration(operator.matvec, operator.params, jax.random.fold_in(key, index), k=k,
                                 max_iter=max_iter, tol=tol)
        values.append(np.asarray(result.values, np.float64))
        residuals.append(np.asarray(result.residuals, np.float64))
        iterations.append(np.asarray(result.iterations))
        converged.append(np.asarray(result.converged))
        losses.append(float(operator.loss()))
    eigenvalues = np.stack(values)
    if not np.isfinite(eigenvalues).all():
        raise FloatingPointError("max_eigenvalue_spectra: non-finite eigenvalues (NaN loss or curvature)")
    return {"eigenvalues": eigenvalues, "residuals": np.stack(residuals), "iterations": np.stack(iterations),
            "converged": np.stack(converged), "loss": np.asarray(losses), **pooled_density(eigenvalues.ravel()),
            "objective": loss_fn.description, "k": k, "max_iter": max_iter, "tol": tol,
            "weight_decay": weight_decay, "num_batches": len(batches), "order": "largest |lambda| per batch"}


def pooled_density(values: np.ndarray) -> dict:
    """A Gaussian KDE (normal-reference bandwidth 1.06 std n^-1/5, Scott's rule) and a histogram of
    the pooled eigenvalues; the grid reaches 5 bandwidths past the extremes, so the KDE integrates to 1."""
    values = np.asarray(values, np.float64)
    spread = float(values.max() - values.min())
    scale = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    sigma = 1.06 * scale * len(values) ** -0.2 if scale > 0 else 1e-2 * max(1.0, float(np.abs(values).max()))
    grid = np.linspace(values.min() - 5 * sigma, values.max() + 5 * sigma, GRID_POINTS)
    density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / sigma) ** 2).sum(1) / (
        len(values) * sigma * np.sqrt(2 * np.pi))
    counts, edges = np.histogram(values, bins=max(5, min(50, len(values) // 2)),
                                 range=(values.min(), values.max() + (0 if spread else 1)))
    return {"grid": grid, "density": density, "kde_sigma": sigma, "histogram_counts": counts,
            "histogram_edges": edges, "mean": float(values.mean()), "mean_sem": standard_error(values),
            "fraction_negative": float(np.mean(values < 0))}


@dataclasses.dataclass
class SpectraCallback:
    """A trainer callback: Park & Kim's spectra of the current params every `every` steps.

        callback = SpectraCallback(model, fixed_batches(...), every=500, k=5)
        train(config, workdir, callbacks=[callback])
        callback.history   # [{'step': 500, 'eigenvalues': ..., ...}, ...]

    Each record is also appended to `path` (JSON lines) when given. The callback reads `state.params`
    during the call only: the trainer donates the state to the next step.
    """

    model: object
    batches: list
    every: int
    k: int = 5
    max_iter: int = 100
    tol: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    mesh: object = None  # default: every device
    path: str | None = None
    history: list = dataclasses.field(default_factory=list)

    def __call__(self, step: int, state) -> None:
        if self.every <= 0 or step % self.every:
            return
        result = max_eigenvalue_spectra(self.model, state.params, self.batches, k=self.k, max_iter=self.max_iter,
                                        tol=self.tol, weight_decay=self.weight_decay,
                                        key=jax.random.key(self.seed), mesh=self.mesh, progress=False)
        record = {"step": int(step), **result}
        self.history.append(record)
        if self.path and jax.process_index() == 0:
            from vitjax.report.html import to_json

            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(to_json({"step": record["step"], "eigenvalues": result["eigenvalues"],
                                            "residuals": result["residuals"], "loss": result["loss"]})) + "\n")
