"""Which attention implementation runs, by backend and by what is asked for.

No statistics (the plain forward):
    cpu   XLA: kernels/reference.py (what the models have always used)
    gpu   cuDNN through jax.nn.dot_product_attention(implementation='cudnn') for bfloat16/float16
          inputs with a head dim that is a multiple of 8 and at most 128 and no bias; else XLA
    tpu   splash attention (jax's Pallas kernel, pallas_tpu.splash_attention) without bias; else XLA
Statistics (attention_with_stats, attention_received):
    cpu   the chunked jnp reference (kernels/chunked.py)
    tpu   the Pallas Mosaic kernels (kernels/pallas_tpu.py) without bias; else chunked
    gpu   the Triton kernels (kernels/triton_attention.py) when the gpu extra is installed and there
          is no bias; otherwise the chunked reference (correct, O(N block) memory, not fused)

On TPUs the Pallas kernels run on one device, or on several under shard_map over the batch when a
mesh is set with `jax.set_mesh(mesh)` (every mesh axis splits the batch, as
vitjax.parallel.batch_sharding does); with several devices and no such mesh the XLA paths run
(see `pallas_placement`). `implementation(...)` names the choice without running anything (tests
and benchmarks print it). The backend is the default device's platform at trace time.
"""

from __future__ import annotations

import importlib
import importlib.util

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vitjax.kernels import chunked, pallas_tpu, reference
from vitjax.kernels.stats import TokenGeometry

# The GPU hook: a module that defines
#     available() -> bool   (its kernels can run here: triton, jax-triton, a CUDA jaxlib)
#     attention_with_stats(q, k, v, geometry, *, key_geometry=None) -> (out, finalized stats)
#     attention_received(q, k, lse, weights=None) -> (B, H, Nk)
# with the contract of kernels/stats.py (and gradients, e.g. through chunked.with_stats_vjp).
GPU_MODULE = "vitjax.kernels.triton_attention"
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _gpu_kernels():
    """The Triton module if it is installed and importable here, else None."""
    if importlib.util.find_spec(GPU_MODULE) is None:
        return None
    module = importlib.import_module(GPU_MODULE)
    return module if module.available() else None  # needs triton, jax-triton and a CUDA jaxlib


def pallas_placement(batch: int | None) -> tuple[bool, object]:
    """(usable, mesh) for a Pallas call on a TPU: directly on one device (mesh None), or under
    shard_map over the batch on every axis of the mesh set with `jax.set_mesh` (B must divide).

    Pallas calls are opaque to XLA's partitioner, which would gather whole arrays onto every device,
    so on several devices without such a mesh the XLA paths run instead.
    """
    if jax.device_count() == 1:
        return True, None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batch is None or batch % mesh.size:
        return False, None
    return True, mesh


def implementation(*, statistics: bool, backend: str | None = None, dtype=jnp.float32, head_dim: int = 64,
                   bias: bool = False, batch: int | None = None) -> str:
    """The implementation `attention` (statistics=False) or the statistics functions would use."""
    backend = backend or jax.default_backend()
    tpu_kernels = backend == "tpu" and not bias and pallas_placement(batch)[0]
    if statistics:
        if tpu_kernels:
            return "pallas_tpu"
        if backend == "gpu" and not bias and _gpu_kernels() is not None:
            return "triton"
        return "chunked"
    if backend == "gpu" and not bias and jnp.dtype(dtype) in map(jnp.dtype, CUDNN_DTYPES) \
            and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    if tpu_kernels:
        return "splash"
    return "xla"


def _on_tpu(kernel, outputs: str, q, *args):
    """Run a Pallas kernel here, or per device under the mesh of jax.set_mesh (batch split).

    outputs: 'out' (B, N, H, Dh), 'out_and_stats' (that and a dict of (B, H, N)), 'per_key' (B, H, N).
    """
    _, mesh = pallas_placement(q.shape[0])
    if mesh is None:
        return kernel(q, *args)
    tokens, per_query = P(mesh.axis_names, None, None, None), P(mesh.axis_names, None, None)
    in_specs = tuple(P() if isinstance(a, TokenGeometry) else tokens if a.ndim == 4 else per_query for a in (q, *args))
    out_specs = {"out": tokens, "out_and_stats": (tokens, per_query), "per_key": per_query}[outputs]
    return pallas_tpu.run_sharded(kernel, mesh, in_specs, out_specs, q, *args)


def attention(q, k, v, bias=None) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + bias) v, (B, N, H, Dh), by the fastest implementation here."""
    choice = implementation(statistics=False, dtype=q.dtype, head_dim=q.shape[-1], bias=bias is not None,
                            batch=q.shape[0])
    if choice == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    if choice == "splash":
        return _on_tpu(pallas_tpu.splash_attention, "out", q, k, v)
    return reference.attention(q, k, v, bias)[0]


def attention_with_stats(q, k, v, geometry: TokenGeometry, *, key_geometry: TokenGeometry | None = None,
                         bias=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(out (B, Nq, H, Dh), statistics (B, H, Nq) per field of kernels/stats.py); differentiable."""
    key_geometry = geometry if key_geometry is None else key_geometry
    choice = implementation(statistics=True, bias=bias is not None, batch=q.shape[0])
    if choice == "pallas_tpu":
        kernel = lambda q, k, v, g, kg: pallas_tpu.attention_with_stats(q, k, v, g, key_geometry=kg)
        return _on_tpu(kernel, "out_and_stats", q, k, v, geometry, key_geometry)
    if choice == "triton":
        return _gpu_kernels().attention_with_stats(q, k, v, geometry, key_geometry=key_geometry)
    return chunked.attention_with_stats(q, k, v, geometry, key_geometry=key_geometry, bias=bias)


def attention_received(q, k, lse, weights=None, *, bias=None) -> jax.Array:
    """sum_i w_i p_ij per key (B, H, Nk) from the saved lse (a second pass)."""
    choice = implementation(statistics=True, bias=bias is not None, batch=q.shape[0])
    if choice == "pallas_tpu":
        weights = jnp.ones(lse.shape, jnp.float32) if weights is None else jnp.broadcast_to(weights, lse.shape)
        return _on_tpu(pallas_tpu.attention_received, "per_key", q, k, lse, weights)
    if choice == "triton":
        return _gpu_kernels().attention_received(q, k, lse, weights)
    return chunked.attention_received(q, k, lse, weights, bias=bias)


def attention_rows(q, k, lse, rows, *, bias=None) -> jax.Array:
    """Exact full rows (B, H, R, Nk) of the chosen queries: a small XLA computation on every backend."""
    return chunked.attention_rows(q, k, lse, rows, bias=bias)
