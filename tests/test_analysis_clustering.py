"""k-means against scikit-learn, purity / NMI / ARI against float64 NumPy formulas and scikit-learn, and
the clustering analysis (class, mean and mask-pooled features; PIL as the mask-resize oracle) on
synthetic outputs with padding rows, streamed and merged, and through a real ViT under jit."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import vitjax
from vitjax.analysis.base import Buffer
from vitjax.analysis.clustering import Clustering, ari, kmeans, nmi, purity
from vitjax.capture import Output, TokenLayout


def test_kmeans_recovers_separated_blobs_like_sklearn():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 5)) * 20
    truth = rng.integers(0, 6, 300)
    x = (centers[truth] + rng.normal(size=(300, 5))).astype(np.float32)
    ours = kmeans(x, 6)
    theirs = KMeans(6, n_init=10, random_state=0).fit(x)
    assert adjusted_rand_score(truth, ours.labels) == 1.0
    assert math.isclose(ours.inertia, theirs.inertia_, rel_tol=1e-4)
    assert math.isclose(ours.inertia, ((x - ours.centers[ours.labels]) ** 2).sum(), rel_tol=1e-4)


def test_kmeans_on_random_data_is_as_good_as_sklearn_best_of_10():
    x = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)  # the blobs' shapes: one compilation
    ours = kmeans(x, 6)
    theirs = KMeans(6, n_init=10, random_state=0).fit(x)
    assert ours.inertia <= theirs.inertia_ * 1.02
    # every point sits with its nearest centre (a Lloyd fixed point) and the run is reproducible
    d2 = ((x[:, None] - ours.centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ours.labels, d2.argmin(1))
    assert kmeans(x, 6).inertia == ours.inertia


def _scores_float64(t, p):
    """Purity, NMI (arithmetic normalisation) and ARI from their definitions, with Python loops."""
    n = len(t)
    classes, clusters = sorted(set(t)), sorted(set(p))
    table = np.array([[sum(1 for a, b in zip(t, p) if a == c and b == k) for k in clusters] for c in classes], float)
    pure = sum(table[:, j].max() for j in range(len(clusters))) / n
    h = lambda counts: -sum(c / n * math.log(c / n) for c in counts if c)
    mi = sum(table[i, j] / n * math.log(table[i, j] * n / (table[i].sum() * table[:, j].sum()))
             for i in range(len(classes)) for j in range(len(clusters)) if table[i, j])
    norm_mi = mi / ((h(table.sum(1)) + h(table.sum(0))) / 2)
    same_t = [a == b for a, b in itertools.combinations(t, 2)]
    same_p = [a == b for a, b in itertools.combinations(p, 2)]
    pairs = len(same_t)
    both = sum(a and b for a, b in zip(same_t, same_p))
    expected = sum(same_t) * sum(same_p) / pairs
    adjusted = (both - expected) / ((sum(same_t) + sum(same_p)) / 2 - expected)
    return pure, norm_mi, adjusted


@pytest.mark.parametrize("seed", [0, 1])
def test_purity_nmi_ari_match_float64_formulas_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, 120)
    p = np.where(rng.random(120) < 0.6, t + 10, rng.integers(0, 6, 120))  # partly agrees, other label ids
    pure, norm_mi, adjusted = _scores_float64(list(t), list(p))
    assert math.isclose(purity(t, p), pure, rel_tol=1e-12)
    assert math.isclose(nmi(t, p), norm_mi, rel_tol=1e-10)
    assert math.isclose(ari(t, p), adjusted, rel_tol=1e-10)
    assert math.isclose(nmi(t, p), normalized_mutual_info_score(t, p), rel_tol=1e-10)
    assert math.isclose(ari(t, p), adjusted_rand_score(t, p), rel_tol=1e-10)
    assert nmi(t, t) == 1.0 and ari(t, t) == 1.0 and purity(t, t) == 1.0


LAYOUT = TokenLayout(num_class=1, num_dist=0, num_registers=1, grid=(2, 3), patch_size=(4, 4))  # non-square


def synthetic(rng, batch, blocks=2, width=5):
    """An Output with random tokens and a batch with labels, soft masks (one empty) and padding rows."""
    tokens = rng.normal(size=(blocks, batch, LAYOUT.num_tokens, width)).astype(np.float32)
    mask = rng.random((batch, 8, 12)).astype(np.float32) * (rng.random((batch, 8, 12)) < 0.4)
    mask[1] = 0.0  # no foreground: left out of the mask-pooled features
    valid = np.ones(batch, bool)
    valid[-2:] = False
    tokens[:, ~valid] = np.nan  # padding rows must not leak into anything
    batch_dict = {"image": np.zeros((batch, 8, 12, 3), np.float32), "valid": valid,
                  "label": rng.integers(0, 3, batch).astype(np.int32), "mask": mask}
    out = Output(jnp.zeros((batch, width)), jnp.asarray(tokens[-1]), None, None,
                 tuple({"tokens": jnp.asarray(t)} for t in tokens), LAYOUT)
    return out, batch_dict


def pooled_oracle(tokens, mask):
    """Teaching Matters' mask pooling with PIL itself: the 8-bit mask resized by PIL's default, normalised."""
    image = Image.fromarray(np.round(mask * 255).astype(np.uint8)).resize((LAYOUT.grid[1], LAYOUT.grid[0]))
    weights = np.asarray(image, np.float64)
    if weights.sum() == 0:
        return None
    weights /= weights.sum()
    return (weights.reshape(-1, 1) * tokens[LAYOUT.num_prefix:].astype(np.float64)).sum(0)


def test_clustering_features_ignore_padding_and_match_numpy_and_pil():
    rng = np.random.default_rng(2)
    out, batch = synthetic(rng, 7)
    analysis = Clustering(k=2, k_mask=2, capacity=16)
    state = jax.jit(analysis.update)(analysis.init(out), out, batch)
    valid = batch["valid"]
    for i, layer in enumerate(out.layers):
        tokens = np.asarray(layer["tokens"])[valid]
        np.testing.assert_allclose(Buffer.rows(state["class"][i]), tokens[:, 0])
        np.testing.assert_allclose(Buffer.rows(state["mean"][i]), tokens[:, LAYOUT.num_prefix:].mean(1), rtol=1e-6)
        pooled = [pooled_oracle(t, m) for t, m in zip(tokens, batch["mask"][valid])]
        expected = np.stack([p for p in pooled if p is not None])
        np.testing.assert_allclose(Buffer.rows(state["mask"][i]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(Buffer.rows(state["labels"]), batch["label"][valid])
    kept = [p is not None for p in pooled]
    np.testing.assert_array_equal(Buffer.rows(state["mask_labels"]), batch["label"][valid][kept])


def test_clustering_streamed_and_merged_equals_one_update_and_scores_match():
    rng = np.random.default_rng(3)
    parts = [synthetic(rng, 6) for _ in range(3)]
    analysis = Clustering(k=3, k_mask=3, capacity=40)
    init = analysis.init(parts[0][0])
    update = jax.jit(analysis.update)
    streamed = update(update(init, *parts[0]), *parts[1])
    merged = analysis.merge(streamed, update(init, *parts[2]))
    concat = lambda *xs: np.concatenate(xs)
    whole_batch = {k: concat(*(p[1][k] for p in parts)) for k in parts[0][1]}
    whole_out = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *(p[0] for p in parts))
    whole = update(init, whole_out, whole_batch)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(whole)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = analysis.finalize(merged)
    labels = Buffer.rows(merged["labels"])
    assert metrics["num_images"] == 12 and metrics["k"] == 3
    clusters = kmeans(Buffer.rows(merged["mean"][1]), 3).labels
    assert math.isclose(metrics["mean_nmi"][1], normalized_mutual_info_score(labels, clusters), rel_tol=1e-9)
    assert math.isclose(metrics["mean_ari"][1], adjusted_rand_score(labels, clusters), rel_tol=1e-9)
    for kind in ("class", "mean", "mask"):
        assert metrics[f"{kind}_purity"].shape == (2,) and np.isfinite(metrics[f"{kind}_nmi"]).all()


def test_clustering_through_a_real_vit_under_jit_separates_planted_classes():
    model, params = vitjax.load("vit_scenes_patch8_64")
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 8).astype(np.int32)
    # three visually distinct image families: constant colours far apart, plus a little noise
    colours = np.array([[-1.5, 0, 0], [0, 1.5, 0], [0, 0, -1.5]], np.float32)
    images = (colours[labels][:, None, None] + 0.1 * rng.normal(size=(24, 64, 64, 3))).astype(np.float32)
    analysis = Clustering(k=3, capacity=32, mask_pooled=False)
    spec = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, capture="tokens"), params, images)
    step = jax.jit(lambda s, p, b: analysis.update(s, model.apply({"params": p}, b["image"], capture="tokens"), b))
    state = analysis.init(spec)
    for part in np.split(np.arange(24), 3):
        state = step(state, params, {"image": images[part], "valid": np.ones(8, bool), "label": labels[part]})
    metrics = analysis.finalize(state)
    reference = model.apply({"params": params}, images[:8], capture="tokens")
    np.testing.assert_allclose(Buffer.rows(state["class"][2])[:8], np.asarray(reference.layers[2]["tokens"][:, 0]),
                               rtol=1e-4, atol=1e-4)
    assert set(metrics) >= {"class_purity", "class_nmi", "class_ari", "mean_purity", "mean_nmi", "mean_ari"}
    assert metrics["mean_purity"][0] == 1.0 and metrics["mean_ari"][0] == 1.0  # block 0 still sees the colour
