"""Classification accuracy of a model on a dataset split, and its shape bias on a cue-conflict split.

`evaluate('vit_scenes_patch8_64', 'vitjax_scenes/size64', 'test')` runs the model's own eval
transform (its registry recipe) over every example once and returns top-1 and top-5 accuracy.
On a split whose records carry a `texture_label` that differs from the label (vitjax_scenes'
`cue_conflict`), it also returns the shape bias of Geirhos et al.: among the answers on such
images that name either cue, the fraction that name the shape class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax import parallel
from vitjax.load import load


def evaluate(name: str, data: str, split: str, *, checkpoint=None, batch_size: int = 256,
             data_dir: str | None = None) -> dict:
    """Metrics of model `name` (bundled, cached or `checkpoint` weights) on `data`'s `split`."""
    from vitjax.data import loader, preprocess
    from vitjax.data.sources import open_source
    from vitjax.models.registry import lookup

    model, params = load(name, checkpoint=checkpoint)
    source = open_source(data, split, data_dir=data_dir)
    if not source.has_labels:
        raise ValueError(f"{data}:{split} has no labels to evaluate against")
    image_transform = preprocess.eval_transform(lookup(name).preprocess)

    def transform(record):
        out = {"image": image_transform(record["image"]), "label": record["label"]}
        if "texture_label" in record:
            out["texture_label"] = record["texture_label"]
        return out

    sharding = parallel.batch_sharding(parallel.make_mesh())
    devices = jax.device_count()
    batch_size = -(-batch_size // devices) * devices  # a multiple of the device count
    logits_fn = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
    counts = {"examples": 0, "top1": 0, "top5": 0, "shape": 0, "texture": 0}
    batches = loader.eval_batches(source, transform=transform, global_batch=batch_size, sharding=sharding)
    for batch in tqdm(batches, total=-(-source.num_examples // batch_size), desc=f"evaluate {name}"):
        logits = logits_fn(params, batch["image"])
        top5 = jnp.argsort(-logits, axis=-1)[:, :5]
        valid, label = np.asarray(batch["valid"]), np.asarray(batch["label"])
        predicted = np.asarray(top5[:, 0])
        counts["examples"] += int(valid.sum())
        counts["top1"] += int((valid & (predicted == label)).sum())
        counts["top5"] += int((valid & (np.asarray(top5) == label[:, None]).any(-1)).sum())
        if "texture_label" in batch:  # only images whose cues disagree say anything about bias
            texture = np.asarray(batch["texture_label"])
            conflict = valid & (texture != label)
            counts["shape"] += int((conflict & (predicted == label)).sum())
            counts["texture"] += int((conflict & (predicted == texture)).sum())
    metrics = {"examples": counts["examples"], "accuracy": counts["top1"] / counts["examples"],
               "top5": counts["top5"] / counts["examples"]}
    if counts["shape"] + counts["texture"]:
        metrics["shape_bias"] = counts["shape"] / (counts["shape"] + counts["texture"])
    return metrics
