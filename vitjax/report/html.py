"""Writes a run's report: metrics.json and an index.html that shows each figure with its caption."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import textwrap
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Figure:
    """One PNG (a path relative to the report folder), its section and a caption saying what it shows."""

    path: str
    caption: str
    section: str = "figures"


def save_figure(fig, out_dir, name: str, caption: str, section: str) -> Figure:
    """Saves a matplotlib figure as OUT/name (tight layout, 110 dpi), closes it, returns its Figure."""
    import matplotlib.pyplot as plt  # here, so the figure modules choose the backend first

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _wrap_titles(fig)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return Figure(name, caption, section)


def _wrap_titles(fig) -> None:
    """Axes titles wrapped to their axes' width: a model name with analysis options would run off
    the image otherwise (about 0.6 of the font size per character)."""
    for ax in fig.axes:
        title = ax.title
        if title.get_text():
            width = ax.get_position().width * fig.get_figwidth() * 72  # points
            title.set_text(textwrap.fill(title.get_text(), max(20, int(width / (0.6 * title.get_fontsize())))))


def to_json(value):
    """Metrics (nested dicts of arrays and scalars) as JSON-ready Python; non-finite numbers become None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        if array.dtype.kind in "fc":
            array = array.astype(np.float64)
            return to_json(array.tolist()) if array.ndim else (float(array) if math.isfinite(array) else None)
        return array.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(out_dir, title: str, metrics: dict, figures: list[Figure], notes: list[str] = ()) -> Path:
    """Writes OUT/metrics.json and OUT/index.html (figures grouped by section); returns the index path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(to_json(metrics), indent=1))
    sections: dict[str, list[Figure]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}figure{display:inline-block;"
             "width:560px;vertical-align:top;margin:8px}img{max-width:100%}figcaption{font-size:90%}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts.append("<p>All numbers: <a href='metrics.json'>metrics.json</a>.</p>")
    for section, members in sections.items():
        parts.append(f"<h2>{html.escape(section)}</h2>")
        for figure in members:
            parts.append(f"<figure><a href='{html.escape(figure.path)}'><img src='{html.escape(figure.path)}'></a>"
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    index = out / "index.html"
    index.write_text("\n".join(parts) + "\n")
    return index
