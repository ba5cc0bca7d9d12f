"""Figures of the clustering analysis (vitjax/analysis/clustering.py), as Teaching Matters draws them:
purity, NMI and ARI of k-means clusters against the labels, per block, one curve per feature kind.

`plot_<analysis name>(metrics, out_dir, prefix) -> list[Figure]`; PNGs are `<prefix>_<name>.png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vitjax.report.html import Figure  # noqa: E402

SECTION = "clustering"
KINDS = {"class": ("class token", "tab:red"), "mean": ("mean patch token", "tab:blue"),
         "mask": ("mask-pooled patch tokens", "tab:green")}


def plot_clustering(metrics: dict[str, np.ndarray], out_dir: Path, prefix: str) -> list[Figure]:
    blocks = np.asarray(metrics["blocks"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), sharex=True)
    for ax, score in zip(axes, ("purity", "nmi", "ari")):
        for kind, (label, color) in KINDS.items():
            if f"{kind}_{score}" in metrics:
                k = int(metrics["k_mask" if kind == "mask" else "k"])
                ax.plot(blocks, metrics[f"{kind}_{score}"], "o-", ms=3, color=color, label=f"{label} (k={k})")
        ax.set_title(score.upper() if score != "purity" else "purity", fontsize=10)
        ax.set_xlabel("block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    axes[0].legend(fontsize=7)
    caption = (f"{prefix}: k-means of per-block features vs the class labels ({int(metrics['num_images'])} images): "
               "purity, NMI and ARI by depth for each feature kind.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}_clustering.png"
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return [Figure(name, caption, SECTION)]
