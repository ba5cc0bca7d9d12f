"""Fixed batches for curvature operators and loss landscapes: the same arrays every time they are built.

A Hessian (or a landscape) of a loss over augmented data is only a fixed function when the
augmentation is fixed: each batch here is a pure function of (seed, batch index), computed once on
the host and reused for every Hessian-vector product or grid point.

`fixed_batches(data, split, model_name, num_batches=..., batch_size=...)` with `augment=True` gives
Park & Kim's evaluation data for landscapes and Hessian spectra (`how-do-vits-work`: the *training*
set with its training augmentation, Mixup/CutMix and label smoothing 0.1, the model in eval mode):

- crop and flip: `vitjax.data.augment.train_transform(kind)`, default 'simple' (RandomResizedCrop
  with scale (0.35, 1) and a horizontal flip), which is also how the embedded vitjax_scenes models
  were trained. Park & Kim's CIFAR recipe is RandomCrop(32, padding=4) + flip, which vitjax has no
  transform for; 'simple' is the closest existing kind (pass kind='deit' for timm's ImageNet crop +
  colour jitter). The crop size, mean, std and interpolation are the model's own (its registry recipe).
- Mixup/CutMix: `vitjax.data.mixing.mix_batch` (timm's Mixup, mode 'batch') with DeiT's alphas
  (mixup 0.8, cutmix 1.0, switch probability 0.5) and label smoothing 0.1, keyed by
  fold_in(PRNGKey(seed), batch index).
- examples: the split shuffled with `seed` and read as the trainer reads it
  (`vitjax.data.loader.local_train_dataset`), so batch b holds stream positions [b*B, (b+1)*B).

With `augment=False` the batches are the model's eval transform of the split in its stored order
(the last one padded, 'valid' False on padding) with one-hot targets.

Each batch is {'image': float32 (B, H, W, 3), 'target': float32 (B, C), 'valid': bool (B,)} (numpy).
"""

from __future__ import annotations

import jax
import numpy as np


def fixed_batches(data: str, split: str, model_name: str, *, num_batches: int | None, batch_size: int,
                  seed: int = 0, augment: bool = True, data_dir: str | None = None, kind: str = "simple",
                  mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, label_smoothing: float = 0.1) -> list[dict]:
    """`num_batches` batches of `batch_size` from `data`:`split` for model `model_name` (see the module
    docstring). num_batches=None with augment=False means the whole split."""
    from vitjax.data import augment as augment_lib
    from vitjax.data import loader, preprocess
    from vitjax.data.sources import open_source
    from vitjax.models.registry import lookup

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if augment and not num_batches:
        raise ValueError("augmented batches are an endless stream: say how many with num_batches")
    spec = lookup(model_name)
    recipe = spec.preprocess
    num_classes = spec.config.num_classes
    source = open_source(data, split, data_dir=data_dir)
    if not source.has_labels:
        raise ValueError(f"{data}:{split} has no labels; a classification objective needs them")
    if source.num_classes not in (None, num_classes):
        raise ValueError(f"{data} has {source.num_classes} classes but {model_name} predicts {num_classes}")

    if augment:
        transform = augment_lib.train_transform(kind, recipe.crop, recipe.mean, recipe.std,
                                                interpolation=recipe.interpolation)
        stream = loader.local_train_dataset(source, transform=transform, global_batch=batch_size, seed=seed)
    else:
        image_transform = preprocess.eval_transform(recipe)
        stream = loader.local_eval_dataset(
            source, transform=lambda r: {"image": image_transform(r["image"]), "label": r["label"]},
            global_batch=batch_size)
    if num_batches:
        stream = stream.take(num_batches)

    mix = None
    if augment:
        from vitjax.data.mixing import mix_batch

        mix = jax.jit(lambda key, images, labels: mix_batch(
            key, images, labels, num_classes=num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
            label_smoothing=label_smoothing))
    batches = []
    for index, batch in enumerate(stream.as_numpy_iterator()):
        labels = batch["label"].astype(np.int32)
        if augment:
            key = jax.random.fold_in(jax.random.key(seed), index)
            images, targets = mix(key, batch["image"], labels)
            valid = np.ones(labels.shape, bool)
        else:
            images, valid = batch["image"], batch["valid"]
            targets = np.eye(num_classes, dtype=np.float32)[labels]
        batches.append({"image": np.asarray(images, np.float32), "target": np.asarray(targets, np.float32),
                        "valid": np.asarray(valid, bool)})
    if num_batches and len(batches) < num_batches:
        raise ValueError(f"{data}:{split} has only {len(batches)} batches of {batch_size} "
                         f"without augmentation; asked for {num_batches}")
    return batches


def place(batch: dict, mesh) -> dict:
    """A host batch as global arrays split over `mesh`'s devices along the batch axis.

    Rows are padded (copies of row 0 with 'valid' False; a 'valid' entry is added where missing)
    to a multiple of the device count, so any batch size runs on any number of devices and the
    padding counts for nothing in a mean over valid rows.
    """
    from vitjax import parallel

    batch = {key: np.asarray(value) for key, value in batch.items()}
    rows = len(next(iter(batch.values())))
    batch.setdefault("valid", np.ones(rows, bool))
    padding = -rows % mesh.size
    if padding:
        batch = {key: np.concatenate([value, np.repeat(value[:1], padding, axis=0)]) for key, value in batch.items()}
        batch["valid"][rows:] = False
    return parallel.global_batch(batch, parallel.batch_sharding(mesh))
