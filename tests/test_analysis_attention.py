"""The attention analyses against float64 NumPy oracles of the papers' formulas (attention_analysis_oracle.py),
on random attention maps with prefix tokens (class, distillation, registers), rows whose mass is all on
prefix tokens, non-square grids and padding rows; streaming and merging; a real ViT under jit."""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

import attention_analysis_oracle as oracle
import vitjax
from vitjax.analysis import attention as A
from vitjax.analysis.mask_grid import resize_uint8
from vitjax.capture import Output, TokenLayout
from vitjax.parallel import batch_sharding, make_mesh

LAYOUTS = {
    "cls_4x4": TokenLayout(num_class=1, num_dist=0, num_registers=0, grid=(4, 4), patch_size=(16, 16)),
    "cls_dist_reg2_3x5": TokenLayout(num_class=1, num_dist=1, num_registers=2, grid=(3, 5), patch_size=(8, 6)),
}
ANALYSES = [
    A.AttentionDistance(), A.AttentionDistance(units="pixels"), A.AttentionEntropy(), A.NormalizedMutualInformation(),
    A.AttentionCollapse(), A.AttentionReceived(), A.ClsAttentionMaps(num_images=3), A.AlignedAttentionMaps(),
    A.AlignedAttentionMaps(divisor="teaching_matters", batch_size=2), A.SaliencyAlignment(),
    A.SaliencyAlignment(map="spatial_sum", mass=0.5), A.SaliencyAlignment(map="center"),
]
IDS = [f"{a.name}-{i}" for i, a in enumerate(ANALYSES)]


def random_attention(rng, blocks, batch, heads, layout):
    """Softmax rows of varied sharpness, (L, B, H, N, N) float32, with rows whose mass is all on prefix
    tokens: a patch query's row, and every head's class row in block 1 of image 1."""
    n, p = layout.num_tokens, layout.num_prefix
    logits = rng.normal(size=(blocks, batch, heads, n, n)) * rng.uniform(0.3, 4.0, size=(blocks, batch, heads, 1, 1))
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn[0, 0, 0, p + 1, p:] = 0.0
    attn[1, 1, :, 0, p:] = 0.0
    attn[1, 1, 1, p + 2, p:] = 0.0
    return (attn / attn.sum(-1, keepdims=True)).astype(np.float32)


def random_masks(rng, batch, layout):
    """Foreground blobs at the input resolution; image 2 has no foreground (skipped by the saliency IoU)."""
    height, width = (g * s for g, s in zip(layout.grid, layout.patch_size))
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((batch, height, width), np.float32)
    for b in range(batch):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.2, 0.5) * min(height, width)
        masks[b] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)
    masks[2 % batch] = 0.0
    return masks


def make_output(attn, layout) -> Output:
    batch = attn.shape[1]
    zeros = jnp.zeros((batch, layout.num_tokens, 4))
    return Output(zeros[:, 0], zeros, None, None, tuple({"attn": jnp.asarray(a)} for a in attn), layout)


def update_all(states, output, batch):
    """Every analysis updated in one function, as the runner's compiled step does."""
    return [analysis.update(state, output, batch) for analysis, state in zip(ANALYSES, states)]


def run_all(attn, layout, batch, compiled=jax.jit(update_all)) -> list:
    output = make_output(attn, layout)
    return compiled([analysis.init(output) for analysis in ANALYSES], output, batch)


@contextlib.contextmanager
def one_device_code():
    """Traces as on a machine with one device, where the attention sums over images run as a loop
    over images (attention_tokens._image_sums) instead of the sharded batch reduction the 8 test
    devices select. Yields a fresh jit of update_all, so no trace of the 8-device code is reused."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax, "device_count", lambda *args: 1)
        yield jax.jit(lambda states, output, batch: update_all(states, output, batch))


def run(analysis, attn, layout, batch):
    output = make_output(attn, layout)
    return analysis.update(analysis.init(output), output, batch)


def expected(analysis, attn, layout, valid, masks) -> dict[str, np.ndarray]:
    """The oracle's metrics for the valid images of attn (L, B, H, N, N)."""
    images = [b for b in range(attn.shape[1]) if valid[b]]
    per = lambda fn: np.array([np.mean([fn(attn[l, b]) for b in images], axis=0) for l in range(attn.shape[0])])
    name = analysis.name
    p = layout.num_prefix
    prefix_rows = per(lambda a: (a[:, p:, p:].sum(-1) == 0).sum(-1))  # patch rows with no patch mass
    if name == "attention_distance":
        d = per(lambda a: oracle.distance(a, layout, analysis.units))
        return {"distance": d, "distance_mean": d.mean(1), "prefix_rows": prefix_rows}
    if name == "attention_entropy":
        e = per(lambda a: oracle.entropy(a, layout))
        return {"entropy": e, "entropy_mean": e.mean(1)}
    if name == "nmi":
        v = per(lambda a: oracle.nmi(a, layout))
        return {"nmi": v, "nmi_mean": v.mean(1)}
    if name == "attention_collapse":
        q = per(lambda a: oracle.collapse(a, layout)[0])
        return {"query_similarity": q, "query_similarity_mean": q.mean(1),
                "head_similarity": per(lambda a: oracle.collapse(a, layout)[1])}
    if name == "attention_received":
        keys = oracle.received(attn[0, 0], layout).keys()
        return {k: per(lambda a, k=k: oracle.received(a, layout)[k]) for k in keys}
    if name == "cls_attention_maps":
        maps = np.array([[oracle.cls_map(attn[l, b], layout) for l in range(attn.shape[0])] for b in images])
        return {"maps": maps[: analysis.num_images], "mean_map": maps.mean(0)}
    if name == "aaam":
        queries = layout.num_patches
        sums = np.array([sum(oracle.aaam_sum(attn[l, b], layout) for b in images) for l in range(attn.shape[0])])
        if analysis.divisor == "per_query":
            count = len(images) * queries
        else:  # its loop: count += 1 per query per batch of batch_size images
            count = len(range(0, len(images), analysis.batch_size)) * queries
        offsets = np.array([[oracle.offset(c) for c in block] for block in sums])  # (L, H, 3)
        return {"aaam": sums / count, "offset": offsets[..., 0], "offset_x": offsets[..., 1],
                "offset_y": offsets[..., 2], "prefix_rows": prefix_rows}
    if name == "saliency_alignment":
        scores = [[oracle.saliency_iou(attn[l, b], layout, masks[b], analysis.map, analysis.mass) for b in images]
                  for l in range(attn.shape[0])]
        iou = np.array([np.mean([s for s in block if s is not None], axis=0) for block in scores])
        return {"iou": iou[:, :-1], "iou_merged": iou[:, -1], "iou_best": iou[:, :-1].max(1),
                "best_head": iou[:, :-1].argmax(1)}
    raise AssertionError(name)


def check(metrics, want, atol=2e-6):
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray(metrics[key], np.float64), value, rtol=2e-5, atol=atol, err_msg=key)


@pytest.fixture(scope="module", params=[(layout, devices) for layout in sorted(LAYOUTS) for devices in ("8dev", "1dev")],
                ids=lambda param: "-".join(param))
def data(request):
    """Random maps for 6 images (image 3 padding, filled with NaN), and every analysis's metrics on all 6
    at once and on the halves 0-2 and 3-5 updated separately and merged (computed once per layout),
    by the code traced for 8 devices and for one (`one_device_code`)."""
    name, devices = request.param
    if devices == "1dev":
        with one_device_code() as compiled:
            return compute_data(name, functools.partial(run_all, compiled=compiled))
    return compute_data(name, run_all)


def compute_data(name, run_all):
    layout = LAYOUTS[name]
    rng = np.random.default_rng(len(name))
    attn = random_attention(rng, blocks=2, batch=6, heads=3, layout=layout)
    valid = np.array([True, True, True, False, True, True])
    attn[:, ~valid] = np.nan  # padding rows must not count, whatever they hold
    batch = {"valid": jnp.asarray(valid), "mask": jnp.asarray(random_masks(rng, 6, layout)),
             "image": jnp.zeros((6, 1, 1, 3))}
    part = lambda rows: {key: value[rows] for key, value in batch.items()}
    halves = slice(0, 3), slice(3, 6)
    whole = run_all(attn, layout, batch)
    first, second = (run_all(attn[:, rows], layout, part(rows)) for rows in halves)
    results = [(analysis.finalize(w), analysis.finalize(analysis.merge(a, b)))
               for analysis, w, a, b in zip(ANALYSES, whole, first, second)]
    return layout, attn, batch, results


@pytest.mark.parametrize("index", range(len(ANALYSES)), ids=IDS)
def test_metrics_match_float64_oracle(index, data):
    layout, attn, batch, results = data
    analysis, metrics = ANALYSES[index], results[index][0]
    check(metrics, expected(analysis, attn, layout, np.asarray(batch["valid"]), np.asarray(batch["mask"])))
    assert float(metrics["num_images"]) == (4 if analysis.name == "saliency_alignment" else 5)


@pytest.mark.parametrize("index", range(len(ANALYSES)), ids=IDS)
def test_two_batches_merged_equal_one_update_on_their_concatenation(index, data):
    whole, merged = data[3][index]
    assert merged.keys() == whole.keys()
    for key in whole:
        if np.asarray(whole[key]).dtype.kind in "fiu":
            np.testing.assert_allclose(merged[key], whole[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_a_batch_sharded_over_8_devices_gives_the_single_device_state():
    layout = LAYOUTS["cls_dist_reg2_3x5"]
    rng = np.random.default_rng(8)
    attn = random_attention(rng, blocks=2, batch=8, heads=2, layout=layout)
    batch = {"valid": jnp.asarray(np.arange(8) != 5), "mask": jnp.asarray(random_masks(rng, 8, layout)),
             "image": jnp.zeros((8, 1, 1, 3))}
    single = run_all(attn, layout, batch)
    mesh = make_mesh()
    assert mesh.devices.size == 8
    sharding = batch_sharding(mesh)
    spread = NamedSharding(mesh, P(None, *sharding.spec))  # attention (L, B, ...) split over B
    sharded = run_all(jax.device_put(attn, spread), layout, jax.device_put(batch, sharding))
    for analysis, a, b in zip(ANALYSES, single, sharded):
        one, many = analysis.finalize(a), analysis.finalize(b)
        for key in one:
            if np.asarray(one[key]).dtype.kind in "fiu":
                np.testing.assert_allclose(many[key], one[key], rtol=1e-6, atol=1e-6, err_msg=f"{analysis.name} {key}")


@pytest.mark.parametrize("data", [("cls_dist_reg2_3x5", "8dev")], indirect=True)
def test_every_plot_writes_its_pngs(data, tmp_path):
    from vitjax.report import figures_attention

    for analysis, (metrics, _) in zip(ANALYSES, data[3]):
        figures = getattr(figures_attention, f"plot_{analysis.name}")(metrics, tmp_path, "model")
        assert figures and all((tmp_path / f.path).stat().st_size > 1000 for f in figures)
        assert all(f.section == "attention" and f.path.startswith("model_") for f in figures)


def test_attention_distance_and_aaam_share_one_read_of_the_maps():
    """Both sum the renormalised rows over images; in one step XLA must compute that once per block
    (on one device: one loop over images per block, not two)."""
    layout = LAYOUTS["cls_4x4"]
    attn = random_attention(np.random.default_rng(0), blocks=3, batch=8, heads=2, layout=layout)
    output, batch = make_output(attn, layout), {"valid": jnp.ones(8, bool)}  # 2 loop steps of 4 images
    analyses = [A.AttentionDistance(), A.AlignedAttentionMaps()]
    states = [a.init(output) for a in analyses]
    with one_device_code():
        step = jax.jit(lambda s, o, b: [a.update(x, o, b) for a, x in zip(analyses, s)])
        compiled = step.lower(states, output, batch).compile().as_text()
    loops = compiled.count(" while(")
    assert loops == 3, f"{loops} loops over images for 3 blocks"


def test_rows_with_all_mass_on_prefix_tokens_are_zero_rows_that_count():
    """The Teaching Matters convention, checked by hand on a 1-head, 2x2-grid map."""
    layout = TokenLayout(1, 0, 1, (2, 2), (4, 4))
    attn = np.zeros((1, 1, 1, 6, 6), np.float32)
    attn[..., :, 0] = 1.0  # every row on the class token
    attn[0, 0, 0, 2] = [0.5, 0.0, 0.5, 0.0, 0.0, 0.0]  # first patch query: half on itself
    batch = {"valid": jnp.ones(1, bool)}
    distance = A.AttentionDistance().finalize(run(A.AttentionDistance(), attn, layout, batch))["distance"]
    assert distance[0, 0] == pytest.approx(0.0)  # renormalised row is one-hot on itself; the others are zero
    aaam = A.AlignedAttentionMaps().finalize(run(A.AlignedAttentionMaps(), attn, layout, batch))
    assert aaam["aaam"][0, 0, 1, 1] == pytest.approx(1 / 4)  # one unit of mass over 4 queries
    assert aaam["prefix_rows"][0, 0] == 3
    pixels = A.AttentionDistance(units="pixels").finalize(run(A.AttentionDistance(units="pixels"), attn, layout, batch))
    uniform_row = (4 + 4 + 4 * math.sqrt(2)) / 4  # cl-vs-mim's +1e-32 makes the empty rows uniform
    assert pixels["distance"][0, 0] == pytest.approx(3 * uniform_row / 4, rel=1e-6)


@pytest.mark.parametrize("shape, grid", [((37, 53), (5, 7)), ((32, 48), (4, 6)), ((20, 9), (20, 3))])
def test_mask_grid_is_pils_bicubic_resize(shape, grid):
    rng = np.random.default_rng(0)
    soft = rng.uniform(size=(2, *shape)).astype(np.float32) * (rng.uniform(size=(2, *shape)) > 0.6)
    ours = np.asarray(resize_uint8(jnp.round(jnp.asarray(soft) * 255).astype(jnp.int32), grid))
    for b in range(2):
        pil = Image.fromarray(np.round(soft[b] * 255).astype(np.uint8)).resize(grid[::-1], Image.BICUBIC)
        np.testing.assert_array_equal(ours[b], np.asarray(pil))


def test_real_vit_with_registers_and_distillation_token_under_jit():
    model, params = vitjax.create_model("vit_tiny_patch16_224", key=jax.random.key(0), image_size=(32, 48), depth=2,
                                        num_registers=2, dist_token=True)
    images = jax.random.normal(jax.random.key(1), (4, 32, 48, 3))
    spec = jax.eval_shape(lambda x: model.apply({"params": params}, x, capture="attn"), images)
    masks = random_masks(np.random.default_rng(3), 4, spec.layout)
    batch = {"image": images, "valid": jnp.array([True, False, True, True]), "mask": jnp.asarray(masks)}

    @jax.jit
    def step(states, batch):
        output = model.apply({"params": params}, batch["image"], capture="attn")
        return [a.update(s, output, batch) for a, s in zip(ANALYSES, states)], output.stack("attn")

    states, attn = step([a.init(spec) for a in ANALYSES], batch)
    attn, layout = np.asarray(attn), spec.layout
    assert layout.num_prefix == 4
    for analysis, state in zip(ANALYSES, states):
        want = expected(analysis, attn, layout, np.asarray(batch["valid"]), np.asarray(batch["mask"]))
        check(analysis.finalize(state), want, atol=1e-5)


def test_models_without_attention_say_the_analysis_needs_a_vit():
    model, params = vitjax.load("resnet_scenes_64")
    images = jnp.zeros((1, 64, 64, 3))
    spec = jax.eval_shape(lambda x: model.apply({"params": params}, x, capture="tokens"), images)
    for analysis in ANALYSES:
        with pytest.raises(ValueError, match=f"{analysis.name!r} needs a ViT"):
            analysis.init(spec)


def test_bad_options_and_missing_class_token_are_explained():
    with pytest.raises(ValueError, match="units"):
        A.AttentionDistance(units="patches")
    with pytest.raises(ValueError, match="divisor"):
        A.AlignedAttentionMaps(divisor="batch")
    with pytest.raises(ValueError, match="map"):
        A.SaliencyAlignment(map="mean")
    no_class = TokenLayout(0, 0, 4, (2, 2), (8, 8))
    output = make_output(np.zeros((1, 1, 1, 8, 8), np.float32), no_class)
    with pytest.raises(ValueError, match="no class token"):
        A.ClsAttentionMaps().init(output)
    A.SaliencyAlignment(map="center").init(output)  # fine without a class token
