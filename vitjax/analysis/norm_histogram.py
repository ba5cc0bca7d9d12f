"""Token-norm histograms on fixed log-spaced bins, their percentiles, and the high-norm outlier cutoff.

Histograms on fixed bins are sums, so they stream and merge exactly; the outlier threshold of the
Registers paper (Darcet et al., ICLR'24: 150 on DINOv2-g, "hand-picked... can vary across models")
is then found per model from the histogram, after the whole stream has been seen.

Bins: `bins` log-spaced intervals [e_i, e_{i+1}) between `low` and `high`, plus an underflow slot
(index 0, norm < low) and an overflow slot (index bins + 1, norm >= high).

The cutoff (`find_threshold`): the valley between the two modes of the log-norm histogram.
The histogram over log-spaced bins is a density of log norms; it is smoothed with a Gaussian of
`smooth` bins, its local maxima are the candidate modes, and the highest one is the main mode. For
each other mode, the valley is the lowest smoothed point between the two (the middle of it if it is
flat, as when empty bins separate the modes). A mode counts as a second mode only if the valley is
at most (1 - min_dip) times that mode's height and at least `min_fraction` of the tokens, and at
least `min_count` tokens, lie on its side of the valley; of those, the highest wins. The
threshold is the lower edge of the valley bin, and tokens with norm >= threshold are outliers. If
no mode qualifies, the histogram is not bimodal: there is no threshold and no outliers are
reported. Otsu's method was not used: with a small outlier mode (2% of tokens in the paper) its
between-class variance is no larger than a unimodal Gaussian's, so it cannot tell the two apart.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


def log_bin_edges(bins: int, low: float, high: float) -> np.ndarray:
    """(bins + 1,) float32 edges, log-spaced from low to high."""
    if not 0 < low < high or bins < 2:
        raise ValueError(f"norm histogram needs 0 < low < high and bins >= 2; got low={low}, high={high}, bins={bins}")
    return np.geomspace(low, high, bins + 1).astype(np.float32)


def bin_index(values, edges: np.ndarray):
    """Histogram slot of each value: 0 below edges[0], i for [e_{i-1}, e_i), len(edges) at or above edges[-1]."""
    return jnp.searchsorted(jnp.asarray(edges), values, side="right")


def histogram_percentiles(counts, edges: np.ndarray, quantiles) -> np.ndarray:
    """Percentiles (quantiles in [0, 100]) of the values behind `counts` (..., bins + 2).

    Within a bin the values are taken as spread evenly in log norm, so the error is below one bin's
    width (a factor (high / low) ** (1 / bins)); under- and overflow clamp to low and high."""
    counts = np.asarray(counts, np.float64)
    log_edges = np.log(edges.astype(np.float64))
    flat = counts.reshape(-1, counts.shape[-1])
    out = np.full((flat.shape[0], len(quantiles)), np.nan)
    for row, c in enumerate(flat):
        total = c.sum()
        if not total:
            continue
        cum = np.cumsum(c)
        for j, q in enumerate(quantiles):
            target = q / 100 * total
            slot = min(int(np.searchsorted(cum, target, side="left")), len(c) - 1)
            if slot == 0:
                out[row, j] = edges[0]
            elif slot == len(c) - 1:
                out[row, j] = edges[-1]
            else:
                below = cum[slot - 1]
                inside = (target - below) / c[slot] if c[slot] else 0.0
                out[row, j] = np.exp(log_edges[slot - 1] + inside * (log_edges[slot] - log_edges[slot - 1]))
    return out.reshape(*counts.shape[:-1], len(quantiles))


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The outcome of `find_threshold`. value/index are None when the histogram is not bimodal."""

    bimodal: bool
    value: float | None  # norms >= value are outliers
    index: int | None  # slot of the first outlier bin: counts[..., index:] are the outliers
    dip: float  # 1 - valley / (second mode's height), of the best second mode (0 if none)
    minor_fraction: float  # fraction of tokens on the second mode's side of the valley


def _smooth(counts: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return counts
    radius = int(np.ceil(4 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(counts, taps / taps.sum(), mode="same")


def _valley(s: np.ndarray, a: int, b: int) -> int:
    """The middle of the lowest flat stretch of s between indices a < b (exclusive)."""
    inside = s[a + 1 : b]
    lowest = inside.min()
    first = int(np.argmax(inside <= lowest + 1e-12 * s.max()))
    last = first
    while last + 1 < len(inside) and inside[last + 1] <= lowest + 1e-12 * s.max():
        last += 1
    return a + 1 + (first + last) // 2


def find_threshold(counts, edges: np.ndarray, *, smooth: float = 2.0, min_dip: float = 0.5,
                   min_fraction: float = 0.002, min_count: int = 20) -> Threshold:
    """The high-norm outlier cutoff from one (bins + 2,) histogram; see the module docstring."""
    counts = np.asarray(counts, np.float64)
    interior = counts[1:-1]  # under/overflow have no width in log space; they join their side below
    total = counts.sum()
    none = Threshold(False, None, None, 0.0, 0.0)
    if total == 0:
        return none
    s = _smooth(interior, smooth)
    padded = np.concatenate([[-np.inf], s, [-np.inf]])
    modes = [i for i in range(len(s)) if s[i] > 0 and padded[i + 1] > padded[i] and padded[i + 1] >= padded[i + 2]]
    main = int(np.argmax(s))
    best = None
    for mode in modes:
        if abs(mode - main) < 2:
            continue
        lo, hi = sorted((main, mode))
        valley = _valley(s, lo, hi)
        dip = 1.0 - s[valley] / s[mode]
        # tokens on the second mode's side of the valley (interior slot i is counts slot i + 1)
        side = counts[valley + 1 :].sum() if mode > main else counts[: valley + 1].sum()
        if dip >= min_dip and side >= max(min_fraction * total, min_count):
            if best is None or s[mode] > s[best[0]]:
                best = (mode, valley, dip, side / total)
    if best is None:
        return none
    _, valley, dip, fraction = best
    return Threshold(True, float(edges[valley]), valley + 1, float(dip), float(fraction))
