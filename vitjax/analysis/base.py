"""The streaming-reducer protocol that every analysis follows, and a bounded feature buffer.

An analysis never sees the whole dataset at once. It keeps a state (a pytree of arrays) and
`update`s it with one batch of model outputs at a time; two states built from disjoint data
`merge` into the state of their union; `finalize` turns a state into metrics. `init` and `update`
are pure and jittable, so a runner compiles one function that applies the model once and updates
every requested analysis, and a batch sharded over devices (or hosts) updates the same state a
single device would: the reductions inside `update` are over the global batch.

Every batch an analysis sees is a dict with
    'image': the model's preprocessed input, float32 (B, H, W, 3)
    'valid': bool (B,), False for the padding rows of the last batch (these must not count)
and, where the dataset has them and the analysis asks for them in `needs`:
    'label': int32 (B,) class labels
    'mask':  float32 (B, H, W) foreground mask in [0, 1] at the model's input resolution
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.capture import Output

State = Any  # a pytree of jax arrays


class Analysis:
    """Base class of every analysis; subclasses are frozen dataclasses whose fields are the options.

    name:  the registry name used by `vitjax analyze --analyses` (e.g. 'attention_distance')
    taps:  the capture taps `update` reads from every block (see vitjax.capture.TAPS)
    needs: batch fields beyond 'image' and 'valid' that `update` reads ('label', 'mask')
    """

    name: ClassVar[str]
    taps: ClassVar[frozenset[str]] = frozenset()
    needs: ClassVar[frozenset[str]] = frozenset()

    def init(self, spec: Output) -> State:
        """An empty state. `spec` is `jax.eval_shape` of the model's Output with this analysis's taps:
        it carries the token layout, the number of blocks and every tap's shape and dtype."""
        raise NotImplementedError

    def update(self, state: State, output: Output, batch: dict) -> State:
        """The state after one more batch; pure and jittable; rows with batch['valid'] False ignored."""
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        """The state of the union of two disjoint streams. Sums by default (most states are sums)."""
        return jax.tree_util.tree_map(jnp.add, a, b)

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        """Named metric arrays (host NumPy), documented in each subclass's docstring."""
        raise NotImplementedError


class PairAnalysis:
    """An analysis of two models on the same images (e.g. CKA between them); the protocol of
    `Analysis` with two outputs: init(spec_a, spec_b), update(state, out_a, out_b, batch),
    merge(a, b), finalize(state). `taps` are recorded in both models."""

    name: ClassVar[str]
    taps: ClassVar[frozenset[str]] = frozenset()
    needs: ClassVar[frozenset[str]] = frozenset()

    def init(self, spec_a: Output, spec_b: Output) -> State:
        raise NotImplementedError

    def update(self, state: State, out_a: Output, out_b: Output, batch: dict) -> State:
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        return jax.tree_util.tree_map(jnp.add, a, b)

    def finalize(self, state: State) -> dict[str, np.ndarray]:
        raise NotImplementedError


# Helpers every sum-state analysis uses.

def valid_sum(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Sum over the batch axis 0 of the rows whose `valid` is True (others may hold anything)."""
    mask = valid.reshape(valid.shape + (1,) * (values.ndim - 1))
    return jnp.where(mask, values, 0.0).sum(0)


def count_valid(batch: dict) -> jax.Array:
    return batch["valid"].sum(dtype=jnp.float32)


def mean_or_nan(total, count) -> np.ndarray:
    """total / count on the host, NaN where nothing was counted."""
    total, count = np.asarray(total, np.float64), np.asarray(count, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


@dataclasses.dataclass(frozen=True)
class Buffer:
    """A fixed-capacity, jittable store of per-example rows (for k-means, probes, histograms).

    Quantities that need all features at once cannot be sums; they keep the first `capacity`
    valid rows instead, in a preallocated array, so memory stays bounded whatever the dataset
    size and the whole update stays inside jit. The state is {'rows': (capacity, *shape), 'count'}.
    """

    capacity: int
    shape: tuple[int, ...]
    dtype: Any = jnp.float32

    def init(self) -> dict:
        return {"rows": jnp.zeros((self.capacity, *self.shape), self.dtype), "count": jnp.zeros((), jnp.int32)}

    def append(self, state: dict, rows: jax.Array, valid: jax.Array) -> dict:
        """Appends the valid rows (in order) while there is room; the rest are dropped."""
        order = jnp.cumsum(valid.astype(jnp.int32)) - 1  # position of each valid row among the valid ones
        slot = jnp.where(valid, state["count"] + order, self.capacity)  # invalid rows go out of range
        kept = state["rows"].at[slot].set(rows.astype(self.dtype), mode="drop")
        count = jnp.minimum(state["count"] + valid.sum(dtype=jnp.int32), self.capacity)
        return {"rows": kept, "count": count}

    def merge(self, a: dict, b: dict) -> dict:
        """a's rows, then b's, truncated to the capacity."""
        valid = jnp.arange(self.capacity) < b["count"]
        return self.append(a, b["rows"], valid)

    @staticmethod
    def rows(state: dict) -> np.ndarray:
        """The stored rows on the host, (count, *shape)."""
        return np.asarray(state["rows"])[: int(state["count"])]
