"""Figures of the feature analyses (vitjax/analysis/similarity.py and spectral.py), drawn as the papers
draw them: CKA heatmaps (Teaching Matters), relative log amplitude curves coloured by depth and the
high-frequency value or feature-map variance against normalised depth with the attention sub-blocks
shaded grey (Park & Kim), singular value spectra and token similarity per block (cl-vs-mim).

`plot_<analysis name>(metrics, out_dir, prefix) -> list[Figure]`; PNGs are named `<prefix>_<name>*.png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from vitjax.report.html import Figure, save_figure  # noqa: E402

SECTION = "features"


def _save(fig, out_dir: Path, name: str, caption: str) -> Figure:
    return save_figure(fig, out_dir, name, caption, SECTION)


def _label_ticks(ax, axis: str, names) -> None:
    """Layer names as tick labels, thinned to at most ~24 so they stay readable."""
    names = [str(n) for n in names]
    step = max(1, int(np.ceil(len(names) / 24)))
    ticks = np.arange(0, len(names), step)
    if axis == "x":
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)
    else:
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7)


def _heatmap(matrix, rows, cols, row_label: str, col_label: str, title: str):
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    image = ax.imshow(np.asarray(matrix, float), origin="lower", cmap="magma", vmin=0, vmax=1)
    _label_ticks(ax, "x", cols)
    _label_ticks(ax, "y", rows)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return fig


def plot_cka(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig = _heatmap(metrics["cka"], metrics["layers"], metrics["layers"], "layer", "layer",
                   f"{prefix}: CKA across depth ({int(metrics['minibatches'])} minibatches)")
    return [_save(fig, out_dir, f"{prefix}_cka.png",
                  f"{prefix}: CKA between every pair of layers (minibatch HSIC averaged before the ratio).")]


def plot_cka_between(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    """The axes are labelled with the two models' names (metrics['models'], set by the runner)."""
    name_a, name_b = (str(name) for name in metrics.get("models", ("model a", "model b")))
    fig = _heatmap(metrics["cka"], metrics["layers_a"], metrics["layers_b"], f"{name_a} layer",
                   f"{name_b} layer", f"CKA between models ({int(metrics['minibatches'])} minibatches)")
    return [_save(fig, out_dir, f"{prefix}_cka_between.png", f"{name_a} vs {name_b}: CKA between their layers.")]


def _block_axis(ax) -> None:
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _normalised_depth(count: int) -> np.ndarray:
    return np.arange(count) / max(count - 1, 1)


def _shade_attention(ax, is_msa) -> None:
    """Park & Kim's grey span over each attention sub-block, from the state before it to after it."""
    is_msa = np.asarray(is_msa, bool)
    step = 1.0 / max(len(is_msa) - 1, 1)
    for position in np.flatnonzero(is_msa):
        ax.axvspan((position - 1) * step, position * step, color="tab:gray", alpha=0.15, lw=0)


def _depth_curve(ax, values, is_msa, ylabel: str) -> None:
    values = np.asarray(values, float)
    depth = _normalised_depth(len(values))
    colors = plt.cm.plasma(depth)
    ax.plot(depth, values, color="0.4", lw=1)
    ax.scatter(depth, values, c=colors, zorder=3, s=22)
    _shade_attention(ax, is_msa)
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised depth" + (" (grey: attention sub-blocks)" if np.any(is_msa) else ""))
    ax.set_ylabel(ylabel)


def _branches(ax, metrics: dict, suffix: str, ylabel: str) -> None:
    """Per-block values of the attention and the MLP branch side by side."""
    for branch, color, marker in (("attn_branch", "tab:gray", "o"), ("mlp_branch", "tab:red", "s")):
        values = np.asarray(metrics[f"{branch}_{suffix}"], float)
        ax.plot(np.arange(len(values)), values, marker=marker, color=color, label=branch.replace("_", " "))
    _block_axis(ax)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def plot_fourier(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    curves, frequency = np.asarray(metrics["log_amplitude"], float), np.asarray(metrics["frequency"], float)
    fig, ax = plt.subplots(figsize=(4.2, 4.4))
    for i in reversed(range(len(curves))):  # deep layers underneath, as Park & Kim draw it
        ax.plot(frequency[i], curves[i], color=plt.cm.plasma(i / max(len(curves) - 1, 1)), lw=1.5, marker="o", ms=3)
    ax.set_xlabel("frequency (x pi)")
    ax.set_ylabel("relative log amplitude")
    ax.set_title(f"{prefix}: Fourier (dark: early, yellow: late)", fontsize=9)
    figures = [_save(fig, out_dir, f"{prefix}_fourier_curves.png",
                     f"{prefix}: relative log amplitude of Fourier-transformed feature maps along the half-diagonal, "
                     "one curve per hidden state, coloured by depth.")]

    has_branches = "attn_branch_high_frequency" in metrics
    fig, axes = plt.subplots(1, 2 if has_branches else 1, figsize=(10 if has_branches else 6, 4), squeeze=False)
    _depth_curve(axes[0, 0], metrics["high_frequency"], metrics["is_msa"], "high-frequency log amplitude")
    if has_branches:
        _branches(axes[0, 1], metrics, "high_frequency", "high-frequency log amplitude")
    figures.append(_save(fig, out_dir, f"{prefix}_fourier_high_frequency.png",
                         f"{prefix}: relative log amplitude at the highest frequency per hidden state (grey spans: "
                         "attention sub-blocks, where it drops if attention is a low-pass filter)"
                         + ("; right: the attention and MLP branches per block." if has_branches else ".")))
    return figures


def plot_feature_variance(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    has_branches = "attn_branch_variance" in metrics
    fig, axes = plt.subplots(1, 2 if has_branches else 1, figsize=(10 if has_branches else 6, 4), squeeze=False)
    _depth_curve(axes[0, 0], metrics["variance"], metrics["is_msa"], "feature map variance")
    axes[0, 0].set_ylim(bottom=0)
    if has_branches:
        _branches(axes[0, 1], metrics, "variance", "feature map variance")
        axes[0, 1].set_yscale("log")
    return [_save(fig, out_dir, f"{prefix}_feature_variance.png",
                  f"{prefix}: feature-map variance (over positions, mean over channels and images) per hidden state"
                  + ("; right: the attention and MLP branches per block." if has_branches else "."))]


def plot_singular_values(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    spectra = np.asarray(metrics["spectrum"], float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, spectrum in enumerate(spectra):
        left.plot(np.arange(1, len(spectrum) + 1), spectrum, color=plt.cm.plasma(i / max(len(spectra) - 1, 1)),
                  label=f"block {i}" if len(spectra) <= 12 else None)
    left.set_yscale("log")
    left.set_xlabel("singular value index")
    left.set_ylabel("sigma_k / sigma_1")
    if len(spectra) <= 12:
        left.legend(fontsize=7)
    right.plot(np.arange(len(spectra)), metrics["effective_rank"], marker="o")
    _block_axis(right)
    right.set_ylabel("effective rank")
    return [_save(fig, out_dir, f"{prefix}_singular_values.png",
                  f"{prefix}: singular value spectra of the token representations per block (all images' tokens "
                  "stacked; dark: early, yellow: late) and their effective rank.")]


def plot_token_similarity(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    values = np.asarray(metrics["token_similarity"], float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(values)), values, marker="o")
    _block_axis(ax)
    ax.set_ylabel("mean cosine similarity between tokens")
    return [_save(fig, out_dir, f"{prefix}_token_similarity.png",
                  f"{prefix}: mean cosine similarity between the tokens of one image at each block output.")]
