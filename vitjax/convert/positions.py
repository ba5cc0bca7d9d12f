"""Fitting a checkpoint's position parameters to the model being built.

Checkpoints disagree on what `pos_embed` covers (timm's `no_embed_class` models fold the class
entry into `cls_token`; the official releases keep it) and are stored for their native grid. This
step moves between those conventions exactly and resamples grids the way the *model name's*
source does it, so `load(name, image_size=...)` matches that source at any size.
"""

from __future__ import annotations

import math

import numpy as np

from vitjax.models.posemb import resample_posemb, resize_rel_pos_bias_table
from vitjax.models.vit import ViTConfig


def _grid_of(num_patches: int, what: str) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{what} has {num_patches} patch positions, which is not a square grid")
    return (side, side)


def fit_pos_embed(params: dict[str, np.ndarray], cfg: ViTConfig) -> None:
    """Adapts params['pos_embed'] (in place) to cfg: prefix entries and grid."""
    if "pos_embed" not in params or not cfg.pos_embed:
        return
    posemb = params["pos_embed"]
    if posemb.ndim == 2:  # OpenAI CLIP stores (N, D) without the batch axis
        posemb = posemb[None]
    tokens = ["cls_token"] * cfg.class_token + ["dist_token"] * cfg.dist_token
    # The checkpoint's prefix count is whichever of 0..len(tokens) leaves a square patch grid.
    candidates = [n for n in range(len(tokens) + 1) if math.isqrt(posemb.shape[1] - n) ** 2 == posemb.shape[1] - n]
    if not candidates:
        raise ValueError(f"pos_embed of shape {posemb.shape} does not fit a square patch grid")
    have = cfg.num_pos_prefix if cfg.num_pos_prefix in candidates else candidates[-1]
    prefix, patches = posemb[:, :have], posemb[:, have:]
    if have > cfg.num_pos_prefix:
        # Fold the class (and distillation) entries into their tokens, as timm's no_embed_class does.
        for i, token in enumerate(tokens[:have]):
            if token in params:
                params[token] = params[token] + prefix[:, i : i + 1]
        prefix = prefix[:, : cfg.num_pos_prefix]
    elif have < cfg.num_pos_prefix:
        # The checkpoint folded them already: a zero entry adds nothing.
        prefix = np.concatenate([prefix, np.zeros((1, cfg.num_pos_prefix - have, posemb.shape[2]), posemb.dtype)], 1)
    old_grid = _grid_of(patches.shape[1], "the checkpoint's pos_embed")
    if old_grid != cfg.grid:
        patches = np.asarray(resample_posemb(patches, 0, old_grid, cfg.grid, cfg.posemb_resample))
    params["pos_embed"] = np.concatenate([prefix, patches], axis=1).astype(posemb.dtype)


# Where the key tables put a BEiT checkpoint's one table shared by all blocks (`rel_pos_bias.*`).
SHARED_REL_POS_BIAS = "shared_rel_pos_bias"


def fit_rel_pos_bias(params: dict[str, np.ndarray], cfg: ViTConfig) -> None:
    """Gives every block a BEiT relative position bias table and resizes them (in place) to cfg's
    grid, as timm does.

    BEiT's pre-trained checkpoints hold one table shared by all blocks; the official fine-tuning code
    copies it into every block, which is what vitjax's per-block params hold. A block that has its
    own table as well adds the two, as BEiT's attention does (both index the same offsets).
    """
    if not cfg.rel_pos_bias:
        return
    shared = params.pop(SHARED_REL_POS_BIAS, None)
    if shared is not None:
        if shared.ndim != 2 or shared.shape[1] != cfg.num_heads:
            raise ValueError(f"the shared relative position bias table has shape {shared.shape}; "
                             f"the model has {cfg.num_heads} heads")
        for i in range(cfg.depth):
            path = f"blocks_{i}/attn/rel_pos_bias"
            params[path] = params[path] + shared if path in params else shared
    for path in [p for p in params if p.endswith("attn/rel_pos_bias")]:
        table = params[path]
        num_rel = table.shape[0] - 3
        side = (math.isqrt(num_rel) + 1) // 2
        if (2 * side - 1) ** 2 != num_rel:
            raise ValueError(f"{path} has {table.shape[0]} rows, which fits no square grid")
        if (side, side) != cfg.grid:
            params[path] = np.asarray(resize_rel_pos_bias_table(table, (side, side), cfg.grid))
