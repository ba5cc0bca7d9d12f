"""The explicit loss that curvature tools differentiate and landscapes evaluate.

`classification_objective(model, weight_decay=..., penalty=...)` returns `loss_fn(params, batch)`:

    loss = NLL + penalty
    NLL  = sum_i valid_i * CE(t_i, softmax(f(x_i; params))) / sum_i valid_i       (float32)
           t_i = batch['target'][i] (soft targets: mixup/cutmix/smoothing) or one_hot(batch['label'][i]);
           valid_i = batch['valid'][i] where the batch has it (padding rows count zero), else 1
    'l2'        penalty = weight_decay / 2 * sum_k |theta_k|_2^2      (its Hessian is weight_decay * I)
    'park_kim'  penalty = weight_decay * sum_k |theta_k|_2           (norms NOT squared: the term
                Park & Kim add to the NLL in their loss-landscape plots, `ops/norm.py::l2`)

The sums run over every parameter tensor theta_k except ResNet BatchNorm running statistics (which
are buffers, not weights, in PyTorch) and except what `exclude(path, leaf)` marks (see
`vitjax.curvature.selection`; e.g. `selection.is_one_dimensional` leaves biases and norm scales
undecayed as the trainer does). With the defaults, the 'park_kim' sum is exactly Park & Kim's
`sum(torch.norm(p) for p in model.parameters())`.

BatchNorm runs in eval mode: a ResNet normalises with the running statistics stored in its params,
and those are wrapped in `stop_gradient`, so they are constants of the objective (their gradient and
Hessian rows are exactly zero). The ViTs here have no dropout, so the objective is a deterministic
function of (params, batch). `loss_fn.terms(params, batch)` returns the parts (nll, penalty, loss,
accuracy, count) and `loss_fn.description` states the objective in words for reports.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.curvature import selection

PENALTIES = ("l2", "park_kim")


def _safe_norm(x):
    """|x|_2 with gradient 0 at x = 0 (torch.norm's choice there; jnp.linalg.norm gives NaN)."""
    squared = jnp.sum(jnp.square(x.astype(jnp.float32)))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


@dataclasses.dataclass(frozen=True)
class ClassificationObjective:
    """NLL on (soft) targets plus an analytic weight penalty; call it as `loss_fn(params, batch)`."""

    model: nn.Module
    weight_decay: float = 0.0
    penalty: str = "l2"
    exclude: selection.Predicate | None = None

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def __call__(self, params, batch) -> jax.Array:
        return self.terms(params, batch)["loss"]

    def penalized(self, params) -> dict:
        """A tree like `params`: True where the penalty includes the tensor."""
        skip = selection.any_of(selection.is_statistic, self.exclude)
        return jax.tree.map(lambda s: not s, selection.tree_where(skip, params))

    def penalty_value(self, params) -> jax.Array:
        if not self.weight_decay:
            return jnp.zeros((), jnp.float32)
        included = [x for x, keep in zip(jax.tree.leaves(params), jax.tree.leaves(self.penalized(params))) if keep]
        if self.penalty == "l2":
            total = sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in included), jnp.zeros((), jnp.float32))
            return 0.5 * self.weight_decay * total
        return self.weight_decay * sum((_safe_norm(x) for x in included), jnp.zeros((), jnp.float32))

    def logits(self, params, images) -> jax.Array:
        """Eval-mode logits, float32, with BatchNorm running statistics held constant."""
        constants = selection.tree_where(selection.is_statistic, params)
        params = jax.tree.map(lambda x, c: jax.lax.stop_gradient(x) if c else x, params, constants)
        logits = self.model.apply({"params": params}, images).logits
        if logits is None:
            raise ValueError("the model has no classifier (num_classes=0): a classification objective needs logits")
        return logits.astype(jnp.float32)

    def terms(self, params, batch) -> dict[str, jax.Array]:
        """{'loss', 'nll', 'penalty', 'accuracy', 'count'} on one batch (means over its valid rows;
        accuracy = argmax of the logits equals argmax of the target, i.e. the dominant mixed label)."""
        logits = self.logits(params, batch["image"])
        if "target" in batch:
            targets = batch["target"].astype(jnp.float32)
        elif "label" in batch:
            targets = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=jnp.float32)
        else:
            raise ValueError("a classification batch needs 'target' (soft targets) or 'label' (class indices)")
        if targets.shape != logits.shape:
            raise ValueError(f"targets of shape {targets.shape} do not match the logits' {logits.shape}")
        weights = batch["valid"].astype(jnp.float32) if "valid" in batch else jnp.ones(logits.shape[:1], jnp.float32)
        count = weights.sum()
        denominator = jnp.maximum(count, 1.0)
        cross_entropy = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
        nll = jnp.sum(weights * cross_entropy) / denominator
        correct = (logits.argmax(-1) == targets.argmax(-1)).astype(jnp.float32)
        penalty = self.penalty_value(params)
        return {"loss": nll + penalty, "nll": nll, "penalty": penalty,
                "accuracy": jnp.sum(weights * correct) / denominator, "count": count}

    @property
    def description(self) -> str:
        """The objective in one sentence, for reports."""
        if not self.weight_decay:
            term = "no weight penalty"
        elif self.penalty == "l2":
            term = f"{self.weight_decay:g}/2 * sum_k |theta_k|^2"
        else:
            term = f"{self.weight_decay:g} * sum_k |theta_k|_2 (norms not squared, as Park & Kim)"
        excluded = "BatchNorm running statistics"
        if self.exclude is not None:
            excluded += f" and tensors where {getattr(self.exclude, '__name__', 'a user predicate')}"
        return (f"loss = mean cross-entropy against the batch's (soft) targets over valid rows + {term}"
                f" (the sum over parameter tensors except {excluded}); BatchNorm in eval mode with its"
                f" running statistics held constant; no dropout")


def classification_objective(model: nn.Module, *, weight_decay: float = 0.0, penalty: str = "l2",
                             exclude: selection.Predicate | None = None) -> ClassificationObjective:
    """`loss_fn(params, batch) -> scalar`: NLL + penalty as the module docstring defines them.

    exclude: `exclude(path, leaf) -> bool`, True for tensors the penalty leaves out (in addition to
    BatchNorm running statistics, which it always leaves out). Default None: every weight tensor.
    """
    return ClassificationObjective(model, float(weight_decay), penalty, exclude)
