"""Devices, meshes and shardings: data parallelism by default, FSDP-style parameter sharding as an
option, and multi-host start-up.

Every training run lives on a 2-D mesh with axes ('data', 'fsdp'). The batch is split over both
axes (every device sees its own examples); parameters and optimizer state are replicated when
`fsdp == 1` and otherwise split along the 'fsdp' axis by a rule that needs no per-model table
(`fsdp_spec`). The computation is written once for the global arrays and XLA inserts the
collectives, so the same program runs on one CPU, 8 simulated CPU devices, or a pod.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> None:
    """Joins a multi-process run; call it before anything else touches JAX.

    Pass all three of `coordinator_address` ('host:port' of process 0), `num_processes` and
    `process_id` to start processes by hand (e.g. two processes on one machine), or `auto=True`
    where JAX can read them from the cluster (Cloud TPU, Slurm, Open MPI). With neither, this is a
    single-process run and nothing happens. CPU processes exchange data through gloo collectives.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ValueError("a multi-process run needs all of coordinator_address, num_processes and process_id "
                         f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    if not auto and coordinator_address is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the number of devices ({len(devices)})")
    # Auto axes: XLA propagates shardings through the model, whose code knows nothing of meshes.
    return jax.make_mesh((len(devices) // fsdp, fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over every device of the mesh."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """The FSDP rule: split the largest dimension that the fsdp size divides, replicate the rest.

    Ties go to the later dimension (the output features of a kernel). Arrays with no such
    dimension (scalars, small biases) stay replicated; they are a small part of any model.
    """
    if fsdp == 1:
        return P()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def state_shardings(abstract_tree, mesh: Mesh):
    """Shardings for a tree of arrays (params, optimizer state, a whole train state) by `fsdp_spec`.

    The rule depends on shapes only, so an Adam moment is sharded exactly like its parameter.
    """
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), fsdp)), abstract_tree)


def global_batch(host_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Global arrays from a batch that every process holds in full (synthetic data, small tests).

    Each process places only the rows of its own devices. Loaders that decode only their own slice
    use `jax.make_array_from_process_local_data` instead.
    """
    return {name: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
            for name, value in host_batch.items()}


def to_host(tree):
    """Numpy copies of (possibly multi-host) global arrays, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
