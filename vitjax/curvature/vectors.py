"""Vector-space operations on pytrees of arrays, so solvers work on params-shaped vectors directly.

Every solver in vitjax.curvature treats a parameter pytree as one long vector without flattening
it (a flat copy of a sharded model would have to live on one device). Inner products accumulate in
float32 or wider, whatever the leaves' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

tree_map = jax.tree_util.tree_map


def dot(a, b) -> jax.Array:
    """<a, b> summed over every leaf."""
    leaves = jax.tree_util.tree_leaves(tree_map(lambda x, y: jnp.vdot(x, y).real, a, b))
    return sum(leaves, jnp.zeros((), jnp.result_type(jnp.float32, *leaves)))


def norm(a) -> jax.Array:
    return jnp.sqrt(dot(a, a))


def add(a, b):
    return tree_map(jnp.add, a, b)


def sub(a, b):
    return tree_map(jnp.subtract, a, b)


def scale(alpha, a):
    return tree_map(lambda x: (alpha * x).astype(x.dtype), a)


def axpy(alpha, x, y):
    """alpha * x + y."""
    return tree_map(lambda u, w: (alpha * u + w).astype(w.dtype), x, y)


def zeros_like(a):
    return tree_map(jnp.zeros_like, a)


def size(a) -> int:
    """The number of entries of the vector (the dimension of the space)."""
    return sum(x.size for x in jax.tree_util.tree_leaves(a))


def normal_like(key, a):
    """A standard Gaussian vector shaped like `a` (one key per leaf)."""
    leaves, treedef = jax.tree_util.tree_flatten(a)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def rademacher_like(key, a):
    """A random +-1 vector shaped like `a` (Hutchinson's probes)."""
    leaves, treedef = jax.tree_util.tree_flatten(a)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def normalize(a):
    """a / |a| (and |a|)."""
    n = norm(a)
    return scale(1.0 / n, a), n
