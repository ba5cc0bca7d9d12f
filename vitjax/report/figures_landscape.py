"""Figures of `vitjax landscape`: loss along one direction (models overlaid), and on a plane of two
directions as a contour map and a surface per model, with cross-sections of all models on one axis.

Each function takes {model name: landscape metrics} (from `vitjax.curvature.landscape`) and writes
the exact objective under the plot. Losses are drawn on a log scale: a ResNet's landscape rises by
orders of magnitude within the span where a ViT's changes by a few percent.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from vitjax.report.html import Figure  # noqa: E402

SECTION = "loss landscape"


def _finish(fig, objective: str, path: Path) -> None:
    """Lay out the axes above the objective (wrapped to the figure's width), save and close."""
    width, height = fig.get_size_inches()
    text = "\n".join(textwrap.wrap("Objective: " + objective, int(width * 15)))
    bottom = (0.1 + 0.14 * (text.count("\n") + 1)) / height
    with warnings.catch_warnings():  # 3-D axes are not fully supported by tight_layout; close enough
        warnings.simplefilter("ignore")
        fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _file(name: str, what: str) -> str:
    return f"{name.replace('/', '_').replace(':', '_')}_{what}.png"


def plot_landscape_1d(results: dict[str, dict], out_dir: Path, objective: str) -> list[Figure]:
    """Loss (log scale) and accuracy along one normalised direction, models overlaid."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, metrics in results.items():
        loss_ax.plot(metrics["alpha"], metrics["loss"], marker=".", label=name)
        if "accuracy" in metrics:
            acc_ax.plot(metrics["alpha"], 100 * np.asarray(metrics["accuracy"]), marker=".", label=name)
    loss_ax.set(yscale="log", xlabel="α (step along the direction)", ylabel="loss", title="Loss along one direction")
    acc_ax.set(xlabel="α", ylabel="accuracy (%)", title="Accuracy (argmax of the target)")
    for ax in (loss_ax, acc_ax):
        ax.axvline(0.0, color="gray", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    path = Path(out_dir) / "landscape_1d.png"
    _finish(fig, objective, path)
    caption = ("Loss and accuracy at θ + α d along one random Gaussian direction d normalised slice by slice to the "
               f"weights' norms, averaged over the fixed batches. Objective: {objective}.")
    return [Figure(path.name, caption, SECTION)]


def plot_landscape_2d(results: dict[str, dict], out_dir: Path, objective: str) -> list[Figure]:
    """Per model a filled contour map and a 3-D surface of log10(loss); then the two axis
    cross-sections of every model on shared axes."""
    out_dir = Path(out_dir)
    figures = []
    for name, metrics in results.items():
        x, y, loss = (np.asarray(metrics[k]) for k in ("x", "y", "loss"))
        fig, ax = plt.subplots(figsize=(5.6, 5.2))
        levels = np.geomspace(loss.min(), loss.max(), 25) if loss.max() > loss.min() else 25
        filled = ax.contourf(x, y, loss, levels=levels, norm=colors.LogNorm(), cmap="viridis")
        ax.contour(x, y, loss, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(filled, ax=ax, label="loss (log scale)", format="%.3g")
        ax.plot([0], [0], "r+", ms=10)
        ax.set(xlabel="direction 1", ylabel="direction 2", title=f"{name}: loss landscape", aspect="equal")
        path = out_dir / _file(name, "landscape_contour")
        _finish(fig, objective, path)
        figures.append(Figure(path.name, f"{name}: contour map of the loss on the plane θ + x d1 + y d2 "
                              f"(red cross: the trained weights), levels spaced on a log scale, minimum "
                              f"{loss.min():.4g}, maximum {loss.max():.4g}. Objective: {objective}.", SECTION))

        fig = plt.figure(figsize=(6.0, 5.2))
        ax = fig.add_subplot(projection="3d")
        grid_x, grid_y = np.meshgrid(x, y)
        ax.plot_surface(grid_x, grid_y, np.log10(loss), cmap="viridis", linewidth=0, antialiased=True)
        ax.set(xlabel="direction 1", ylabel="direction 2", zlabel="log10 loss", title=f"{name}: loss surface",
               xticks=np.linspace(x[0], x[-1], 5), yticks=np.linspace(y[0], y[-1], 5))
        path = out_dir / _file(name, "landscape_surface")
        _finish(fig, objective, path)
        figures.append(Figure(path.name, f"{name}: the same landscape as a surface, height log10(loss). "
                              f"Objective: {objective}.", SECTION))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for name, metrics in results.items():
        x, y, loss = (np.asarray(metrics[k]) for k in ("x", "y", "loss"))
        axes[0].plot(x, loss[len(y) // 2, :], marker=".", label=name)
        axes[1].plot(y, loss[:, len(x) // 2], marker=".", label=name)
    for ax, label in zip(axes, ("direction 1 (direction 2 = 0)", "direction 2 (direction 1 = 0)")):
        ax.set(yscale="log", xlabel=label, ylabel="loss")
        ax.axvline(0.0, color="gray", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    axes[0].set_title("Cross-sections through the trained weights")
    path = out_dir / "landscape_sections.png"
    _finish(fig, objective, path)
    figures.append(Figure(path.name, "Cross-sections of each model's 2-D landscape along its two directions "
                          f"(models overlaid; each model has its own random directions). Objective: {objective}.",
                          SECTION))
    return figures
