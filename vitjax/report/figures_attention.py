"""Figures of the attention analyses (vitjax/analysis/attention.py and attention_maps.py), drawn as the
papers draw them: per-block curves with one dot per head and the head mean as a line (attention
distance and NMI in cl-vs-mim and Teaching Matters), grids of maps (AAAM: blocks x heads; CLS maps:
sample images x blocks), the best head's IoU per block (Teaching Matters' saliency plots) and the
attention each kind of token receives (the registers paper's sink view).

`plot_<analysis name>(metrics, out_dir, prefix) -> list[Figure]`; PNGs are named `<prefix>_<name>*.png`.
Map grids are one mosaic image (fast for 24 blocks x 16 heads), each tile scaled to its own maximum.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitjax.report.html import Figure, save_figure  # noqa: E402

SECTION = "attention"
KIND_COLOURS = {"class": "tab:red", "dist": "tab:purple", "register": "tab:orange", "patch": "tab:blue"}


def _save(fig, out_dir: Path, name: str, caption: str) -> Figure:
    return save_figure(fig, out_dir, name, caption, SECTION)


def _heads_and_mean(ax, per_head, label: str | None = None, colour: str = "tab:blue") -> None:
    """One dot per head at each block (x = block, from 1) and the mean over heads as a line."""
    per_head = np.asarray(per_head, float)
    blocks = np.arange(1, per_head.shape[0] + 1)
    ax.scatter(np.repeat(blocks, per_head.shape[1]), per_head.ravel(), s=10, alpha=0.45, color=colour, lw=0,
               label=None if label else "heads")
    ax.plot(blocks, np.nanmean(per_head, axis=1), marker="o", color=colour,
            label=f"{label}: mean over heads" if label else "mean over heads")
    _block_axis(ax, len(blocks))


def _block_axis(ax, count: int) -> None:
    """x = block number from 1, integer ticks (at most ~16)."""
    blocks = np.arange(1, count + 1)
    ax.set_xlabel("block")
    ax.set_xticks(blocks[:: int(np.ceil(count / 16))])


def _per_block_figure(per_head, ylabel: str, title: str):
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    _heads_and_mean(ax, per_head)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _mosaic(tiles) -> np.ndarray:
    """(R, C, h, w) tiles, each scaled to its own maximum, as one (R(h+1)-1, C(w+1)-1) image, NaN between."""
    tiles = np.asarray(tiles, float)
    rows, cols, h, w = tiles.shape
    peak = np.nanmax(np.abs(tiles), axis=(2, 3), keepdims=True)
    tiles = np.where(peak > 0, tiles / np.where(peak > 0, peak, 1.0), 0.0)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[r, c]
    return out


def _mosaic_figure(tiles, row_label: str, col_label: str, title: str, row_names=None, col_names=None,
                   centre: bool = False):
    """Tiles (R, C, h, w) in a grid; rows named from 1 (blocks) and columns from 0 (heads) unless given."""
    tiles = np.asarray(tiles, float)
    rows, cols, h, w = tiles.shape
    width = min(16.0, max(4.0, cols * (w + 1) * 0.1 + 1.0))
    height = min(20.0, max(2.5, width * rows * (h + 1) / (cols * (w + 1)) + 0.8))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("inferno").with_extremes(bad="white")
    ax.imshow(_mosaic(tiles), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if centre:  # the query's own position in an aligned map
        for r in range(rows):
            for c in range(cols):
                ax.plot(c * (w + 1) + (w - 1) / 2, r * (h + 1) + (h - 1) / 2, "+", color="cyan", ms=4, mew=0.8)
    col_names = col_names if col_names is not None else [str(c) for c in range(cols)]
    row_names = row_names if row_names is not None else [str(r + 1) for r in range(rows)]
    ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(cols)], col_names, fontsize=7)
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(rows)], row_names, fontsize=7)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=10)
    ax.tick_params(length=0)
    return fig


def plot_attention_distance(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    units = str(np.asarray(metrics.get("units", "unit_square")))
    ylabel = "attention distance (px)" if units == "pixels" else "attention distance (fraction of image side)"
    fig = _per_block_figure(metrics["distance"], ylabel, f"{prefix}: attention distance ({units})")
    protocol = ("cl-vs-mim: pixels, 1e-32 added before renormalising" if units == "pixels"
                else "Teaching Matters: unit square, all-prefix rows count as 0")
    return [_save(fig, out_dir, f"{prefix}_attention_distance_{units}.png",
                  f"{prefix}: average attention distance per block; dots are heads, the line their mean "
                  f"({protocol}; {int(metrics['num_images'])} images).")]


def plot_nmi(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig = _per_block_figure(metrics["nmi"], "normalised mutual information", f"{prefix}: NMI of attention")
    return [_save(fig, out_dir, f"{prefix}_nmi.png",
                  f"{prefix}: NMI between queries and keys (uniform query prior) per block; dots are heads, the line "
                  f"their mean. Near 0 = attention collapse ({int(metrics['num_images'])} images).")]


def plot_attention_entropy(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig = _per_block_figure(metrics["entropy"], "entropy (nats)", f"{prefix}: attention entropy over patches")
    return [_save(fig, out_dir, f"{prefix}_attention_entropy.png",
                  f"{prefix}: entropy of patch queries' attention over patch keys (renormalised, natural log) per "
                  f"block; dots are heads, the line their mean.")]


def plot_attention_collapse(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    _heads_and_mean(ax, metrics["query_similarity"], "across queries")
    head = np.asarray(metrics["head_similarity"], float)
    ax.plot(np.arange(1, len(head) + 1), head, marker="s", color="tab:green", label="across heads")
    ax.set_ylabel("mean cosine similarity of attention maps")
    ax.set_title(f"{prefix}: attention collapse", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir, f"{prefix}_attention_collapse.png",
                  f"{prefix}: mean cosine similarity of patch queries' attention maps across queries (dots: heads) "
                  f"and across heads, per block; 1 = every map alike.")]


def plot_attention_received(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig, ax = plt.subplots(figsize=(5.4, 3.9))
    for kind, colour in KIND_COLOURS.items():
        if f"received_{kind}" in metrics:
            _heads_and_mean(ax, metrics[f"received_{kind}"], f"{kind} token", colour)
    patch_max = np.asarray(metrics["patch_max"], float)
    ax.plot(np.arange(1, len(patch_max) + 1), np.nanmean(patch_max, axis=1), ls="--", color="tab:cyan",
            label="most-attended patch (mean over heads)")
    tokens = np.asarray(metrics["received"]).shape[-1]
    ax.axhline(1.0 / tokens, color="gray", lw=0.8, ls=":", label="uniform (1/N)")
    ax.set_yscale("log")
    ax.set_ylabel("attention received per token")
    ax.set_title(f"{prefix}: attention received by token kind", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir, f"{prefix}_attention_received.png",
                  f"{prefix}: the share of an average query's attention each token receives, averaged over the tokens "
                  f"of each kind, per block (dots: heads). Class or register tokens far above 1/N are attention "
                  "sinks.")]


def plot_cls_attention_maps(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    mean_map = np.asarray(metrics["mean_map"], float)  # (L, H, gh, gw)
    figures = [_save(_mosaic_figure(mean_map, "block", "head", f"{prefix}: mean CLS attention map"), out_dir,
                     f"{prefix}_cls_attention_mean.png",
                     f"{prefix}: the class token's attention over the patches (not renormalised), mean over "
                     f"{int(metrics['num_images'])} images; rows are blocks, columns heads.")]
    samples = np.asarray(metrics["maps"], float)  # (n, L, H, gh, gw)
    if len(samples):
        fig = _mosaic_figure(samples.mean(axis=2), "sample image", "block (mean over heads)",
                             f"{prefix}: CLS attention on sample images",
                             row_names=[str(i) for i in range(len(samples))],
                             col_names=[str(b + 1) for b in range(samples.shape[1])])
        figures.append(_save(fig, out_dir, f"{prefix}_cls_attention_samples.png",
                             f"{prefix}: the class token's attention map on the first {len(samples)} images "
                             f"(rows), per block (columns, mean over heads; per-head maps are in metrics.json)."))
    return figures


def plot_aaam(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig = _mosaic_figure(metrics["aaam"], "block", "head", f"{prefix}: aligned aggregated attention maps",
                         centre=True)
    figures = [_save(fig, out_dir, f"{prefix}_aaam.png",
                     f"{prefix}: AAAM per block (rows) and head (columns): each patch query's attention (prefix tokens "
                     f"dropped, renormalised) pasted with the query at the centre (+), averaged.")]
    fig = _per_block_figure(metrics["offset"], "attention offset |centre of mass|", f"{prefix}: attention offset")
    figures.append(_save(fig, out_dir, f"{prefix}_aaam_offset.png",
                         f"{prefix}: distance of each AAAM's centre of mass from the query, on [-1, 1]^2 "
                         f"(Teaching Matters' avg-att-offset); dots are heads."))
    return figures


def plot_saliency_alignment(metrics: dict, out_dir: Path, prefix: str) -> list[Figure]:
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    iou = np.asarray(metrics["iou"], float)
    blocks = np.arange(1, len(iou) + 1)
    ax.scatter(np.repeat(blocks, iou.shape[1]), iou.ravel(), s=10, alpha=0.35, color="tab:gray", lw=0, label="heads")
    ax.plot(blocks, metrics["iou_best"], marker="o", color="tab:blue", label="best head")
    ax.plot(blocks, metrics["iou_merged"], marker="s", color="tab:orange", label="heads summed")
    _block_axis(ax, len(blocks))
    ax.set_ylabel("IoU with foreground")
    ax.set_ylim(0, 1)
    ax.set_title(f"{prefix}: attention-mask alignment", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir, f"{prefix}_saliency_alignment.png",
                  f"{prefix}: IoU of the top-mass attention region with the object mask on the token grid, per block: "
                  f"the best head, every head (dots), heads summed ({int(metrics['num_images'])} images).")]
