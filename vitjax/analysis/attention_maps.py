"""Spatial attention analyses of Teaching Matters (Walmer et al., CVPR'23) as streaming reducers:
CLS attention maps, aligned aggregated attention maps (AAAM) with the attention offset, and the
alignment of attention with object masks (saliency IoU). Definitions: protocols.md section 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.attention_tokens import (TAP, attention_maps, attention_shape, patch_block, renormalise,
                                              renormalise_patch_rows, require_class_token, summed_patch_rows)
from vitjax.analysis.base import Analysis, Buffer, count_valid, mean_or_nan, valid_sum
from vitjax.analysis.mask_grid import token_mask
from vitjax.capture import Output, TokenLayout

ATTN = frozenset({TAP})


@dataclasses.dataclass(frozen=True)
class ClsAttentionMaps(Analysis):
    """The class token's attention over the patches, per block and head (`get_attn_img`).

    The map is attn[block, head, class query, patch keys] on the token grid, NOT renormalised (the
    mass on prefix keys is simply left out). Metrics: 'maps' (n, L, H, gh, gw) for the first
    `num_images` valid images (a bounded buffer), 'mean_map' (L, H, gh, gw) over all valid images,
    'num_images'.
    """

    name: ClassVar[str] = "cls_attention_maps"
    taps: ClassVar[frozenset[str]] = ATTN
    num_images: int = 8

    def init(self, spec: Output):
        blocks, heads, layout = attention_shape(spec, self.name)
        require_class_token(layout, self.name)
        shape = (blocks, heads, *layout.grid)
        return {"samples": Buffer(self.num_images, shape).init(), "sum": jnp.zeros(shape, jnp.float32),
                "count": jnp.zeros((), jnp.float32)}

    def update(self, state, output: Output, batch: dict):
        layout = output.layout
        maps = jnp.stack([a[:, :, 0, layout.patch_slice] for a in attention_maps(output, self.name)], axis=1)
        maps = maps.reshape(*maps.shape[:-1], *layout.grid)  # (B, L, H, gh, gw)
        buffer = _buffer_of(state["samples"])
        return {"samples": buffer.append(state["samples"], maps, batch["valid"]),
                "sum": state["sum"] + valid_sum(maps, batch["valid"]), "count": state["count"] + count_valid(batch)}

    def merge(self, a, b):
        return {"samples": _buffer_of(a["samples"]).merge(a["samples"], b["samples"]),
                "sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}

    def finalize(self, state):
        return {"maps": Buffer.rows(state["samples"]), "mean_map": mean_or_nan(state["sum"], state["count"]),
                "num_images": np.asarray(state["count"])}


def _buffer_of(state: dict) -> Buffer:
    rows = state["rows"]
    return Buffer(rows.shape[0], tuple(rows.shape[1:]), rows.dtype)


def _offsets(n: int) -> np.ndarray:
    """(n, n, 2n-1) one-hot: [q, k, d] = 1 where d = k - q + n - 1, the offset of k from q on a
    grid axis of n tokens, counted from the canvas edge."""
    q, k, d = np.ogrid[:n, :n, : 2 * n - 1]
    return (d == k - q + n - 1).astype(np.float32)


def aligned_canvas(rows: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(..., Q, K) patch rows -> (..., 2gh-1, 2gw-1): every query's map pasted centred on the query, summed.

    Key (ki, kj) of query (i, j) lands at (gh-1 + ki-i, gw-1 + kj-j), as Teaching Matters pastes
    query (i, j)'s map with its top-left corner at (gh-1-i, gw-1-j). The paste is linear, so it is
    two contractions with one-hot offset tables, rows then columns (about 1.4x faster on XLA:CPU
    than shifting the rows in memory, and a matrix product on accelerators).
    """
    gh, gw = grid
    maps = rows.reshape(*rows.shape[:-2], gh, gw, gh, gw)  # [qi, qj, ki, kj]
    by_row = jnp.einsum("...abcd,acy->...bdy", maps, _offsets(gh), precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("...bdy,bdx->...yx", by_row, _offsets(gw), precision=jax.lax.Precision.HIGHEST)


def attention_offset(canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teaching Matters' `average_att_offset`: centre of mass of each (..., ch, cw) canvas on [-1, 1]^2.

    The canvas is scaled to sum 1 (left as is when it is all zero); x runs over columns and y over
    rows, each 2 c / (size - 1) - 1. Returns (|(x, y)|, x, y), each (...).
    """
    canvas = np.asarray(canvas, np.float64)
    total = canvas.sum((-2, -1), keepdims=True)
    weights = np.where(total > 0, canvas / np.where(total > 0, total, 1.0), 0.0)
    axis = lambda n: 2.0 * np.arange(n) / max(n - 1, 1) - 1.0
    x = (weights * axis(canvas.shape[-1])[None, :]).sum((-2, -1))
    y = (weights * axis(canvas.shape[-2])[:, None]).sum((-2, -1))
    return np.hypot(x, y), x, y


@dataclasses.dataclass(frozen=True)
class AlignedAttentionMaps(Analysis):
    """Aligned aggregated attention maps (AAAM, `AvgAlignedAttentionOnToken`) and the attention offset.

    Prefix tokens are dropped from queries and keys and rows renormalised (rows whose mass was all
    on prefix tokens stay zero and still count); each patch query's (gh, gw) map is pasted into a
    (2gh-1, 2gw-1) canvas centred on the query (`aligned_canvas`), and the canvases are summed over
    queries and images, then divided:

    divisor='per_query' (default): by (images x queries), the exact mean aligned map.
    divisor='teaching_matters': by (number of Teaching Matters batches x queries), where its code
        counts once per query per batch of `batch_size` images (its default 2; the last batch may
        be short), so its values are about batch_size times the mean. Use it to reproduce its numbers.

    Metrics: 'aaam' (L, H, 2gh-1, 2gw-1); 'offset', 'offset_x', 'offset_y' (L, H): the centre of
    mass of each map on [-1, 1]^2 (`average_att_offset`; the divisor cancels); 'prefix_rows' (L, H):
    rows per image whose mass was all on prefix tokens (mean); 'num_images'.
    """

    name: ClassVar[str] = "aaam"
    taps: ClassVar[frozenset[str]] = ATTN
    divisor: str = "per_query"
    batch_size: int = 2

    def __post_init__(self):
        if self.divisor not in ("per_query", "teaching_matters"):
            raise ValueError(f"aaam divisor must be 'per_query' or 'teaching_matters', not {self.divisor!r}")
        if self.batch_size < 1:
            raise ValueError(f"aaam batch_size must be >= 1, not {self.batch_size}")

    def init(self, spec: Output):
        blocks, heads, layout = attention_shape(spec, self.name)
        gh, gw = layout.grid
        return {"canvas": jnp.zeros((blocks, heads, 2 * gh - 1, 2 * gw - 1), jnp.float32),
                "prefix_rows": jnp.zeros((blocks, heads), jnp.float32), "count": jnp.zeros((), jnp.float32)}

    def update(self, state, output: Output, batch: dict):
        layout, valid = output.layout, batch["valid"]
        canvases, prefix_rows = [], []
        for attn in attention_maps(output, self.name):
            rows, empty = summed_patch_rows(attn, layout, valid)
            canvases.append(aligned_canvas(rows, layout.grid))
            prefix_rows.append(empty)
        return {"canvas": state["canvas"] + jnp.stack(canvases),
                "prefix_rows": state["prefix_rows"] + jnp.stack(prefix_rows),
                "count": state["count"] + count_valid(batch)}

    def finalize(self, state):
        canvas = np.asarray(state["canvas"], np.float64)
        gh, gw = (canvas.shape[-2] + 1) // 2, (canvas.shape[-1] + 1) // 2
        images = float(state["count"])
        units = images if self.divisor == "per_query" else math.ceil(images / self.batch_size)
        offset, x, y = attention_offset(canvas)
        return {"aaam": mean_or_nan(canvas, units * gh * gw), "offset": offset, "offset_x": x, "offset_y": y,
                "prefix_rows": mean_or_nan(state["prefix_rows"], images), "num_images": np.asarray(images)}


def centre_patch(grid: tuple[int, int]) -> int:
    """Teaching Matters' 'center' token (`select_positions`): row ceil(gh/2)-1, column ceil(gw/2)-1."""
    gh, gw = grid
    return (math.ceil(gh / 2) - 1) * gw + math.ceil(gw / 2) - 1


def top_mass_mask(maps: jax.Array, mass: float) -> jax.Array:
    """DINO's thresholding as `att_to_binary_mask` runs it: with the map's values sorted ascending, a
    token is kept when the cumulative sum up to and including it exceeds 1 - mass, i.e. the largest
    values that together hold `mass` of the total. Maps (..., K) summing to 1 (all-zero maps keep nothing)."""
    order = jnp.argsort(maps, axis=-1)
    cumulative = jnp.cumsum(jnp.take_along_axis(maps, order, axis=-1), axis=-1)
    keep_sorted = cumulative > 1.0 - mass
    return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


@dataclasses.dataclass(frozen=True)
class SaliencyAlignment(Analysis):
    """IoU of each head's top-mass attention region with the foreground (`run_seg_analysis.py`).

    Per image, block and head: a map over the patch keys, chosen by `map`:
      'cls' (default): the class token's row; 'spatial_sum': the sum of all patch queries' rows;
      'center': the row of the centre patch (Teaching Matters' `select_positions`).
    Prefix keys are removed and the map renormalised; the tokens holding the top `mass` (0.6) of it
    form the attention mask (`top_mass_mask`); the score is its IoU with the foreground on the token
    grid (`mask_grid.token_mask`: PIL bicubic resize of the 8-bit mask to the grid, > 0, as Teaching
    Matters resizes its centre-cropped ground truth). Images whose token-grid foreground is empty are
    skipped, as Teaching Matters skips images with no usable mask. The 'merge' variant sums the
    heads' maps of a block first.

    Metrics: 'iou' (L, H) mean over images; 'iou_best' (L,) and 'best_head' (L,): the best head per
    block (what the paper plots); 'iou_merged' (L,); 'num_images' (images counted).
    """

    name: ClassVar[str] = "saliency_alignment"
    taps: ClassVar[frozenset[str]] = ATTN
    needs: ClassVar[frozenset[str]] = frozenset({"mask"})
    map: str = "cls"
    mass: float = 0.6

    def __post_init__(self):
        if self.map not in ("cls", "spatial_sum", "center"):
            raise ValueError(f"saliency_alignment map must be 'cls', 'spatial_sum' or 'center', not {self.map!r}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"saliency_alignment mass must be in (0, 1], not {self.mass}")

    def init(self, spec: Output):
        blocks, heads, layout = attention_shape(spec, self.name)
        if self.map == "cls":
            require_class_token(layout, self.name, "the class token's attention (map='cls')")
        return {"iou": jnp.zeros((blocks, heads + 1), jnp.float32), "count": jnp.zeros((), jnp.float32)}

    def saliency_maps(self, attn: jax.Array, layout: TokenLayout) -> jax.Array:
        """(B, H, K) maps over patch keys before renormalisation."""
        if self.map == "cls":
            return attn[:, :, 0, layout.patch_slice]
        if self.map == "spatial_sum":
            return patch_block(attn, layout).sum(-2)
        return attn[:, :, layout.num_prefix + centre_patch(layout.grid), layout.patch_slice]

    def update(self, state, output: Output, batch: dict):
        layout = output.layout
        if "mask" not in batch:
            raise ValueError("saliency_alignment needs foreground masks (batch['mask']); this dataset has none")
        foreground = token_mask(batch["mask"], layout.grid).reshape(batch["mask"].shape[0], 1, -1)
        counted = batch["valid"] & foreground.any((-2, -1))
        scores = []
        for attn in attention_maps(output, self.name):
            maps = self.saliency_maps(attn, layout)
            maps = renormalise(jnp.concatenate([maps, maps.sum(1, keepdims=True)], axis=1))  # heads + merged
            kept = top_mass_mask(maps, self.mass)
            intersection = (kept & foreground).sum(-1)
            union = jnp.maximum((kept | foreground).sum(-1), 1)
            scores.append(valid_sum(intersection / union, counted))
        return {"iou": state["iou"] + jnp.stack(scores), "count": state["count"] + counted.sum(dtype=jnp.float32)}

    def finalize(self, state):
        iou = mean_or_nan(state["iou"], state["count"])
        heads = iou[:, :-1]
        best = np.nanargmax(heads, axis=1) if np.isfinite(heads).any() else np.zeros(len(heads), np.int64)
        return {"iou": heads, "iou_best": heads.max(axis=1), "best_head": best, "iou_merged": iou[:, -1],
                "num_images": np.asarray(state["count"])}
