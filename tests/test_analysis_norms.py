"""Token norms, the outlier threshold, outlier redundancy and linear probes against NumPy float64 oracles
on synthetic tokens with planted high-norm outliers; padding rows, streaming and merging; the
'patch_embed' tap and all three analyses through a real ViT under jit; the figures."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vitjax
from vitjax import parallel
from vitjax.analysis.clustering import Clustering
from vitjax.analysis.norm_histogram import find_threshold, log_bin_edges
from vitjax.analysis.norms import OutlierRedundancy, TokenNorms
from vitjax.analysis.probes import Probes
from vitjax.capture import Output, TokenLayout
from vitjax.report.figures_registers import plot_outlier_redundancy, plot_probes, plot_token_norms

LAYOUT = TokenLayout(num_class=1, num_dist=0, num_registers=2, grid=(3, 4), patch_size=(2, 2))
P = LAYOUT.num_patches


def bimodal_norms(rng, size, outlier_share=0.03):
    """Log-normal norms around 20, with `outlier_share` of them around 300."""
    norms = np.exp(rng.normal(math.log(20), 0.25, size))
    outliers = rng.random(size) < outlier_share
    norms[outliers] = np.exp(rng.normal(math.log(300), 0.1, outliers.sum()))
    return norms, outliers


def test_threshold_lies_in_the_valley_of_a_bimodal_sample_and_not_for_one_mode():
    rng = np.random.default_rng(0)
    norms, outliers = bimodal_norms(rng, 50_000)
    edges = log_bin_edges(240, 1e-2, 1e4)
    counts = np.bincount(np.searchsorted(edges, norms.astype(np.float32), side="right"), minlength=242)
    found = find_threshold(counts, edges)
    assert found.bimodal
    assert norms[~outliers].max() < found.value < norms[outliers].min()
    assert math.isclose(found.minor_fraction, outliers.mean(), rel_tol=1e-9)
    assert found.index == np.searchsorted(edges, found.value) + 1
    one_mode = np.exp(rng.normal(math.log(20), 0.5, 50_000))
    counts = np.bincount(np.searchsorted(edges, one_mode.astype(np.float32), side="right"), minlength=242)
    assert not find_threshold(counts, edges).bimodal
    heavy_tail = np.exp(rng.standard_t(3, 50_000) * 0.4 + 3)  # skewed but one mode
    counts = np.bincount(np.searchsorted(edges, heavy_tail.astype(np.float32), side="right"), minlength=242)
    assert not find_threshold(counts, edges).bimodal


def make_tokens(rng, batch, blocks=3, width=8, outliers=True):
    """(L, B, N, D) tokens with chosen norms: the last block has planted outliers, mostly at two positions."""
    norms = np.exp(rng.normal(math.log(20), 0.2, (blocks, batch, LAYOUT.num_tokens)))
    hot = np.zeros((batch, P), bool)
    hot[:, 5] = rng.random(batch) < 0.8
    hot[:, 10] = rng.random(batch) < 0.5
    hot |= rng.random((batch, P)) < 0.02
    norms[-1, :, LAYOUT.num_prefix:][hot & outliers] = np.exp(rng.normal(math.log(400), 0.1, (hot & outliers).sum()))
    norms[:, :, 1:3] *= 0.1  # registers: low norm
    directions = rng.normal(size=(blocks, batch, LAYOUT.num_tokens, width))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return (directions * norms[..., None]).astype(np.float32)


def make_output(tokens, embed=None):
    layers = [{"tokens": jnp.asarray(t)} for t in tokens]
    if embed is not None:
        layers = [{**layer, "patch_embed": jnp.asarray(embed)} for layer in layers]
    pooled = jnp.zeros(tokens.shape[1:2] + tokens.shape[-1:])
    return Output(pooled, jnp.asarray(tokens[-1]), None, None, tuple(layers), LAYOUT)


def make_batch(rng, batch, valid_count):
    valid = np.arange(batch) < valid_count
    return {"image": rng.normal(size=(batch, 6, 8, 3)).astype(np.float32), "valid": valid,
            "label": rng.integers(0, 3, batch).astype(np.int32)}


def stream(analysis, parts):
    """Updates under jit over several (output, batch) parts, two of them merged from separate states."""
    update = jax.jit(analysis.update)
    init = analysis.init(parts[0][0])
    first = init
    for out, batch in parts[:-1]:
        first = update(first, out, batch)
    return analysis.merge(first, update(init, *parts[-1]))


def test_token_norms_against_numpy_with_padding_rows_streamed_and_merged():
    rng = np.random.default_rng(1)
    data = [(make_tokens(rng, 64), make_batch(rng, 64, 60)) for _ in range(3)]
    for tokens, batch in data:
        tokens[:, ~batch["valid"]] = 1e6  # padding rows would be outliers if counted
    parts = [(make_output(t), b) for t, b in data]
    analysis = TokenNorms()
    metrics = analysis.finalize(stream(analysis, parts))
    norms = np.concatenate([np.linalg.norm(t[:, b["valid"]].astype(np.float64), axis=-1) for t, b in data], axis=1)
    patch, registers = norms[:, :, LAYOUT.num_prefix:], norms[:, :, 1:3]
    np.testing.assert_allclose(metrics["patch_mean"], patch.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(metrics["patch_std"], patch.std(axis=(1, 2)), rtol=1e-3)
    np.testing.assert_allclose(metrics["register_mean"], registers.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(metrics["class_mean"], norms[:, :, 0].mean(1), rtol=1e-5)
    one_bin = (1e4 / 1e-2) ** (1 / 240)
    for j, q in enumerate(metrics["percentiles"]):
        ratio = metrics["patch_percentile"][:, j] / np.percentile(patch.reshape(3, -1), q, axis=1)
        assert np.all((ratio < one_bin) & (ratio > 1 / one_bin))
    assert metrics["bimodal"] == 1 and metrics["threshold_block"] == 2
    threshold = metrics["threshold"]
    assert 60 < threshold < 250
    above = patch >= np.float32(threshold)
    np.testing.assert_allclose(metrics["outlier_fraction"], above.mean((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(metrics["outlier_map"], above.mean(1).reshape(3, *LAYOUT.grid), rtol=1e-12)
    np.testing.assert_allclose(metrics["register_above_threshold"], (registers >= threshold).mean((1, 2)))
    assert metrics["outlier_map"][2].ravel().argmax() == 5
    assert metrics["patch_hist"].sum() == 3 * 180 * P  # 180 valid images


def test_a_given_threshold_and_no_bimodality_are_reported_not_invented():
    rng = np.random.default_rng(2)
    tokens, batch = make_tokens(rng, 32, outliers=False), make_batch(rng, 32, 32)  # no outliers anywhere
    out = make_output(tokens)
    metrics = TokenNorms().finalize(TokenNorms().update(TokenNorms().init(out), out, batch))
    assert metrics["bimodal"] == 0 and math.isnan(metrics["threshold"])
    assert np.isnan(metrics["outlier_fraction"]).all() and np.isnan(metrics["outlier_map"]).all()
    given = TokenNorms(threshold=25.0)
    metrics = given.finalize(given.update(given.init(out), out, batch))
    edges = log_bin_edges(240, 1e-2, 1e4)
    assert metrics["bimodal"] == -1 and metrics["threshold"] == edges[edges >= 25.0][0]
    patch = np.linalg.norm(tokens[:, :, LAYOUT.num_prefix:], axis=-1)
    np.testing.assert_allclose(metrics["outlier_fraction"], (patch >= metrics["threshold"]).mean((1, 2)))


def neighbour_similarity_loops(embed):
    """(B, P) mean cosine similarity with the 4-neighbours, by explicit loops in float64."""
    gh, gw = LAYOUT.grid
    e = embed.astype(np.float64).reshape(len(embed), gh, gw, -1)
    out = np.zeros((len(embed), gh, gw))
    for b in range(len(e)):
        for i in range(gh):
            for j in range(gw):
                sims = []
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    if 0 <= i + di < gh and 0 <= j + dj < gw:
                        u, v = e[b, i, j], e[b, i + di, j + dj]
                        sims.append(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
                out[b, i, j] = np.mean(sims)
    return out.reshape(len(e), -1)


@pytest.mark.parametrize("threshold", [None, 150.0])
def test_outlier_redundancy_against_a_numpy_loop(threshold):
    rng = np.random.default_rng(3)
    data = []
    for _ in range(2):
        tokens, batch = make_tokens(rng, 40), make_batch(rng, 40, 37)
        embed = rng.normal(size=(40, P, 8)).astype(np.float32)
        embed[:, 5] = embed[:, 4] + 0.1 * embed[:, 5]  # position 5 (often an outlier) repeats its neighbour
        data.append((tokens, embed, batch))
    parts = [(make_output(t, e), b) for t, e, b in data]
    analysis = OutlierRedundancy(threshold=threshold)
    metrics = analysis.finalize(stream(analysis, parts))
    expected = TokenNorms().finalize(stream(TokenNorms(), [(make_output(t), b) for t, _, b in data]))["threshold"]
    cut = expected if threshold is None else threshold
    assert metrics["threshold"] == cut
    sims = np.concatenate([neighbour_similarity_loops(e[b["valid"]]) for _, e, b in data])
    norms = np.concatenate([np.linalg.norm(t[-1, b["valid"], LAYOUT.num_prefix:], axis=-1) for t, _, b in data])
    outlier = norms >= np.float32(cut)
    for side, chosen in (("outlier", outlier), ("normal", ~outlier)):
        assert metrics[f"{side}_count"] == chosen.sum()
        assert math.isclose(metrics[f"{side}_cos_mean"], sims[chosen].mean(), rel_tol=1e-5)
        assert math.isclose(metrics[f"{side}_cos_std"], sims[chosen].std(), rel_tol=1e-3)
        hist = np.histogram(sims[chosen], bins=40, range=(-1, 1))[0]
        assert np.abs(metrics[f"{side}_cos_hist"] - hist).sum() <= 2  # bin-edge rounding at most
    assert metrics["outlier_cos_mean"] > metrics["normal_cos_mean"] + 0.1


def test_a_batch_sharded_over_8_devices_updates_every_state_as_one_device_does():
    rng = np.random.default_rng(6)
    tokens, batch = make_tokens(rng, 64), make_batch(rng, 64, 59)
    batch["mask"] = (rng.random((64, 6, 8)) < 0.5).astype(np.float32)
    embed = rng.normal(size=(64, P, 8)).astype(np.float32)
    out = make_output(tokens, embed)
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8
    rows = parallel.batch_sharding(mesh)
    sharded_out = jax.tree_util.tree_map(lambda x: jax.device_put(x, rows), out)
    sharded_batch = parallel.global_batch(batch, rows)
    for analysis in (TokenNorms(), OutlierRedundancy(), Clustering(k=2, capacity=80)):  # scatters and Buffers
        init = jax.device_put(analysis.init(out), parallel.replicated(mesh))
        one = analysis.update(analysis.init(out), out, batch)  # eagerly, on one device
        eight = jax.jit(analysis.update)(init, sharded_out, sharded_batch)
        for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=analysis.name)


PROBE_LAYOUT = TokenLayout(num_class=1, num_dist=0, num_registers=1, grid=(4, 4), patch_size=(2, 2))


def probe_data(rng, images, planted, padding):
    """Tokens (1, B, 18, 30): a patch token is [3 * onehot(position), its 12 pixels, 2 noise] + noise, the
    class token the label's mean + noise, the register and (one per image) an outlier pure high-norm noise.
    Without `planted` every token is noise. The last `padding` images are padding rows of NaN."""
    pixels = rng.normal(size=(images, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 4, images).astype(np.int32)
    patch_pixels = pixels.reshape(images, 4, 2, 4, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(images, 16, 12)
    tokens = 0.05 * rng.normal(size=(images, 18, 30))
    if planted:
        tokens[:, 2:, :16] += 3 * np.eye(16)
        tokens[:, 2:, 16:28] += patch_pixels
        tokens[:, 0] += 2 * rng.normal(size=(4, 30))[labels]
    else:
        tokens += rng.normal(size=tokens.shape) * 3
    where = rng.integers(0, 16, images)
    tokens[np.arange(images), 2 + where] = 300 * rng.normal(size=(images, 30)) / math.sqrt(30)
    tokens[images - padding:] = np.nan
    out = Output(jnp.zeros((images, 30)), jnp.asarray(tokens, jnp.float32), None, None,
                 ({"tokens": jnp.asarray(tokens, jnp.float32)},), PROBE_LAYOUT)
    return out, {"image": pixels, "valid": np.arange(images) < images - padding, "label": labels}


@pytest.mark.parametrize("planted", [True, False])
def test_probes_decode_planted_information_and_stay_at_chance_on_noise(planted):
    rng = np.random.default_rng(4)
    out, batch = probe_data(rng, 120, planted, padding=4)
    analysis = Probes(capacity=128, epochs=300, lr=1e-2)
    state = jax.jit(analysis.update)(analysis.init(out), out, batch)
    halves = [(jax.tree_util.tree_map(lambda x: x[part], out), {k: v[part] for k, v in batch.items()})
              for part in (slice(0, 50), slice(50, None))]
    merged = analysis.merge(*(analysis.update(analysis.init(out), *half) for half in halves))
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = analysis.finalize(state)
    assert metrics["num_images"] == 116 and metrics["bimodal"] == 1
    assert metrics["train_tokens_outlier"] > 0 and metrics["train_tokens_normal"] == metrics["train_tokens_outlier"]
    assert metrics["position_chance"] == 1 / 16 and metrics["class_chance"] == 1 / 4
    if planted:
        assert metrics["position_acc_normal"] > 0.8 and metrics["pixel_r2_normal"] > 0.9
        assert metrics["class_acc_class"] > 0.9
    else:
        assert metrics["position_acc_normal"] < 0.2 and metrics["pixel_r2_normal"] < 0.1
        assert metrics["class_acc_class"] < 0.6
    # the outliers are noise in both cases: nothing to decode
    assert metrics["position_acc_outlier"] < 0.25 and metrics["pixel_r2_outlier"] < 0.1
    assert metrics["class_acc_register"] < 0.6


def test_patch_embed_tap_and_all_three_analyses_through_a_real_vit_under_jit(tmp_path):
    model, params = vitjax.load("vit_scenes_patch8_64")
    rng = np.random.default_rng(5)
    images = rng.normal(size=(24, 64, 64, 3)).astype(np.float32)
    analyses = [TokenNorms(), OutlierRedundancy(), Probes(capacity=32, epochs=3)]
    taps = frozenset().union(*(a.taps for a in analyses))
    apply = lambda p, x: model.apply({"params": p}, x, capture=taps)
    spec = jax.eval_shape(apply, params, images[:12])
    step = jax.jit(lambda states, p, b: [a.update(s, apply(p, b["image"]), b) for a, s in zip(analyses, states)])
    states = [a.init(spec) for a in analyses]
    for part in (slice(0, 12), slice(12, 24)):
        batch = {"image": images[part], "valid": np.arange(12) < 10, "label": np.arange(12, dtype=np.int32) % 3}
        states = step(states, params, batch)
    metrics = [a.finalize(s) for a, s in zip(analyses, states)]
    valid_images = np.concatenate([images[:10], images[12:22]])
    out = jax.jit(apply)(params, valid_images)
    # the tap: the patch projection, computed here with NumPy from the params
    patches = valid_images[:2].reshape(2, 8, 8, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 64, -1)
    kernel = np.asarray(params["patch_embed_kernel"], np.float64).reshape(-1, 96)
    expected = patches.astype(np.float64) @ kernel + np.asarray(params["patch_embed_bias"], np.float64)
    np.testing.assert_allclose(np.asarray(out.layers[0]["patch_embed"][:2]), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.layers[3]["patch_embed"]), np.asarray(out.layers[0]["patch_embed"]))
    tokens = np.stack([np.asarray(layer["tokens"]) for layer in out.layers])
    norms = np.linalg.norm(tokens.astype(np.float64), axis=-1)
    np.testing.assert_allclose(metrics[0]["patch_mean"], norms[:, :, 1:].mean((1, 2)), rtol=1e-4)
    assert metrics[0]["patch_hist"].sum() == 4 * 20 * 64
    assert metrics[1]["normal_count"] + metrics[1]["outlier_count"] == 20 * 64
    assert metrics[2]["num_images"] == 20 and np.isfinite(metrics[2]["class_acc_class"])
    figures = (plot_token_norms(metrics[0], tmp_path, "vit") + plot_outlier_redundancy(metrics[1], tmp_path, "vit")
               + plot_probes(metrics[2], tmp_path, "vit"))
    assert figures and all((tmp_path / f.path).stat().st_size > 1000 for f in figures)
