"""A synthetic classification task (`data.source = 'synthetic'`): batches that are a pure function of
(seed, step), for benchmarks, smoke tests and the trainer's own determinism and resume tests.

Each class has a fixed random low-frequency prototype image; an example is its class's prototype
plus white noise, so a small model learns it within a few dozen steps. Nothing is read from disk.
Every process computes the whole global batch and places only its own rows (`parallel.global_batch`),
so the arrays are the same whatever the number of devices or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np

from vitjax import parallel

_TRAIN, _EVAL, _PROTOTYPES = 0, 1, 2  # independent random streams
EVAL_BATCHES = 2


class SyntheticTask:
    def __init__(self, *, image_size: int, num_classes: int, global_batch: int, seed: int = 0,
                 noise: float = 1.0):
        self.image_size, self.num_classes, self.global_batch = image_size, num_classes, global_batch
        self.seed, self.noise = seed, noise
        rng = np.random.default_rng([seed, _PROTOTYPES])
        coarse = rng.standard_normal((num_classes, 4, 4, 3))
        repeat = -(-image_size // 4)
        self.prototypes = coarse.repeat(repeat, 1).repeat(repeat, 2)[:, :image_size, :image_size].astype(np.float32)

    def host_batch(self, stream: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, stream, index])
        labels = rng.integers(0, self.num_classes, self.global_batch)
        noise = rng.standard_normal((self.global_batch, self.image_size, self.image_size, 3), np.float32)
        images = self.prototypes[labels] + self.noise * noise
        return {"image": images, "label": labels.astype(np.int32)}

    def train_batches(self, sharding) -> Callable[[int], Iterator[dict[str, jax.Array]]]:
        """The loop's batch factory: start_step -> iterator of global batches."""
        def batches(start_step: int) -> Iterator[dict[str, jax.Array]]:
            step = start_step
            while True:
                yield parallel.global_batch(self.host_batch(_TRAIN, step), sharding)
                step += 1

        return batches

    def eval_batches(self, sharding) -> Callable[[], Iterator[dict[str, jax.Array]]]:
        def batches() -> Iterator[dict[str, jax.Array]]:
            for index in range(EVAL_BATCHES):
                batch = self.host_batch(_EVAL, index)
                batch["valid"] = np.ones(self.global_batch, bool)
                yield parallel.global_batch(batch, sharding)

        return batches
