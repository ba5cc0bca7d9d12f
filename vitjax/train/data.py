"""The batch factories of a run config's `data` section: a dataset through `vitjax.data` (TFDS,
image folders, `vitjax_scenes`), or the synthetic task."""

from __future__ import annotations

import ml_collections

from vitjax.models.registry import Preprocess


def batches_from_config(config: ml_collections.ConfigDict, sharding):
    """(train_batches, eval_batches or None) for `train(...)`."""
    data = config.data
    eval_batch = data.eval_batch_size or config.batch_size
    if data.source == "synthetic":
        from vitjax.train.synthetic import SyntheticTask

        task = SyntheticTask(image_size=data.image_size, num_classes=config.model.num_classes,
                             global_batch=config.batch_size, seed=config.seed)
        return task.train_batches(sharding), (task.eval_batches(sharding) if data.eval_split else None)
    if not data.source:
        raise ValueError("the config names no data: set data.source (a TFDS name, 'folder:/path' or 'synthetic')")

    from vitjax.data import augment, loader, preprocess
    from vitjax.data.sources import open_source

    def source(split):
        return open_source(data.source, split, data_dir=data.data_dir, manual_dir=data.manual_dir)

    train_source = source(data.train_split)
    num_classes = config.model.get("num_classes")
    if num_classes is not None and train_source.num_classes not in (None, num_classes):
        raise ValueError(f"{data.source} has {train_source.num_classes} classes but model.num_classes is {num_classes}")
    transform = augment.train_transform(data.augment, data.image_size, data.mean, data.std,
                                        scale=data.crop_scale, interpolation=data.interpolation)

    def train_batches(start_step: int):
        return loader.train_batches(train_source, transform=transform, global_batch=config.batch_size,
                                    seed=config.seed, start_step=start_step, sharding=sharding,
                                    shuffle_buffer=data.shuffle_buffer)

    if not data.eval_split:
        return train_batches, None
    eval_source = source(data.eval_split)
    recipe = Preprocess(tuple(data.mean), tuple(data.std), data.image_size, data.eval_crop_pct, data.interpolation)
    image_transform = preprocess.eval_transform(recipe)

    def eval_transform(record):
        return {"image": image_transform(record["image"]), "label": record["label"]}

    def eval_batches():
        return loader.eval_batches(eval_source, transform=eval_transform, global_batch=eval_batch, sharding=sharding)

    return train_batches, eval_batches
