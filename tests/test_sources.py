"""Sources: image folders (labels, order, unreadable files), TFDS datasets mapped onto vitjax's
records (checked against TFDS's own full decoding and against the generated examples), and the
errors for datasets that are unknown or cannot be prepared here."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from PIL import Image

from image_folders import make_image_folder
from vitjax.data import scenes_render
from vitjax.data.sources import DataError, open_source
from vitjax.data.tf_env import import_tf

tf = import_tf()
import tensorflow_datasets as tfds  # noqa: E402

SCENES = "vitjax_scenes/size16_train24_test6_cue2_seed0"


def _records(source):
    return list(source.records().as_numpy_iterator())


# --- image folders ---------------------------------------------------------------------------


def test_folder_labels_order_and_pixels(tmp_path):
    written = make_image_folder(tmp_path, {"zebra": 3, "ant": 2, "moth": 4})
    source = open_source(f"folder:{tmp_path}")
    assert source.class_names == ("ant", "moth", "zebra")
    assert (source.num_examples, source.num_classes, source.has_masks, source.has_boxes) == (9, 3, False, False)
    records = _records(source)
    expected = sorted(written)  # class folders sorted by name, then files sorted by path
    assert [r["index"] for r in records] == list(range(9))
    for record, path in zip(records, expected):
        np.testing.assert_array_equal(record["image"], written[path])
        assert source.class_names[record["label"]] == path.split("/")[-2]


def test_unlabelled_folder_and_split_subfolder(tmp_path):
    make_image_folder(tmp_path / "val", 4)
    source = open_source(f"folder:{tmp_path}", "val")
    assert (source.num_examples, source.has_labels, source.num_classes) == (4, False, 0)
    assert "label" not in _records(source)[0]
    with pytest.raises(DataError, match="no subfolder 'test'"):
        open_source(f"folder:{tmp_path}", "test")


@pytest.fixture
def folder_with_corrupt_files(tmp_path):
    written = make_image_folder(tmp_path, {"a": 3, "b": 3})
    good_jpeg = tmp_path / "b" / "photo.jpg"
    Image.fromarray(np.full((20, 20, 3), 100, np.uint8)).save(good_jpeg, quality=90)
    truncated = tmp_path / "a" / "truncated.jpg"
    truncated.write_bytes(good_jpeg.read_bytes()[:200])
    not_an_image = tmp_path / "b" / "notes.png"
    not_an_image.write_text("not pixels")
    return written, good_jpeg, [str(truncated), str(not_an_image)]


def test_corrupt_images_are_skipped_counted_and_named(folder_with_corrupt_files, tmp_path):
    written, good_jpeg, corrupt = folder_with_corrupt_files
    with pytest.warns(UserWarning, match="Skipped 2 image") as caught:
        source = open_source(f"folder:{tmp_path}", on_corrupt="skip")
    message = str(caught[0].message)
    assert all(path in message for path in corrupt)
    assert sorted(source.corrupt) == sorted(corrupt)
    assert source.num_examples == len(written) + 1  # the good JPEG stays
    records = _records(source)
    assert [r["index"] for r in records] == list(range(source.num_examples))
    assert [r["label"] for r in records] == [0, 0, 0, 1, 1, 1, 1]


def test_corrupt_images_fail_naming_them(folder_with_corrupt_files, tmp_path):
    _, _, corrupt = folder_with_corrupt_files
    with pytest.raises(DataError) as error:
        open_source(f"folder:{tmp_path}", on_corrupt="fail")
    assert all(path in str(error.value) for path in corrupt)


@pytest.mark.parametrize("layout, match", [
    ("missing", "does not exist"),
    ("empty", "No images"),
    ("mixed", "both class subfolders"),
    ("empty_class", "has no images"),
])
def test_bad_folders(tmp_path, layout, match):
    if layout == "mixed":
        make_image_folder(tmp_path, {"cls": 1})
        make_image_folder(tmp_path, 1, seed=1)
    elif layout == "empty_class":
        make_image_folder(tmp_path, {"cls": 1})
        (tmp_path / "nothing_here").mkdir()
    root = tmp_path / "absent" if layout == "missing" else tmp_path
    with pytest.raises(DataError, match=match):
        open_source(f"folder:{root}")


def test_on_corrupt_must_be_skip_or_fail(tmp_path):
    with pytest.raises(ValueError, match="'skip' or 'fail'"):
        open_source(f"folder:{tmp_path}", on_corrupt="ignore")


# --- TFDS: names, preparation ----------------------------------------------------------------


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(DataError, match="Did you mean: imagenette"):
        open_source("imagenete", "train")


@pytest.fixture
def no_network(monkeypatch):
    """Any Python-level attempt to reach the network fails loudly instead of waiting."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name, says", [
    ("voc/2007", ["does not download", "tfds build voc/2007", "manual_dir", "VOCtrainval_06-Nov-2007.tar"]),
    ("imagenet2012", ["ILSVRC2012_img_train.tar", "manual_dir"]),
])
def test_unprepared_dataset_fails_fast_and_says_how(tmp_path, no_network, name, says):
    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        open_source(name, "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    assert all(text in str(error.value) for text in says), str(error.value)


def test_unknown_config_and_split_are_named(tmp_path):
    with pytest.raises(DataError, match="Its configs: 2007, 2012"):
        open_source("voc/2099", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="Unknown split 'trian'"):
        open_source(SCENES, "trian", data_dir=str(tmp_path))


# --- TFDS: the mapping onto records ----------------------------------------------------------


def test_scenes_records_match_tfds_decoding(tmp_path):
    source = open_source(SCENES, "train", data_dir=str(tmp_path))  # prepared on first use
    assert (source.num_examples, source.has_masks, source.has_boxes) == (24, True, True)
    assert source.class_names == tuple(scenes_render.SHAPE_NAMES)
    # Oracle: TFDS decoding every feature itself, keyed by the dataset's own example index.
    full = {int(ex["index"]): ex for ex in
            tfds.builder(SCENES, data_dir=str(tmp_path)).as_dataset(split="train").as_numpy_iterator()}
    records = _records(source)
    assert sorted(r["index"] for r in records) == list(range(24))
    for record in records:
        ex = full[record["index"]]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (16, 16, 3)
        assert record["mask"].dtype == np.uint8 and record["mask"].shape == (16, 16)
        for key in ("image", "mask", "boxes", "box_labels", "label"):
            np.testing.assert_array_equal(record[key], ex[key])
        assert record["boxes"].dtype == np.float32 and record["box_labels"].dtype == np.int64
        assert record["mask"].max() <= len(record["boxes"])


def _solid(value, shape=(6, 8)):
    return np.full((*shape, 3), value, np.uint8)


# Detection-style examples (as VOC and COCO): no top-level label; example 2 has no boxes.
_BOXES = [[(0.0, 0.0, 0.5, 0.5), (0.1, 0.1, 0.9, 0.95)], [(0.2, 0.2, 0.6, 0.4)], []]
_BOX_LABELS = [[2, 0], [1], []]


class VitjaxTestDetection(tfds.core.GeneratorBasedBuilder):
    """A tiny stand-in with VOC's and COCO's feature layout."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "bird"]),
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, (boxes, labels) in enumerate(zip(_BOXES, _BOX_LABELS)):
            yield i, {"image": _solid(40 * i), "image/filename": f"{i}.png", "objects": [
                {"bbox": tfds.features.BBox(*box), "label": label} for box, label in zip(boxes, labels)]}


# Video examples (as DAVIS): a sequence of frames and 1-channel instance masks.
_FRAMES = [3, 2]


def _segmentation(video, frame):
    return np.random.default_rng(10 * video + frame).integers(0, 3, (6, 8, 1), dtype=np.uint8)


class VitjaxTestVideo(tfds.core.GeneratorBasedBuilder):
    """A tiny stand-in with DAVIS's feature layout."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "video": tfds.features.Sequence({
                "frames": tfds.features.Image(shape=(None, None, 3)),
                "segmentations": tfds.features.Image(shape=(None, None, 1)),
            }),
            "metadata": {"num_frames": np.int64},
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for v, count in enumerate(_FRAMES):
            yield v, {"metadata": {"num_frames": count}, "video": {
                "frames": [_solid(100 * v + 10 * f) for f in range(count)],
                "segmentations": [_segmentation(v, f) for f in range(count)]}}


def _prepared(builder_cls, data_dir):
    builder = builder_cls(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


def test_detection_layout_labels_by_largest_box(tmp_path):
    _prepared(VitjaxTestDetection, tmp_path)
    source = open_source("vitjax_test_detection", "train", data_dir=str(tmp_path))
    assert (source.num_examples, source.has_labels, source.has_boxes, source.has_masks) == (3, True, True, False)
    assert source.class_names == ("cat", "dog", "bird")
    records = _records(source)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    for record in records:
        example = int(record["image"][0, 0, 0]) // 40  # each example has its own solid colour
        boxes = np.array(_BOXES[example], np.float64).reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        expected = _BOX_LABELS[example][int(np.argmax(areas))] if len(areas) else -1
        assert record["label"] == expected
        np.testing.assert_allclose(record["boxes"], boxes, atol=1e-7)
        np.testing.assert_array_equal(record["box_labels"], _BOX_LABELS[example])


def test_video_layout_gives_one_record_per_frame(tmp_path):
    _prepared(VitjaxTestVideo, tmp_path)
    source = open_source("vitjax_test_video", "train", data_dir=str(tmp_path))
    assert (source.num_examples, source.has_labels, source.has_masks) == (sum(_FRAMES), False, True)
    records = _records(source)
    assert [r["index"] for r in records] == list(range(sum(_FRAMES)))
    seen = set()
    for record in records:
        video, frame = divmod(int(record["image"][0, 0, 0]), 100)
        frame //= 10
        seen.add((video, frame))
        assert record["mask"].shape == (6, 8)
        np.testing.assert_array_equal(record["mask"], _segmentation(video, frame)[..., 0])
    assert seen == {(v, f) for v, n in enumerate(_FRAMES) for f in range(n)}
