"""Figures of `vitjax curvature`: Park & Kim's pooled max-eigenvalue spectra (models overlaid), the
SLQ spectral density and the Hessian trace with its standard error.

Each function takes {model name: metrics} so the models share one axis, as Park & Kim draw ViT
against ResNet, and writes the exact objective under the plot.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitjax.report.html import Figure  # noqa: E402

SECTION = "curvature"


def _finish(fig, ax, objective: str, path: Path) -> None:
    """Objective under the axes (wrapped), then save and close."""
    text = "\n".join(textwrap.wrap("Objective: " + objective, int(16 * fig.get_figwidth())))
    fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left")
    fig.subplots_adjust(bottom=0.14 + 0.035 * text.count("\n"))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_max_eigenvalue_spectra(results: dict[str, dict], out_dir: Path, objective: str) -> list[Figure]:
    """Pooled top-k eigenvalues per model: histogram (steps) and Gaussian KDE (line), a line at 0."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (name, metrics), color in zip(results.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        values = np.asarray(metrics["eigenvalues"]).ravel()
        ax.hist(values, bins=np.asarray(metrics["histogram_edges"]), density=True, histtype="step", color=color,
                alpha=0.6)
        ax.plot(metrics["grid"], metrics["density"], color=color, lw=2,
                label=f"{name}: mean {metrics['mean']:.3g}, {100 * metrics['fraction_negative']:.0f}% < 0")
    ax.axvline(0.0, color="gray", lw=0.8, ls="--")
    any_metrics = next(iter(results.values()))
    ax.set(xlabel="Hessian eigenvalue (top-k |λ| per mini-batch)", ylabel="density",
           title=f"Max-eigenvalue spectra: top-{any_metrics['k']} of {any_metrics['num_batches']} mini-batches")
    ax.legend(fontsize=8)
    path = Path(out_dir) / "max_eigenvalue_spectra.png"
    _finish(fig, ax, objective, path)
    caption = (f"Park & Kim's Hessian max-eigenvalue spectra: the top-{any_metrics['k']} eigenvalues (largest |λ|, "
               f"power iteration, tol {any_metrics['tol']:g}, at most {any_metrics['max_iter']} iterations) of each "
               f"of {any_metrics['num_batches']} augmented training mini-batches, pooled; lines are Gaussian KDEs, "
               f"steps histograms. Negative values are genuine negative curvature. Objective: {objective}.")
    return [Figure(path.name, caption, SECTION)]


def plot_slq_density(results: dict[str, dict], out_dir: Path, objective: str) -> list[Figure]:
    """The SLQ spectral density per model on a log axis, with a band of +-1 standard error over probes."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    floor = np.inf
    for name, metrics in results.items():
        grid, density, sem = (np.asarray(metrics[key]) for key in ("grid", "density", "density_sem"))
        floor = min(floor, density.max() * 1e-8)
        line, = ax.plot(grid, density, lw=1.5, label=f"{name} (σ = {metrics['sigma']:.3g}, "
                                                    f"{len(metrics['steps'])} probes)")
        ax.fill_between(grid, np.maximum(density - sem, floor), density + sem, color=line.get_color(), alpha=0.25)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set(xlabel="Hessian eigenvalue", ylabel="spectral density",
           title="Spectral density (stochastic Lanczos quadrature)")
    ax.legend(fontsize=8)
    path = Path(out_dir) / "slq_density.png"
    _finish(fig, ax, objective, path)
    caption = ("Spectral density of the Hessian over the fixed mini-batches (their size-weighted mean loss) by "
               "stochastic Lanczos quadrature: unit Rademacher probes, full reorthogonalisation, Gaussian kernel of "
               "width σ (a standard deviation, the node spacing by default); the band is ±1 standard error over "
               f"probes. Objective: {objective}.")
    return [Figure(path.name, caption, SECTION)]


def plot_trace(results: dict[str, dict], out_dir: Path, objective: str) -> list[Figure]:
    """Hutchinson's trace estimate per model, divided by the dimension (mean eigenvalue), +-1.96 SEM."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    names = list(results)
    means = [results[n]["mean"] / results[n]["dim"] for n in names]
    errors = [1.96 * results[n]["sem"] / results[n]["dim"] for n in names]
    ax.bar(range(len(names)), means, yerr=errors, capsize=6,
           color=plt.rcParams["axes.prop_cycle"].by_key()["color"][:len(names)])
    ax.set_xticks(range(len(names)), [textwrap.fill(name, 24) for name in names], fontsize=8)
    for i, name in enumerate(names):
        top = means[i] + np.sign(means[i] or 1.0) * errors[i]
        ax.annotate(f"tr = {results[name]['mean']:.4g} ± {results[name]['sem']:.2g}", (i, top), ha="center",
                    va="bottom" if top >= 0 else "top", fontsize=8, xytext=(0, 4 if top >= 0 else -4),
                    textcoords="offset points")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.margins(y=0.15)
    ax.set(ylabel="trace(H) / n  (mean eigenvalue)", title="Hessian trace (Hutchinson, 95% interval)")
    path = Path(out_dir) / "trace.png"
    _finish(fig, ax, objective, path)
    caption = ("Hessian trace by Hutchinson's estimator (Rademacher probes, stopped when the standard error fell "
               "below the target or the matvec budget ran out), divided by the number of parameters n; error bars "
               f"are ±1.96 standard errors. Objective: {objective}.")
    return [Figure(path.name, caption, SECTION)]
