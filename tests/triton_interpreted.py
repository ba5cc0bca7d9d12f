"""Runs the Triton attention kernels under the Triton interpreter on a CPU and saves what they return.

`python tests/triton_interpreted.py OUT.npz`, run by tests/test_triton_kernels.py in a process of its
own: TRITON_INTERPRET=1 must be set before @triton.jit decorates the kernels (it makes every kernel
an interpreted one), so it cannot be switched on inside a pytest process shared with other tests.

jax-triton cannot launch anything here (it is GPU-only), so the JAX wrapper (kernels/triton_attention.py)
runs with its launcher replaced: `interpreted_launch` hands the same kernel, grid and constexprs to
the interpreter through jax.pure_callback. Everything else is the code that runs on a GPU: the
custom_vjp, the fused backward kernels, the custom_vmap batching rules. Outputs start as NaN, so an
element a kernel forgets to write shows up. The oracles live in the test process, not here.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import NamedTuple

import numpy as np


class Case(NamedTuple):
    """One problem: its token layout, input dtype and shape, and the kernels' block sizes."""

    name: str
    layout: tuple  # TokenLayout(num_cls, num_distilled, num_registers, grid, patch)
    dtype: str
    batch: int
    heads: int
    head_dim: int  # 16 for 16-bit inputs: q * 16^-0.5 is exact there, as in the float64 oracle
    scale: float  # of q and k; 3 gives logits of standard deviation about 9 (peaked rows)
    config: tuple  # triton_attention.Config(block_q, block_k, block_backward)
    patch_keys_only: bool = False  # keys = the patch tokens only (the prefix-split use of the kernels)


CASES = [
    Case("N197-f32-d24", (1, 0, 0, (14, 14), (16, 16)), "float32", 1, 2, 24, 1.5, (64, 64, 64)),
    Case("N257-bf16", (1, 0, 0, (16, 16), (16, 16)), "bfloat16", 1, 2, 16, 1.5, (64, 32, 64)),
    Case("N83-registers-peaked", (1, 1, 1, (8, 10), (14, 14)), "float32", 2, 2, 12, 3.0, (32, 32, 32)),
    Case("N83-patch-keys-f16", (1, 1, 1, (8, 10), (14, 14)), "float16", 1, 2, 16, 1.5, (16, 32, 32), True),
]
VMAP_CASE = Case("N32-vmap", (1, 1, 0, (5, 6), (16, 16)), "float32", 1, 2, 16, 1.0, (16, 16, 16))


def inputs(case: Case, seed: int = 0):
    """q, k, v (B, N, H, Dh) in the case's dtype, geometries, and loss weights for every output.

    NumPy draws them: eager jax.random would compile a dozen tiny programs per case.
    """
    import jax.numpy as jnp

    from vitjax.capture import TokenLayout
    from vitjax.kernels import stats

    layout = TokenLayout(*case.layout)
    rng = np.random.default_rng(seed)
    shape = (case.batch, layout.num_tokens, case.heads, case.head_dim)
    q, k, v = [(rng.standard_normal(shape) * s).astype(jnp.dtype(case.dtype)) for s in (case.scale, case.scale, 1.0)]
    geometry = stats.token_geometry(layout)
    key_geometry = geometry
    if case.patch_keys_only:
        k, v = k[:, layout.num_prefix :], v[:, layout.num_prefix :]
        key_geometry = geometry.slice(layout.num_prefix, layout.num_tokens)
    per_query = (case.batch, case.heads, shape[1])
    weights = {n: rng.standard_normal(per_query).astype(np.float32) for n in stats.ROW_FIELDS + stats.DERIVED_FIELDS}
    weights["out"] = rng.standard_normal(shape).astype(jnp.dtype(case.dtype))  # the output's cotangent
    weights["received"] = rng.uniform(size=per_query).astype(np.float32)
    return q, k, v, geometry, key_geometry, weights


def forward_and_gradients(attend, weights):
    """(out, stats, (dq, dk, dv)) with one forward: the gradients are those of
    sum(out * weights['out']) + sum over every statistic of sum(stat * weights[name])."""
    import jax

    def run(q, k, v):
        (out, s), pullback = jax.vjp(attend, q, k, v)
        return out, s, pullback((weights["out"], {n: weights[n] for n in s}))

    return run


# XLA may run independent callbacks (the dK/dV and dQ kernels) on two threads at once, and the
# interpreter patches triton.language module-wide while a kernel runs: one kernel at a time.
INTERPRETER_LOCK = threading.Lock()


def interpreted_launch(kernel, *args, out_shape, grid, num_warps, num_stages, **constants):
    """jax_triton.triton_call's contract, run by the Triton interpreter on torch CPU tensors."""
    import jax
    import jax.numpy as jnp
    import torch

    def to_torch(a):
        a = np.ascontiguousarray(a)
        if a.dtype == jnp.bfloat16:  # numpy knows bfloat16 only through ml_dtypes; torch shares the bits
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(a.copy())

    def to_numpy(t, dtype):
        return t.view(torch.int16).numpy().view(jnp.bfloat16) if dtype == jnp.bfloat16 else t.numpy().astype(dtype)

    flat, tree = jax.tree_util.tree_flatten(out_shape)

    def host(*arrays):
        outs = [torch.full(s.shape, float("nan"), dtype=to_torch(np.zeros((), s.dtype)).dtype) for s in flat]
        with INTERPRETER_LOCK:
            kernel[grid](*map(to_torch, arrays), *outs, **constants)
        return [to_numpy(o, s.dtype) for o, s in zip(outs, flat)]

    # No vmap_method: a pure_callback that reached vmap would raise, so the custom_vmap rules must fold.
    return jax.tree_util.tree_unflatten(tree, jax.pure_callback(host, flat, *args))


def convert_bfloat16_dot_operands():
    """Make the interpreter's tl.dot read bfloat16 operands as numbers.

    The interpreter stores bfloat16 as uint16 and its tl.dot multiplies those bit patterns
    (triton-lang/triton#11584, "not supported yet"; its casts and loads are right). Widening
    each operand to float32 (the bits shifted up by 16, exact) gives what tensor cores compute:
    bf16 products are exact in their float32 accumulation.
    """
    import triton.language as tl
    from triton.runtime import interpreter

    dot = interpreter.InterpreterBuilder.create_dot

    def widened(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    interpreter.InterpreterBuilder.create_dot = lambda self, a, b, *rest: dot(self, widened(a), widened(b), *rest)


def run_case(case: Case, results: dict):
    import jax

    from vitjax.kernels import triton_attention as ta

    q, k, v, geometry, key_geometry, weights = inputs(case)
    config = ta.Config(*case.config)
    attend = lambda q, k, v: ta.attention_with_stats(q, k, v, geometry, key_geometry=key_geometry, config=config)
    out, s, grads = jax.jit(forward_and_gradients(attend, weights))(q, k, v)
    received = jax.jit(lambda q, k, lse, w: (ta.attention_received(q, k, lse, config=config),
                                             ta.attention_received(q, k, lse, w, config=config)))(
        q, k, s["lse"], weights["received"])
    saved = dict(q=q, k=k, v=v, out=out, dq=grads[0], dk=grads[1], dv=grads[2],
                 received=received[0], received_weighted=received[1],
                 **{f"stat_{n}": x for n, x in s.items()}, **{f"weight_{n}": w for n, w in weights.items()})
    for name, value in saved.items():
        results[f"{case.name}/{name}"] = np.asarray(value, np.float32)


def run_vmap(case: Case, results: dict):
    """vmap over a stack of two problems, of the forward and of the gradient; and over q alone."""
    import jax
    import jax.numpy as jnp

    from vitjax.kernels import triton_attention as ta

    problems = [inputs(case, seed) for seed in (1, 2)]
    q, k, v = (jnp.stack([p[i] for p in problems]) for i in range(3))
    geometry, weights = problems[0][3], problems[0][5]
    config = ta.Config(*case.config)
    attend = lambda q, k, v: ta.attention_with_stats(q, k, v, geometry, config=config)
    out, s, grads = jax.jit(jax.vmap(forward_and_gradients(attend, weights)))(q, k, v)
    out_q_only, s_q_only = jax.jit(jax.vmap(attend, in_axes=(0, None, None)))(q, k[0], v[0])
    received = jax.jit(jax.vmap(lambda q, k, lse: ta.attention_received(q, k, lse, config=config)))(q, k, s["lse"])
    saved = dict(q=q, k=k, v=v, out=out, entropy=s["entropy"], distance=s["distance"], dq=grads[0], dk=grads[1],
                 dv=grads[2], out_q_only=out_q_only, entropy_q_only=s_q_only["entropy"], received=received,
                 **{f"weight_{n}": w for n, w in weights.items()})
    for name, value in saved.items():
        results[f"{case.name}/{name}"] = np.asarray(value, np.float32)


def main(path: str):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the test sets it in our environment too)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from vitjax.kernels import triton_attention

    triton_attention._launch = interpreted_launch
    convert_bfloat16_dot_operands()
    results = {}
    for case in CASES:
        run_case(case, results)
    run_vmap(VMAP_CASE, results)
    np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
