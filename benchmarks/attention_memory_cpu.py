"""Attention statistics on CPU: the chunked reference against materialising N x N, in one process.

    python benchmarks/attention_memory_cpu.py                      # ViT-B heads, N = 4097 (1024 px, /16)
    python benchmarks/attention_memory_cpu.py --grid 32 --heads 6  # N = 1025, ViT-S heads
    python benchmarks/attention_memory_cpu.py --backward           # also the gradient of out + entropy

Three jitted programs on the same random q, k, v (B, N, H, 64), float32:
  materialise  reference.attention, then every statistic from the full logits (the analysis one
               would write without kernels: the N x N probabilities and the distance table)
  chunked      kernels.chunked.attention_with_stats (query blocks of 128, the same statistics)
  plain        reference.attention's output alone (no statistics; for context)
Peak memory is XLA's compiled estimate (compiled.memory_analysis(): temporaries + arguments +
outputs); time is the median wall time of --repeats calls after a warm-up. The goal: at N = 4097
the chunked reference needs at most 1/8 of the materialising peak and is not slower.
"""

from __future__ import annotations

import argparse
import statistics as pystats
import time

import jax
import jax.numpy as jnp

from vitjax.capture import TokenLayout
from vitjax.kernels import chunked, reference, stats


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return pystats.median(times)


def programs(geometry, backward: bool, block_q: int):
    def materialise(q, k, v):
        out, _, logits = reference.attention(q, k, v)
        return out, stats.finalize(stats.row_stats(logits, geometry, geometry))

    def streamed(q, k, v):
        return chunked.attention_with_stats(q, k, v, geometry, block_q=block_q)

    found = {"materialise": materialise, "chunked": streamed, "plain": lambda q, k, v: reference.attention(q, k, v)[0]}
    if backward:
        def trained(attention):
            return jax.grad(lambda q, k, v: (lambda o, s: o.sum() + s["entropy"].sum())(*attention(q, k, v)), (0, 1, 2))

        found = {"materialise": trained(materialise), "chunked": trained(streamed)}
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=64, help="patch grid side (N = grid^2 + 1); 64 gives 4097")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block-q", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backward", action="store_true", help="time and measure the gradient instead")
    args = parser.parse_args()

    layout = TokenLayout(1, 0, 0, (args.grid, args.grid), (16, 16))
    geometry = stats.token_geometry(layout)
    shape = (args.batch, layout.num_tokens, args.heads, 64)
    q, k, v = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 3))
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}; B={args.batch} N={layout.num_tokens} "
          f"H={args.heads} Dh=64 float32, {'gradient' if args.backward else 'forward'}, block_q={args.block_q}")
    rows = {}
    for name, fn in programs(geometry, args.backward, args.block_q).items():
        compiled = jax.jit(fn).lower(q, k, v).compile()
        rows[name] = (peak_bytes(compiled), median_seconds(compiled, (q, k, v), args.repeats))
        print(f"{name:12s} peak {rows[name][0] / 2**20:9.1f} MiB   time {rows[name][1] * 1e3:9.1f} ms", flush=True)
    (mem_m, time_m), (mem_c, time_c) = rows["materialise"], rows["chunked"]
    print(f"chunked / materialise: memory {mem_c / mem_m:.3f} (goal <= 0.125), "
          f"time {time_c / time_m:.2f}x (goal <= 1.0)")
    if "plain" in rows:
        print(f"chunked / plain output-only attention: memory {mem_c / rows['plain'][0]:.3f}, "
              f"time {time_c / rows['plain'][1]:.2f}x")


if __name__ == "__main__":
    main()
