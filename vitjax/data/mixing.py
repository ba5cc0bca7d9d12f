"""Mixup and CutMix of a batch in pure JAX, for use inside the jitted train step.

Semantics are timm's `Mixup(mode='batch')` (what DeiT trains with): the whole batch is mixed with
its own reverse (`images[::-1]`) with one lam per batch.

- With probability `prob` the batch is mixed at all; if both kinds are on, CutMix is chosen with
  probability `switch_prob`, else Mixup; lam ~ Beta(alpha, alpha) of the chosen kind.
- Mixup: images * lam + reversed * (1 - lam).
- CutMix: timm's `rand_bbox`: a box of int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam)) centred at
  a uniform pixel, clipped to the image, filled from the reversed batch; lam is then corrected to
  1 - box area / image area (timm's `correct_lam=True`).
- Targets: timm's `mixup_target`: smoothed one-hot (off = smoothing / C, on = 1 - smoothing + off),
  mixed with the reversed targets by lam, so each row sums to 1.

An alpha of 0 turns that kind off; both 0 means no mixing at all (only label smoothing), where timm
would refuse. Unlike timm, an odd batch size is accepted (its middle example mixes with itself).
The box size is computed in float32 (timm: float64), which can differ by a pixel only when
H * sqrt(1 - lam) lies within float32 rounding of an integer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MixParams(NamedTuple):
    """What one call drew, for logging and for tests against timm."""

    mixed: jax.Array  # bool: the batch is mixed at all (probability `prob`)
    use_cutmix: jax.Array  # bool: CutMix rather than Mixup
    lam_drawn: jax.Array  # float32: the Beta draw, before the CutMix area correction
    center: jax.Array  # int32 (2,): CutMix box centre (cy, cx) as drawn
    box: jax.Array  # int32 (4,): (y_lo, y_hi, x_lo, x_hi) of the pasted region; empty unless CutMix
    lam: jax.Array  # float32: weight of the batch itself (1.0 when not mixed)


def draw_mix_params(key, height: int, width: int, *, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                    switch_prob=0.5) -> MixParams:
    """Draw timm's per-batch parameters (`Mixup._params_per_batch` and `cutmix_bbox_and_lam`)."""
    k_apply, k_switch, k_mixup, k_cutmix, k_cy, k_cx = jax.random.split(key, 6)
    mixup_on, cutmix_on = mixup_alpha > 0, cutmix_alpha > 0
    mixed = jnp.asarray(mixup_on or cutmix_on) & (jax.random.uniform(k_apply) < prob)
    if mixup_on and cutmix_on:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_on)
    lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_on else jnp.float32(1)
    lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_on else jnp.float32(1)
    lam_drawn = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)

    # timm's rand_bbox: the box side is truncated, its halves split as (cut // 2, (cut + 1) // 2).
    ratio = jnp.sqrt(1.0 - lam_drawn)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (), 0, height)
    cx = jax.random.randint(k_cx, (), 0, width)
    box = jnp.stack([
        jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height),
        jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width),
    ])
    cutmix = mixed & use_cutmix
    box = jnp.where(cutmix, box, 0)
    lam_cut = 1.0 - ((box[1] - box[0]) * (box[3] - box[2])) / (height * width)
    lam = jnp.where(mixed, jnp.where(use_cutmix, lam_cut, lam_drawn), 1.0).astype(jnp.float32)
    return MixParams(mixed, use_cutmix, lam_drawn, jnp.stack([cy, cx]), box, lam)


def smoothed_one_hot(labels, num_classes: int, smoothing: float):
    """timm's one_hot(on = 1 - smoothing + smoothing / C, off = smoothing / C), float32."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def apply_mix(images, labels, params: MixParams, *, num_classes: int, label_smoothing=0.1):
    """Mix NHWC `images` with their reverse as `params` say; returns (images, soft targets (B, C))."""
    flipped = images[::-1]
    lam = params.lam.astype(images.dtype)
    blended = images * lam + flipped * (1 - lam)
    rows = jnp.arange(images.shape[1])
    cols = jnp.arange(images.shape[2])
    y_lo, y_hi, x_lo, x_hi = params.box
    inside = ((rows >= y_lo) & (rows < y_hi))[:, None] & ((cols >= x_lo) & (cols < x_hi))[None, :]
    pasted = jnp.where(inside[None, :, :, None], flipped, images)
    images = jnp.where(params.mixed, jnp.where(params.use_cutmix, pasted, blended), images)
    targets = smoothed_one_hot(labels, num_classes, label_smoothing)
    targets = targets * params.lam + targets[::-1] * (1.0 - params.lam)
    return images, targets


def mix_batch(key, images, labels, *, num_classes: int, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
              switch_prob=0.5, label_smoothing=0.1):
    """timm Mixup/CutMix (mode='batch') of NHWC `images` with integer `labels`; jittable.

    Returns (mixed images, float32 soft targets (B, num_classes)). The alphas, `prob` and
    `switch_prob` are Python floats (static under jit); alpha 0 turns that kind of mixing off.
    """
    params = draw_mix_params(key, images.shape[1], images.shape[2], mixup_alpha=mixup_alpha,
                             cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob)
    return apply_mix(images, labels, params, num_classes=num_classes, label_smoothing=label_smoothing)
