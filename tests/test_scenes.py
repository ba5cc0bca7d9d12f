"""The vitjax_scenes dataset: determinism, the record contract, boxes against masks, and the
cue-conflict split checked by measurements that do not use the renderer's own parameters.

The measurements are classic hand-made descriptors fitted on the train split: a texture descriptor
(gradient-orientation histogram and tone statistics of the pixels inside the main object's eroded
mask) and a shape descriptor (Fourier magnitudes of the mask's radial profile, hole fraction,
solidity). If the cue-conflict split did not really carry one class's shape and another's
texture, the two classifiers could not answer 'texture_label' and 'label' respectively.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.path import Path
from scipy import ndimage
from scipy.spatial import ConvexHull, cKDTree

from vitjax.data import scenes
from vitjax.data import scenes_render as render
from vitjax.data import scenes_shapes as shapes
from vitjax.data.tf_env import import_tf

import_tf()
import tensorflow_datasets as tfds  # noqa: E402

TINY = scenes.scenes_config(32, 24, 8, 8, seed=11)
STATS = scenes.scenes_config(64, 300, 100, 120, seed=5)


def _read(builder) -> dict[str, list[dict]]:
    """Every record of every split, in index order."""
    return {split: sorted(tfds.as_numpy(builder.as_dataset(split=split)), key=lambda r: r["index"])
            for split in render.SPLITS}


@pytest.fixture(scope="module")
def stats_records(tmp_path_factory):
    return _read(scenes.prepare(STATS, data_dir=str(tmp_path_factory.mktemp("scenes"))))


# ---------------------------------------------------------------- independent measurements
def _texture_features(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Colour-blind surface statistics of `region`: a magnitude-weighted histogram of gradient
    orientation (8 bins over 180 degrees), how radial the gradients are, how two-toned, how
    busy (mean gradient, mean |Laplacian|) and how single-oriented the pattern is."""
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    inner = ndimage.binary_erosion(region, iterations=2)  # keep the outline out of it
    if inner.sum() < 20:
        inner = region
    values = gray[inner]
    z = (gray - values.mean()) / (values.std() + 1e-6)
    gy, gx = np.gradient(z)
    magnitude, angle = np.hypot(gy, gx)[inner], np.arctan2(gy, gx)[inner]
    bins = (np.mod(2 * angle, 2 * np.pi) / (2 * np.pi) * 8).astype(int) % 8
    histogram = np.bincount(bins, weights=magnitude, minlength=8) / (magnitude.sum() + 1e-9)
    rows, cols = np.nonzero(inner)
    outward = np.arctan2(rows - rows.mean(), cols - cols.mean())
    radial = np.sum(np.abs(np.cos(angle - outward)) * magnitude) / (magnitude.sum() + 1e-9)
    two_tone = np.mean(np.abs(z[inner]) > 0.8)
    busy = np.abs(ndimage.laplace(z))[inner].mean()
    oriented = np.hypot(np.sum(magnitude * np.cos(2 * angle)),
                        np.sum(magnitude * np.sin(2 * angle))) / (magnitude.sum() + 1e-9)
    return np.concatenate([histogram, [radial, two_tone, magnitude.mean(), busy, oriented]])


def _shape_features(region: np.ndarray) -> np.ndarray:
    """Rotation-invariant outline statistics: |FFT| of the radial profile (harmonics 1-8, scale
    normalised), the hole fraction, solidity (area / convex hull area), perimeter / sqrt(area)."""
    filled = ndimage.binary_fill_holes(region)
    rows, cols = np.nonzero(filled)
    edge = filled & ~ndimage.binary_erosion(filled)
    er, ec = np.nonzero(edge)
    radius = np.hypot(er - rows.mean(), ec - cols.mean())
    sector = (np.arctan2(er - rows.mean(), ec - cols.mean()) + np.pi) / (2 * np.pi) * 64
    profile = np.zeros(64)
    np.maximum.at(profile, sector.astype(int) % 64, radius)
    seen = np.nonzero(profile)[0]
    profile = np.interp(np.arange(64), seen, profile[seen], period=64)
    harmonics = np.abs(np.fft.rfft(profile))[1:9] / profile.sum()
    hull = ConvexHull(np.stack([rows, cols], axis=1)).volume
    return np.concatenate([harmonics, [1 - region.sum() / filled.sum(), filled.sum() / hull,
                                       edge.sum() / np.sqrt(filled.sum()) / 10]])


def _nearest_class_mean(features: np.ndarray, labels: np.ndarray):
    """Classifier: the class whose mean standardised feature vector is nearest."""
    mean, std = features.mean(0), features.std(0) + 1e-9
    centroids = np.stack([((features - mean) / std)[labels == c].mean(0)
                          for c in range(render.NUM_CLASSES)])

    def predict(x: np.ndarray) -> np.ndarray:
        return np.argmin(((((x - mean) / std)[:, None] - centroids) ** 2).sum(-1), axis=1)
    return predict


def _main_features(records, describe):
    return np.array([describe(r) for r in records])


def _texture_of(record):
    return _texture_features(record["image"], record["mask"] == 1)


def _shape_of(record):
    return _shape_features(record["mask"] == 1)


def _labels(records, key="label"):
    return np.array([r[key] for r in records])


@pytest.fixture(scope="module")
def classifiers(stats_records):
    train = stats_records["train"]
    return (_nearest_class_mean(_main_features(train, _texture_of), _labels(train)),
            _nearest_class_mean(_main_features(train, _shape_of), _labels(train)))


# ---------------------------------------------------------------- determinism
def test_two_builds_are_byte_identical_and_match_examples_made_alone(tmp_path):
    builders = [scenes.prepare(TINY, data_dir=str(tmp_path / name)) for name in ("a", "b")]
    files = [sorted(p for p in b.data_path.iterdir() if ".tfrecord" in p.name) for b in builders]
    assert [p.name for p in files[0]] == [p.name for p in files[1]] and len(files[0]) == 3
    for first, second in zip(*files):
        assert first.read_bytes() == second.read_bytes(), first.name

    records = _read(builders[0])
    for split, count in TINY.split_sizes().items():
        assert [r["index"] for r in records[split]] == list(range(count))
        # The build made them in order; here each is made alone, last first.
        for index in reversed(range(count)):
            alone = render.make_example(TINY.seed, split, index, TINY.image_size)
            for key in ("image", "mask", "boxes", "box_labels", "label", "texture_label"):
                np.testing.assert_array_equal(records[split][index][key], alone[key])
    other_seed = render.make_example(TINY.seed + 1, "train", 0, TINY.image_size)
    assert not np.array_equal(other_seed["image"], records["train"][0]["image"])


# ---------------------------------------------------------------- the record contract
def test_records_follow_the_contract(stats_records):
    size = STATS.image_size
    for split, count in STATS.split_sizes().items():
        records = stats_records[split]
        assert [r["index"] for r in records] == list(range(count))
        for r in records:
            assert r["image"].dtype == np.uint8 and r["image"].shape == (size, size, 3)
            assert r["mask"].dtype == np.uint8 and r["mask"].shape == (size, size)
            assert r["boxes"].dtype == np.float32 and r["boxes"].shape[1:] == (4,)
            assert r["box_labels"].dtype == np.int64
            assert r["box_labels"].shape == (len(r["boxes"]),)
            for key in ("label", "texture_label", "index"):
                assert r[key].dtype == np.int64 and r[key].shape == ()


def test_named_configs_and_registration(tmp_path):
    import vitjax.data  # noqa: F401  (the package import is what registers the builder)

    assert tfds.builder("vitjax_scenes", data_dir=str(tmp_path)).builder_config.name == "size64"
    for size in (64, 96, 224):
        config = tfds.builder(f"vitjax_scenes/size{size}", data_dir=str(tmp_path)).builder_config
        assert (config.image_size, config.split_sizes()) == (
            size, {"train": 10_000, "test": 2_000, "cue_conflict": 1_000})
        assert scenes.scenes_config(size) is config
    custom = tfds.builder(f"vitjax_scenes/{STATS.name}", data_dir=str(tmp_path)).builder_config
    assert dataclasses.astuple(custom) == dataclasses.astuple(STATS)
    info = tfds.builder("vitjax_scenes", data_dir=str(tmp_path)).info
    assert info.features["label"].names == list(render.SHAPE_NAMES)
    assert info.features["texture_label"].names == list(render.TEXTURE_NAMES)
    with pytest.raises(ValueError, match="image_size >= 8"):
        scenes.scenes_config(4)


# ---------------------------------------------------------------- shapes
def _inside_oracle(name: str, points: np.ndarray) -> np.ndarray:
    """Point-in-shape by matplotlib's polygon test (polygonal pieces) or by closed forms."""
    u, v = points.T
    r = np.hypot(u, v)
    if name == "circle":
        return r < 0.9
    if name == "ring":
        return (r > 0.44) & (r < 0.92)
    if name == "crescent":
        return (r < 0.95) & (np.hypot(u - 0.5, v) > 0.78)
    inside = np.zeros(len(points), bool)
    for piece in shapes._CONVEX_PIECES[name]:
        inside |= Path(piece).contains_points(points)
    if name == "heart":
        for cx, cy in shapes._HEART_DISCS:
            inside |= np.hypot(u - cx, v - cy) < shapes._HEART_H / np.sqrt(2)
    return inside


def test_shape_distances_match_a_brute_force_oracle():
    """Sign: inside/outside as the oracle says. Value, with exact distances requested: the
    distance to the nearest point of the finely rasterised outline (outside points; that is what
    antialiasing uses)."""
    points = np.random.default_rng(0).uniform(-1.2, 1.2, size=(3000, 2))
    grid = np.stack(np.meshgrid(*[np.linspace(-1.05, 1.05, 1401)] * 2), -1).reshape(-1, 2)
    for shape, name in enumerate(render.SHAPE_NAMES):
        sdf = shapes.shape_sdf(shape, points[:, 0].copy(), points[:, 1].copy(), np.inf)
        inside = _inside_oracle(name, points)
        assert np.array_equal(sdf < 0, inside), name
        # The outline: grid points inside with a neighbour outside (spacing 0.0015).
        filled = _inside_oracle(name, grid).reshape(1401, 1401)
        outline = grid.reshape(1401, 1401, 2)[filled & ~ndimage.binary_erosion(filled)]
        nearest, _ = cKDTree(outline).query(points[~inside])
        np.testing.assert_allclose(sdf[~inside], nearest, atol=4e-3, err_msg=name)


# ---------------------------------------------------------------- labels, masks and boxes
def test_boxes_are_the_extents_of_the_visible_masks(stats_records):
    main_is_largest = []
    for split, records in stats_records.items():
        for r in records:
            mask, boxes, box_labels = r["mask"], r["boxes"], r["box_labels"]
            size = mask.shape[0]
            assert len(boxes) >= 1
            # Instance ids are exactly 1..n, every one visible.
            assert set(np.unique(mask)) - {0} == set(range(1, len(boxes) + 1))
            for k, box in enumerate(boxes, start=1):
                rows, cols = np.nonzero(mask == k)
                extent = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / size
                np.testing.assert_allclose(box, extent, atol=1e-6)
            assert 0 <= r["label"] < render.NUM_CLASSES
            assert np.all((box_labels >= 0) & (box_labels < render.NUM_CLASSES))
            assert box_labels[0] == r["label"]  # the main object is instance 1
            # Distractors lend neither cue of the main object.
            assert not set(box_labels[1:]) & {r["label"], r["texture_label"]}
            if split == "cue_conflict":
                assert r["texture_label"] != r["label"]
            else:
                assert r["texture_label"] == r["label"]
            areas = np.bincount(mask.ravel(), minlength=len(boxes) + 1)[1:]
            main_is_largest.append(areas[0] == areas.max())
    assert np.mean(main_is_largest) > 0.97


def test_same_scene_at_two_sizes_has_the_same_boxes():
    for index in range(20):
        scene = render.sample_scene(render.scene_rng(3, "train", index))
        small, large = render.render_scene(scene, 64), render.render_scene(scene, 224)
        assert np.array_equal(small["box_labels"], large["box_labels"])
        np.testing.assert_allclose(small["boxes"], large["boxes"], atol=1.5 / 64)


# ---------------------------------------------------------------- the cue-conflict split
def test_normal_splits_carry_both_cues(stats_records, classifiers):
    by_texture, by_shape = classifiers
    test = stats_records["test"]
    assert np.mean(by_texture(_main_features(test, _texture_of)) == _labels(test)) > 0.75
    assert np.mean(by_shape(_main_features(test, _shape_of)) == _labels(test)) > 0.85


def test_cue_conflict_has_one_class_shape_and_another_class_texture(stats_records, classifiers):
    by_texture, by_shape = classifiers
    conflict = stats_records["cue_conflict"]
    labels, textures = _labels(conflict), _labels(conflict, "texture_label")
    texture_answers = by_texture(_main_features(conflict, _texture_of))
    shape_answers = by_shape(_main_features(conflict, _shape_of))
    assert np.mean(texture_answers == textures) > 0.75
    assert np.mean(texture_answers == labels) < 0.1
    assert np.mean(shape_answers == labels) > 0.85
    assert np.mean(shape_answers == textures) < 0.1


def test_swapping_the_texture_changes_only_the_objects_surface(classifiers):
    """Draw a cue-conflict object alone with its swapped texture and with its own class's
    texture: same mask, pixels changed only on the object, and the texture descriptor follows
    the texture, not the shape."""
    by_texture, _ = classifiers
    follows = []
    for index in range(30):
        rng = render.scene_rng(9, "cue_conflict", index)
        scene = render.sample_scene(rng, cue_conflict=True)
        main = scene.objects[0]
        own = dataclasses.replace(main, texture_class=main.shape, texture=render.family_texture(
            rng, main.shape, main.texture.colors, main.center, main.radius))
        drawn = {}
        for name, obj in (("swapped", main), ("own", own)):
            alone = dataclasses.replace(scene, objects=(obj,), paint_order=(0,))
            drawn[name] = render.render_scene(alone, 64)
        assert np.array_equal(drawn["swapped"]["mask"], drawn["own"]["mask"])
        region = drawn["own"]["mask"] == 1
        changed = np.any(drawn["swapped"]["image"] != drawn["own"]["image"], axis=-1)
        # Antialiased edges reach past the mask (pixels the object covers less than half), up
        # to two pixels beyond it at the thin tips of stars and crescents.
        near = ndimage.binary_dilation(region, structure=np.ones((3, 3)), iterations=2)
        assert not np.any(changed & ~near), "pixels changed off the object"
        assert changed[region].mean() > 0.5
        predicted = by_texture(np.stack([_texture_features(drawn[name]["image"], region)
                                         for name in ("swapped", "own")]))
        follows.append(tuple(predicted) == (scene.texture_label, scene.label))
    assert np.mean(follows) > 0.7


def test_learnable_from_pixels_alone(stats_records):
    """No mask given: the same texture descriptor over the whole image still beats chance (0.1)
    clearly, since the main object dominates its low-contrast background."""
    whole = np.ones((STATS.image_size,) * 2, bool)
    train, test = stats_records["train"], stats_records["test"]
    predict = _nearest_class_mean(
        np.array([_texture_features(r["image"], whole) for r in train]), _labels(train))
    accuracy = np.mean(predict(np.array([_texture_features(r["image"], whole) for r in test]))
                       == _labels(test))
    assert accuracy > 0.35
