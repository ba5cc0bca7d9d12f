"""Token norms and high-norm outlier tokens (Darcet et al., "Vision Transformers Need Registers", ICLR'24).

Norms are L2 norms over channels of the block output tokens before any final norm (the 'tokens'
tap; dinov2 #373 shows what the final LayerNorm hides). Everything streams as histograms on fixed
log-spaced bins (norm_histogram.py), and the outlier threshold is found per model from the
histogram once the stream is over, so no token is kept.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.base import Analysis
from vitjax.analysis.norm_histogram import bin_index, find_threshold, histogram_percentiles, log_bin_edges
from vitjax.capture import Output

__all__ = ["TokenNorms", "OutlierRedundancy"]

KINDS = ("class", "dist", "register", "patch")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
COS_BINS = 40  # cosine-similarity histogram bins over [-1, 1]


@dataclasses.dataclass(frozen=True)
class NormOptions:
    """Histogram bins and threshold detection shared by both analyses (see norm_histogram.py).

    threshold: a fixed outlier cutoff (e.g. 150, the paper's value for DINOv2-g), or None to find
    it from the histogram of `threshold_block`'s patch-token norms (default the last block, as the
    paper's output-token norms)."""

    threshold: float | None = None
    threshold_block: int = -1
    bins: int = 240
    low: float = 1e-2
    high: float = 1e4
    smooth: float = 2.0
    min_dip: float = 0.5
    min_fraction: float = 0.002
    min_count: int = 20

    def edges(self) -> np.ndarray:
        return log_bin_edges(self.bins, self.low, self.high)

    def cutoff(self, patch_hist) -> dict:
        """Threshold metrics, and the histogram slot where outliers start (None without outliers)."""
        if self.threshold is not None:  # histograms count it from the first bin edge at or above it
            edges = self.edges()
            index = int(np.searchsorted(edges, np.float32(self.threshold), side="left")) + 1
            value = edges[index - 1] if index <= len(edges) else np.inf
            return {"threshold": np.float64(value), "bimodal": np.int64(-1), "dip": np.float64(np.nan),
                    "minor_fraction": np.float64(np.nan)}, index
        found = find_threshold(patch_hist, self.edges(), smooth=self.smooth, min_dip=self.min_dip,
                               min_fraction=self.min_fraction, min_count=self.min_count)
        return {"threshold": np.float64(np.nan if found.value is None else found.value),
                "bimodal": np.int64(found.bimodal), "dip": np.float64(found.dip),
                "minor_fraction": np.float64(found.minor_fraction)}, found.index


def token_blocks(spec: Output, threshold_block: int) -> tuple[tuple[int, ...], int]:
    """The blocks that recorded 'tokens', and the one whose patch-token norms set the threshold."""
    blocks = spec.blocks_with("tokens")
    for b in blocks:
        n = spec.layers[b]["tokens"].shape[1]
        if n != spec.layout.num_tokens:
            raise ValueError(f"token-norm analyses need a ViT's tokens; block {b} has {n} tokens where the "
                             f"layout has {spec.layout.num_tokens} (a ResNet has no token layout per stage)")
    chosen = threshold_block % len(spec.layers)
    if chosen not in blocks:
        raise ValueError(f"threshold_block {threshold_block} (block {chosen}) recorded no 'tokens'")
    return blocks, chosen


def _norms(tokens: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(tokens.astype(jnp.float32)), axis=-1))


def layout_constants(spec: Output, threshold_block: int) -> dict:
    """What finalize needs of the model, kept in the state (merge keeps the first one)."""
    blocks, chosen = token_blocks(spec, threshold_block)
    kinds = np.array([KINDS.index(kind) for kind in spec.layout.kinds], np.int32)
    return {"blocks": jnp.asarray(blocks, jnp.int32), "kinds": jnp.asarray(kinds),
            "grid": jnp.asarray(spec.layout.grid, jnp.int32), "threshold_block": jnp.asarray(chosen, jnp.int32)}


@dataclasses.dataclass(frozen=True)
class TokenNorms(NormOptions, Analysis):
    """Per-block token-norm distributions, the high-norm outlier threshold, outlier fraction and map.

    State: a histogram per block and token position on fixed log-spaced bins, plus norm sums and
    sums of squares: 4 * L * N * (bins + 4) bytes (ViT-S/16 at 224, 240 bins: 2.3 MB), mergeable sums.

    Metrics:
      'blocks' (L,), 'bin_edges' (bins + 1,), 'percentiles' (7,) = (1, 5, 25, 50, 75, 95, 99);
      per token kind present ('class', 'dist', 'register', 'patch'): '{kind}_hist' (L, bins + 2)
      counts (slot 0 underflow, last overflow), '{kind}_mean', '{kind}_std' (L,), and
      '{kind}_percentile' (L, 7) read off the histogram (error below one bin, about 6%);
      'threshold' (NaN if not bimodal), 'bimodal' (1 / 0; -1 when the threshold was given),
      'dip', 'minor_fraction', 'threshold_block'; 'outlier_fraction' (L,) of patch tokens with
      norm >= threshold and '{kind}_above_threshold' (L,) for the prefix kinds, 'outlier_map'
      (L, gh, gw) frequency per patch position (all NaN when there is no threshold).
    A given `threshold` is counted from the first bin edge at or above it (bins are about 6% wide),
    and 'threshold' reports that edge.
    """

    name: ClassVar[str] = "token_norms"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens"})

    def init(self, spec: Output) -> dict:
        constants = layout_constants(spec, self.threshold_block)
        shape = (len(constants["blocks"]), spec.layout.num_tokens)
        return {"hist": jnp.zeros((*shape, self.bins + 2), jnp.int32), "sum": jnp.zeros(shape, jnp.float32),
                "sum_sq": jnp.zeros(shape, jnp.float32), **constants}

    def update(self, state: dict, output: Output, batch: dict) -> dict:
        blocks, _ = token_blocks(output, self.threshold_block)
        norms = jnp.stack([_norms(output.layers[b]["tokens"]) for b in blocks])  # (L, B, N)
        valid = jnp.broadcast_to(batch["valid"][None, :, None], norms.shape)
        slots = bin_index(norms, self.edges())
        block = jnp.arange(norms.shape[0])[:, None, None]
        position = jnp.arange(norms.shape[2])[None, None, :]
        kept = jnp.where(valid, norms, 0.0)
        return {**state, "hist": state["hist"].at[block, position, slots].add(valid.astype(jnp.int32)),
                "sum": state["sum"] + kept.sum(1), "sum_sq": state["sum_sq"] + (kept * kept).sum(1)}

    def merge(self, a: dict, b: dict) -> dict:
        return {**a, **{key: a[key] + b[key] for key in ("hist", "sum", "sum_sq")}}

    def finalize(self, state: dict) -> dict[str, np.ndarray]:
        hist = np.asarray(state["hist"], np.int64)
        sums, sum_sq = np.asarray(state["sum"], np.float64), np.asarray(state["sum_sq"], np.float64)
        kinds, blocks = np.asarray(state["kinds"]), np.asarray(state["blocks"])
        edges = self.edges()
        metrics = {"blocks": blocks, "bin_edges": edges, "percentiles": np.asarray(PERCENTILES)}
        for code, kind in enumerate(KINDS):
            at = kinds == code
            if not at.any():
                continue
            kind_hist = hist[:, at].sum(1)
            count = np.maximum(kind_hist.sum(-1), 1)
            mean = sums[:, at].sum(1) / count
            metrics[f"{kind}_hist"] = kind_hist
            metrics[f"{kind}_mean"] = mean
            metrics[f"{kind}_std"] = np.sqrt(np.maximum(sum_sq[:, at].sum(1) / count - mean**2, 0.0))
            metrics[f"{kind}_percentile"] = histogram_percentiles(kind_hist, edges, PERCENTILES)
        row = int(np.flatnonzero(blocks == int(state["threshold_block"]))[0])
        found, index = self.cutoff(metrics["patch_hist"][row])
        metrics.update(found, threshold_block=np.int64(blocks[row]))
        patch = kinds == KINDS.index("patch")
        grid = tuple(np.asarray(state["grid"]))
        if index is None:
            metrics["outlier_fraction"] = np.full(len(blocks), np.nan)
            metrics["outlier_map"] = np.full((len(blocks), *grid), np.nan)
        else:
            per_position = hist[..., index:].sum(-1) / np.maximum(hist.sum(-1), 1)  # (L, N)
            patch_hist = metrics["patch_hist"]
            metrics["outlier_fraction"] = patch_hist[:, index:].sum(-1) / np.maximum(patch_hist.sum(-1), 1)
            metrics["outlier_map"] = per_position[:, patch].reshape(len(blocks), *grid)
        for kind in KINDS[:3]:
            if f"{kind}_hist" in metrics:
                h = metrics[f"{kind}_hist"]
                metrics[f"{kind}_above_threshold"] = (np.full(len(blocks), np.nan) if index is None
                                                      else h[:, index:].sum(-1) / np.maximum(h.sum(-1), 1))
        return metrics


def neighbour_similarity(embeddings: jax.Array) -> jax.Array:
    """(B, gh, gw) mean cosine similarity of each patch embedding (B, gh, gw, D) with its 4 neighbours
    (fewer at the border, where the mean is over the neighbours that exist)."""
    unit = embeddings.astype(jnp.float32)
    unit = unit / jnp.maximum(jnp.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    total = jnp.zeros(unit.shape[:-1], jnp.float32)
    count = jnp.zeros(unit.shape[1:-1], jnp.float32)
    vertical = (unit[:, 1:] * unit[:, :-1]).sum(-1)  # similarity of (i, j) and (i + 1, j)
    horizontal = (unit[:, :, 1:] * unit[:, :, :-1]).sum(-1)
    total = total.at[:, 1:].add(vertical).at[:, :-1].add(vertical)
    total = total.at[:, :, 1:].add(horizontal).at[:, :, :-1].add(horizontal)
    count = count.at[1:].add(1).at[:-1].add(1).at[:, 1:].add(1).at[:, :-1].add(1)
    return total / jnp.maximum(count, 1)


@dataclasses.dataclass(frozen=True)
class OutlierRedundancy(NormOptions, Analysis):
    """The Registers paper's redundancy test: are outlier tokens the patches that repeat their neighbours?

    For every patch, the mean cosine similarity of its input patch embedding (the 'patch_embed' tap:
    the patch projection, before position embeddings) with those of its 4 neighbours, compared
    between outlier and normal patches, outliers being the patch tokens of `threshold_block` whose
    output norm is >= the threshold (given, or found as token_norms finds it, on this same stream).
    Needs a ViT (a ResNet has no patch embedding).

    State: per norm-histogram slot (or per side of a given threshold), the count, sum and sum of
    squares of the similarities and a 40-bin histogram of them over [-1, 1], plus the norm histogram:
    about 4 * 44 * (bins + 3) bytes, mergeable sums.

    Metrics: 'threshold', 'bimodal', 'dip', 'minor_fraction', 'threshold_block'; for 'outlier' and
    'normal': '{side}_count', '{side}_cos_mean', '{side}_cos_std', '{side}_cos_hist' (40,) (outlier
    entries NaN / 0 when there is no threshold); 'cos_bin_edges' (41,).
    """

    name: ClassVar[str] = "outlier_redundancy"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens", "patch_embed"})

    def _groups(self) -> int:
        return 2 if self.threshold is not None else self.bins + 2

    def init(self, spec: Output) -> dict:
        if not spec.blocks_with("patch_embed"):
            raise ValueError("outlier_redundancy needs the 'patch_embed' tap, which only ViTs record")
        groups = self._groups()
        return {"norm_hist": jnp.zeros((self.bins + 2,), jnp.int32), "count": jnp.zeros((groups,), jnp.float32),
                "cos_sum": jnp.zeros((groups,), jnp.float32), "cos_sq": jnp.zeros((groups,), jnp.float32),
                "cos_hist": jnp.zeros((groups, COS_BINS), jnp.int32), **layout_constants(spec, self.threshold_block)}

    def update(self, state: dict, output: Output, batch: dict) -> dict:
        layout = output.layout
        _, block = token_blocks(output, self.threshold_block)
        embed = output.layers[output.blocks_with("patch_embed")[0]]["patch_embed"]
        similarity = neighbour_similarity(embed.reshape(embed.shape[0], *layout.grid, -1)).reshape(embed.shape[0], -1)
        norms = _norms(output.layers[block]["tokens"][:, layout.patch_slice])  # (B, P)
        slots = bin_index(norms, self.edges())
        group = slots if self.threshold is None else (norms >= self.threshold).astype(jnp.int32)
        weight = jnp.broadcast_to(batch["valid"][:, None], norms.shape)
        w = weight.astype(jnp.float32)
        cos_slot = jnp.clip(jnp.floor((similarity + 1) / 2 * COS_BINS), 0, COS_BINS - 1).astype(jnp.int32)
        return {**state,
                "norm_hist": state["norm_hist"].at[slots].add(weight.astype(jnp.int32)),
                "count": state["count"].at[group].add(w),
                "cos_sum": state["cos_sum"].at[group].add(w * similarity),
                "cos_sq": state["cos_sq"].at[group].add(w * similarity**2),
                "cos_hist": state["cos_hist"].at[group, cos_slot].add(weight.astype(jnp.int32))}

    def merge(self, a: dict, b: dict) -> dict:
        return {**a, **{key: a[key] + b[key] for key in ("norm_hist", "count", "cos_sum", "cos_sq", "cos_hist")}}

    def finalize(self, state: dict) -> dict[str, np.ndarray]:
        get = {key: np.asarray(state[key], np.float64) for key in ("count", "cos_sum", "cos_sq", "cos_hist")}
        found, index = self.cutoff(np.asarray(state["norm_hist"]))
        metrics = {**found, "threshold_block": np.int64(state["threshold_block"]),
                   "cos_bin_edges": np.linspace(-1.0, 1.0, COS_BINS + 1)}
        if self.threshold is not None:  # exact here: the groups are [normal, outlier]
            metrics["threshold"], index = np.float64(self.threshold), 1
        sides = {"normal": slice(0, index), "outlier": slice(index, None)} if index is not None else {
            "normal": slice(0, None), "outlier": slice(0, 0)}
        for side, rows in sides.items():
            count = get["count"][rows].sum()
            mean = get["cos_sum"][rows].sum() / count if count else np.nan
            metrics[f"{side}_count"] = np.int64(count)
            metrics[f"{side}_cos_mean"] = np.float64(mean)
            variance = get["cos_sq"][rows].sum() / count - mean**2 if count else np.nan
            metrics[f"{side}_cos_std"] = np.float64(np.sqrt(max(variance, 0.0)) if count else np.nan)
            metrics[f"{side}_cos_hist"] = get["cos_hist"][rows].sum(0).astype(np.int64)
        return metrics
