"""What one analysis pass costs over a plain forward pass, on the same model and images.

    python benchmarks/analysis_overhead.py                                  # ViT-S/16, 224 px, 64 images
    python benchmarks/analysis_overhead.py --images 32 --batch-size 16 --repeats 2

Times (median of --repeats, after a compiling warm-up) a jitted forward pass over the images with
nothing captured, and vitjax's one-pass runner (`vitjax.analysis.run.Pass`) applying the same
model with every attention and feature analysis updated in the same jitted step: every registered
single-model analysis (all but CKA between models) except the two whose work is all in `finalize` (clustering's k-means and the
probes' training, timed separately below; their per-batch cost is a buffer write). Random weights
and images: the cost does not depend on them. Prints images/s for both, the ratio (goal <= 1.5x),
the finalize times and the bytes each analysis keeps between batches. Runs with glibc's malloc
keeping freed memory, as the `vitjax` command does (`vitjax.allocator`).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import vitjax
from vitjax import allocator, parallel
from vitjax.analysis import inputs, registry, run

from forward_throughput import median_seconds  # benchmarks/ is the script's folder, so on sys.path

FINALIZE_HEAVY = ("clustering", "probes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(allocator.describe(allocator.keep_freed_memory()))  # as `vitjax analyze` runs

    model, params = vitjax.create_model(args.model, key=jax.random.key(0))
    size = model.config.image_size[0]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    data = {"image": rng.normal(size=(args.images, size, size, 3)).astype(np.float32),
            "mask": (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2)[None].repeat(args.images, 0)
            .astype(np.float32),
            "label": rng.integers(0, 10, args.images).astype(np.int32), "valid": np.ones(args.images, bool)}
    mesh = parallel.make_mesh()
    sizes = [args.batch_size] * -(-args.images // args.batch_size)
    batches = list(inputs.batches_of(data, sizes, mesh))

    forward = jax.jit(lambda p, x: model.apply({"params": p}, x).pooled)

    def plain():
        jax.block_until_ready([forward(params, b["image"]) for b in batches])

    analyses = [cls() for name, cls in registry.ANALYSES.items() if name not in FINALIZE_HEAVY]
    analyses = [a for a in analyses if not run.is_pair(a)]  # one model here: no CKA between models
    recipe = vitjax.lookup(args.model).preprocess
    plans, pairs, notes = run.plan([(args.model, model, params, recipe)], analyses, has_labels=True, has_masks=True,
                                   data_name="random", explicit=True)
    one_pass = run.Pass(plans, pairs, mesh)

    def analysed():
        one_pass.reset()
        for batch in batches:
            one_pass.feed(batch)
        jax.block_until_ready(one_pass.states)

    print(f"{args.model}, {args.images} images of {size} px, batch {args.batch_size}, {jax.device_count()} device(s) "
          f"({jax.devices()[0].platform}); analyses in the pass: {', '.join(plans[0].analyses)}")
    t_plain = median_seconds(plain, args.repeats, warmup=1)  # the warm-up compiles
    t_pass = median_seconds(analysed, args.repeats, warmup=1)
    print(f"forward only:           {t_plain:7.2f} s  {args.images / t_plain:6.1f} images/s")
    print(f"forward + all analyses: {t_pass:7.2f} s  {args.images / t_pass:6.1f} images/s")
    print(f"ratio (goal <= 1.5x):   {t_pass / t_plain:7.2f}x")

    start = time.perf_counter()
    one_pass.finalize()
    print(f"finalize of those analyses: {time.perf_counter() - start:.2f} s")
    heavy = [registry.make(name) for name in FINALIZE_HEAVY]
    heavy_plans, _, _ = run.plan([(args.model, model, params, recipe)], heavy, has_labels=True, has_masks=True,
                                 data_name="random", explicit=True)
    heavy_pass = run.Pass(heavy_plans, [], mesh)
    for batch in batches:
        heavy_pass.feed(batch)
    for label, analysis in heavy_plans[0].analyses.items():
        state = parallel.to_host(heavy_pass.states[0][list(heavy_plans[0].analyses).index(label)])
        start = time.perf_counter()
        analysis.finalize(state)
        print(f"finalize of {label} ({args.images} images): {time.perf_counter() - start:.2f} s")
    sizes = {**one_pass.state_bytes()[args.model], **heavy_pass.state_bytes()[args.model]}
    print("state kept between batches (bytes, independent of the number of images):")
    for label, count in sorted(sizes.items(), key=lambda item: -item[1]):
        print(f"  {label:24s} {count / 2**20:10.2f} MiB")
    attention = model.config.depth * model.config.num_heads * (model.config.grid[0] * model.config.grid[1] + 1) ** 2
    print(f"one batch of attention maps (all blocks): {attention * args.batch_size * 4 / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
