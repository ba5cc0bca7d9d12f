"""TFDS datasets as sources, each dataset's own features mapped onto vitjax's records.

One mapping rule serves every builder; what it gives for the datasets we use:

| dataset | image | label | boxes, box_labels | mask |
| --- | --- | --- | --- | --- |
| imagenet2012, imagenette, any classification set | image | label | - | - |
| voc/2007, voc/2012 | image | label of the largest box | objects/bbox, objects/label | - |
| coco/2017 | image | label of the largest box (-1: none) | objects/bbox, objects/label | - |
| davis (one record per frame) | video/frames | - | - | video/segmentations |
| vitjax_scenes/* | image | label | boxes, box_labels | mask |

The rule: the image is the top-level Image feature 'image' (else the first one); a top-level
Sequence of Images (a video) gives one record per frame, its 1-channel Image the mask. 'label' is
the top-level ClassLabel 'label'; without one, a detection set labels an image with the class of
its largest box (by area; the first one on ties; -1 for an image with no boxes), so VOC and COCO
can serve classification-style analyses too. Boxes come from objects/bbox + objects/label or from
top-level 'boxes' + 'box_labels'; the mask from a top-level 'mask'. 'index' is the dataset's own
int 'index' feature where it has one (vitjax_scenes: the example's generation index), else the
position in the split's fixed order. COCO's panoptic and VOC's segmentation configs are not mapped.

vitjax never downloads. A dataset that is not prepared is built here only from files on this
machine: vitjax_scenes (procedural) always, others when `manual_dir` is given (ImageNet's tars, or
the archives a dataset would download, under their own file names; TFDS would still try to fetch
any that are missing); without `manual_dir`, the error that says how to prepare it comes at once,
with no network access tried (and so no hang).
"""

from __future__ import annotations

import dataclasses
import difflib
import os

import numpy as np

from vitjax.data import scenes
from vitjax.data.sources import DataError, Source
from vitjax.data.tf_env import import_tf

tf = import_tf()
import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: GPUs hidden, logs quiet)

_SHUFFLE_BUFFER = 10_000  # encoded records held for shuffling (ImageNet JPEGs: about 1 GB)
_F = tfds.features


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which features of a builder fill which record fields (None: not in this dataset)."""

    image: str                      # top-level Image key, or the Image key inside `video`
    video: str | None = None        # top-level Sequence of frames
    mask: str | None = None         # top-level mask, or the mask key inside `video`
    label: str | None = None        # top-level ClassLabel
    objects: str | None = None      # Sequence({'bbox', 'label'})
    boxes: str | None = None        # top-level Sequence(BBoxFeature) ...
    box_labels: str | None = None   # ... with its Sequence(ClassLabel)
    index: str | None = None        # the dataset's own example id


def _layout(features: _F.FeaturesDict, name: str) -> _Layout:
    top = dict(features.items())
    images = [k for k, f in top.items() if isinstance(f, _F.Image)]
    videos = [k for k, f in top.items() if isinstance(f, _F.Sequence)
              and isinstance(f.feature, _F.FeaturesDict)
              and any(isinstance(g, _F.Image) for g in f.feature.values())]
    if images:
        image, video, mask = ("image" if "image" in images else images[0]), None, None
        if isinstance(top.get("mask"), (_F.Image, _F.Tensor)):
            mask = "mask"
    elif videos:
        video = videos[0]
        frames = {k: g for k, g in top[video].feature.items() if isinstance(g, _F.Image)}
        image = next(k for k, g in frames.items() if g.shape[-1] == 3)
        mask = next((k for k, g in frames.items() if g.shape[-1] == 1), None)
    else:
        raise DataError(f"{name} has no image feature that vitjax can read (features: {list(top)}).")

    def is_class_sequence(f):
        return isinstance(f, _F.Sequence) and isinstance(f.feature, _F.ClassLabel)

    objects = top.get("objects")
    inner = (dict(objects.feature.items()) if isinstance(objects, _F.Sequence)
             and isinstance(objects.feature, _F.FeaturesDict) else {})
    has_objects = (isinstance(inner.get("bbox"), _F.BBoxFeature)
                   and isinstance(inner.get("label"), _F.ClassLabel))
    boxes = top.get("boxes")
    has_boxes = (isinstance(boxes, _F.Sequence) and isinstance(boxes.feature, _F.BBoxFeature)
                 and is_class_sequence(top.get("box_labels")))
    index = top.get("index")
    has_index = isinstance(index, _F.Tensor) and index.shape == () and np.dtype(index.np_dtype).kind in "iu"
    return _Layout(image=image, video=video, mask=mask,
                   label="label" if isinstance(top.get("label"), _F.ClassLabel) else None,
                   objects="objects" if has_objects else None,
                   boxes="boxes" if has_boxes else None, box_labels="box_labels" if has_boxes else None,
                   index="index" if has_index else None)


def _largest_box_label(boxes, labels):
    """Class of the largest box by area (first on ties); -1 when there are no boxes."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return tf.cond(tf.size(labels) > 0, lambda: tf.gather(labels, tf.argmax(area)),
                   lambda: tf.constant(-1, tf.int64))


def _base_name(spec: str) -> str:
    """'voc/2007:5.0.0' -> 'voc'."""
    return spec.split("/")[0].split(":")[0]


def _suggest(name: str) -> str:
    known = tfds.list_builders(with_community_datasets=False)  # the community list is on GCS
    base = _base_name(name)
    close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"TFDS has no dataset named {base!r}.{hint} `tfds.list_builders()` lists the "
            f"{len(known)} known ones; a folder of images is given as 'folder:/path'.")


def _configs(name: str) -> str:
    """The configs a builder has, as a sentence ('' when it has none or is unknown)."""
    try:
        configs = [c.name for c in tfds.builder_cls(_base_name(name)).BUILDER_CONFIGS]
    except Exception:  # the name itself is unknown: the original error says so
        return ""
    return f"\nIts configs: {', '.join(configs)}." if configs else ""


def _prepare(builder, name: str, manual_dir: str | None) -> None:
    """Build a dataset that is not prepared, from local files only, or say how to prepare it."""
    where = builder.data_dir
    if isinstance(builder, scenes.VitjaxScenes):
        scenes.prepare(builder.builder_config, data_dir=os.fspath(builder.data_dir_root))
        return
    if manual_dir is None:
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            raise DataError(
                f"{name} is not prepared in {where}, and it is built from files you download "
                f"yourself. TFDS's instructions:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}\n"
                f"Then pass manual_dir=<that folder> (vitjax builds it once into data_dir, which "
                f"takes a while), or run `tfds build {name} --manual_dir DIR --data_dir DATA_DIR`.")
        try:
            files = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
        except Exception:  # some builders record no checksums; the message does without names
            files = []
        archives = f" (its archives are among: {', '.join(files)})" if files else ""
        raise DataError(
            f"{name} is not prepared in {where}, and vitjax does not download datasets. Either "
            f"prepare it on a machine with internet access (`tfds build {name} --data_dir DIR`), "
            f"copy DIR here and pass data_dir=DIR; or download the archives it needs{archives} "
            f"into a folder and pass manual_dir=<that folder>: TFDS then reads them instead of "
            f"downloading.")
    manual = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual) or not os.listdir(manual):
        raise DataError(f"manual_dir {manual} does not exist or is empty; {name} cannot be "
                        f"prepared from it.")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual, try_download_gcs=False))


def _frames(layout: _Layout):
    """flat_map function: one video -> a dataset of its frames (and masks)."""
    def frames(example):
        video = example[layout.video]
        columns = {"image": video[layout.image]}
        if layout.mask:
            columns["mask"] = video[layout.mask]
        return tf.data.Dataset.from_tensor_slices(columns)
    return frames


def open_tfds(spec: str, split: str | None, *, data_dir: str | None, manual_dir: str | None) -> Source:
    """A TFDS split as a Source; see the module docstring for the mapping and the preparation."""
    try:
        builder = tfds.builder(spec, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(_suggest(spec)) from None
    except ValueError as error:  # an unknown config or version
        raise DataError(f"Cannot open {spec!r}: {error}{_configs(spec)}") from None
    if not builder.is_prepared():
        _prepare(builder, spec, manual_dir)
        builder = tfds.builder(spec, data_dir=data_dir)  # a fresh one reads the prepared info
    if split is None:
        raise DataError(f"{spec} needs a split: one of {sorted(builder.info.splits)}.")
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise DataError(f"{spec} has no split {split!r}: {error}") from None

    features = builder.info.features
    layout = _layout(features, spec)
    if layout.video:
        video = features[layout.video].feature
        image_feature = video[layout.image]
        mask_feature = video[layout.mask] if layout.mask else None
        skip = {layout.video: {k: tfds.decode.SkipDecoding() for k in (layout.image, layout.mask) if k}}
    else:
        image_feature = features[layout.image]
        mask_feature = features[layout.mask] if layout.mask else None
        skip = {k: tfds.decode.SkipDecoding() for k in (layout.image, layout.mask) if k}
    label_names = (features[layout.label].names if layout.label else
                   features[layout.objects].feature["label"].names if layout.objects else ())

    def read() -> tf.data.Dataset:
        # shuffle_files=False and deterministic tf.data: the same order on every host and run. No
        # auto-cache: the eval loader pads the last batch by re-reading one example, and a cached
        # small split then warns once per padding row that the cache was not fully read.
        options = tf.data.Options()
        options.deterministic = True
        return builder.as_dataset(split=split, shuffle_files=False, decoders=skip,
                                  read_config=tfds.ReadConfig(options=options, try_autocache=False))

    def select(example) -> dict:
        record = {"image": example[layout.image]}
        if layout.mask:
            record["mask"] = example[layout.mask]
        if layout.label:
            record["label"] = tf.cast(example[layout.label], tf.int64)
        if layout.objects:
            boxes, labels = example[layout.objects]["bbox"], example[layout.objects]["label"]
            record.update(boxes=boxes, box_labels=labels)
            if not layout.label:
                record["label"] = _largest_box_label(boxes, labels)
        if layout.boxes:
            record.update(boxes=example[layout.boxes], box_labels=example[layout.box_labels])
        if layout.index:
            record["index"] = tf.cast(example[layout.index], tf.int64)
        if "texture_label" in example:  # vitjax_scenes: the texture's class (differs in cue_conflict)
            record["texture_label"] = tf.cast(example["texture_label"], tf.int64)
        return record

    def with_position(position, record):
        return {**record, "index": position}

    def encoded() -> tf.data.Dataset:
        ds = read()
        if layout.video:
            return ds.flat_map(_frames(layout)).enumerate().map(with_position)
        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds if layout.index else ds.enumerate().map(with_position)

    def decode(record: dict) -> dict:
        record = dict(record)
        image = image_feature.decode_example(record["image"])
        channels = image.shape[-1]
        record["image"] = (tf.image.grayscale_to_rgb(image) if channels == 1
                           else image[..., :3] if channels == 4 else image)
        if mask_feature is not None:
            mask = mask_feature.decode_example(record["mask"])
            record["mask"] = mask[..., 0] if mask.shape.rank == 3 else mask
        return record

    if layout.video:  # the split counts videos; records are frames
        num_examples = int(read().map(lambda v: tf.shape(v[layout.video][layout.image])[0])
                           .reduce(0, lambda total, n: total + n))
    return Source(name=spec, split=split, num_examples=num_examples, class_names=tuple(label_names),
                  has_labels=bool(layout.label or layout.objects), has_masks=bool(layout.mask),
                  has_boxes=bool(layout.objects or layout.boxes), encoded=encoded, decode=decode,
                  shuffle_buffer=min(num_examples, _SHUFFLE_BUFFER))
