"""Which plot draws each analysis, and the figures of a whole `vitjax analyze` run.

Each figure module has one `plot_<analysis name>(metrics, out_dir, prefix) -> list[Figure]`;
`plots()` maps every registered analysis name to its function (a missing one is an error: every
analysis must have a figure). A run's figures are named by their subject (a model, or 'a vs b' for
a pair) and, where a preset runs one analysis twice, its options.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from pathlib import Path

from vitjax.report.html import Figure

FIGURE_MODULES = ("figures_attention", "figures_features", "figures_registers", "figures_clustering")


@functools.cache
def plots() -> dict[str, Callable]:
    """Analysis name -> its plot function, for every registered analysis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from vitjax.analysis.registry import ANALYSES

    modules = [importlib.import_module(f"vitjax.report.{name}") for name in FIGURE_MODULES]
    found = {}
    for name in ANALYSES:
        functions = [getattr(m, f"plot_{name}") for m in modules if hasattr(m, f"plot_{name}")]
        if len(functions) != 1:
            raise RuntimeError(f"analysis {name!r} needs exactly one plot_{name} in vitjax/report/{FIGURE_MODULES}, "
                               f"found {len(functions)}")
        found[name] = functions[0]
    return found


def file_prefix(subject: str, label: str) -> str:
    """A file-name-safe prefix for one subject's (model's or pair's) analysis."""
    name = label.partition("[")[0]
    text = subject if label == name else f"{subject}_{label}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def draw(metrics: dict, out_dir: Path) -> list[Figure]:
    """Every figure of a run's metrics ({'models': ..., 'pairs': ...}, see analysis/run.py)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for group in ("models", "pairs"):
        for subject, analyses in metrics.get(group, {}).items():
            for label, values in analyses.items():
                plot = plots()[label.partition("[")[0]]
                figures += plot(values, out_dir, file_prefix(subject, label))
    return figures
