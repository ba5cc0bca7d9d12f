"""Attention on an NVIDIA GPU: the plain path against cuDNN, the statistics path against the plain
path, and statistics memory against materialising, in one process. Needs a GPU (exits otherwise).

    python benchmarks/attention_gpu.py                       # ViT-B and ViT-L heads, N in {197, 577, 1025, 4097}
    python benchmarks/attention_gpu.py --sizes 197 1025 --repeats 20

bfloat16 q, k, v of shape (B, N, H, 64) with B = max(1, 16384 // N) (16k tokens per call, as in the
FlashAttention-3 measurements). Rows:
  plain / cudnn      vitjax.kernels.dispatch.attention against jax.nn.dot_product_attention(
                     implementation='cudnn') called directly: throughput ratio (goal >= 0.9)
  stats / plain      dispatch.attention_with_stats (every statistic) against dispatch.attention:
                     time ratio (goal <= 1.3); the implementation it used is printed ('triton':
                     kernels/triton_attention.py, with the gpu extra installed; else 'chunked')
  stats / materialise  compiled peak memory of the statistics path against reference.attention plus
                     the statistics from its N x N logits (goal <= 0.1 at N = 4097)
Times are medians of --repeats calls after a warm-up; memory is compiled.memory_analysis().
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from attention_memory_cpu import median_seconds, peak_bytes

from vitjax.capture import TokenLayout
from vitjax.kernels import dispatch, reference, stats

SHAPES = {"ViT-B": 12, "ViT-L": 16}  # heads; head dim 64 for both
GRIDS = {197: 14, 577: 24, 1025: 32, 4097: 64}  # N = grid^2 + 1 (class token)


def require_gpu():
    devices = jax.devices()
    if devices[0].platform != "gpu":
        sys.exit(f"attention_gpu.py needs an NVIDIA GPU with a CUDA build of jax; jax sees {devices[0].platform} "
                 f"devices only ({devices[0].device_kind}). "
                 "For the CPU numbers run benchmarks/attention_memory_cpu.py.")


def measure(fn, args, repeats):
    compiled = jax.jit(fn).lower(*args).compile()
    return peak_bytes(compiled), median_seconds(compiled, args, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    require_gpu()
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, bfloat16, Dh=64")
    print(f"{'model':6s} {'N':>5s} {'B':>4s}  {'cudnn ms':>9s} {'plain ms':>9s} {'plain/cudnn thr':>15s}  "
          f"{'stats ms':>9s} {'stats/plain':>11s}  {'stats MiB':>9s} {'mat. MiB':>9s} {'stats/mat':>9s}  impl")
    for model, heads in SHAPES.items():
        for n in args.sizes:
            layout = TokenLayout(1, 0, 0, (GRIDS[n],) * 2, (16, 16))
            geometry = stats.token_geometry(layout)
            batch = max(1, 16384 // n)
            qkv = [jax.random.normal(key, (batch, n, heads, 64), jnp.bfloat16)
                   for key in jax.random.split(jax.random.key(0), 3)]

            def materialise(q, k, v):
                out, _, logits = reference.attention(q, k, v)
                return out, stats.finalize(stats.row_stats(logits, geometry, geometry))

            _, cudnn = measure(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
                               qkv, args.repeats)
            _, plain = measure(dispatch.attention, qkv, args.repeats)
            stats_mem, with_stats = measure(lambda q, k, v: dispatch.attention_with_stats(q, k, v, geometry),
                                            qkv, args.repeats)
            mat_mem = peak_bytes(jax.jit(materialise).lower(*qkv).compile())
            impl = dispatch.implementation(statistics=True, dtype=jnp.bfloat16, head_dim=64)
            print(f"{model:6s} {n:5d} {batch:4d}  {cudnn * 1e3:9.2f} {plain * 1e3:9.2f} {cudnn / plain:15.2f}  "
                  f"{with_stats * 1e3:9.2f} {with_stats / plain:11.2f}  {stats_mem / 2**20:9.1f} "
                  f"{mat_mem / 2**20:9.1f} {stats_mem / mat_mem:9.3f}  {impl}", flush=True)


if __name__ == "__main__":
    main()
