"""The optimizer of a run, from the config's `optimizer` section: AdamW (DeiT, DINO) or SGD, with
the learning rate and weight-decay schedules of `schedules.py`.

Params the objective marks as frozen (BatchNorm running statistics) get no update at all and no
optimizer state; the rest are decayed according to `weight_decay_mask`.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from vitjax.train.schedules import cosine, scaled_learning_rate, weight_decay_mask


def learning_rate(config: ml_collections.ConfigDict):
    """The learning-rate schedule: warmup, then cosine from the scaled peak down to min_lr."""
    opt = config.optimizer
    peak = scaled_learning_rate(opt.base_lr, config.batch_size, opt.lr_reference_batch)
    return cosine(peak, opt.min_lr, config.total_steps, opt.warmup_steps, opt.warmup_lr)


def weight_decay(config: ml_collections.ConfigDict):
    """Constant, or (DINO) a cosine from weight_decay to weight_decay_end over the run."""
    opt = config.optimizer
    if opt.weight_decay_end is None:
        return opt.weight_decay
    return cosine(opt.weight_decay, opt.weight_decay_end, config.total_steps)


def make(config: ml_collections.ConfigDict, params, frozen) -> optax.GradientTransformation:
    """`frozen`: a bool tree like `params`, True where the optimizer must not touch a param."""
    opt = config.optimizer
    lr, wd = learning_rate(config), weight_decay(config)
    decay = jax.tree.map(lambda d, f: d and not f, weight_decay_mask(params), frozen)
    if opt.name == "adamw":
        # Decoupled decay scaled by the learning rate, as torch.optim.AdamW: p -= lr * (adam + wd * p).
        step = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd, mask=decay)
    elif opt.name == "sgd":
        step = optax.chain(optax.add_decayed_weights(wd, mask=decay), optax.sgd(lr, momentum=opt.b1, nesterov=True))
    else:
        raise ValueError(f"unknown optimizer {opt.name!r}; use 'adamw' or 'sgd'")
    if opt.grad_clip_norm:
        step = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), step)
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
    return optax.multi_transform({"trained": step, "frozen": optax.set_to_zero()}, labels)
