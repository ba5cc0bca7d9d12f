"""Figures of the register / outlier-token analyses (vitjax/analysis/norms.py, probes.py), as the Registers
paper draws them: token-norm histograms per layer (log norm axis) with the outlier threshold, where the
outliers sit on the patch grid, the neighbour similarity of outlier vs normal patch embeddings, and
the linear-probe results for outlier, normal, class and register tokens.

`plot_<analysis name>(metrics, out_dir, prefix) -> list[Figure]`; PNGs are `<prefix>_<name>.png`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from vitjax.report.html import Figure, save_figure  # noqa: E402

SECTION = "registers"
KIND_COLORS = {"patch": "tab:blue", "class": "tab:red", "dist": "tab:purple", "register": "tab:green",
               "normal": "tab:blue", "outlier": "tab:orange"}


def _save(fig, out_dir: Path, name: str, caption: str) -> Figure:
    return save_figure(fig, out_dir, name, caption, SECTION)


def _threshold_text(metrics) -> str:
    threshold = float(metrics["threshold"])
    if math.isnan(threshold):
        return f"no outlier threshold: block {int(metrics['threshold_block'])}'s patch-token norms are not bimodal"
    source = "given" if int(metrics["bimodal"]) < 0 else "valley of the bimodal histogram"
    return f"outlier threshold {threshold:.3g} ({source}, block {int(metrics['threshold_block'])})"


def _two_and_five(value: float, _) -> str:
    """Labels the 2x and 5x minor ticks of a log axis."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def _norm_histograms(metrics, out_dir, prefix) -> Figure:
    edges = np.asarray(metrics["bin_edges"], float)
    blocks = np.asarray(metrics["blocks"])
    kinds = [k for k in ("patch", "class", "dist", "register") if f"{k}_hist" in metrics]
    cols = min(4, len(blocks))
    rows = -(-len(blocks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
    threshold = float(metrics["threshold"])
    for ax, (row, block) in zip(axes.ravel(), enumerate(blocks)):
        for kind in kinds:
            counts = np.asarray(metrics[f"{kind}_hist"][row][1:-1], float)  # interior bins
            if counts.sum():
                ax.stairs(counts / counts.sum(), edges, color=KIND_COLORS[kind], label=kind,
                          fill=kind == "patch", alpha=0.5 if kind == "patch" else 1.0)
        if not math.isnan(threshold):
            ax.axvline(threshold, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))  # all minor labels would collide
        ax.set_title(f"block {int(block)}", fontsize=9)
        ax.tick_params(which="both", labelsize=7)
    for ax in axes.ravel()[len(blocks):]:
        ax.axis("off")
    all_counts = sum(np.asarray(metrics[f"{kind}_hist"])[:, 1:-1].sum(0) for kind in kinds)
    used = np.flatnonzero(all_counts) if all_counts.any() else np.arange(len(edges) - 1)
    axes[0, 0].set_xlim(edges[max(used[0] - 2, 0)], edges[min(used[-1] + 3, len(edges) - 1)])
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("token L2 norm (block output, before the final norm)", fontsize=9)
    fig.supylabel("fraction of tokens", fontsize=9)
    caption = (f"{prefix}: distribution of token norms per block, by token kind (log-log); dashed: "
               f"{_threshold_text(metrics)}.")
    return _save(fig, out_dir, f"{prefix}_token_norms_hist.png", caption)


def _norms_by_depth(metrics, out_dir, prefix) -> Figure:
    blocks = np.asarray(metrics["blocks"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    percentiles = list(np.asarray(metrics["percentiles"]))
    for kind in ("patch", "class", "dist", "register"):
        if f"{kind}_mean" not in metrics:
            continue
        left.plot(blocks, metrics[f"{kind}_mean"], "o-", color=KIND_COLORS[kind], label=f"{kind} (mean)", ms=3)
        if kind == "patch":
            p = np.asarray(metrics["patch_percentile"])
            left.fill_between(blocks, p[:, percentiles.index(5)], p[:, percentiles.index(95)],
                              color=KIND_COLORS[kind], alpha=0.2, label="patch 5-95%")
            left.plot(blocks, p[:, percentiles.index(99)], ":", color=KIND_COLORS[kind], label="patch 99%")
    left.set_yscale("log")
    left.set_xlabel("block")
    left.set_ylabel("token norm")
    left.legend(fontsize=7)
    fraction = np.asarray(metrics["outlier_fraction"], float)
    if np.isnan(fraction).all():
        right.text(0.5, 0.5, "no outliers:\nnorms not bimodal", ha="center", va="center", transform=right.transAxes)
    else:
        right.plot(blocks, 100 * fraction, "o-", color=KIND_COLORS["outlier"], label="patch tokens", ms=3)
        for kind in ("class", "register"):
            if f"{kind}_above_threshold" in metrics:
                right.plot(blocks, 100 * np.asarray(metrics[f"{kind}_above_threshold"]), "s--",
                           color=KIND_COLORS[kind], label=f"{kind} tokens", ms=3)
        right.legend(fontsize=7)
    right.set_xlabel("block")
    right.set_ylabel("% of tokens above the threshold")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    caption = (f"{prefix}: token norm vs depth per kind (left) and share of tokens at or above the outlier "
               f"threshold (right); {_threshold_text(metrics)}.")
    return _save(fig, out_dir, f"{prefix}_token_norms_depth.png", caption)


def _outlier_map(metrics, out_dir, prefix) -> Figure:
    maps = np.asarray(metrics["outlier_map"], float)
    blocks = np.asarray(metrics["blocks"])
    row = int(np.flatnonzero(blocks == int(metrics["threshold_block"]))[0])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    image = ax.imshow(100 * maps[row], cmap="viridis", vmin=0)
    fig.colorbar(image, ax=ax, label="% of images")
    ax.set_title(f"outlier frequency, block {int(blocks[row])}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    caption = (f"{prefix}: how often each patch position holds a high-norm outlier token "
               f"(block {int(blocks[row])}, norm >= {float(metrics['threshold']):.3g}).")
    return _save(fig, out_dir, f"{prefix}_outlier_map.png", caption)


def plot_token_norms(metrics: dict[str, np.ndarray], out_dir: Path, prefix: str) -> list[Figure]:
    figures = [_norm_histograms(metrics, out_dir, prefix), _norms_by_depth(metrics, out_dir, prefix)]
    if not np.isnan(np.asarray(metrics["outlier_map"], float)).all():
        figures.append(_outlier_map(metrics, out_dir, prefix))
    return figures


def plot_outlier_redundancy(metrics: dict[str, np.ndarray], out_dir: Path, prefix: str) -> list[Figure]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.3), gridspec_kw={"width_ratios": [1, 2]})
    sides = [s for s in ("normal", "outlier") if int(metrics[f"{s}_count"])]
    means = [float(metrics[f"{s}_cos_mean"]) for s in sides]
    stds = [float(metrics[f"{s}_cos_std"]) for s in sides]
    left.bar(sides, means, yerr=stds, color=[KIND_COLORS[s] for s in sides], capsize=4)
    left.set_ylabel("cosine similarity with 4 neighbours")
    left.set_ylim(min(0.0, *(m - s for m, s in zip(means, stds))) if means else 0.0, 1.0)
    edges = np.asarray(metrics["cos_bin_edges"], float)
    for side in sides:
        counts = np.asarray(metrics[f"{side}_cos_hist"], float)
        right.stairs(counts / counts.sum(), edges, color=KIND_COLORS[side],
                     label=f"{side} ({int(metrics[f'{side}_count'])} patches)")
    right.set_xlabel("cosine similarity of the input patch embedding with its neighbours")
    right.set_ylabel("fraction of patches")
    right.legend(fontsize=7)
    if "outlier" not in sides:
        right.set_title("no outlier tokens found", fontsize=9)
    caption = (f"{prefix}: redundancy of a patch with its 4 neighbours (cosine similarity of input patch "
               f"embeddings), outlier vs normal patches; {_threshold_text(metrics)}.")
    return [_save(fig, out_dir, f"{prefix}_outlier_redundancy.png", caption)]


def plot_probes(metrics: dict[str, np.ndarray], out_dir: Path, prefix: str) -> list[Figure]:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    panels = [
        ("position_acc", ("normal", "outlier"), "position top-1 accuracy", "position_chance"),
        ("pixel_r2", ("normal", "outlier"), "pixel reconstruction R^2", None),
        ("class_acc", ("class", "register", "normal", "outlier"), "class top-1 accuracy (one token)", "class_chance"),
    ]
    for ax, (key, kinds, title, chance) in zip(axes, panels):
        present = [k for k in kinds if f"{key}_{k}" in metrics]
        values = [float(metrics[f"{key}_{k}"]) for k in present]
        bars = ax.bar(present, np.nan_to_num(values), color=[KIND_COLORS.get(k, "grey") for k in present])
        for bar, value in zip(bars, values):
            label = "n/a" if math.isnan(value) else f"{value:.2f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        if chance:
            ax.axhline(float(metrics[chance]), color="k", ls=":", lw=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_ylim(min(0.0, *np.nan_to_num(values)) * 1.1, 1.08)
        ax.set_title(title, fontsize=9)
    caption = (f"{prefix}: linear probes on block {int(metrics['threshold_block'])} tokens, held-out images "
               f"({int(metrics['num_test_images'])} of {int(metrics['num_images'])}); n/a: no such tokens; "
               f"{_threshold_text(metrics)}.")
    return [_save(fig, out_dir, f"{prefix}_probes.png", caption)]
