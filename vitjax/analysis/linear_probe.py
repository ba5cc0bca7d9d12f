"""Linear probes trained with optax: softmax regression for classes, least squares for vectors.

Inputs are standardised with the training set's per-feature mean and standard deviation (a
linear probe can undo this, but the optimiser cannot easily cope with the high-norm tokens' scale
otherwise); regression targets likewise, and predictions are mapped back to the targets' units.
Training is AdamW on minibatches drawn with replacement, `epochs * ceil(n / batch_size)` steps,
in one jitted loop; the training set is padded to a power-of-two bucket so that probes of similar
size share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """epochs: passes over the training rows; lr: AdamW learning rate; weight_decay: AdamW's
    decoupled weight decay; batch_size: rows per step; seed: minibatch sampling and weight init."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A trained probe: standardisation, weights, and (for regression) the target scaling."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None

    def predict(self, x) -> np.ndarray:
        """Class logits or regression outputs (in the targets' units) for rows x (n, D), float64."""
        out = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return out if self.target_mean is None else out * self.target_scale + self.target_mean


def _bucket(n: int) -> int:
    return max(64, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("classify", "out_dim", "batch_size", "lr", "weight_decay"))
def _fit(x, y, n, steps, key, classify: bool, out_dim: int, batch_size: int, lr: float, weight_decay: float):
    opt = optax.adamw(lr, weight_decay=weight_decay)
    params = {"w": jnp.zeros((x.shape[1], out_dim), jnp.float32), "b": jnp.zeros((out_dim,), jnp.float32)}

    def loss_fn(params, xb, yb):
        out = jnp.dot(xb, params["w"], precision=HIGHEST) + params["b"]
        if classify:
            return optax.softmax_cross_entropy_with_integer_labels(out, yb).mean()
        return jnp.mean((out - yb) ** 2)

    def step(i, carry):
        params, opt_state = carry
        rows = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n)
        grads = jax.grad(loss_fn)(params, x[rows], y[rows])
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
    return params


def train_probe(x, y, options: ProbeOptions, *, num_classes: int | None = None) -> LinearProbe:
    """A linear probe from rows x (n, D) to integer classes y (n,) (num_classes given: softmax
    regression) or to vectors y (n, K) (num_classes None: least squares)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("a linear probe needs at least one training row")
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - mean) / scale
    classify = num_classes is not None
    if classify:
        ys, out_dim, target = np.asarray(y, np.int32), int(num_classes), {}
    else:
        y = np.asarray(y, np.float64).reshape(n, -1)
        t_mean, t_scale = y.mean(0), y.std(0)
        t_scale = np.where(t_scale > 0, t_scale, 1.0)
        ys, out_dim, target = (y - t_mean) / t_scale, y.shape[1], {"target_mean": t_mean, "target_scale": t_scale}
    size = _bucket(n)
    x_pad = np.zeros((size, x.shape[1]), np.float32)
    x_pad[:n] = xs
    y_pad = np.zeros((size, *ys.shape[1:]), ys.dtype if classify else np.float32)
    y_pad[:n] = ys
    steps = options.epochs * -(-n // options.batch_size)
    params = _fit(jnp.asarray(x_pad), jnp.asarray(y_pad), n, steps, jax.random.key(options.seed),
                  classify, out_dim, options.batch_size, float(options.lr), float(options.weight_decay))
    return LinearProbe(mean, scale, np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64), **target)
