"""Lowers the Triton attention kernels for CUDA from a CPU with jax.export, and reports what Triton compiled.

`python tests/triton_lowered.py OUT.json DUMP_DIR`, run by tests/test_triton_kernels.py in a process
whose PYTHONPATH holds jaxlib's CUDA plugin (jax-triton imports only with its Triton bindings). No GPU
is needed: jax-triton compiles every kernel to PTX while lowering (Triton's CUDA backend runs on the
host), asking the device only for its compute capability, which is set here to sm_80 and sm_90 in turn.
JAX_TRITON_DUMP_DIR makes jax-triton write each kernel's PTX and shared-memory size, which OUT.json
summarises with the number of Triton custom calls in every exported module.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys


def main(path: str, dump: str):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import jax_triton
    from jax import export
    from jax._src.lib import gpu_triton

    from vitjax.capture import TokenLayout
    from vitjax.kernels import stats, triton_attention

    problems = {  # (layout, dtype, batch, heads, head_dim): ViT-B/16 at 224 px; 257 tokens with Dh 80 -> 128
        "float32": (TokenLayout(1, 0, 0, (14, 14), (16, 16)), jnp.float32, 2, 3, 64),
        "bfloat16": (TokenLayout(1, 0, 0, (16, 16), (16, 16)), jnp.bfloat16, 2, 3, 80),
    }
    custom_calls, kernels = {}, []
    for sm in (80, 90):
        gpu_triton.get_compute_capability = lambda device, sm=sm: sm  # no device to ask
        for dtype_name, (layout, dtype, batch, heads, head_dim) in problems.items():
            geometry = stats.token_geometry(layout)

            def step(q, k, v):
                def loss(q, k, v):
                    out, s = triton_attention.attention_with_stats(q, k, v, geometry)
                    received = triton_attention.attention_received(q, k, s["lse"])
                    return out.astype(jnp.float32).sum() + s["entropy_patches"].sum() + s["max_prob"].sum() \
                        + received.sum()
                return jax.value_and_grad(loss, (0, 1, 2))(q, k, v)

            shape = (batch, layout.num_tokens, heads, head_dim)
            arg = jax.ShapeDtypeStruct(shape, dtype)
            stacked = jax.ShapeDtypeStruct((2,) + shape, dtype)
            directory = os.path.join(dump, f"sm{sm}-{dtype_name}")
            jax_triton.triton_lib._JAX_TRITON_DUMP_DIR = directory  # read at import; per target here
            for label, fn, args in (("plain", step, arg), ("vmap", jax.vmap(step), stacked)):
                exported = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
                    export.DisabledSafetyCheck.custom_call("triton_kernel_call")])(args, args, args)
                custom_calls[f"sm{sm}-{dtype_name}-{label}"] = exported.mlir_module().count(
                    "stablehlo.custom_call @triton_kernel_call")
            for info in glob.glob(os.path.join(directory, "*", "*.compile_info")):
                name, shared = re.match(r"(\w+): shared_mem_bytes:\s*(\d+)", open(info).read()).groups()
                ptx = open(info[: -len(".compile_info")] + ".ptx").read()
                kernels.append(dict(name=name, sm=sm, dtype=dtype_name, shared_bytes=int(shared),
                                    tensor_core=bool(re.search(r"\b(wgmma|mma)\.", ptx))))
    with open(path, "w") as f:
        json.dump(dict(custom_calls=custom_calls, kernels=kernels), f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
