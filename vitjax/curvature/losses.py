"""Ready-made `loss_fn`s for `hessian_operator`: the objective a curvature study states next to its numbers."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    """Mean cross-entropy of `model` in inference mode (BatchNorm with running statistics, no dropout)
    over the batch's valid examples.

    The batch holds 'image' (B, H, W, 3) preprocessed, and 'label' (B,) int or 'target' (B, C) soft
    targets (mixup, label smoothing); 'valid' (B,) bool is optional. Instances are hashable and equal
    when their models are, so operators built from equal losses share one compilation.
    """

    model: Any

    def __call__(self, params, batch) -> jnp.ndarray:
        logits = self.model.apply({"params": params}, batch["image"]).logits
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bf16 compute, float32 loss
        if "target" in batch:
            nll = optax.softmax_cross_entropy(logits, batch["target"])
        else:
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        valid = batch.get("valid", jnp.ones(nll.shape, bool))
        return jnp.sum(jnp.where(valid, nll, 0)) / jnp.maximum(valid.sum(), 1)
