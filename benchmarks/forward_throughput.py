"""Forward throughput, vitjax against timm, in one process on the same machine.

    python benchmarks/forward_throughput.py                       # ViT-S/16 and ViT-B/16, batch 16, 224 px
    python benchmarks/forward_throughput.py --models vit_small_patch16_224 --repeats 10
    python benchmarks/forward_throughput.py --dtype bfloat16     # timm under torch.autocast, vitjax model.dtype

For each model it times timm (eval mode, torch.inference_mode, its fused attention) and vitjax (jit)
without capture, then both again returning every block's attention probabilities (timm through its
non-fused path and forward hooks, as timm's own AttentionExtract does), and prints images/s and
the vitjax/timm ratios. Weights are random: throughput does not depend on them. With --dtype
bfloat16 both sides compute in bfloat16 with float32 weights: timm under torch.autocast, vitjax
with the model's dtype set.

Both sides run with glibc's malloc set to keep freed memory, as the `vitjax` command sets it
(`vitjax.allocator`); VITJAX_MALLOC=system measures glibc's default instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "shims"))  # timm imports torchvision


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_autocast(dtype: str):
    """torch.autocast to bfloat16 on the CPU for dtype 'bfloat16', else a context that does nothing."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()


def timm_runner(arch: str, x_nchw, capture: bool, dtype: str):
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False).eval()
    maps = []
    if capture:
        for block in model.blocks:
            block.attn.fused_attn = False  # the fused kernel returns no probabilities
            block.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o))

    def run():
        maps.clear()
        with torch.inference_mode(), torch_autocast(dtype):
            model(x_nchw)

    return run


def vitjax_runner(arch: str, x_nhwc, capture: bool, dtype: str):
    import jax

    import vitjax

    model, params = vitjax.create_model(arch, key=jax.random.key(0), dtype=dtype)
    taps = ("attn",) if capture else None
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, capture=taps))
    return lambda: jax.block_until_ready(forward(params, x_nhwc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides (weights stay float32)")
    args = parser.parse_args()

    from vitjax import allocator

    print(allocator.describe(allocator.keep_freed_memory()))  # before the first computation

    import numpy as np
    import torch

    x = np.random.RandomState(0).randn(args.batch, args.image_size, args.image_size, 3).astype(np.float32)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    print(f"batch {args.batch}, {args.image_size} px, {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'model':28s} {'capture':8s} {'timm img/s':>11s} {'vitjax img/s':>13s} {'ratio':>6s}")
    for arch in args.models:
        for capture in (False, True):
            t_timm = median_seconds(timm_runner(arch, x_nchw, capture, args.dtype), args.repeats)
            t_jax = median_seconds(vitjax_runner(arch, x, capture, args.dtype), args.repeats)
            label = "attn" if capture else "none"
            print(f"{arch:28s} {label:8s} {args.batch / t_timm:11.2f} {args.batch / t_jax:13.2f} "
                  f"{t_timm / t_jax:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
