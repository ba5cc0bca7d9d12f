"""Float64 oracles for the attention-statistics tests: reference.attention's probabilities at float64
and the statistics written out in NumPy from their definitions (kernels/stats.py's docstring)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.capture import TokenLayout
from vitjax.kernels import reference


def materialised(q, k, v, bias=None):
    """(out, probs, logits) as float64 NumPy, from reference.attention on the inputs' exact values."""
    with jax.enable_x64():
        up = lambda x: None if x is None else jnp.asarray(np.asarray(x, np.float64))
        out, probs, logits = reference.attention(up(q), up(k), up(v), up(bias))
        return np.asarray(out), np.asarray(probs), np.asarray(logits)


def pixel_distances(layout: TokenLayout) -> np.ndarray:
    """(N, N) patch-to-patch distances in pixels, 0 where either token is a prefix token."""
    gh, gw = layout.grid
    ph, pw = layout.patch_size
    yx = np.array([(r * ph, c * pw) for r in range(gh) for c in range(gw)], np.float64)
    d = np.zeros((layout.num_tokens,) * 2)
    d[layout.num_prefix :, layout.num_prefix :] = np.linalg.norm(yx[:, None] - yx[None], axis=-1)
    return d


def xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def statistics(probs: np.ndarray, logits: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """Every statistic from full float64 probabilities (B, H, N, N); the protocols' way for the
    renormalised ones: drop prefix keys, renormalise rows, rows with no patch mass give 0."""
    prefix = layout.num_prefix
    patches = probs[..., prefix:]
    mass = patches.sum(-1)
    renormalised = patches / np.where(mass > 0, mass, 1.0)[..., None]
    d = pixel_distances(layout)
    top = logits.max(-1)
    return {
        "lse": top + np.log(np.exp(logits - top[..., None]).sum(-1)),
        "entropy": -xlogx(probs).sum(-1),
        "max_prob": probs.max(-1),
        "prefix_mass": probs[..., :prefix].sum(-1),
        "patch_mass": mass,
        "distance": (probs * d).sum(-1),
        "patch_entropy": -xlogx(patches).sum(-1),
        "distance_patches": np.where(mass > 0, (renormalised * d[:, prefix:]).sum(-1), 0.0),
        "entropy_patches": np.where(mass > 0, -xlogx(renormalised).sum(-1), 0.0),
    }
