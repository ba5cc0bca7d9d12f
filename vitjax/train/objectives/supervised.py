"""Supervised classification as DeiT trains it: cross-entropy on soft targets from label smoothing,
mixup and cutmix (timm's `Mixup` semantics, `vitjax.data.mixing.mix_batch`).

With mixup_alpha = cutmix_alpha = 0 the targets are the smoothed one-hot labels, i.e. timm's
`LabelSmoothingCrossEntropy`; with smoothing 0 as well, plain cross-entropy. A ResNet trains its
BatchNorm with batch statistics; the running averages it returns are written into the params
after each step and are never touched by the optimizer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax import traverse_util

from vitjax.load import dummy_input
from vitjax.models.resnet import ResNetConfig, statistics_mask
from vitjax.train.config import build_model
from vitjax.train.objectives import LossAux


@dataclasses.dataclass(frozen=True)
class Supervised:
    model: nn.Module
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0  # probability of mixing a batch at all
    switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on

    @staticmethod
    def defaults() -> ml_collections.ConfigDict:
        """DeiT's values."""
        return ml_collections.ConfigDict(dict(
            label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5))

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Supervised:
        model = build_model(config.model)
        if not model.config.num_classes:
            raise ValueError("supervised training needs a classifier: set model.num_classes")
        objective = config.objective
        return cls(model, objective.label_smoothing, objective.mixup_alpha, objective.cutmix_alpha,
                   objective.mix_prob, objective.switch_prob)

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @property
    def has_statistics(self) -> bool:
        return isinstance(self.model.config, ResNetConfig)

    def init(self, key):
        return self.model.init(key, dummy_input(self.model.config))["params"], {}

    def frozen(self, params):
        if self.has_statistics:
            return statistics_mask(params)
        return jax.tree.map(lambda _: False, params)

    def targets(self, key, images, labels):
        """The (possibly mixed) images and their soft targets."""
        if not (self.mixup_alpha or self.cutmix_alpha):
            # Smoothing alone is timm's (off = s / C, on = 1 - s + s / C); this path also spares runs
            # without mixing the import of vitjax.data, which loads TensorFlow (seconds per process).
            one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
            return images, optax.smooth_labels(one_hot, self.label_smoothing)
        from vitjax.data.mixing import mix_batch

        return mix_batch(key, images, labels, num_classes=self.num_classes, mixup_alpha=self.mixup_alpha,
                         cutmix_alpha=self.cutmix_alpha, prob=self.mix_prob, switch_prob=self.switch_prob,
                         label_smoothing=self.label_smoothing)

    def loss(self, params, state, batch, key, step):
        images, targets = self.targets(key, batch["image"], batch["label"])
        if self.has_statistics:
            out, mutated = self.model.apply({"params": params}, images, train=True, mutable="statistics")
            statistics = mutated["statistics"]
        else:
            out, statistics = self.model.apply({"params": params}, images), {}
        logits = out.logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        # Agreement with the dominant label of each (possibly mixed) target.
        accuracy = (logits.argmax(-1) == targets.argmax(-1)).mean()
        return loss, LossAux({"accuracy": accuracy}, statistics)

    def update(self, params, state, updates, step):
        """Writes the BatchNorm running averages (same paths as the params) into the params."""
        if not updates:
            return params, state
        flat = traverse_util.flatten_dict(params)
        flat.update(traverse_util.flatten_dict(updates))
        return traverse_util.unflatten_dict(flat), state

    def evaluate(self, params, state, batch):
        logits = self.model.apply({"params": params}, batch["image"]).logits.astype(jnp.float32)
        labels = batch["label"]
        valid = batch.get("valid", jnp.ones(labels.shape, bool)).astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, self.num_classes))[1]
        return {
            "count": valid.sum(),
            "accuracy": ((logits.argmax(-1) == labels) * valid).sum(),
            "top5": ((top5 == labels[:, None]).any(-1) * valid).sum(),
            "loss": (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * valid).sum(),
        }
