"""Is training ever input-bound? The input pipeline against a ViT-S/16 training step, side by side.

    python benchmarks/input_pipeline.py                          # 224 px JPEGs, batch 32
    python benchmarks/input_pipeline.py --source-size 500x375    # ImageNet-sized JPEGs
    python benchmarks/input_pipeline.py --steps 3 --pipeline-batches 10

In one process, on whatever JAX and TensorFlow see (all CPU cores by default), it measures

  (a) pipeline: images/s delivered by `vitjax.data.loader.train_batches` from a folder of JPEGs
      written to a temporary directory (smooth random images, so they compress like photos),
      decoded and augmented with RandomResizedCrop(224, scale=(0.08, 1)) + horizontal flip
      (`vitjax.data.augment.train_transform`), as global jax.Arrays;
  (b) step: images/s of a jitted ViT-S/16 training step (value_and_grad of softmax cross-entropy,
      then an optax AdamW update) on one fixed batch of 32 at 224 px;
  (c) fed step: the same step consuming the loader's batches, with the pipeline running in its
      background thread as in training, so both compete for the same cores;

and prints (a)/(b), which says how much headroom the input has, and (c)/(b), which says whether
feeding the step slows it (1.0: never input-bound). Model weights are random. glibc's malloc is
set to keep freed memory, as `vitjax train` sets it (`vitjax.allocator`; VITJAX_MALLOC=system for
glibc's default).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np


def write_jpegs(folder: Path, count: int, size: tuple[int, int], classes: int) -> None:
    """Smooth random images (upsampled noise plus fine grain), as JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        (folder / f"class{i % classes}").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"class{i % classes}" / f"{i:05d}.jpg", quality=90)


def images_per_second(batches, count: int, batch: int, warmup: int = 2) -> float:
    """Time `count` items of an iterator after `warmup` (waiting for each to be computed)."""
    import jax

    for item in itertools.islice(batches, warmup):
        jax.block_until_ready(item)
    start = time.perf_counter()
    for item in itertools.islice(batches, count):
        jax.block_until_ready(item)
    return count * batch / (time.perf_counter() - start)


def make_step(num_classes: int):
    import jax
    import optax

    import vitjax

    model, params = vitjax.create_model("vit_small_patch16_224", key=jax.random.key(0),
                                        num_classes=num_classes)
    optimizer = optax.adamw(1e-3, weight_decay=0.05)

    def loss_fn(params, images, labels):
        logits = model.apply({"params": params}, images).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params, optimizer.init(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224, help="training resolution")
    parser.add_argument("--source-size", default="224x224", help="WxH of the JPEGs written")
    parser.add_argument("--images", type=int, default=512, help="JPEGs in the folder")
    parser.add_argument("--pipeline-batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed, (b) and (c)")
    args = parser.parse_args()

    from vitjax import allocator

    print(allocator.describe(allocator.keep_freed_memory()))  # before the first computation

    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from vitjax.data import augment, loader
    from vitjax.data.sources import open_source

    classes = 10
    width, height = map(int, args.source_size.split("x"))
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))
    transform = augment.train_transform("simple", args.image_size, scale=(0.08, 1.0))

    def batches():
        return loader.train_batches(source, transform=transform, global_batch=args.batch, seed=0,
                                    sharding=sharding, prefetch=2)

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images, (width, height), classes)
        source = open_source(f"folder:{tmp}")

        pipeline = batches()
        a = images_per_second(pipeline, args.pipeline_batches, args.batch)
        pipeline.close()

        step, params, opt_state = make_step(classes)
        fixed = next(batches())
        state = [params, opt_state]

        def run(batch):
            state[0], state[1], loss = step(state[0], state[1], batch["image"], batch["label"])
            return loss

        b = images_per_second(map(run, itertools.repeat(fixed)), args.steps, args.batch, warmup=1)
        fed_batches = batches()
        c = images_per_second(map(run, fed_batches), args.steps, args.batch, warmup=1)
        fed_batches.close()

    print(f"device: {jax.devices()[0].device_kind}, {args.batch} x {args.image_size} px, "
          f"JPEGs {width}x{height}")
    print(f"(a) input pipeline          {a:9.1f} images/s")
    print(f"(b) ViT-S/16 training step  {b:9.1f} images/s")
    print(f"(c) step fed by pipeline    {c:9.1f} images/s")
    print(f"pipeline / step (a/b): {a / b:.1f}x   fed / unfed step (c/b): {c / b:.2f}")


if __name__ == "__main__":
    main()
