"""k-means in JAX, the purity / NMI / ARI of a clustering, and Teaching Matters' clustering analysis.

Teaching Matters (Walmer et al., CVPR'23; `cka/utils.py::cluster_metric`, `run_seg_analysis.py`)
clusters per-block features with `KMeans(50, random_state=0)` (k=80 for mask-pooled features) and
scores the clusters against the class labels with purity (majority vote), NMI and ARI.
`kmeans` reproduces scikit-learn's algorithm (greedy k-means++ seeding, Lloyd iterations, the
best of `n_init` restarts by inertia) under `jax.jit`; the scores are plain float64 NumPy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax.analysis.base import Analysis, Buffer
from vitjax.analysis.buffered import merge_buffers, token_grid
from vitjax.analysis.mask_grid import resize_uint8
from vitjax.capture import Output

__all__ = ["Clustering", "KMeansResult", "kmeans", "purity", "nmi", "ari", "contingency"]

HIGHEST = jax.lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
    centers: np.ndarray  # (k, D)
    labels: np.ndarray  # (n,) cluster of each row
    inertia: float  # sum of squared distances of the rows to their centres


def _sq_distances(x, sq_norms, centers):
    """(n, k) squared Euclidean distances, clipped at 0 against rounding."""
    cross = jnp.dot(x, centers.T, precision=HIGHEST)
    return jnp.maximum(sq_norms[:, None] - 2 * cross + (centers * centers).sum(-1)[None], 0.0)


def _kmeans_pp(key, x, sq_norms, weight, k):
    """scikit-learn's greedy k-means++: each new centre is the best of 2 + log(k) D^2-sampled trials.
    Rows of weight 0 (padding) are never drawn and add nothing to the potentials."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    key, first = jax.random.split(key)
    start = jnp.minimum(jnp.searchsorted(jnp.cumsum(weight), jax.random.uniform(first) * weight.sum()), n - 1)
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[start])
    closest = _sq_distances(x, sq_norms, centers[:1])[:, 0] * weight

    def add_center(c, carry):
        centers, closest, key = carry
        key, sub = jax.random.split(key)
        draws = jax.random.uniform(sub, (trials,)) * closest.sum()
        candidates = jnp.minimum(jnp.searchsorted(jnp.cumsum(closest), draws), n - 1)
        to_candidates = _sq_distances(x, sq_norms, x[candidates]) * weight[:, None]  # (n, trials)
        updated = jnp.minimum(closest[:, None], to_candidates)
        best = jnp.argmin(updated.sum(0))
        return centers.at[c].set(x[candidates[best]]), updated[:, best], key

    centers, _, _ = jax.lax.fori_loop(1, k, add_center, (centers, closest, key))
    return centers


def _lloyd(x, sq_norms, weight, centers, max_iter, tol):
    """Lloyd iterations until the squared centre shift is at most `tol` (an empty cluster keeps its centre)."""
    k = centers.shape[0]

    def step(carry):
        centers, it, _ = carry
        labels = jnp.argmin(_sq_distances(x, sq_norms, centers), axis=1)
        sums = jax.ops.segment_sum(x * weight[:, None], labels, num_segments=k)
        counts = jax.ops.segment_sum(weight, labels, num_segments=k)
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centers)
        return new, it + 1, ((new - centers) ** 2).sum()

    def running(carry):
        _, it, shift = carry
        return (it < max_iter) & (shift > tol)

    centers, _, _ = jax.lax.while_loop(running, step, (centers, 0, jnp.inf))
    return centers


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter"))
def _kmeans(x, weight, key, k: int, n_init: int, max_iter: int, tol_fraction):
    total = weight.sum()
    mean = (x * weight[:, None]).sum(0) / total
    x = (x - mean) * weight[:, None]  # centred as scikit-learn does (less rounding in the distance expansion)
    sq_norms = (x * x).sum(-1)
    tol = tol_fraction * ((x * x).sum(0) / total).mean()  # scikit-learn's tolerance: relative to the variance

    def run(key):
        centers = _lloyd(x, sq_norms, weight, _kmeans_pp(key, x, sq_norms, weight, k), max_iter, tol)
        d2 = _sq_distances(x, sq_norms, centers)
        return centers, jnp.argmin(d2, axis=1), (jnp.min(d2, axis=1) * weight).sum()

    centers, labels, inertia = jax.vmap(run)(jax.random.split(key, n_init))
    best = jnp.argmin(inertia)
    return centers[best] + mean, labels[best], inertia[best]


def _padded_size(n: int) -> int:
    """n rounded up to 1/8 of its power of two (at most 12.5% extra rows), so k-means compiles once per bucket."""
    step = max(8, 1 << max((n - 1).bit_length() - 3, 0))
    return -(-n // step) * step


def kmeans(x, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    """k-means of the rows of `x` (n, D): the lowest-inertia run of `n_init` k-means++-seeded restarts.

    The restarts run in parallel (vmap) inside one jit; `tol` is relative to the mean per-feature
    variance, as in scikit-learn. Deterministic in `seed`. Memory: about n_init * n * k floats.
    One difference: a cluster that empties keeps its centre (scikit-learn moves it to a far point).
    Rows are padded (with zero weight) to a size bucket so that similar sizes share a compilation.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans expects a (rows, features) array, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= number of rows; got k={k} for {n} rows")
    size = _padded_size(n)
    padded = np.zeros((size, x.shape[1]), np.float32)
    padded[:n] = x
    weight = (np.arange(size) < n).astype(np.float32)
    centers, labels, inertia = _kmeans(jnp.asarray(padded), jnp.asarray(weight), jax.random.key(seed), k, n_init,
                                       max_iter, tol)
    return KMeansResult(np.asarray(centers), np.asarray(labels)[:n], float(inertia))


def contingency(labels_true, labels_pred) -> np.ndarray:
    """(classes, clusters) int64 table of co-occurrence counts."""
    _, t = np.unique(np.asarray(labels_true), return_inverse=True)
    _, p = np.unique(np.asarray(labels_pred), return_inverse=True)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), np.int64)
    np.add.at(table, (t.ravel(), p.ravel()), 1)
    return table


def purity(labels_true, labels_pred) -> float:
    """Fraction of rows whose class is their cluster's majority class."""
    table = contingency(labels_true, labels_pred)
    return float(table.max(axis=0).sum() / table.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information, MI / mean(H(true), H(pred)) (scikit-learn's default, 'arithmetic')."""
    table = contingency(labels_true, labels_pred).astype(np.float64)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0  # neither labelling splits the data: a perfect match
    joint = table / table.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())
    denominator = (_entropy(table.sum(1)) + _entropy(table.sum(0))) / 2
    return 0.0 if mi <= 0 else mi / denominator


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert and Arabie): pair-counting agreement corrected for chance."""
    table = contingency(labels_true, labels_pred).astype(np.float64)
    pairs = lambda c: (c * (c - 1) / 2).sum()
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([table.sum()]))
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else float((index - expected) / (maximum - expected))


def _mask_weights(mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(B, gh, gw) weights summing to 1 (all 0 for an image without foreground), as Teaching Matters'
    `prep_token_masks`: the 8-bit mask resized to the token grid by PIL's bicubic, then divided by its sum."""
    pixels = jnp.round(jnp.clip(mask, 0.0, 1.0) * 255.0).astype(jnp.int32)
    weights = resize_uint8(pixels, grid).astype(jnp.float32)
    total = weights.sum((1, 2))
    return weights / jnp.where(total > 0, total, 1.0)[:, None, None]


@dataclasses.dataclass(frozen=True)
class Clustering(Analysis):
    """k-means of per-block image features, scored against the labels (Teaching Matters).

    Features per block (block outputs before the final norm): 'class' (the class token, if the
    model has one), 'mean' (mean of the patch tokens; the global semantics) and, on batches with a
    'mask', 'mask' (the patch tokens pooled with the mask resized to the token grid and normalised
    to sum 1; the local semantics). Works for ViTs and ResNets (a stage's mean feature map).
    Teaching Matters pools each annotated object of COCO / PartImageNet separately, labelled with
    its category; here the batch's foreground mask and the image label give one row per image.

    Options: k=50 and k_mask=80 (Teaching Matters' global and local settings), n_init=10 restarts
    with seed=0, `capacity` images (5,000 as Teaching Matters' ImageNet-50 subset), `blocks` (None:
    every block). If fewer images than k arrive, k is lowered to the image count (with a warning)
    and the k used is in the metrics.

    Memory: the first `capacity` valid images are kept, in bounded Buffers of 4 * capacity *
    (kinds * sum of the chosen blocks' widths + 2) bytes (ViT-S, 12 blocks, 3 kinds, 5,000 images:
    about 280 MB). `mask_pooled=False` drops the mask kind's third.

    Metrics: 'blocks' (L,), '{kind}_purity', '{kind}_nmi', '{kind}_ari' (L,) for each kind present,
    'num_images', 'num_mask_images' (images with any foreground), 'k', 'k_mask'.
    """

    name: ClassVar[str] = "clustering"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens"})
    needs: ClassVar[frozenset[str]] = frozenset({"label"})

    k: int = 50
    k_mask: int = 80
    capacity: int = 5000
    blocks: tuple[int, ...] | None = None
    mask_pooled: bool = True
    n_init: int = 10
    seed: int = 0

    def _blocks(self, spec: Output) -> tuple[int, ...]:
        recorded = spec.blocks_with("tokens")
        if self.blocks is None:
            return recorded
        depth = len(spec.layers)
        chosen = tuple(b % depth for b in self.blocks)
        if missing := sorted(set(chosen) - set(recorded)):
            raise ValueError(f"clustering asks for blocks {missing}, which recorded no 'tokens'")
        return chosen

    def _kinds(self, spec: Output) -> tuple[str, ...]:
        return ("class",) * (spec.layout.num_class > 0) + ("mean",) + ("mask",) * self.mask_pooled

    def init(self, spec: Output) -> dict:
        blocks = self._blocks(spec)
        widths = [spec.layers[b]["tokens"].shape[-1] for b in blocks]
        state = {kind: tuple(Buffer(self.capacity, (w,)).init() for w in widths) for kind in self._kinds(spec)}
        state["labels"] = Buffer(self.capacity, (), jnp.int32).init()
        if self.mask_pooled:
            state["mask_labels"] = Buffer(self.capacity, (), jnp.int32).init()
        state["blocks"] = jnp.asarray(blocks, jnp.int32)
        return state

    def update(self, state: dict, output: Output, batch: dict) -> dict:
        layout, valid = output.layout, batch["valid"]
        has_mask = self.mask_pooled and "mask" in batch
        state = dict(state)
        for kind in self._kinds(output):
            state[kind] = list(state[kind])
        image_hw = batch["image"].shape[1:3]
        foreground = None  # images whose resized mask keeps any weight (Teaching Matters skips the others)
        for i, b in enumerate(self._blocks(output)):
            tokens = output.layers[b]["tokens"].astype(jnp.float32)
            patches = tokens[:, layout.num_prefix :]
            rows = Buffer(self.capacity, tokens.shape[-1:])
            if "class" in state:
                state["class"][i] = rows.append(state["class"][i], tokens[:, 0], valid)
            state["mean"][i] = rows.append(state["mean"][i], patches.mean(1), valid)
            if has_mask:
                grid = token_grid(patches.shape[1], image_hw)
                weights = _mask_weights(batch["mask"].astype(jnp.float32), grid)
                if foreground is None:  # decided on the first block's grid (a ViT's blocks share it)
                    foreground = weights.sum((1, 2)) > 0
                pooled = jnp.einsum("bp,bpd->bd", weights.reshape(weights.shape[0], -1), patches, precision=HIGHEST)
                state["mask"][i] = rows.append(state["mask"][i], pooled, valid & foreground)
        labels = Buffer(self.capacity, (), jnp.int32)
        state["labels"] = labels.append(state["labels"], batch["label"], valid)
        if has_mask:
            state["mask_labels"] = labels.append(state["mask_labels"], batch["label"], valid & foreground)
        return {key: tuple(value) if isinstance(value, list) else value for key, value in state.items()}

    def merge(self, a: dict, b: dict) -> dict:
        without_blocks = lambda state: {k: v for k, v in state.items() if k != "blocks"}
        merged = merge_buffers(without_blocks(a), without_blocks(b))
        return {**merged, "blocks": a["blocks"]}

    def finalize(self, state: dict) -> dict[str, np.ndarray]:
        blocks = np.asarray(state["blocks"])
        metrics = {"blocks": blocks, "num_images": np.int64(state["labels"]["count"])}
        kinds = [kind for kind in ("class", "mean", "mask") if kind in state]
        if "mask_labels" in state:
            metrics["num_mask_images"] = np.int64(state["mask_labels"]["count"])
            if not metrics["num_mask_images"]:
                kinds.remove("mask")  # the data had no masks (or no foreground)
        progress = tqdm(total=len(kinds) * len(blocks), desc="clustering: k-means", leave=False)
        for kind in kinds:
            labels = Buffer.rows(state["mask_labels" if kind == "mask" else "labels"])
            k = min(self.k_mask if kind == "mask" else self.k, len(labels))
            if k < (self.k_mask if kind == "mask" else self.k):
                warnings.warn(f"clustering: only {len(labels)} images for the {kind!r} features; k lowered to {k}")
            metrics["k_mask" if kind == "mask" else "k"] = np.int64(k)
            scores = {"purity": [], "nmi": [], "ari": []}
            for i in range(len(blocks)):
                features = Buffer.rows(state[kind][i])
                clusters = kmeans(features, k, n_init=self.n_init, seed=self.seed).labels if k else labels
                for score, fn in (("purity", purity), ("nmi", nmi), ("ari", ari)):
                    scores[score].append(fn(labels, clusters) if k else np.nan)
                progress.update()
            for score, values in scores.items():
                metrics[f"{kind}_{score}"] = np.asarray(values, np.float64)
        progress.close()
        return metrics
