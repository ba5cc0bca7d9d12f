"""Learning-rate and weight-decay schedules, and which parameters are decayed, as DeiT and DINO do it.

DeiT (timm): AdamW, lr = base_lr * global_batch / 512, linear warmup then cosine decay to a
minimum, constant weight decay 0.05. DINO: lr = base_lr * global_batch / 256, the same shape of
lr schedule, and a weight decay that itself follows a cosine from 0.04 up to 0.4. Both exclude
biases, normalisation parameters and the class/position tokens from weight decay.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import traverse_util

# Parameters that are never decayed whatever their shape: timm's `no_weight_decay()` of a ViT
# (position embedding and prefix tokens) and BEiT's relative position bias table.
NO_DECAY = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token", "rel_pos_bias"})


def scaled_learning_rate(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """The linear scaling rule: DeiT uses reference 512, DINO and MoCo v3 256."""
    return base_lr * global_batch / reference_batch


def cosine(start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0):
    """DINO's `cosine_scheduler`, per step: a linear warmup from `warmup_start` that reaches `start`
    at step `warmup_steps - 1`, then `end + (start - end) * (1 + cos(pi * t)) / 2` with t going from
    0 to 1 over the remaining steps; constant at `end` after `total_steps`.

    Used for the learning rate (start = peak, end = minimum), DINO's weight decay (which rises,
    start < end) and a teacher's momentum. Returns an optax-style schedule: step -> float32.
    """
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) is longer than the run ({total_steps} steps)")
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (start - warmup_start) * step / max(warmup_steps - 1, 1)
        t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        decay = end + 0.5 * (start - end) * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(step < warmup_steps, warm, decay)

    return schedule


def weight_decay_mask(params) -> dict:
    """True where a parameter is decayed: kernels and embeddings of two or more dimensions, except
    the names in NO_DECAY. Biases, LayerNorm/BatchNorm scales, layer scales and BatchNorm running
    statistics (all one-dimensional) are not decayed, as in timm and DINO. Works on arrays and on
    shape structs alike."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: len(leaf.shape) > 1 and path[-1] not in NO_DECAY for path, leaf in flat.items()})

