"""What a pass of `vitjax analyze` reads: the dataset cut to its first images, one tf transform
giving every model its own preprocessed view of each image (and mask), and host-array batches for
tests and notebooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from vitjax import parallel
from vitjax.models.registry import Preprocess

if TYPE_CHECKING:
    from vitjax.analysis.run import ModelPlan


def mask_transform(recipe: Preprocess):
    """The image geometry of `recipe` (shorter side resize, centre crop) applied to an instance-id mask
    with nearest resampling, as a float32 foreground mask (1 where the id is not 0)."""
    from vitjax.data import preprocess
    from vitjax.data.tf_env import import_tf

    tf = import_tf()

    def transform(mask):
        mask = preprocess.resize_shorter(mask, recipe.resize, "nearest")
        mask = preprocess.center_crop(mask, recipe.crop)
        return tf.ensure_shape(tf.cast(mask > 0, tf.float32), (recipe.crop, recipe.crop))

    return transform


def record_transform(plans: Sequence[ModelPlan], want_labels: bool, want_masks: bool):
    """One tf function producing every model's images (and masks): a recipe shared by several models
    is computed once. Sets each plan's image_key and mask_key."""
    from vitjax.data import preprocess
    from vitjax.data.tf_env import import_tf

    tf = import_tf()
    recipes = list(dict.fromkeys(plan.recipe for plan in plans))
    for plan in plans:
        index = recipes.index(plan.recipe)
        plan.image_key, plan.mask_key = f"image{index}", f"mask{index}"
    images = [preprocess.eval_transform(r) for r in recipes]
    masks = [mask_transform(r) for r in recipes] if want_masks else []

    def transform(record):
        out = {f"image{i}": fn(record["image"]) for i, fn in enumerate(images)}
        out.update({f"mask{i}": fn(record["mask"]) for i, fn in enumerate(masks)})
        if want_labels:
            out["label"] = tf.cast(record["label"], tf.int32)
        return out

    return transform


def open_limited(dataset: str, split: str | None, num_images: int | None, data_dir: str | None):
    """The source of `dataset`'s `split`, cut to its first `num_images` examples (all if None).

    A TFDS split is cut by slicing it ('test[:100]'), which reads only those examples; a folder
    (or an already sliced split) by taking the first examples of its stream.
    """
    from vitjax.data.sources import FOLDER_PREFIX, open_source

    source = open_source(dataset, split, data_dir=data_dir)
    if num_images is None or num_images >= source.num_examples:
        return source
    if num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {num_images}")
    if not dataset.startswith(FOLDER_PREFIX) and split and "[" not in split:
        return open_source(dataset, f"{split}[:{num_images}]", data_dir=data_dir)
    return dataclasses.replace(source, num_examples=num_images, encoded=lambda: source.encoded().take(num_images))


def batches_of(arrays: dict[str, np.ndarray], sizes: Sequence[int], mesh) -> Iterator[dict]:
    """Global batches of consecutive rows of host arrays, `sizes` rows each (the last padded with
    copies of row 0, 'valid' False there, as the loader does); for tests and notebooks."""
    start, sharding = 0, parallel.batch_sharding(mesh)
    for size in sizes:
        stop = min(start + size, len(arrays["valid"]))
        rows = {k: v[start:stop] for k, v in arrays.items()}
        pad = size - (stop - start)
        if pad:
            rows = {k: np.concatenate([v, np.repeat(arrays[k][:1], pad, axis=0)]) for k, v in rows.items()}
            rows["valid"][-pad:] = False
        yield parallel.global_batch(rows, sharding)
        start = stop
